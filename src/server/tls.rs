//! TLS termination: read the ClientHello, pick the TLS policy for its SNI from the current
//! snapshot, finish the handshake, then serve HTTP on the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::Shared;
use http::HeaderValue;
use rustls::{ProtocolVersion, SupportedCipherSuite};

use crate::access::profile::ClientCa;
use crate::proxy::{ClientCertificate, ConnectionInfo};
use crate::tls::policy::PolicyKey;

pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let (deadline, proxy_protocol) = {
        let settings = &shared.snapshot.load().settings;
        (settings.tls_handshake_timeout, settings.proxy_protocol)
    };
    // One deadline covers the PROXY header, the ClientHello and the handshake: a client that
    // trickles its bytes gets no more time.
    let handshake = tokio::time::timeout(deadline, async {
        let mut stream = stream;
        let client = match proxy_protocol {
            true => super::proxy_protocol::read_client_address(&mut stream, peer).await?,
            false => peer,
        };
        handshake(&shared, stream).await.map(|done| (done, client))
    })
    .await;
    let ((tls, policy, client_cas), client) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_elapsed) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = tls.get_ref().1;
    let alpn_h2 = session.alpn_protocol() == Some(b"h2");
    let client_certificate = session
        .peer_certificates()
        .filter(|chain| !chain.is_empty())
        .map(|chain| ClientCertificate::new(chain.to_vec(), &client_cas));
    let connection = Arc::new(ConnectionInfo {
        client,
        client_ip: ip_header(client),
        policy,
        tls_protocol: protocol_header(session.protocol_version()),
        tls_cipher: cipher_header(session.negotiated_cipher_suite()),
        client_certificate,
    });
    super::http::serve(shared, connection, tls, alpn_h2).await;
}

type Handshake = (TlsStream<TcpStream>, PolicyKey, Arc<[Arc<ClientCa>]>);

async fn handshake(shared: &Shared, stream: TcpStream) -> std::io::Result<Handshake> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let policy = {
        let snapshot = shared.snapshot.load();
        snapshot.policy_for_sni(start.client_hello().server_name()).clone()
    };
    let tls = start.into_stream(policy.server_config).await?;
    Ok((tls, policy.key, policy.client_cas))
}

fn ip_header(client: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(client.ip().to_canonical().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The protocol as nginx's `$ssl_protocol` names it.
fn protocol_header(version: Option<ProtocolVersion>) -> HeaderValue {
    HeaderValue::from_static(match version {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    })
}

/// The cipher suite by its IANA name (`TLS_AES_128_GCM_SHA256`).
fn cipher_header(suite: Option<SupportedCipherSuite>) -> HeaderValue {
    let name = suite.and_then(|suite| suite.suite().as_str()).unwrap_or("unknown");
    let iana = name
        .strip_prefix("TLS13_")
        .map_or_else(|| name.to_owned(), |rest| format!("TLS_{rest}"));
    HeaderValue::try_from(iana).unwrap_or(HeaderValue::from_static("unknown"))
}
