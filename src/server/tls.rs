//! TLS termination: read the ClientHello, pick the TLS policy for its SNI from the current
//! snapshot, finish the handshake, then serve HTTP on the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::Shared;
use http::HeaderValue;
use rustls::{ProtocolVersion, SupportedCipherSuite};

use crate::access::profile::ClientCa;
use crate::connection::{ClientCertificate, ConnectionInfo};
use crate::metrics::{ConnectionLimit, HandshakeCounters, HandshakeFailure};
use crate::tls::policy::PolicyKey;

/// Serve one accepted connection: admission, PROXY header, TLS handshake, then HTTP.
///
/// The task's future is what every idle keep-alive connection keeps in memory, so the phases
/// that end (reading the PROXY header, the handshake) run in boxed futures of their own, freed
/// when they finish, and the task holds little more than the HTTP phase.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let (deadline, proxy_protocol, max_total, max_per_client, prefixes) = {
        let settings = &shared.installed().snapshot.settings;
        (
            settings.tls_handshake_timeout,
            settings.proxy_protocol,
            settings.max_connections,
            settings.max_connections_per_client,
            settings.client_prefixes,
        )
    };
    let Some(_total_place) = shared.gate.admit(max_total) else {
        shared.metrics.connection_refused(ConnectionLimit::Total);
        return;
    };
    // One deadline covers the PROXY header, the ClientHello and the handshake: a client that
    // trickles its bytes gets no more time.
    let deadline = tokio::time::Instant::now() + deadline;
    let mut stream = stream;
    let client = match proxy_protocol {
        false => peer,
        true => {
            let read = Box::pin(super::proxy_protocol::read_client_address(&mut stream, peer));
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(client)) => client,
                Ok(Err(err)) => return handshake_failed(&shared, peer, &err),
                Err(_elapsed) => return handshake_timed_out(&shared, peer),
            }
        }
    };
    // The client is known now (after a PROXY header, if any): hold its place or close.
    let Some(_client_place) = shared.gate.admit_client(prefixes.of(client.ip()), max_per_client) else {
        shared.metrics.connection_refused(ConnectionLimit::PerClient);
        return;
    };
    let Some((tls, connection, alpn_h2)) = Box::pin(establish(&shared, stream, peer, client, deadline)).await else {
        return;
    };
    super::http::serve(shared.clone(), connection, tls, alpn_h2).await;
}

/// A client's TLS stream once established, boxed: it moves through the connection's phases, and
/// each phase's future would otherwise keep a copy of its 1.2 KiB for the connection's life.
pub type ClientTls = Box<TlsStream<TcpStream>>;

/// The TLS handshake and what the connection's requests will need to know of it.
async fn establish(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    client: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<(ClientTls, Arc<ConnectionInfo>, bool)> {
    let (tls, chosen, handshakes) = match tokio::time::timeout_at(deadline, handshake(shared, stream)).await {
        Ok(Ok(done)) => done,
        Ok(Err(err)) => {
            handshake_failed(shared, peer, &err);
            return None;
        }
        Err(_elapsed) => {
            handshake_timed_out(shared, peer);
            return None;
        }
    };
    let session = tls.get_ref().1;
    let tls12 = session.protocol_version() == Some(ProtocolVersion::TLSv1_2);
    handshakes.count(&shared.metrics, tls12);
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        shared.metrics.tls_resumed(tls12);
    }
    let alpn_h2 = session.alpn_protocol() == Some(b"h2");
    let client_certificate = session
        .peer_certificates()
        .filter(|chain| !chain.is_empty())
        .map(|chain| ClientCertificate::new(chain.to_vec(), &chosen.client_cas));
    let connection = Arc::new(ConnectionInfo {
        client,
        client_ip: ip_header(client),
        policy: chosen.key,
        sni: session.server_name().and_then(|name| HeaderValue::try_from(name).ok()),
        asks_for_certificate: !chosen.client_cas.is_empty(),
        tls_protocol: protocol_header(session.protocol_version()),
        tls_cipher: cipher_header(session.negotiated_cipher_suite()),
        client_certificate,
        requests: AtomicU64::new(0),
        retire: tokio::sync::Notify::new(),
        upgrade: Default::default(),
    });
    Some((Box::new(tls), connection, alpn_h2))
}

