//! HTTP on an established TLS connection: HTTP/2 when ALPN chose it, HTTP/1.1 otherwise.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Shared;
use super::drain::GracefulConnection;
use crate::proxy::{self, ConnectionInfo};

/// Serve HTTP on `tls` until the client leaves or the connection is drained.
///
/// Memory per idle connection is what an operator pays for every keep-alive client, so the
/// connection state lives in one allocation of its own size (boxed), and this future holds
/// little more than pointers to it; the builders are gone before the first byte is read.
pub async fn serve(shared: Arc<Shared>, connection: Arc<ConnectionInfo>, tls: TlsStream<TcpStream>, alpn_h2: bool) {
    let _open = shared.metrics.connection_opened(alpn_h2);
    let mut http = Box::pin(http_connection(&shared, connection.clone(), tls, alpn_h2));
    let served = super::drain::serve_until_drained(&shared, http.as_mut(), Some(&connection.retire)).await;
    if let Err(err) = served {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// hyper's connection for `tls`, with the limits of the current configuration.
fn http_connection(
    shared: &Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    tls: TlsStream<TcpStream>,
    alpn_h2: bool,
) -> impl GracefulConnection<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + use<> {
    let (header_timeout, max_head, max_headers, max_streams) = {
        let settings = &shared.snapshot.load().settings;
        (
            settings.request_header_timeout,
            settings.max_request_header_bytes,
            settings.max_request_headers,
            settings.http2_max_concurrent_streams,
        )
    };
    let service = {
        let shared = shared.clone();
        service_fn(move |request| {
            let shared = shared.clone();
            let connection = connection.clone();
            // Boxed: the request's state machine is several KiB; inline it would stay part of
            // every idle keep-alive connection's memory after its first request.
            Box::pin(async move { Ok::<_, Infallible>(proxy::handle(&shared, &connection, request).await) })
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // A request head larger than the buffer, or with too many fields, is answered 431.
        .max_buf_size(max_head)
        .max_headers(max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let builder = if alpn_h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .into_owned()
}
