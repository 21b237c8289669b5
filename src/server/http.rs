//! HTTP on an established TLS connection: HTTP/2 when ALPN chose it, HTTP/1.1 otherwise
//! ([`super::http1`]).
//!
//! ALPN has already decided the protocol, so hyper's HTTP/1.1 or HTTP/2 connection is built
//! directly. (hyper-util's `auto` builder would first read 24 bytes to look for the HTTP/2
//! preface; that partial read made hyper's HTTP/1.1 read buffer double to 16 KiB on every
//! connection, kept for the connection's life.)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncBufReadExt;

use super::Shared;
use super::drain::{GracefulConnection, serve_until_drained};
use super::http1::{Activity, ResponseOpen};
use super::tls::ClientTls;
use crate::connection::ConnectionInfo;
use crate::pages::ResponseBody;
use crate::proxy::observe::ObservedBody;
use crate::proxy::{self, RequestPath};

/// Serve HTTP on `tls` until the client leaves or the connection is drained.
///
/// Memory per idle connection is what an operator pays for every keep-alive client, so hyper
/// starts only once the client has sent something, and for HTTP/1.1 it stops again whenever the
/// connection is idle (see [`super::http1`]).
pub async fn serve(shared: Arc<Shared>, connection: Arc<ConnectionInfo>, mut tls: ClientTls, alpn_h2: bool) {
    let _open = shared.metrics.connection_opened(alpn_h2);
    if !alpn_h2 {
        return super::http1::serve(&shared, &connection, tls).await;
    }
    if !first_bytes(&shared, &mut tls).await {
        return;
    }
    // Boxed: one allocation of hyper's own size; this future holds a pointer.
    let mut http = Box::pin(http2_connection(&shared, connection.clone(), TokioIo::new(tls)));
    if let Err(err) = serve_until_drained(&shared, http.as_mut(), Some(&connection.retire)).await {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// Wait for the client's first bytes: hyper allocates its buffers as soon as it starts, and a
/// connection that has sent nothing yet needs none. Bytes already decrypted count (they stay in
/// rustls for hyper to read). Bounded by the time hyper gives a request head; false if the
/// client left or sent nothing in that time.
async fn first_bytes(shared: &Shared, tls: &mut ClientTls) -> bool {
    let header_timeout = shared.installed().snapshot.settings.request_header_timeout;
    matches!(tokio::time::timeout(header_timeout, tls.fill_buf()).await, Ok(Ok(first)) if !first.is_empty())
}

/// The request handler for one connection.
#[derive(Clone)]
pub struct Service {
    requests: Arc<RequestPath>,
    connection: Arc<ConnectionInfo>,
    /// HTTP/1.1: what parking needs to know of the requests in flight.
    activity: Option<Arc<Activity>>,
}

pub fn service(shared: &Arc<Shared>, connection: Arc<ConnectionInfo>, activity: Option<Arc<Activity>>) -> Service {
    Service {
        requests: shared.requests.clone(),
        connection,
        activity,
    }
}

type Answer = Result<http::Response<ServedBody>, Infallible>;

impl hyper::service::Service<http::Request<Incoming>> for Service {
    type Response = http::Response<ServedBody>;
    type Error = Infallible;
    type Future = Answering;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let open = (self.activity.as_ref()).map(|activity| activity.request_started(!request.body().is_end_stream()));
        let handling = proxy::handle(self.requests.clone(), self.connection.clone(), request);
        Answering {
            handling: Box::pin(handling),
            open,
        }
    }
}

/// One request's answer in the making.
pub struct Answering {
    /// Boxed: the request's state machine is a few KiB; inline it would stay part of every idle
    /// keep-alive connection's memory after its first request. Boxed directly, without an
    /// `async` wrapper, so that it is moved once per request, not twice.
    handling: Pin<Box<dyn Future<Output = http::Response<ObservedBody<ResponseBody>>> + Send>>,
    open: Option<ResponseOpen>,
}

impl Future for Answering {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let response = std::task::ready!(self.handling.as_mut().poll(cx));
        let open = self.open.take();
        Poll::Ready(Ok(response.map(|body| ServedBody { body, _open: open })))
    }
}

/// A response body as hyper sends it; for HTTP/1.1 it tells parking when it is done.
pub struct ServedBody {
    body: ObservedBody<ResponseBody>,
    _open: Option<ResponseOpen>,
}

impl Body for ServedBody {
    type Data = <ObservedBody<ResponseBody> as Body>::Data;
    type Error = <ObservedBody<ResponseBody> as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// hyper's HTTP/2 connection for `io`, with the limits of the current configuration.
fn http2_connection(
    shared: &Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    io: TokioIo<ClientTls>,
) -> impl GracefulConnection<Output = hyper::Result<()>> + Send + use<> {
    let settings = &shared.installed().snapshot.settings;
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_header_list_size(header_list_bound(
            settings.max_request_header_bytes,
            settings.max_request_headers,
        ))
        .serve_connection(io, service(shared, connection, None))
}

/// hyper's bound on the raw bytes of an HTTP/1.1 head: twice the limit, so that a head within
/// the limit is always parsed (the wire spelling is longer only by optional whitespace) and
/// measured exactly; beyond this bound hyper answers 431 itself without parsing.
pub fn raw_head_bound(limit: usize) -> usize {
    limit.saturating_mul(2)
}

/// The HTTP/2 header list size gatehouse advertises and h2 decodes up to. h2 counts 32 bytes
/// more per field than the HTTP/1.1 spelling the limit is measured in (RFC 9113, section 6.5.2),
/// so the bound leaves room for that, and for the pseudo-header fields, above four times the
/// limit: every head within the limit reaches `proxy::admission`, which answers 431 exactly.
/// Beyond it h2 answers 431 itself, or ends the connection for a header block far beyond it.
fn header_list_bound(limit: usize, max_fields: usize) -> u32 {
    let per_field_overhead = 32 * (max_fields + 8);
    u32::try_from(limit.saturating_mul(4).saturating_add(per_field_overhead)).unwrap_or(u32::MAX)
}
