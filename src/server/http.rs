//! HTTP on an established TLS connection: HTTP/2 when ALPN chose it, HTTP/1.1 otherwise.
//!
//! ALPN has already decided the protocol, so hyper's HTTP/1.1 or HTTP/2 connection is built
//! directly. (hyper-util's `auto` builder would first read 24 bytes to look for the HTTP/2
//! preface; that partial read made hyper's HTTP/1.1 read buffer double to 16 KiB on every
//! connection, kept for the connection's life.)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Shared;
use super::drain::{GracefulConnection, serve_until_drained};
use crate::pages::ResponseBody;
use crate::proxy::observe::ObservedBody;
use crate::proxy::{self, ConnectionInfo};

type Io = TokioIo<TlsStream<TcpStream>>;

/// Serve HTTP on `tls` until the client leaves or the connection is drained.
///
/// Memory per idle connection is what an operator pays for every keep-alive client, so hyper
/// starts only once the client has sent something, its connection lives in one allocation of
/// its own size (boxed), and this future holds little more than the TLS stream while it waits
/// and a pointer after; the builders are gone before hyper reads a byte.
pub async fn serve(shared: Arc<Shared>, connection: Arc<ConnectionInfo>, mut tls: TlsStream<TcpStream>, alpn_h2: bool) {
    let _open = shared.metrics.connection_opened(alpn_h2);
    if !first_bytes(&shared, &mut tls).await {
        return;
    }
    let mut http = http_connection(&shared, connection.clone(), tls, alpn_h2);
    if let Err(err) = serve_until_drained(&shared, http.as_mut(), Some(&connection.retire)).await {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// Wait for the client's first bytes: hyper allocates its buffers as soon as it starts, and a
/// connection that has sent nothing yet needs none. Bytes already decrypted count (they stay in
/// rustls for hyper to read). Bounded by the time hyper gives a request head; false if the
/// client left or sent nothing in that time.
async fn first_bytes(shared: &Shared, tls: &mut TlsStream<TcpStream>) -> bool {
    let header_timeout = shared.snapshot.load().settings.request_header_timeout;
    matches!(tokio::time::timeout(header_timeout, tls.fill_buf()).await, Ok(Ok(first)) if !first.is_empty())
}

type Connection = Pin<Box<dyn GracefulConnection<Output = hyper::Result<()>> + Send>>;

/// hyper's connection for the protocol ALPN chose, boxed: one allocation of its own size.
fn http_connection(
    shared: &Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    tls: TlsStream<TcpStream>,
    alpn_h2: bool,
) -> Connection {
    let io = TokioIo::new(tls);
    if alpn_h2 {
        Box::pin(http2_connection(shared, connection, io))
    } else {
        Box::pin(http1_connection(shared, connection, io))
    }
}

type Answer = Result<http::Response<ObservedBody<ResponseBody>>, Infallible>;

/// The request handler for one connection.
fn service(
    shared: &Arc<Shared>,
    connection: Arc<ConnectionInfo>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<ObservedBody<ResponseBody>>,
    Error = Infallible,
    Future = Pin<Box<dyn Future<Output = Answer> + Send>>,
> + Clone
+ use<> {
    let shared = shared.clone();
    service_fn(move |request| {
        let shared = shared.clone();
        let connection = connection.clone();
        // Boxed: the request's state machine is several KiB; inline it would stay part of
        // every idle keep-alive connection's memory after its first request.
        let handled: Pin<Box<dyn Future<Output = Answer> + Send>> =
            Box::pin(async move { Ok(proxy::handle(&shared, &connection, request).await) });
        handled
    })
}

/// hyper's HTTP/1.1 connection for `io` (with upgrades, for WebSocket), with the limits of the
/// current configuration.
fn http1_connection(
    shared: &Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    io: Io,
) -> impl GracefulConnection<Output = hyper::Result<()>> + Send + use<> {
    let settings = &shared.snapshot.load().settings;
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_header_timeout)
        // A request head larger than the buffer, or with too many fields, is answered 431.
        .max_buf_size(settings.max_request_header_bytes)
        .max_headers(settings.max_request_headers)
        .serve_connection(io, service(shared, connection))
        .with_upgrades()
}

/// hyper's HTTP/2 connection for `io`, with the limits of the current configuration.
fn http2_connection(
    shared: &Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    io: Io,
) -> impl GracefulConnection<Output = hyper::Result<()>> + Send + use<> {
    let settings = &shared.snapshot.load().settings;
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_request_header_bytes).unwrap_or(u32::MAX))
        .serve_connection(io, service(shared, connection))
}
