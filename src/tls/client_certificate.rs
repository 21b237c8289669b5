//! What the app is told about a client certificate: the subject and issuer as RFC 2253 strings
//! (most specific RDN first, as nginx's `$ssl_client_s_dn` and `openssl -nameopt RFC2253`
//! print them), the serial number, and the SHA-1 fingerprint.

use std::fmt::Write;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    pub subject_dn: String,
    pub issuer_dn: String,
    /// Upper-case hex, no separators.
    pub serial: String,
    /// Lower-case hex SHA-1 of the DER encoding.
    pub sha1_fingerprint: String,
}

impl CertificateIdentity {
    pub fn of(leaf: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref()).ok()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf.as_ref());
        Some(Self {
            subject_dn: rfc2253(parsed.subject()),
            issuer_dn: rfc2253(parsed.issuer()),
            serial: hex(serial_magnitude(parsed.raw_serial()), true),
            sha1_fingerprint: hex(digest.as_ref(), false),
        })
    }
}

/// The end of validity of a chain, in seconds since the Unix epoch: the earliest `notAfter` of
/// its certificates. `None` when one of them cannot be read.
pub fn chain_not_after(chain: &[CertificateDer<'_>]) -> Option<i64> {
    chain
        .iter()
        .map(|certificate| {
            X509Certificate::from_der(certificate.as_ref())
                .ok()
                .map(|(_, parsed)| parsed.validity().not_after.timestamp())
        })
        .try_fold(i64::MAX, |earliest, not_after| Some(earliest.min(not_after?)))
}

/// The serial's DER content without the sign byte DER adds when the top bit is set: what
/// `openssl x509 -serial` (and nginx's `$ssl_client_serial`) print.
fn serial_magnitude(raw: &[u8]) -> &[u8] {
    match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => raw,
    }
}

fn hex(bytes: &[u8], upper: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = if upper {
            write!(out, "{byte:02X}")
        } else {
            write!(out, "{byte:02x}")
        };
    }
    out
}

/// RFC 2253: RDNs in reverse order, separated by ','; multi-valued RDNs joined by '+'.
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let mut rdns: Vec<String> = Vec::new();
    for rdn in name.iter() {
        let attributes: Vec<String> = rdn
            .iter()
            .map(|attribute| {
                let oid = attribute.attr_type();
                let label = short_name(&oid.to_id_string()).map_or_else(|| oid.to_id_string(), str::to_owned);
                match attribute.as_str() {
                    Ok(value) => format!("{label}={}", escape(value)),
                    Err(_) => format!("{label}=#{}", hex(attribute.attr_value().data, false)),
                }
            })
            .collect();
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// RFC 4514 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (index == 0 && (c == '#' || c == ' '))
            || (index == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{escape, hex, serial_magnitude};

    #[test]
    fn serials_print_as_openssl_prints_them() {
        // DER adds a zero byte before a serial whose top bit is set; openssl does not print it.
        assert_eq!(hex(serial_magnitude(&[0x00, 0x8a, 0x01]), true), "8A01");
        assert_eq!(hex(serial_magnitude(&[0x0a, 0x01]), true), "0A01");
        assert_eq!(hex(serial_magnitude(&[0x00]), true), "00");
    }

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(escape("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escape("#1 a+b "), "\\#1 a\\+b\\ ");
        assert_eq!(escape("plain"), "plain");
    }
}
