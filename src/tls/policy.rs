//! A TLS policy is everything a handshake needs for one group of host names: the certificate, and
//! (as access profiles land) whether and how a client certificate is asked for. Each policy is one
//! `rustls::ServerConfig`, chosen by SNI before the handshake proceeds.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::SingleCertAndKey;

use super::client_auth::DeferredClientAuth;
use super::material::ServingCertificate;
use crate::access::profile::ClientCa;

/// The one crypto provider gatehouse uses: aws-lc-rs, for its fast AES-GCM and RSA and for the
/// X25519MLKEM768 hybrid key exchange that current browsers offer.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(super::key_schedule::with_prepared_hmac_keys(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
        })
        .clone()
}

/// How many TLS 1.2 sessions (resumed by session ID, for clients that take no ticket) the one
/// cache that every policy shares holds: nginx's 1 MiB `ssl_session_cache` holds about 4,000.
pub const SESSION_CACHE_SIZE: usize = 4096;

/// The session cache of every policy, shared across reloads. One per policy cost each policy
/// 30 KiB up front (rustls sizes a cache for 256 sessions when it is made), 300 MiB with 10,000
/// custom certificates. Sharing is safe: rustls resumes a session only under the SNI it was made
/// for, and a client certificate is judged again against the policy's CAs on every handshake,
/// resumed or not ([`crate::connection::ClientCertificate::new`]).
pub fn shared_session_cache() -> Arc<dyn StoresServerSessions> {
    static CACHE: OnceLock<Arc<dyn StoresServerSessions>> = OnceLock::new();
    CACHE
        .get_or_init(|| ServerSessionMemoryCache::new(SESSION_CACHE_SIZE))
        .clone()
}

/// ALPN protocols offered to clients, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Identifies a TLS policy by its terms, so that the same terms give the same key in every
/// snapshot and a connection opened before a reload is judged correctly after it. The terms are
/// which certificate (the platform one, or a custom one by the names it carries, so that a renewed
/// certificate keeps its key) and which client CAs (a different CA is different terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyKey(pub u64);

/// Whether a policy serves the platform certificate or a customer's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateRole {
    Platform,
    Custom,
}

/// One compiled TLS policy.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    pub key: PolicyKey,
    /// Without a session ticketer: the running gatehouse adds its own ([`crate::live`]), so
    /// that resumption follows the ticket keys in force.
    pub server_config: Arc<ServerConfig>,
    /// The CAs client certificates are checked against on this policy's connections; empty when
    /// no certificate is asked for.
    pub client_cas: Arc<[Arc<ClientCa>]>,
    /// The certificate and key it serves (shared with the [`ServingCertificate`]).
    certified: Arc<rustls::sign::CertifiedKey>,
    /// Names the policy in metrics: `platform`, or the environment (and custom certificate
    /// name) it was made for.
    pub label: Arc<str>,
}

impl TlsPolicy {
    pub fn new(
        certificate: &ServingCertificate,
        role: CertificateRole,
        client_cas: Vec<Arc<ClientCa>>,
        label: &str,
    ) -> Result<Self, rustls::Error> {
        let provider = crypto_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = if client_cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            let verifier = DeferredClientAuth::new(&client_cas, provider.signature_verification_algorithms);
            builder.with_client_cert_verifier(Arc::new(verifier))
        };
        let resolver = SingleCertAndKey::from(certificate.certified.clone());
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
        config.session_storage = shared_session_cache();
        Ok(Self {
            key: Self::key_for(certificate, role, &client_cas),
            server_config: Arc::new(config),
            client_cas: client_cas.into(),
            certified: certificate.certified.clone(),
            label: label.into(),
        })
    }

    /// Whether this policy serves `certificate` (the very same parse of it).
    pub fn serves(&self, certificate: &ServingCertificate) -> bool {
        Arc::ptr_eq(&self.certified, &certificate.certified)
    }

    /// The key of the policy that `certificate` with `client_cas` makes.
    pub fn key_for(certificate: &ServingCertificate, role: CertificateRole, client_cas: &[Arc<ClientCa>]) -> PolicyKey {
        let mut hasher = DefaultHasher::new();
        role.hash(&mut hasher);
        if role == CertificateRole::Custom {
            let mut names: Vec<&str> = certificate.facts.dns_names.iter().map(String::as_str).collect();
            names.sort_unstable();
            names.hash(&mut hasher);
        }
        for ca in client_cas {
            ca.id.hash(&mut hasher);
        }
        PolicyKey(hasher.finish())
    }
}
