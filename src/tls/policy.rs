//! A TLS policy is everything a handshake needs for one group of host names: the certificate, and
//! (as access profiles land) whether and how a client certificate is asked for. Each policy is one
//! `rustls::ServerConfig`, chosen by SNI before the handshake proceeds.

use std::sync::{Arc, OnceLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::SingleCertAndKey;

use super::material::ServingCertificate;

/// The one crypto provider gatehouse uses: aws-lc-rs, for its fast AES-GCM and RSA and for the
/// X25519MLKEM768 hybrid key exchange that current browsers offer.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// ALPN protocols offered to clients, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Identifies a TLS policy by content, so that the same certificate gives the same key in every
/// snapshot and a connection opened before a reload is judged correctly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyKey(pub u64);

/// One compiled TLS policy.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    pub key: PolicyKey,
    pub server_config: Arc<ServerConfig>,
}

impl TlsPolicy {
    pub fn new(certificate: &ServingCertificate) -> Result<Self, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(
                certificate.certified.clone(),
            )));
        config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Self {
            key: PolicyKey(certificate.fingerprint),
            server_config: Arc::new(config),
        })
    }
}
