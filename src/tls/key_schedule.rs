//! TLS 1.3's key schedule over HMAC keys prepared once per secret.
//!
//! rustls' aws-lc-rs suites derive every TLS 1.3 secret with aws-lc's `HKDF_expand`, which keys
//! HMAC from scratch (hashing the inner and outer pads) for every label, about 20 times per
//! handshake. rustls' own HKDF over an HMAC ([`HkdfUsingHmac`]) keys once per secret and reuses
//! the prepared state for each label derived from it. Same primitives (aws-lc's HMAC-SHA-2),
//! same outputs, fewer hashes; the suites are otherwise the provider's own.

use aws_lc_rs::hmac as lc;
use rustls::crypto::CryptoProvider;
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

struct AwsLcHmac(&'static lc::Algorithm);

impl Hmac for AwsLcHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(PreparedKey(lc::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

/// An HMAC key with its pads already hashed: each signature starts from a copy of that state.
struct PreparedKey(lc::Key);

impl Key for PreparedKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut context = lc::Context::with_key(&self.0);
        context.update(first);
        for part in middle {
            context.update(part);
        }
        context.update(last);
        Tag::new(context.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: AwsLcHmac = AwsLcHmac(&lc::HMAC_SHA256);
static HMAC_SHA384: AwsLcHmac = AwsLcHmac(&lc::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// `provider` with its TLS 1.3 suites deriving keys through [`HkdfUsingHmac`]. Called once per
/// process (the suites are leaked: a handful of small statics).
pub fn with_prepared_hmac_keys(mut provider: CryptoProvider) -> CryptoProvider {
    for suite in &mut provider.cipher_suites {
        let SupportedCipherSuite::Tls13(tls13) = *suite else {
            continue;
        };
        let hkdf: &'static dyn Hkdf = match tls13.common.hash_provider.algorithm() {
            HashAlgorithm::SHA256 => &HKDF_SHA256,
            HashAlgorithm::SHA384 => &HKDF_SHA384,
            _ => continue,
        };
        let replaced: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
            common: CipherSuiteCommon {
                suite: tls13.common.suite,
                hash_provider: tls13.common.hash_provider,
                confidentiality_limit: tls13.common.confidentiality_limit,
            },
            hkdf_provider: hkdf,
            aead_alg: tls13.aead_alg,
            quic: tls13.quic,
        }));
        *suite = SupportedCipherSuite::Tls13(replaced);
    }
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every derivation the key schedule makes (extract, expand to a block and to a key or IV,
    /// expand from an already derived secret, the Finished MAC) gives the provider's own bytes.
    #[test]
    fn prepared_keys_derive_exactly_what_the_providers_own_hkdf_derives() {
        let original = rustls::crypto::aws_lc_rs::default_provider();
        let replaced = with_prepared_hmac_keys(rustls::crypto::aws_lc_rs::default_provider());
        assert_eq!(original.cipher_suites.len(), replaced.cipher_suites.len());
        let info: &[&[u8]] = &[b"\x00\x20", b"\x0dtls13 c hs traffic", b"\x20", &[7; 32]];
        let mut compared = 0;
        for (before, after) in original.cipher_suites.iter().zip(&replaced.cipher_suites) {
            assert_eq!(before.suite(), after.suite());
            let (SupportedCipherSuite::Tls13(before), SupportedCipherSuite::Tls13(after)) = (before, after) else {
                continue;
            };
            let (old, new) = (before.hkdf_provider, after.hkdf_provider);
            assert!(
                !std::ptr::addr_eq(old, new),
                "{:?} kept the provider's HKDF",
                before.common.suite
            );
            for salt in [None, Some(&b"handshake secret"[..])] {
                let (old_prk, new_prk) = (
                    old.extract_from_secret(salt, b"shared secret"),
                    new.extract_from_secret(salt, b"shared secret"),
                );
                let block = old_prk.expand_block(info);
                assert_eq!(block.as_ref(), new_prk.expand_block(info).as_ref());
                let (mut old_key, mut new_key) = ([0u8; 12], [0u8; 12]);
                let expanded = (
                    old_prk.expand_slice(info, &mut old_key),
                    new_prk.expand_slice(info, &mut new_key),
                );
                assert!(matches!(expanded, (Ok(()), Ok(()))), "a 12-byte key is a valid length");
                assert_eq!(old_key, new_key);
                assert_eq!(
                    old.extract_from_zero_ikm(salt).expand_block(info).as_ref(),
                    new.extract_from_zero_ikm(salt).expand_block(info).as_ref()
                );
                assert_eq!(
                    old.expander_for_okm(&block).expand_block(info).as_ref(),
                    new.expander_for_okm(&block).expand_block(info).as_ref()
                );
                assert_eq!(
                    old.hmac_sign(&block, b"transcript hash").as_ref(),
                    new.hmac_sign(&block, b"transcript hash").as_ref()
                );
            }
            compared += 1;
        }
        assert!(compared >= 3, "only {compared} TLS 1.3 suites compared");
    }
}
