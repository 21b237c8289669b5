//! The request path, as a sequence of small phases:
//!
//! 1. [`handle`] reads the current snapshot and finds the request's host;
//! 2. admission, without waiting: routing picks the environment (404), checked against the
//!    connection's TLS policy (421), then rate limit, access rules, and [`forward::prepare`]
//!    rewrites the request for the app;
//! 3. [`forward::forward`] picks an instance and streams both ways (the one wait);
//! 4. the environment's response headers apply to every answer, and failures become
//!    gatehouse's own pages ([`crate::pages`]).

pub mod client_address;
mod failure;
pub mod fields;
pub mod forward;
pub mod observe;
pub mod request_id;
pub mod rewrite;
pub mod upgrade;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use client_address::ClientAddress;
use observe::{AccessEntry, Details, Exchange, ObservedBody};
use serde::Serialize;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::access;
use crate::connection::ConnectionInfo;
use crate::live::{Installed, Served};
use crate::logs::LogSink;
use crate::pages::{ResponseBody, page};
use crate::route::{MalformedHost, request_host};
use crate::snapshot::{Environment, Snapshot};
use request_id::RequestIds;

/// What the request path reads, and nothing else: the configuration in force with its live
/// state (swapped as a whole by reloads), request ids, and the access and audit logs.
pub struct RequestPath {
    pub installed: ArcSwap<Installed>,
    pub request_ids: RequestIds,
    pub access_log: LogSink,
    pub audit_log: LogSink,
}

/// Answer one request from a TLS connection, and record it (metrics, access log) when its
/// response body ends.
///
/// The request's state machine is moved into its box once per request
/// (`server::http::Answering`), so it is an `async move` block (which holds what it captures
/// once) rather than an `async fn` (which keeps each argument twice: as passed, and as the local
/// it is moved into).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its arguments twice in the request's state, which is moved per request"
)]
pub fn handle(
    shared: Arc<RequestPath>,
    connection: Arc<ConnectionInfo>,
    request: Request<Incoming>,
) -> impl Future<Output = Response<ObservedBody<ResponseBody>>> + Send + 'static {
    async move {
        let (shared, connection): (&RequestPath, &ConnectionInfo) = (&shared, &connection);
        let started = Instant::now();
        let installed = shared.installed.load_full();
        let snapshot = &*installed.snapshot;
        // The connection's last request: answered, then the connection finishes (HTTP/1.1 closes,
        // HTTP/2 sends GOAWAY), so that no client holds one connection forever.
        let served = connection.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let last_on_connection = served >= snapshot.settings.max_requests_per_connection;
        let method = request.method().clone();
        let version = request.version();
        let request_id = shared.request_ids.next();
        // Only what the access log needs is kept, and only when it is on.
        let logged_uri = shared.access_log.enabled().then(|| request.uri().clone());
        let host = request_host(&request).ok();
        let mut details = Details::default();
        let admitted = admit(
            shared,
            connection,
            &installed,
            host.clone(),
            &request_id,
            request,
            &mut details,
        );
        let mut response = forward::forward(admitted, &mut details).await;
        // The environment's header policy covers its every answer, gatehouse's own pages included;
        // without an environment (400, 404, 421) the platform's own headers apply.
        let environment = details.environment.and_then(|index| installed.environment(index));
        match environment {
            Some(environment) => environment.config.headers.apply(response.headers_mut()),
            None => snapshot.unrouted_headers.apply(response.headers_mut()),
        }

        if last_on_connection {
            if version != http::Version::HTTP_2 {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            connection.retire.notify_one();
        }
        let metrics = environment.map_or_else(|| installed.unrouted_metrics().clone(), |env| env.live.metrics.clone());
        let status = response.status();
        let log = logged_uri.map(|uri| {
            let entry = AccessEntry {
                request_id,
                environment: environment.map(|env| env.config.name.clone()),
                client: client_text(details.client, connection),
                method: method.clone(),
                host,
                uri,
                version,
                tls_version: connection.tls_protocol.clone(),
                client_certificate: connection.client_certificate.as_ref().map(|c| c.subject.clone()),
                status,
                upstream: details.upstream,
                decision: details.decision,
                format: snapshot.settings.access_log_format,
            };
            (Box::new(entry), shared.access_log.clone())
        });
        let exchange = Exchange {
            started,
            metrics,
            method,
            status,
            log,
        };
        response.map(|body| ObservedBody::new(body, exchange))
    }
}

