//! TLS termination: read the ClientHello, pick the TLS policy for its SNI from the current
//! snapshot, finish the handshake, then serve HTTP on the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::Shared;
use crate::proxy::ConnectionInfo;
use crate::tls::policy::PolicyKey;

pub async fn serve(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let deadline = shared.snapshot.load().settings.tls_handshake_timeout;
    // One deadline covers both awaits: a client that trickles its ClientHello gets no more time.
    let handshake = tokio::time::timeout(deadline, handshake(&shared, stream)).await;
    let (tls, policy) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(err)) => {
            tracing::debug!(%client, error = %err, "TLS handshake failed");
            return;
        }
        Err(_elapsed) => {
            tracing::debug!(%client, "TLS handshake timed out");
            return;
        }
    };
    let alpn_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let connection = Arc::new(ConnectionInfo::new(client, policy));
    super::http::serve(shared, connection, tls, alpn_h2).await;
}

async fn handshake(
    shared: &Shared,
    stream: TcpStream,
) -> std::io::Result<(TlsStream<TcpStream>, PolicyKey)> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let (key, config) = {
        let snapshot = shared.snapshot.load();
        let policy = snapshot.policy_for_sni(start.client_hello().server_name());
        (policy.key, policy.server_config.clone())
    };
    let tls = start.into_stream(config).await?;
    Ok((tls, key))
}
