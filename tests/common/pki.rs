//! Certificates made for each test run with rcgen: a CA, and leaves it issues.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PKCS_RSA_SHA256, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    Ecdsa,
    Rsa,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

/// A leaf certificate written to disk, and its DER for comparing with what a server presented.
pub struct Leaf {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: CertificateDer<'static>,
}

/// A client certificate and key, for mTLS clients.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    /// The certificate's serial number, for revocation lists.
    pub serial: u64,
    key_der: Vec<u8>,
    pub pem: String,
    pub key_pem: String,
}

impl ClientIdentity {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// How a client certificate is made.
pub struct ClientSpec<'a> {
    pub subject: &'a [(DnType, &'a str)],
    /// Validity relative to now, in days.
    pub valid_from: i64,
    pub valid_until: i64,
    /// When set, the end of validity in seconds from now instead of `valid_until`.
    pub expires_in_seconds: Option<i64>,
    pub client_auth: bool,
}

impl Default for ClientSpec<'_> {
    fn default() -> Self {
        Self {
            subject: &[],
            valid_from: -1,
            valid_until: 30,
            expires_in_seconds: None,
            client_auth: true,
        }
    }
}

impl Ca {
    /// Issue a client certificate.
    pub fn issue_client(&self, spec: ClientSpec<'_>) -> ClientIdentity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        for (kind, value) in spec.subject {
            dn.push(kind.clone(), *value);
        }
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(spec.valid_from);
        params.not_after = match spec.expires_in_seconds {
            Some(seconds) => now + Duration::seconds(seconds),
            None => now + Duration::days(spec.valid_until),
        };
        params.extended_key_usages = if spec.client_auth {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        // Distinct per certificate (and positive, as serials must be), so that a CRL can name it.
        static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = 0x1000
            + NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + u64::from(std::process::id()) * 0x10000;
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientIdentity {
            chain: vec![cert.der().clone()],
            serial,
            key_der: key.serialize_der(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A CRL of this CA (PEM) that revokes `serials`, issued `issued_days_ago` and due for its
    /// next update `next_update_days` from now (negative: already past).
    pub fn crl(&self, serials: &[u64], issued_days_ago: i64, next_update_days: i64) -> String {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::days(issued_days_ago),
            next_update: now + Duration::days(next_update_days),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issue a server certificate for `names`, valid for `days` from yesterday, into `dir`.
    pub fn issue(&self, dir: &Path, file_stem: &str, names: &[&str], kind: KeyKind, days: i64) -> Leaf {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, file_stem);
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(days);
        let key = match kind {
            KeyKind::Ecdsa => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyKind::Rsa => KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap(),
        };
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{file_stem}.pem"));
        let key_path = dir.join(format!("{file_stem}.key"));
        // The chain file carries the leaf then the CA, as operators deploy leaf + intermediates.
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.pem)).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert_path,
            key_path,
            der: cert.der().clone(),
        }
    }
}