/// The request's phases up to forwarding: route (400, 404), TLS policy (421), rate limit (429),
/// access (400, 403), rewrite for the app (400, 413); `Err` is gatehouse's own answer. Nothing
/// here waits: the caller awaits only the exchange with the app, so the request's future holds
/// none of this function's state.
#[expect(
    clippy::result_large_err,
    reason = "the request on its way out is as large as the answer that replaces it; boxing either adds an allocation"
)]
fn admit<'a>(
    shared: &RequestPath,
    connection: &ConnectionInfo,
    installed: &'a Installed,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
    request: Request<Incoming>,
    details: &mut Details,
) -> Result<(Served<'a>, forward::Prepared), Response<ResponseBody>> {
    let snapshot = &*installed.snapshot;
    let uri_bytes = request.uri().path_and_query().map_or(0, |path| path.as_str().len());
    if uri_bytes > snapshot.settings.max_uri_bytes {
        return Err(page(StatusCode::URI_TOO_LONG));
    }
    let Some(host) = host else {
        return Err(page(StatusCode::BAD_REQUEST));
    };
    let route = match snapshot.route(host.as_bytes()) {
        Err(MalformedHost) => return Err(page(StatusCode::BAD_REQUEST)),
        Ok(None) => return Err(page(StatusCode::NOT_FOUND)),
        Ok(Some(route)) => route,
    };
    // A connection may only carry hosts served under the TLS terms it was opened with; HTTP/2
    // clients reuse connections for every name a certificate covers.
    let same_policy = snapshot
        .policies
        .get(route.policy)
        .is_some_and(|policy| policy.key == connection.policy);
    if !same_policy {
        return Err(page(StatusCode::MISDIRECTED_REQUEST));
    }
    let Some(environment) = installed.environment(route.environment) else {
        return Err(page(StatusCode::NOT_FOUND));
    };
    details.environment = Some(route.environment);
    let client = client_address::resolve(
        connection.client.ip(),
        request.headers(),
        &snapshot.settings.trusted_forwarders,
    );
    details.client = Some(client.ip);
    if let Some(limiter) = &environment.live.rate_limiter
        && let Err(wait) = limiter.check(client.ip)
    {
        let mut refusal = page(StatusCode::TOO_MANY_REQUESTS);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        refusal
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return Err(refusal);
    }
    let context = RequestContext {
        shared,
        connection,
        environment,
        client: &client,
        request_id,
    };
    if let Some(refusal) = check_access(&context, snapshot, &host, &request, details) {
        return Err(refusal);
    }
    Ok((environment, forward::prepare(&context, host, request)?))
}

/// The client address as text for the access log: the connection's own text, unless a trusted
/// forwarder named another client.
fn client_text(resolved: Option<IpAddr>, connection: &ConnectionInfo) -> HeaderValue {
    match resolved {
        Some(ip) if ip != connection.client.ip().to_canonical() => {
            HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("-"))
        }
        _ => connection.client_ip.clone(),
    }
}

/// What the later phases of a routed request share.
#[derive(Clone, Copy)]
pub struct RequestContext<'a> {
    pub shared: &'a RequestPath,
    pub connection: &'a ConnectionInfo,
    pub environment: Served<'a>,
    pub client: &'a ClientAddress,
    pub request_id: &'a HeaderValue,
}

/// Apply the environment's access rules. `Some` is the answer for a refused request, which
/// then never reaches the app.
fn check_access<B>(
    context: &RequestContext<'_>,
    snapshot: &Snapshot,
    host: &HeaderValue,
    request: &Request<B>,
    details: &mut Details,
) -> Option<Response<ResponseBody>> {
    let RequestContext {
        shared,
        connection,
        environment,
        client,
        request_id,
    } = *context;
    let path = request.uri().path();
    let evaluation = access::evaluate(&snapshot.profiles, &environment.config.rules, path, client.ip, |ca| {
        connection.certificate_status(ca)
    });
    match evaluation {
        Ok(evaluation) => {
            details.decision = Some(evaluation.decision);
            environment.live.metrics.decided(evaluation.decision);
            if evaluation.decision.is_allowed() {
                return None;
            }
            let rule = evaluation.rule.map_or("", |rule| rule.prefix);
            audit_denial(
                shared,
                environment.config,
                client.ip,
                host,
                path,
                rule,
                evaluation.decision,
                request_id,
            );
            Some(match &environment.config.forbidden_page {
                Some(custom) => custom.respond(StatusCode::FORBIDDEN),
                None => page(StatusCode::FORBIDDEN),
            })
        }
        Err(err) => {
            tracing::info!(target: "gatehouse::access", environment = %environment.config.name, client = %client.ip, path, error = %err, "path refused");
            Some(page(StatusCode::BAD_REQUEST))
        }
    }
}

#[derive(Serialize)]
struct DenialLine<'a> {
    time: String,
    log: &'static str,
    event: &'static str,
    request_id: &'a str,
    environment: &'a str,
    client: String,
    host: &'a str,
    path: &'a str,
    rule: &'a str,
    reason: &'static str,
}

/// A denial goes to the audit log (for a SIEM) and to the process log.
#[allow(clippy::too_many_arguments)]
fn audit_denial(
    shared: &RequestPath,
    environment: &Environment,
    client: IpAddr,
    host: &HeaderValue,
    path: &str,
    rule: &str,
    decision: access::profile::Decision,
    request_id: &HeaderValue,
) {
    let host = String::from_utf8_lossy(host.as_bytes());
    tracing::info!(target: "gatehouse::access", environment = %environment.name, %client, %host, path, rule, reason = decision.reason(), "request denied");
    if shared.audit_log.enabled() {
        let line = DenialLine {
            time: crate::logs::rfc3339_now(),
            log: "audit",
            event: "access_denied",
            request_id: std::str::from_utf8(request_id.as_bytes()).unwrap_or("-"),
            environment: &environment.name,
            client: client.to_string(),
            host: &host,
            path,
            rule,
            reason: decision.reason(),
        };
        shared.audit_log.write(serde_json::to_string(&line).unwrap_or_default());
    }
}
