//! The pool of keep-alive HTTP/1.1 connections to app instances.
//!
//! One pool serves the whole process and outlives configuration reloads, so a reload does not
//! cost the apps a wave of new connections. Connections are keyed by instance address. Every
//! open upstream connection (idle in the pool or busy) is counted in
//! `gatehouse_upstream_connections`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::TcpStream;

use super::observe::CountedBody;
use crate::snapshot::Settings;

pub type UpstreamClient = Client<CountingConnector, CountedBody<Incoming>>;

pub fn client(settings: &Settings, open_connections: IntGauge) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.upstream_connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_instance)
        .pool_timer(TokioTimer::new())
        // gatehouse sets `Host` itself: the client's own would name the instance.
        .set_host(false)
        .build(CountingConnector {
            inner: connector,
            open_connections,
        })
}

/// `HttpConnector`, counting the connections it opens until they close.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    inner: HttpConnector,
    open_connections: IntGauge,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = CountedStream;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<CountedStream, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let connecting = self.inner.call(destination);
        let gauge = self.open_connections.clone();
        Box::pin(async move {
            let stream = connecting.await?;
            gauge.inc();
            Ok(CountedStream { stream, gauge })
        })
    }
}

/// An upstream connection that is counted while it lives.
#[derive(Debug)]
pub struct CountedStream {
    stream: TokioIo<TcpStream>,
    gauge: IntGauge,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl Read for CountedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl Write for CountedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
}
