//! Sending one request to an environment's instances: pick an instance, take a pooled
//! connection or open one, send, and wait for the response head.
//!
//! A request is tried again, once per configured retry and on another instance, when that is
//! safe: when no connection could be opened (nothing was sent), when a pooled connection turned
//! out to be closed before the request was written, or when an idempotent request without a body
//! lost its connection before any response byte. A request whose body was already streamed is
//! never replayed. Timeouts are not retried: the app may still be working on the request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::RequestBody;
use super::UpstreamGroup;
use super::body::Lease;
use super::connect::{ConnectError, ConnectSettings, connect};
use super::instance::{Instance, Outcome};
use super::pool::{PoolReturn, Sender};
use crate::logs::Throttle;
use crate::metrics::InstanceFailure;

/// A rewritten request, ready for an instance: origin-form URI, headers for the app.
pub struct Outgoing {
    pub request: Request<RequestBody>,
    /// The request's host, for HTTP/2's `:authority`.
    pub host: HeaderValue,
    /// An upgrade (WebSocket) request: HTTP/1.1 only, never replayed.
    pub upgrade: bool,
}

/// The environment's retry and timeout settings for one request.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub retries: u32,
    /// Time from sending the request to its response head.
    pub response_timeout: Duration,
}

/// An instance answered.
pub struct Answered {
    pub response: Response<Incoming>,
    /// The request counts as in flight on the instance until this is dropped.
    pub lease: Lease,
    /// From sending the request to the response head, on the attempt that answered.
    pub waited: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("no instance is available")]
    NoInstance,
    #[error(transparent)]
    Connect(ConnectError),
    #[error("no response head within {0:?}")]
    Timeout(Duration),
    #[error("the connection broke before a response: {0}")]
    Broken(hyper::Error),
}

/// A failed exchange, and the instance of its last attempt.
#[derive(Debug)]
pub struct Failed {
    pub failure: Failure,
    pub instance: Option<SocketAddr>,
    pub waited: Duration,
}

/// What is needed to send a request again after its connection broke: only kept for requests
/// that may be replayed (idempotent, no body).
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// Whether a request may be sent again after it was written and its connection broke before any
/// response byte: an idempotent method (RFC 9110 9.2.2; POST and PATCH never), no body (a
/// streamed body cannot be sent twice), and not an upgrade.
fn replayable(method: &Method, bodiless: bool, upgrade: bool) -> bool {
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    idempotent && bodiless && !upgrade
}

/// Whether an app's answer counts as a failure of the instance for passive detection: 502, 503
/// and 504 (the instance cannot serve: a gateway in front of it failed, it is overloaded or
/// shutting down, or something behind it timed out). Any other status, 500 included, is the
/// app's answer to that request: one broken path must not take the instance out for every path.
fn speaks_against_the_instance(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// How an attempt failed, as far as sending the request again is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptFailed {
    /// No connection could be opened: nothing was sent.
    NotConnected,
    /// A pooled connection was found closed before the request was written.
    NotWritten,
    /// The request was written and the connection broke before any response byte.
    WrittenUnanswered,
}

/// Where a failed attempt may go again (retries left and instances permitting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendAgain {
    Never,
    /// To another instance only.
    ElsewhereOnly,
    /// To another instance, or on a new connection to the same one when it is the only one.
    Anywhere,
}

/// The retry rule: a request that was not sent may go again anywhere; one that was written only
/// if it can be replayed, and only elsewhere. (A timeout is never sent again, so it never asks:
/// the app may still be working on the request.)
fn send_again(failed: AttemptFailed, replayable: bool) -> SendAgain {
    match failed {
        AttemptFailed::NotConnected => SendAgain::ElsewhereOnly,
        AttemptFailed::NotWritten => SendAgain::Anywhere,
        AttemptFailed::WrittenUnanswered if replayable => SendAgain::ElsewhereOnly,
        AttemptFailed::WrittenUnanswered => SendAgain::Never,
    }
}