fn handshake_failed(shared: &Shared, peer: SocketAddr, err: &std::io::Error) {
    tracing::debug!(%peer, error = %err, "TLS handshake failed");
    shared.metrics.handshake_failed(failure_reason(err));
}

fn handshake_timed_out(shared: &Shared, peer: SocketAddr) {
    tracing::debug!(%peer, "TLS handshake timed out");
    shared.metrics.handshake_failed(HandshakeFailure::Timeout);
}

/// What a connection keeps of the TLS policy its SNI chose: only these, not the whole policy,
/// so that each handshake touches as little of 10,000 policies' memory as it can.
struct ChosenPolicy {
    key: PolicyKey,
    client_cas: Arc<[Arc<ClientCa>]>,
}

/// The handshake under the policy that the ClientHello's SNI chooses, with that policy's
/// handshake counters.
async fn handshake(
    shared: &Shared,
    stream: TcpStream,
) -> std::io::Result<(TlsStream<TcpStream>, ChosenPolicy, Arc<HandshakeCounters>)> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let (chosen, handshakes, config) = {
        let installed = shared.installed();
        let index = installed
            .snapshot
            .policy_index_for_sni(start.client_hello().server_name());
        let policy = index
            .and_then(|index| installed.snapshot.policies.get(index))
            .unwrap_or(&installed.snapshot.platform_policy);
        let chosen = ChosenPolicy {
            key: policy.key,
            client_cas: policy.client_cas.clone(),
        };
        (
            chosen,
            installed.handshake_counters(index).clone(),
            installed.tls_config(index).clone(),
        )
    };
    let tls = start.into_stream(config).await?;
    Ok((tls, chosen, handshakes))
}

/// Sort a failed handshake into the reasons operators alert on.
fn failure_reason(err: &std::io::Error) -> HandshakeFailure {
    use rustls::{Error, PeerIncompatible};
    if err.kind() == std::io::ErrorKind::UnexpectedEof || err.kind() == std::io::ErrorKind::ConnectionReset {
        return HandshakeFailure::PeerClosed;
    }
    if err
        .get_ref()
        .is_some_and(|inner| inner.is::<super::proxy_protocol::ProxyHeaderError>())
    {
        return HandshakeFailure::ProxyProtocol;
    }
    match err.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidMessage(_)) | Some(Error::InappropriateMessage { .. }) => HandshakeFailure::NotTls,
        Some(Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered))
        | Some(Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled))
        | Some(Error::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired)) => {
            HandshakeFailure::ProtocolVersion
        }
        Some(Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon))
        | Some(Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon))
        | Some(Error::PeerIncompatible(PeerIncompatible::NoSignatureSchemesInCommon)) => {
            HandshakeFailure::NoSharedCipher
        }
        Some(Error::InvalidCertificate(_)) | Some(Error::NoCertificatesPresented) => HandshakeFailure::BadCertificate,
        _ => HandshakeFailure::Other,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future that `serve` returns, without a connection to call it with.
    fn task_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<Shared>, TcpStream, SocketAddr) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_refused_proxy_header_is_told_apart_by_its_type_not_its_text() {
        let refused: std::io::Error = super::super::proxy_protocol::ProxyHeaderError::Missing.into();
        assert_eq!(failure_reason(&refused), HandshakeFailure::ProxyProtocol);
        let lookalike = std::io::Error::new(std::io::ErrorKind::InvalidData, refused.to_string());
        assert_eq!(failure_reason(&lookalike), HandshakeFailure::Other);
        let closed = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(failure_reason(&closed), HandshakeFailure::PeerClosed);
    }

    /// Every open connection is one task of this size for as long as it lives, idle or not.
    /// With the handshake and hyper's connection inline it was 36 KiB (and resident memory per
    /// idle connection followed); the phases that end are boxed, and so is the TLS stream (one
    /// copy of 1.2 KiB instead of one per phase that passed it on), so that it stays small.
    #[test]
    fn a_connection_task_holds_no_handshake_or_connection_state_inline() {
        let size = task_size(serve);
        println!("connection task: {size} bytes");
        assert!(size <= 1024, "the per-connection task grew to {size} bytes");
    }
}
