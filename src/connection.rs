//! What the request path knows about the client connection a request came on: the client's
//! address, the TLS policy and parameters of the handshake, the client certificate with its
//! verdicts and identity headers, and where an upgraded connection is handed over. Computed once
//! per connection by the server (`server::tls`), read by every request on it (`proxy`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::access::profile::{CertificateStatus, ClientCa};
use crate::tls::client_auth::{apply_revocation, verify_against};
use crate::tls::client_certificate::{CertificateIdentity, chain_not_after};
use crate::tls::policy::PolicyKey;
use crate::tls::revocation::{RevocationKey, revocation_keys};

/// What the request path knows about the downstream connection a request came on, computed
/// once per connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub client: SocketAddr,
    /// The client address as a header value.
    pub client_ip: HeaderValue,
    /// The TLS policy the handshake was made under.
    pub policy: PolicyKey,
    /// The server name the client asked for in its ClientHello (SNI), which chose the policy;
    /// for the access log (`gatehouse replay` judges 421 answers by it).
    pub sni: Option<HeaderValue>,
    /// Whether the policy asked the client for a certificate (it names client CAs).
    pub asks_for_certificate: bool,
    /// `SSL-Protocol` and `SSL-Cipher` for the app.
    pub tls_protocol: HeaderValue,
    pub tls_cipher: HeaderValue,
    pub client_certificate: Option<ClientCertificate>,
    /// Requests received on this connection so far.
    pub requests: AtomicU64,
    /// Woken when the connection has served its share of requests and should finish.
    pub retire: tokio::sync::Notify,
    /// The client's connection for a request that asked to upgrade (HTTP/1.1 only).
    pub upgrade: UpgradeHandover,
}

/// A certificate the client presented, with its verdict for each CA of the connection's policy.
#[derive(Debug)]
pub struct ClientCertificate {
    chain: Vec<CertificateDer<'static>>,
    checked: Vec<(u64, CertificateStatus)>,
    /// The end of the chain's validity (its earliest `notAfter`, seconds since the Unix epoch):
    /// a verdict of "verified" holds until then, and is judged again on each request.
    valid_until: i64,
    /// How CRLs name the chain's certificates: looked up per request in the revocation lists of
    /// the configuration in force.
    revocation_keys: Box<[RevocationKey]>,
    /// The `SSL-Client-*` values for the app, when the certificate could be parsed.
    pub identity: Option<IdentityHeaders>,
    pub subject: String,
}

#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub subject_dn: HeaderValue,
    pub issuer_dn: HeaderValue,
    pub serial: HeaderValue,
    pub fingerprint: HeaderValue,
}

impl ClientCertificate {
    /// Check `chain` against every CA the connection's policy names, once, at handshake time.
    pub fn new(chain: Vec<CertificateDer<'static>>, cas: &[Arc<ClientCa>]) -> Self {
        let checked = cas.iter().map(|ca| (ca.id, verify_against(ca, &chain))).collect();
        // Unreadable: it cannot have been verified either; 0 makes sure it never counts.
        let valid_until = chain_not_after(&chain).unwrap_or(0);
        let identity = chain.first().and_then(CertificateIdentity::of);
        let subject = identity
            .as_ref()
            .map_or_else(String::new, |identity| identity.subject_dn.clone());
        let identity = identity.and_then(|identity| {
            Some(IdentityHeaders {
                subject_dn: HeaderValue::try_from(identity.subject_dn).ok()?,
                issuer_dn: HeaderValue::try_from(identity.issuer_dn).ok()?,
                serial: HeaderValue::try_from(identity.serial).ok()?,
                fingerprint: HeaderValue::try_from(identity.sha1_fingerprint).ok()?,
            })
        });
        let revocation_keys = revocation_keys(&chain);
        Self {
            chain,
            checked,
            valid_until,
            revocation_keys,
            identity,
            subject,
        }
    }

    /// Whether the chain's validity has not ended since the handshake: a verdict is kept for the
    /// connection's life, but a long keep-alive or HTTP/2 connection can outlive a certificate.
    fn still_valid(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(i64::MAX, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
        now <= self.valid_until
    }
}

impl ConnectionInfo {
    /// How the client's certificate stands with `ca` now: the chain from the handshake-time
    /// check (or checked now when a reload brought a CA the connection did not know), its
    /// validity at this moment, and the CA's revocation lists in force.
    pub fn certificate_status(&self, ca: &ClientCa) -> CertificateStatus {
        let Some(certificate) = &self.client_certificate else {
            return CertificateStatus::Absent;
        };
        let status = match certificate.checked.iter().find(|(id, _)| *id == ca.id) {
            Some((_, status)) => *status,
            None => verify_against(ca, &certificate.chain),
        };
        let status = match status {
            CertificateStatus::Verified if !certificate.still_valid() => CertificateStatus::Rejected,
            status => status,
        };
        apply_revocation(ca, status, &certificate.revocation_keys)
    }

    /// The client certificate's identity for the app (`SSL-Client-*`): when it passes for at
    /// least one of `cas` (the CAs of the environment's profiles) and none of them revokes it.
    pub fn verified_identity(&self, cas: &[Arc<ClientCa>]) -> Option<&IdentityHeaders> {
        let certificate = self.client_certificate.as_ref()?;
        let mut verified = false;
        for ca in cas {
            match self.certificate_status(ca) {
                CertificateStatus::Verified => verified = true,
                CertificateStatus::Revoked => return None,
                CertificateStatus::Absent | CertificateStatus::Rejected => {}
            }
        }
        verified.then_some(certificate.identity.as_ref()).flatten()
    }
}

/// The client's connection once upgraded: its TLS stream, starting with any bytes the client sent
/// right after its request.
pub trait ClientSide: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientSide for T {}

pub type UpgradedClient = Box<dyn ClientSide>;

/// Where the server hands the client's connection over once hyper has sent the app's 101.
///
/// Touched only by requests that ask for an upgrade and once when a connection's hyper ends,
/// never by an ordinary request.
#[derive(Default)]
pub struct UpgradeHandover(Mutex<Option<oneshot::Sender<UpgradedClient>>>);

impl UpgradeHandover {
    /// For a request that asks to upgrade: the client's connection, once the 101 is sent.
    pub fn wait_for_client(&self) -> oneshot::Receiver<UpgradedClient> {
        let (sender, receiver) = oneshot::channel();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        receiver
    }

    /// Hand `client` to the upgrade waiting for it; give it back when none does (no upgrade was
    /// asked for, or the app did not switch protocols).
    pub fn hand_over(&self, client: UpgradedClient) -> Result<(), UpgradedClient> {
        let waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match waiting {
            Some(sender) => sender.send(client),
            None => Err(client),
        }
    }
}

impl std::fmt::Debug for UpgradeHandover {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("UpgradeHandover")
    }
}
