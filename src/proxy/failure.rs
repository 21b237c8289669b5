//! gatehouse's answer when no instance answered a request: 503 (with the environment's
//! maintenance page and `Retry-After`) when none was available, 504 on a timeout, 413 for a body
//! that outgrew its limit while it streamed, 408 for one whose client stalled, else 502. The
//! app's failures are counted by kind.

use http::{Response, StatusCode, header};

use crate::body::BodyWatch;
use crate::live::ServedEnvironment;
use crate::logs::Throttle;
use crate::metrics::UpstreamError;
use crate::pages::{ResponseBody, page};
use crate::upstream::exchange::{Failed, Failure};

/// The answer when no instance answered: 503 (with the maintenance page) when none was
/// available, 504 on a timeout, 413 for a body that outgrew its limit, 408 for one whose client
/// stalled (both the client's doing, not the app's: not counted as upstream errors), else 502.
pub fn failure_page(
    environment: &ServedEnvironment,
    failed: &Failed,
    body: Option<&BodyWatch>,
) -> Response<ResponseBody> {
    if let (Failure::Broken(_), Some(end)) = (&failed.failure, body) {
        if end.too_large() {
            return page(StatusCode::PAYLOAD_TOO_LARGE);
        }
        if end.stalled() {
            // The rest of the body will not be read: the connection closes after the answer.
            let mut response = page(StatusCode::REQUEST_TIMEOUT);
            response
                .headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            return response;
        }
    }
    let (config, metrics) = (&environment.config, &environment.live.metrics);
    let instance = failed.instance.map(|addr| addr.to_string()).unwrap_or_default();
    static FAILED: Throttle = Throttle::new(10);
    if let Some(held_back) = FAILED.admit() {
        tracing::warn!(environment = %config.name, instance, error = %failed.failure, held_back, "upstream request failed");
    }
    let (status, kind) = match &failed.failure {
        Failure::NoInstance => (StatusCode::SERVICE_UNAVAILABLE, UpstreamError::NoInstance),
        Failure::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, UpstreamError::Timeout),
        Failure::Connect(_) => (StatusCode::BAD_GATEWAY, UpstreamError::Connect),
        Failure::Broken(_) => (StatusCode::BAD_GATEWAY, UpstreamError::Other),
    };
    metrics.upstream_failed(kind);
    if status != StatusCode::SERVICE_UNAVAILABLE {
        return page(status);
    }
    let mut response = match &config.maintenance_page {
        Some(custom) => custom.respond(status),
        None => page(status),
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, config.maintenance_retry_after.clone());
    response
}
