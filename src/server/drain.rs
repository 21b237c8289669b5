//! Graceful shutdown of open connections. When the proxy stops, every connection is told to
//! finish: HTTP/1.1 connections close once their request in flight is answered (idle ones at
//! once), HTTP/2 connections send GOAWAY and finish their open streams. The proxy waits for them
//! up to the configured drain time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use super::Shared;

/// A connection future that can be asked to finish gracefully.
pub trait GracefulConnection: Future {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

/// Counts a connection as open for as long as it lives.
pub struct Open<'a>(&'a Shared);

impl<'a> Open<'a> {
    pub fn count(shared: &'a Shared) -> Self {
        shared.open_connections.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serve `connection` to its end, finishing it gracefully if the proxy starts draining or
/// `retire` is woken (the connection served its share of requests).
///
/// The connection is pinned by the caller: taken by value, it would be stored twice in this
/// future (once as the argument, once pinned), and every idle connection would carry the copy.
pub async fn serve_until_drained<C: GracefulConnection + ?Sized>(
    shared: &Shared,
    mut connection: Pin<&mut C>,
    retire: Option<&tokio::sync::Notify>,
) -> C::Output {
    let _open = Open::count(shared);
    let mut draining = shared.draining.subscribe();
    tokio::select! {
        output = connection.as_mut() => return output,
        _ = draining.wait_for(|draining| *draining) => {}
        _ = async { match retire { Some(retire) => retire.notified().await, None => std::future::pending().await } } => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}
