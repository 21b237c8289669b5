//! Certificate revocation lists of a client CA: loaded and validated with the configuration,
//! looked up on every request that a certificate would let in.
//!
//! A profile's `client_crls` are full CRLs (PEM or DER, one or more per file) issued by a
//! certificate of the profile's `client_ca` bundle, which signs them. Each certificate of a client's
//! chain is named by its issuer and serial number ([`RevocationKey`], taken once per connection);
//! a request is refused when any of them is listed. Because the lists live in the configuration in
//! force, not in the connection, a CRL update refuses the next request of a revoked certificate on
//! connections opened before it too.
//!
//! A CRL past its `nextUpdate` is still applied (see README, "Revocation"): it is reported by
//! `gatehouse check`, and its `nextUpdate` is a metric with an alert rule.

use std::collections::{HashMap, HashSet};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// The extension that marks a delta CRL, which lists only changes since a base CRL.
const DELTA_CRL_INDICATOR: &str = "2.5.29.27";

/// A distinguished name, DER.
type Name = Box<[u8]>;
/// A serial number: the DER integer's content bytes.
type Serial = Box<[u8]>;

/// How one certificate of a chain is named in a CRL: its issuer's name (DER) and its serial
/// number (the DER integer's content bytes, as CRLs list them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationKey {
    issuer: Box<[u8]>,
    serial: Box<[u8]>,
}

/// The keys of every certificate of `chain` (leaf first) that can be parsed.
pub fn revocation_keys(chain: &[CertificateDer<'_>]) -> Box<[RevocationKey]> {
    chain
        .iter()
        .filter_map(|der| X509Certificate::from_der(der.as_ref()).ok())
        .map(|(_, certificate)| RevocationKey {
            issuer: certificate.issuer().as_raw().into(),
            serial: certificate.raw_serial().into(),
        })
        .collect()
}

/// One CRL file, for reports, warnings and metrics.
#[derive(Debug, Clone)]
pub struct CrlFile {
    pub source: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// `nextUpdate`, seconds since the Unix epoch (a CRL may omit it: then it never goes stale).
    pub next_update: Option<i64>,
    /// Certificates it lists.
    pub revoked: usize,
}

/// Every certificate the CRLs of one client CA list: by issuer name, then serial, the CRL (in
/// [`RevocationList::files`]) that lists it.
#[derive(Debug, Default)]
pub struct RevocationList {
    revoked: HashMap<Name, HashMap<Serial, usize>>,
    pub files: Vec<CrlFile>,
}

impl RevocationList {
    /// Add the CRLs of one file (`source` names it) after checking each against `bundle`, the
    /// client CA's certificates: parsed in full, issued and signed by a certificate of the
    /// bundle, full and direct (no delta or indirect CRLs). The error names the file and what is
    /// wrong; nothing of a refused file is added.
    pub fn add_file(&mut self, source: &str, bytes: &[u8], bundle: &[CertificateDer<'_>]) -> Result<(), String> {
        let issuers: Vec<X509Certificate<'_>> = bundle
            .iter()
            .filter_map(|der| {
                X509Certificate::from_der(der.as_ref())
                    .ok()
                    .map(|(_, certificate)| certificate)
            })
            .collect();
        let crls = der_blocks(bytes).map_err(|reason| format!("cannot read CRL {source}: {reason}"))?;
        if crls.is_empty() {
            return Err(format!(
                "{source} holds no CRL (expected PEM \"X509 CRL\" blocks or one DER CRL)"
            ));
        }
        let mut checked = Vec::with_capacity(crls.len());
        for der in &crls {
            checked.push(check(der, &issuers).map_err(|reason| format!("CRL {source}: {reason}"))?);
        }
        for (mut file, issuer, serials) in checked {
            let index = self.files.len();
            let listed = self.revoked.entry(issuer).or_default();
            file.revoked = serials.len();
            for serial in serials {
                listed.insert(serial, index);
            }
            file.source = source.to_owned();
            self.files.push(file);
        }
        Ok(())
    }

    /// The CRL that lists a certificate named by `keys`, if one does.
    pub fn revoked_by(&self, keys: &[RevocationKey]) -> Option<&CrlFile> {
        keys.iter().find_map(|key| {
            let index = self.revoked.get(&key.issuer)?.get(&key.serial)?;
            self.files.get(*index)
        })
    }

    /// Whether any certificate named by `keys` is listed.
    pub fn revokes(&self, keys: &[RevocationKey]) -> bool {
        self.revoked_by(keys).is_some()
    }
}

/// A CRL's facts, its issuer's name (DER) and the serials it lists, once it passed the checks.
type Checked = (CrlFile, Name, HashSet<Serial>);

/// Parse and check one DER CRL against the bundle's certificates.
fn check(der: &[u8], issuers: &[X509Certificate<'_>]) -> Result<Checked, String> {
    let crl = match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => crl,
        Ok(_) => return Err("trailing bytes after the CRL".to_owned()),
        Err(err) => return Err(format!("not a CRL: {err}")),
    };
    let issuer_name = crl.issuer().to_string();
    for extension in crl.extensions() {
        if extension.oid.to_id_string() == DELTA_CRL_INDICATOR {
            return Err("a delta CRL; give the full CRL".to_owned());
        }
        if let ParsedExtension::IssuingDistributionPoint(point) = extension.parsed_extension()
            && point.indirect_crl
        {
            return Err(
                "an indirect CRL (it lists other issuers' certificates); give each issuer's own CRL".to_owned(),
            );
        }
    }
    let issuer = issuers
        .iter()
        .find(|certificate| certificate.subject().as_raw() == crl.issuer().as_raw())
        .ok_or_else(|| {
            format!("issued by \"{issuer_name}\", which is not a certificate of the profile's client_ca bundle")
        })?;
    crl.verify_signature(issuer.public_key())
        .map_err(|err| format!("its signature does not verify with the key of \"{issuer_name}\": {err}"))?;
    let serials: HashSet<Box<[u8]>> = crl
        .iter_revoked_certificates()
        .map(|entry| entry.raw_serial().into())
        .collect();
    let file = CrlFile {
        source: String::new(),
        issuer: issuer_name,
        next_update: crl.next_update().map(|time| time.timestamp()),
        revoked: serials.len(),
    };
    Ok((file, crl.issuer().as_raw().into(), serials))
}

/// The DER CRLs of a file: its PEM `X509 CRL` blocks, or the file itself when it is DER.
fn der_blocks(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let mut blocks = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        match item {
            Ok(pem) if pem.label == "X509 CRL" => blocks.push(pem.contents),
            Ok(_) => {}
            // The end of the PEM blocks.
            Err(x509_parser::error::PEMError::MissingHeader) => break,
            Err(err) => return Err(format!("not PEM: {err}")),
        }
    }
    Ok(blocks)
}
