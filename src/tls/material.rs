//! Certificates and keys read from PEM files, checked before they can be served.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate/key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("cannot read certificate file {path}: {reason}")]
    ReadCertificate { path: String, reason: String },
    #[error("{path} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")")]
    NoCertificate { path: String },
    #[error("cannot read private key file {path}: {reason} (expected a PEM PKCS#8, PKCS#1 or SEC1 key)")]
    ReadKey { path: String, reason: String },
    #[error("the key in {key} does not belong to the certificate in {certificate}: {reason}")]
    KeyMismatch {
        certificate: String,
        key: String,
        reason: String,
    },
    #[error("the certificate in {path} cannot be parsed: {reason}")]
    Parse { path: String, reason: String },
}

/// What gatehouse needs to know about a leaf certificate.
#[derive(Debug, Clone)]
pub struct CertificateFacts {
    /// DNS names of the subject alternative name extension, lowercase.
    pub dns_names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    pub subject: String,
}

impl CertificateFacts {
    /// Whether this certificate is valid for `domain` as a client would check it. A wildcard
    /// domain (`*.apps.example`) is covered only by the same wildcard name.
    pub fn covers(&self, domain: &str) -> bool {
        self.dns_names.iter().any(|name| name_covers(name, domain))
    }
}

/// A certificate chain with its matching key, ready to serve.
#[derive(Debug, Clone)]
pub struct ServingCertificate {
    pub certified: Arc<CertifiedKey>,
    /// Shared by the copies that the snapshot, its summary and the reload caches hold.
    pub facts: Arc<CertificateFacts>,
    /// Identifies the leaf certificate; equal across reloads when the file is unchanged.
    pub fingerprint: u64,
}

impl ServingCertificate {
    /// Pair an already-decoded chain with its key, checking that they belong together.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        provider: &CryptoProvider,
        names: (&str, &str),
    ) -> Result<Self, MaterialError> {
        let (certificate_name, key_name) = names;
        let leaf = chain.first().ok_or_else(|| MaterialError::NoCertificate {
            path: certificate_name.to_owned(),
        })?;
        let facts = facts_of(leaf).map_err(|reason| MaterialError::Parse {
            path: certificate_name.to_owned(),
            reason,
        })?;
        let mut hasher = DefaultHasher::new();
        leaf.as_ref().hash(&mut hasher);
        let fingerprint = hasher.finish();
        let certified = CertifiedKey::from_der(chain, key, provider).map_err(|err| MaterialError::KeyMismatch {
            certificate: certificate_name.to_owned(),
            key: key_name.to_owned(),
            reason: err.to_string(),
        })?;
        Ok(Self {
            certified: Arc::new(certified),
            facts: Arc::new(facts),
            fingerprint,
        })
    }

    /// Read a PEM chain and a PEM key from files.
    pub fn from_files(certificate: &Path, key: &Path, provider: &CryptoProvider) -> Result<Self, MaterialError> {
        let certificate_name = certificate.display().to_string();
        let key_name = key.display().to_string();
        let chain = read_chain(certificate, &certificate_name)?;
        let read_key = |key: &Path| -> Result<PrivateKeyDer<'static>, String> {
            let bytes = crate::files::read_bounded(key, crate::files::MAX_PEM_FILE).map_err(|err| err.to_string())?;
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| err.to_string())
        };
        let key_der = read_key(key).map_err(|reason| MaterialError::ReadKey {
            path: key_name.clone(),
            reason,
        })?;
        Self::from_der(chain, key_der, provider, (&certificate_name, &key_name))
    }
}

fn read_chain(path: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let bytes =
        crate::files::read_bounded(path, crate::files::MAX_PEM_FILE).map_err(|err| MaterialError::ReadCertificate {
            path: name.to_owned(),
            reason: err.to_string(),
        })?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .map(|certificate| certificate.map(CertificateDer::into_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| MaterialError::ReadCertificate {
            path: name.to_owned(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(MaterialError::NoCertificate { path: name.to_owned() });
    }
    Ok(chain)
}

fn facts_of(leaf: &CertificateDer<'_>) -> Result<CertificateFacts, String> {
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref()).map_err(|err| err.to_string())?;
    let mut dns_names = Vec::new();
    if let Some(san) = parsed.subject_alternative_name().map_err(|err| err.to_string())? {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                dns_names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(CertificateFacts {
        dns_names,
        not_after: parsed.validity().not_after.timestamp(),
        subject: parsed.subject().to_string(),
    })
}

/// RFC 6125 matching of one certificate name against one configured domain.
fn name_covers(cert_name: &str, domain: &str) -> bool {
    if cert_name.eq_ignore_ascii_case(domain) {
        return true;
    }
    if domain.starts_with("*.") {
        // A wildcard domain is only covered by the identical wildcard, compared above.
        return false;
    }
    match (cert_name.strip_prefix("*."), domain.split_once('.')) {
        (Some(cert_suffix), Some((first_label, domain_suffix))) => {
            !first_label.is_empty() && cert_suffix.eq_ignore_ascii_case(domain_suffix)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::name_covers;

    #[test]
    fn wildcard_certificate_covers_exactly_one_label() {
        assert!(name_covers("*.apps.example", "shop.apps.example"));
        assert!(name_covers("*.apps.example", "SHOP.Apps.Example"));
        assert!(!name_covers("*.apps.example", "a.shop.apps.example"));
        assert!(!name_covers("*.apps.example", "apps.example"));
        assert!(name_covers("*.apps.example", "*.apps.example"));
        assert!(!name_covers("shop.apps.example", "*.apps.example"));
        assert!(!name_covers("*.example", "*.apps.example"));
        assert!(name_covers("www.shop.example", "www.shop.example"));
        assert!(!name_covers("www.shop.example", "shop.example"));
    }
}
