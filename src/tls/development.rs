//! The self-signed certificate made in memory when the configuration asks for
//! `development_certificate = true`. It exists so that the shipped `conf/` runs on a fresh
//! machine; production configurations name real certificate files.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::material::{MaterialError, ServingCertificate};

/// Generate an ECDSA P-256 certificate for `names` (exact and `*.` names alike), valid from a
/// day ago (clock skew) for 90 days.
pub fn generate(names: Vec<String>, provider: &CryptoProvider) -> Result<ServingCertificate, MaterialError> {
    let failed = |err: rcgen::Error| MaterialError::Parse {
        path: "development certificate".to_owned(),
        reason: err.to_string(),
    };
    let mut params = CertificateParams::new(names).map_err(failed)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "gatehouse development certificate");
    params.distinguished_name = subject;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(90);
    let key_pair = KeyPair::generate().map_err(failed)?;
    let certificate = params.self_signed(&key_pair).map_err(failed)?;
    let chain = vec![CertificateDer::from(certificate.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    ServingCertificate::from_der(chain, key, provider, ("development certificate", "development key"))
}
