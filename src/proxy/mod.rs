//! The request path, as a sequence of small phases:
//!
//! 1. [`handle`] reads the installed configuration with its live state once, and finds the
//!    request's host;
//! 2. [`admission::admit`], without waiting and without touching the body: routing picks the
//!    environment (404), checked against the connection's TLS policy (421), then rate limit
//!    (429), access rules (400, 403) and the declared body length (413), in one documented order
//!    (the head's size, 431, and the URI's length, 414, before all); a refused request's body is
//!    read and dropped beside the answer ([`crate::linger`]);
//! 3. [`forward::prepare`] rewrites the admitted request for the app ([`rewrite`], [`fields`],
//!    [`trace`]);
//! 4. [`forward::forward`] picks an instance and streams both ways (the one wait), and
//!    [`failure`] answers when no instance did;
//! 5. the environment's response headers apply to every answer, gatehouse's own pages
//!    ([`crate::pages`]) included, and [`observe`] records the request when its response ends.
//!
//! It reads only [`RequestPath`] and the connection's facts ([`crate::connection`]).

pub mod admission;
pub mod client_address;
mod failure;
pub mod fields;
pub mod forward;
pub mod observe;
pub mod request_id;
pub mod rewrite;
pub mod trace;
pub mod upgrade;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use observe::{AccessEntry, Details, Exchange, ObservedBody};

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;

use crate::connection::ConnectionInfo;
use crate::live::{Installed, ServedEnvironment};
use crate::logs::LogSink;
use crate::pages::ResponseBody;
use crate::route::request_host;
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
        // Read through `installed` wherever needed: a local reference to its snapshot would be
        // one more field of the request's state across the wait.
        let installed = shared.installed.load_full();
        // The connection's last request: answered, then the connection finishes (HTTP/1.1 closes,
        // HTTP/2 sends GOAWAY), so that no client holds one connection forever.
        let served = connection.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let last_on_connection = served >= installed.snapshot.settings.max_requests_per_connection;
        let method = request.method().clone();
        let version = request.version();
        let request_id = shared.request_ids.next();
        // Only what the access log needs is kept, and only when it is on.
        let logged_uri = shared.access_log.enabled().then(|| request.uri().clone());
        let host = request_host(&request).ok();
        let mut details = Details::default();
        let admission = admission::admit(
            shared,
            connection,
            &installed,
            host.clone(),
            &request_id,
            &request,
            &mut details,
        );
        let admitted = prepare_or_refuse(connection, &request_id, admission, request, &mut details.trace_id);
        let mut response = forward::forward(admitted, &mut details).await;
        // The environment's header policy covers its every answer, gatehouse's own pages included;
        // without an environment (400, 404, 421) the platform's own headers apply.
        let environment = details.environment.and_then(|index| installed.environment(index));
        match environment {
            Some(environment) => environment.config.headers.apply(response.headers_mut()),
            None => installed.snapshot.unrouted_headers.apply(response.headers_mut()),
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
            let client_cas = certificate_verdicts(&installed.snapshot, host.as_ref(), connection);
            let entry = AccessEntry {
                request_id,
                trace_id: details.trace_id,
                environment: environment.map(|env| env.config.name.clone()),
                client: client_text(details.client, connection),
                method: method.clone(),
                host,
                uri,
                version,
                tls_version: connection.tls_protocol.clone(),
                sni: connection.sni.clone(),
                client_certificate: connection.client_certificate.as_ref().map(|c| c.subject.clone()),
                client_cas,
                status,
                upstream: details.upstream,
                decision: details.decision,
                format: installed.snapshot.settings.access_log_format,
                policy: environment.map_or(observe::LogPolicy::EVERY, |env| env.config.access_log),
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

/// An admitted request is prepared for the app; a refused one's body is read and dropped beside
/// the answer ([`crate::linger`]), so that a client still sending gets to read the answer. Not
/// when the client waits for `100 Continue` before sending: reading the body would invite it.
/// Inlined into the request path, its one caller: out of line it cost about 1% per request.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the response itself, returned as admission returns it; boxing adds an allocation"
)]
#[inline(always)]
fn prepare_or_refuse<'a>(
    connection: &ConnectionInfo,
    request_id: &HeaderValue,
    admission: Result<admission::Admission<'a>, Response<ResponseBody>>,
    request: Request<Incoming>,
    trace_id: &mut Option<trace::TraceId>,
) -> Result<(&'a ServedEnvironment, forward::Prepared), Response<ResponseBody>> {
    use http_body::Body;
    match admission {
        Ok(admission) => Ok((
            admission.environment,
            forward::prepare(connection, request_id, admission, request, trace_id),
        )),
        Err(refusal) => {
            let waits_for_continue = (request.headers().get(header::EXPECT))
                .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if !request.body().is_end_stream() && !waits_for_continue {
                tokio::spawn(crate::linger::discard_body(request.into_body(), crate::linger::BOUNDS));
            }
            Err(refusal)
        }
    }
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

/// The client certificate's verdict for each CA of the connection's policy, for the access log;
/// `None` when the connection was not asked for a certificate, or the host is not served under
/// its policy (421). Only connections asked for a certificate pay for the host's second lookup.
fn certificate_verdicts(
    snapshot: &crate::snapshot::Snapshot,
    host: Option<&HeaderValue>,
    connection: &ConnectionInfo,
) -> Option<Vec<(u64, crate::access::profile::CertificateStatus)>> {
    if !connection.asks_for_certificate {
        return None;
    }
    let route = snapshot.route(host?.as_bytes()).ok()??;
    let policy = (snapshot.policies.get(route.policy)).filter(|policy| policy.key == connection.policy)?;
    Some(
        (policy.client_cas.iter())
            .map(|ca| (ca.id, connection.certificate_status(ca)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future that `handle` returns, without a request to call it with.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<RequestPath>, Arc<ConnectionInfo>, Request<Incoming>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every request in flight is one boxed future of this size (`server::http::Answering`),
    /// moved into its box once per request: what it holds across the wait for the app costs
    /// memory and copying on every request. 2,320 bytes since the request path stopped keeping
    /// copies of its arguments and of the admission (benches/RESULTS.md); 2,336 since the access
    /// log names a continued trace (a client's 16-byte trace id, `proxy::trace`, kept to the end
    /// of the response). A change that grows it must say why, and raise this bound with the
    /// reason.
    #[test]
    fn a_request_in_flight_holds_no_more_state_than_it_did() {
        let size = future_size(handle);
        println!("request future: {size} bytes");
        assert!(size <= 2336, "the request's future grew to {size} bytes");
    }
}
