//! Opening a connection to an instance: TCP (with the environment's connect timeout), TLS when
//! the environment asks for it (certificate verified against its CA, client certificate if
//! configured), then HTTP/2 when the instance chose `h2` over ALPN, else HTTP/1.1.
//!
//! Every open upstream connection is counted in `gatehouse_upstream_connections` until it closes,
//! and once in `gatehouse_upstream_connections_opened_total`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::instance::Instance;
use super::pool::Sender;
use super::spec::UpstreamTls;
use crate::metrics::UpstreamConnections;

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout {
        addr: std::net::SocketAddr,
        timeout: Duration,
    },
    #[error("cannot connect to {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("no server name to verify {addr}'s certificate against (set upstream_tls.server_name)")]
    NoServerName { addr: std::net::SocketAddr },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: hyper::Error,
    },
}

/// What to connect with.
pub struct ConnectSettings<'a> {
    pub timeout: Duration,
    pub tls: Option<&'a UpstreamTls>,
    /// Upgrades (WebSocket) need HTTP/1.1 whatever the instance prefers.
    pub http1_only: bool,
    pub counters: Option<&'a UpstreamConnections>,
}

/// Open a new connection to `instance` and start its connection task.
pub async fn connect(instance: &Instance, settings: &ConnectSettings<'_>) -> Result<Sender, ConnectError> {
    let addr = instance.addr;
    let timeout = settings.timeout;
    let opening = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = settings.tls else {
            return Ok((Stream::Plain(tcp), false));
        };
        let name = tls
            .server_name
            .clone()
            .or_else(|| instance.server_name.clone())
            .ok_or(ConnectError::NoServerName { addr })?;
        let config = if settings.http1_only {
            tls.http1_config.clone()
        } else {
            tls.config.clone()
        };
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls { addr, source })?;
        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((Stream::Tls(Box::new(stream)), http2))
    };
    let (stream, http2) = tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })??;
    let io = TokioIo::new(CountedStream::new(stream, settings.counters.cloned()));
    if http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Http { addr, source })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream HTTP/2 connection ended with an error");
            }
        });
        return Ok(Sender::Http2(sender));
    }
    let (sender, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| ConnectError::Http { addr, source })?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(Sender::Http1(sender))
}

/// A TCP connection, with or without TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An upstream connection that is counted while it lives.
struct CountedStream {
    stream: Stream,
    counters: Option<UpstreamConnections>,
}

impl CountedStream {
    fn new(stream: Stream, counters: Option<UpstreamConnections>) -> Self {
        if let Some(counters) = &counters {
            counters.open.inc();
            counters.opened.inc();
        }
        Self { stream, counters }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        if let Some(counters) = &self.counters {
            counters.open.dec();
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

/// The shared rustls client configs of an environment, for [`UpstreamTls`].
pub fn client_configs(
    roots: rustls::RootCertStore,
    client_certificate: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    http2: bool,
) -> Result<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>), rustls::Error> {
    let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::policy::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone());
        let mut config = match &client_certificate {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    };
    let http1 = build(vec![b"http/1.1".to_vec()])?;
    let preferred = if http2 {
        build(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?
    } else {
        http1.clone()
    };
    Ok((preferred, http1))
}
