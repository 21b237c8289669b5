//! Client certificates (mTLS).
//!
//! Hosts whose environment uses a profile with a client CA ask for a certificate during the
//! handshake without requiring one, so that paths open by address keep working for clients
//! without a certificate. The handshake only checks that the client holds the certificate's key
//! (the CertificateVerify signature); whether the chain is good enough is decided per request
//! against the CA of the profile that applies, so a decision always follows the configuration in
//! force when the request arrives, and a wrong or expired certificate is a 403 on restricted
//! paths rather than a failed handshake everywhere.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::access::profile::{CertificateStatus, ClientCa};
use crate::tls::revocation::RevocationKey;

/// Asks for a client certificate, accepts any chain, verifies possession of its key.
#[derive(Debug)]
pub struct DeferredClientAuth {
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DeferredClientAuth {
    pub fn new(cas: &[Arc<ClientCa>], algorithms: WebPkiSupportedAlgorithms) -> Self {
        // The CA subjects tell browsers which of their certificates to offer.
        let hints = cas
            .iter()
            .flat_map(|ca| ca.verifier.root_hint_subjects().iter().cloned())
            .collect();
        Self { hints, algorithms }
    }
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately deferred: see the module documentation and `verify_against`.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `status` (the chain's check against `ca`) with the CA's revocation lists applied: a chain
/// that passes but that one of its CRLs lists (`keys` names its certificates) is revoked.
pub fn apply_revocation(ca: &ClientCa, status: CertificateStatus, keys: &[RevocationKey]) -> CertificateStatus {
    match (&ca.revocation, status) {
        (Some(list), CertificateStatus::Verified) if list.revokes(keys) => CertificateStatus::Revoked,
        (_, status) => status,
    }
}

/// Check a presented chain against one CA: it must chain to it, be within its validity period
/// and allow client authentication.
pub fn verify_against(ca: &ClientCa, chain: &[CertificateDer<'static>]) -> CertificateStatus {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return CertificateStatus::Absent;
    };
    match ca.verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => CertificateStatus::Verified,
        Err(err) => {
            tracing::debug!(ca = %ca.source, error = %err, "client certificate rejected");
            CertificateStatus::Rejected
        }
    }
}