impl Replay {
    fn of(request: &Request<RequestBody>, upgrade: bool) -> Option<Self> {
        let bodiless = http_body::Body::is_end_stream(request.body());
        replayable(request.method(), bodiless, upgrade).then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let mut request = Request::new(Either::Right(Empty::new()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Send `outgoing` to an instance of `group`, retrying where safe.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps each argument twice in its state (once as passed, once as the local it is moved to),
/// and this state is moved into its parent's once per request.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its arguments twice in the request's state, which is moved per request"
)]
pub fn send(
    group: &UpstreamGroup,
    mut outgoing: Outgoing,
    policy: Policy,
) -> impl Future<Output = Result<Answered, Failed>> + Send + '_ {
    async move {
        // A replay can only go to another instance: with one instance there is nothing to keep.
        let replay = (policy.retries > 0 && group.instances().len() > 1)
            .then(|| Replay::of(&outgoing.request, outgoing.upgrade))
            .flatten();
        let mut attempts_left = policy.retries;
        let Some(mut instance) = group.pick(None) else {
            return Err(Failed {
                failure: Failure::NoInstance,
                instance: None,
                waited: Duration::ZERO,
            });
        };
        loop {
            let lease = Lease::new(instance.clone());
            let started = Instant::now();
            group.instance_metrics(&instance).attempted();
            let failed = |failure| Failed {
                failure,
                instance: Some(instance.addr),
                waited: started.elapsed(),
            };
            let sender = match checkout_or_connect(group, &instance, outgoing.upgrade).await {
                Ok(sender) => sender,
                Err(err) => {
                    group.record(&instance, Outcome::Failure);
                    group.instance_metrics(&instance).failed(InstanceFailure::Connect);
                    static CANNOT_CONNECT: Throttle = Throttle::new(10);
                    if let Some(held_back) = CANNOT_CONNECT.admit() {
                        tracing::warn!(environment = %group.environment, instance = %instance.label, error = %err, held_back, "cannot connect to instance");
                    }
                    let again = send_again(AttemptFailed::NotConnected, replay.is_some());
                    match next_attempt(group, &instance, &mut attempts_left, again) {
                        Some(next) => {
                            instance = next;
                            continue;
                        }
                        None => return Err(failed(Failure::Connect(err))),
                    }
                }
            };
            let sending = send_on(sender, outgoing.request, &outgoing.host, group);
            let outcome = tokio::time::timeout(policy.response_timeout, sending).await;
            match outcome {
                Err(_elapsed) => {
                    group.record(&instance, Outcome::Failure);
                    group.instance_metrics(&instance).failed(InstanceFailure::Timeout);
                    // Never sent again: the app may still be working on it.
                    return Err(failed(Failure::Timeout(policy.response_timeout)));
                }
                Ok(Ok((response, connection))) => {
                    let mut lease = lease;
                    if let Some(connection) = connection {
                        lease.return_on_end(connection);
                    }
                    let outcome = if speaks_against_the_instance(response.status()) {
                        group.instance_metrics(&instance).failed(InstanceFailure::BadStatus);
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    group.record(&instance, outcome);
                    return Ok(Answered {
                        response,
                        lease,
                        waited: started.elapsed(),
                    });
                }
                Ok(Err(mut err)) => {
                    // Not written at all: hyper gives the request back. Written: only a replay.
                    let (again, how) = match err.take_message() {
                        Some(message) => (Some(message), AttemptFailed::NotWritten),
                        None => {
                            // A request body that failed on gatehouse's side (its client stalled
                            // or sent too much) says nothing about the instance.
                            if !err.error().is_user() {
                                group.record(&instance, Outcome::Failure);
                                group.instance_metrics(&instance).failed(InstanceFailure::Broken);
                            }
                            (replay.as_ref().map(Replay::request), AttemptFailed::WrittenUnanswered)
                        }
                    };
                    let rule = send_again(how, replay.is_some());
                    let next = again
                        .is_some()
                        .then(|| next_attempt(group, &instance, &mut attempts_left, rule))
                        .flatten();
                    match (again, next) {
                        (Some(message), Some(next)) => {
                            static SENT_AGAIN: Throttle = Throttle::new(10);
                            if let Some(held_back) = SENT_AGAIN.admit() {
                                tracing::info!(environment = %group.environment, instance = %instance.label, next = %next.label, error = %err.error(), held_back, "sending the request again");
                            }
                            outgoing.request = message;
                            instance = next;
                        }
                        _ => return Err(failed(Failure::Broken(err.into_error()))),
                    }
                }
            }
        }
    }
}

/// The instance for the next attempt, if the rule allows one, a retry is left and an instance is
/// available: another one, or (for [`SendAgain::Anywhere`]) the same one if it is the only one.
fn next_attempt(
    group: &UpstreamGroup,
    failed: &Instance,
    attempts_left: &mut u32,
    rule: SendAgain,
) -> Option<Arc<Instance>> {
    if *attempts_left == 0 || rule == SendAgain::Never {
        return None;
    }
    let next = group.pick(Some(failed))?;
    if std::ptr::eq(next.as_ref(), failed) && rule != SendAgain::Anywhere {
        return None;
    }
    *attempts_left -= 1;
    group.retried();
    Some(next)
}

async fn checkout_or_connect(
    group: &UpstreamGroup,
    instance: &Instance,
    upgrade: bool,
) -> Result<Sender, ConnectError> {
    let spec = &group.spec;
    if let Some(sender) = instance.pool.checkout(upgrade, spec.pool.idle_timeout) {
        return Ok(sender);
    }
    let settings = ConnectSettings {
        timeout: spec.connect_timeout,
        tls: spec.tls.as_ref(),
        http1_only: upgrade,
        counters: Some(&group.connections),
    };
    // Boxed: connecting is the rare path, and inline its state would make every request's
    // future (moved into its box per request) larger by its size.
    let started = Instant::now();
    let sender = Box::pin(connect(instance, &settings)).await?;
    group.instance_metrics(instance).connected(started.elapsed());
    if let Sender::Http2(shared) = &sender {
        instance.pool.share_http2(shared.clone());
    }
    Ok(sender)
}

type SendError = hyper::client::conn::TrySendError<Request<RequestBody>>;

/// Send on one connection; an HTTP/1.1 connection that can carry another request comes back
/// with the response, to return to the pool when the exchange is over.
///
/// The request is shaped for the connection's protocol and handed to hyper at once, and the
/// wait is a hand-written future ([`Waiting`]): an `async` block would keep the request it hands
/// on in its state, beside hyper's own copy, for as long as the wait lasts.
fn send_on(
    sender: Sender,
    mut request: Request<RequestBody>,
    host: &HeaderValue,
    group: &UpstreamGroup,
) -> impl Future<Output = Result<(Response<Incoming>, Option<PoolReturn>), SendError>> + Send + use<> {
    match sender {
        Sender::Http1(mut sender) => {
            *request.version_mut() = Version::HTTP_11;
            Waiting::Http1 {
                response: sender.try_send_request(request),
                sender: Some(sender),
                max_idle: group.spec.pool.max_idle_per_instance,
            }
        }
        Sender::Http2(mut sender) => {
            if let Some(uri) = absolute_uri(request.uri(), host) {
                *request.uri_mut() = uri;
            }
            *request.version_mut() = Version::HTTP_2;
            // HTTP/2 names the host in `:authority`.
            request.headers_mut().remove(header::HOST);
            Waiting::Http2 {
                response: sender.try_send_request(request),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The wait for the response head on one connection (see [`send_on`]).
    #[project = WaitingNow]
    enum Waiting<Http1Response, Http2Response> {
        Http1 {
            #[pin]
            response: Http1Response,
            // Taken when the response arrives: back to the pool after it, or closed.
            sender: Option<http1::SendRequest<RequestBody>>,
            max_idle: usize,
        },
        Http2 {
            #[pin]
            response: Http2Response,
        },
    }
}

impl<Http1Response, Http2Response> Future for Waiting<Http1Response, Http2Response>
where
    Http1Response: Future<Output = Result<Response<Incoming>, SendError>>,
    Http2Response: Future<Output = Result<Response<Incoming>, SendError>>,
{
    type Output = Result<(Response<Incoming>, Option<PoolReturn>), SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WaitingNow::Http1 {
                response,
                sender,
                max_idle,
            } => {
                let response = std::task::ready!(response.poll(cx))?;
                // A switched connection belongs to the tunnel now; a pool of none keeps nothing.
                let reusable = *max_idle > 0 && response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
                let connection = sender
                    .take()
                    .filter(|_| reusable)
                    .map(|sender| PoolReturn::new(sender, *max_idle));
                Poll::Ready(Ok((response, connection)))
            }
            WaitingNow::Http2 { response } => response.poll(cx).map_ok(|response| (response, None)),
        }
    }
}

/// `https://host/path?query` for HTTP/2, which requires a scheme and authority.
fn absolute_uri(origin: &Uri, host: &HeaderValue) -> Option<Uri> {
    let authority = Authority::try_from(host.as_bytes()).ok()?;
    let path = origin
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(Scheme::HTTPS)
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_idempotent_requests_that_do_not_upgrade_are_replayable() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            assert!(replayable(&method, true, false), "{method}");
            assert!(!replayable(&method, false, false), "{method} with a body");
        }
        assert!(!replayable(&Method::GET, true, true), "an upgrade");
        for method in [Method::POST, Method::PATCH, Method::CONNECT, Method::TRACE] {
            assert!(!replayable(&method, true, false), "{method} without a body");
        }
    }

    #[test]
    fn only_gateway_failures_from_the_app_count_against_the_instance() {
        for code in [502, 503, 504] {
            assert!(
                speaks_against_the_instance(http::StatusCode::from_u16(code).unwrap_or_default()),
                "{code}"
            );
        }
        for code in [200, 301, 404, 429, 500, 501, 505, 507] {
            assert!(
                !speaks_against_the_instance(http::StatusCode::from_u16(code).unwrap_or_default()),
                "{code}"
            );
        }
    }

    #[test]
    fn what_was_not_sent_goes_again_and_what_was_written_only_if_replayable() {
        use AttemptFailed::*;
        let cases = [
            (NotConnected, false, SendAgain::ElsewhereOnly),
            (NotConnected, true, SendAgain::ElsewhereOnly),
            (NotWritten, false, SendAgain::Anywhere),
            (NotWritten, true, SendAgain::Anywhere),
            (WrittenUnanswered, false, SendAgain::Never),
            (WrittenUnanswered, true, SendAgain::ElsewhereOnly),
        ];
        for (failed, replayable, expected) in cases {
            assert_eq!(
                send_again(failed, replayable),
                expected,
                "{failed:?}, replayable: {replayable}"
            );
        }
    }
}
