//! Forwarding a routed request to one of its environment's app instances.
//!
//! The request is rewritten for the app ([`super::rewrite`]), handed to the environment's
//! upstream group (which picks an instance, pools
//! connections and retries where safe), and the response streams back, held to the
//! environment's idle and total timeouts. Bodies are never buffered.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::admission::Admission;
use super::failure::failure_page;
use super::fields::remove_hop_by_hop;
use super::observe::Details;
use super::rewrite::{rewrite_request_headers, set_forwarding_headers};
use super::upgrade;
use crate::body::{BodyWatch, CountedBody, ReceivedBytes};
use crate::connection::ConnectionInfo;
use crate::live::ServedEnvironment;
use crate::pages::{ResponseBody, page};
use crate::upstream::exchange::{self, Answered, Failed, Failure, Outgoing, Policy};
use crate::upstream::{Deadlines, UpstreamBody};

/// A routed request, rewritten for the app and ready to send.
///
/// Preparing is synchronous and sending is the only wait, so that the request's future (moved
/// into its box, and into each level's state, once per request) holds only what lives across
/// that wait: the outgoing request, not the client's request beside its parts.
pub struct Prepared {
    outgoing: Outgoing,
    policy: Policy,
    /// For a WebSocket (or other) upgrade: where the client's connection will be handed.
    downstream_upgrade: Option<tokio::sync::oneshot::Receiver<crate::connection::UpgradedClient>>,
    total_deadline: Option<tokio::time::Instant>,
    /// Set when a body of unknown length outgrew the environment's limit while it streamed.
    watch: Option<Arc<BodyWatch>>,
}

/// Rewrite an admitted request for the app; `trace_id` gets the client's trace id when its
/// trace context is continued ([`super::trace`]). Inlined into its one caller, the request path
/// (as it was before it took `trace_id`: out of line it cost about 1% per request).
#[inline(always)]
pub fn prepare(
    connection: &ConnectionInfo,
    request_id: &HeaderValue,
    admission: Admission<'_>,
    request: Request<Incoming>,
    trace_id: &mut Option<super::trace::TraceId>,
) -> Prepared {
    let Admission {
        environment,
        client,
        host,
        uri,
        declared_length,
    } = admission;
    let upgrade_protocol = upgrade::requested_protocol(&request);
    // Upgraded connections live as long as their users want; every other exchange has its limit.
    let total_deadline = environment
        .config
        .total_timeout
        .filter(|_| upgrade_protocol.is_none())
        .map(|total| tokio::time::Instant::now() + total);

    let (mut parts, body) = request.into_parts();
    let from_http2 = parts.version == Version::HTTP_2;
    rewrite_request_headers(&mut parts.headers, from_http2, client.via_trusted_forwarder);
    *trace_id = set_forwarding_headers(
        &mut parts.headers,
        connection,
        &client,
        host.clone(),
        request_id.clone(),
        &environment.config.client_cas,
    );
    let upgrade = upgrade_protocol.is_some();
    if let Some(protocol) = upgrade_protocol {
        upgrade::keep_upgrade_headers(&mut parts.headers, protocol);
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;

    let limit = environment.config.max_request_body;
    let idle_limit = environment.config.request_body_timeout;
    // A declared length was held to the limit at admission: only a body of unknown length can
    // grow past it while it streams; any body can stall.
    let watch = (!http_body::Body::is_end_stream(&body) && (declared_length.is_none() || idle_limit.is_some()))
        .then(|| Arc::new(BodyWatch::new(limit, idle_limit)));
    let received = ReceivedBytes {
        metrics: environment.live.metrics.clone(),
        watch: watch.clone(),
    };
    Prepared {
        outgoing: Outgoing {
            request: Request::from_parts(parts, Either::Left(CountedBody::new(body, received))),
            host,
            upgrade,
        },
        policy: Policy {
            retries: environment.config.retries,
            response_timeout: environment.config.response_timeout,
        },
        downstream_upgrade: upgrade.then(|| connection.upgrade.wait_for_client()),
        total_deadline,
        watch,
    }
}

/// Send an admitted request to an instance of its environment and stream the answer back; an
/// answer that replaced the request at admission (`Err`) passes straight through.
///
/// A function returning an `async move` block, not an `async fn`, so that the admission is held
/// once in the request's state (see [`exchange::send`]). It takes the admission whole, not its
/// parts, so that the caller's state does not keep a second copy of it across the wait: a value
/// matched apart in the caller (or passed as separate parts) keeps its place in the caller's
/// state for as long as the wait lasts.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its arguments twice in the request's state, which is moved per request"
)]
pub fn forward<'a>(
    admitted: Result<(&'a ServedEnvironment, Prepared), Response<ResponseBody>>,
    details: &'a mut Details,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'a {
    async move {
        // Taken apart field by field: what the exchange consumes is moved into it before the
        // wait, and only the small rest is kept across it.
        let (
            environment,
            Prepared {
                outgoing,
                policy,
                downstream_upgrade,
                total_deadline,
                watch,
            },
        ) = match admitted {
            Ok(admitted) => admitted,
            Err(answer) => return answer,
        };
        let sending = exchange::send(&environment.live.upstream, outgoing, policy);
        let outcome = match total_deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, sending).await.unwrap_or_else(|_| {
                Err(Failed {
                    failure: Failure::Timeout(environment.config.total_timeout.unwrap_or_default()),
                    instance: None,
                    waited: Duration::ZERO,
                })
            }),
            None => sending.await,
        };
        let answered = match outcome {
            Ok(answered) => answered,
            Err(failed) => {
                details.upstream = failed.instance.map(|addr| (addr, failed.waited));
                return failure_page(environment, &failed, watch.as_deref());
            }
        };
        let Answered {
            response,
            lease,
            waited,
        } = answered;
        details.upstream = Some((lease.instance().addr, waited));
        environment.live.metrics.upstream_answered(waited);

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match downstream_upgrade {
                Some(downstream) => upgrade::tunnel(downstream, response),
                // The app switched protocols without being asked: nothing sane can follow.
                None => page(StatusCode::BAD_GATEWAY),
            };
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let deadlines = Deadlines {
            idle: environment.config.idle_timeout,
            total: total_deadline,
        };
        Response::from_parts(parts, Either::Left(UpstreamBody::new(body, deadlines, lease)))
    }
}
