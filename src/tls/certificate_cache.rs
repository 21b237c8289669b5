//! Certificates and keys parsed by the previous load, reused while their files are unchanged.
//!
//! Reading a certificate chain and its key (parsing the X.509, checking that the key belongs to
//! it, and for RSA the key's own consistency) costs up to a millisecond. With thousands of
//! customer certificates that was nearly all of every reload, although a reload usually follows
//! one changed file. A load therefore asks this cache: a pair whose two files carry the same
//! [`FileStamp`] as when they were parsed is served from the earlier parse (the same
//! `Arc<CertifiedKey>`, so snapshots share it); any other pair is read and checked as at start.
//! A load is still all-or-nothing: reuse skips only the parsing, never a check of the result.
//!
//! What a load used becomes the cache for the next one, so certificates that left the
//! configuration are released with the snapshots that served them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;

use super::material::{MaterialError, ServingCertificate};
use crate::files::FileStamp;

/// How many pairs one load parsed and how many it reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertificateLoads {
    pub parsed: usize,
    pub reused: usize,
}

#[derive(Debug, Clone)]
struct Parsed {
    stamps: (FileStamp, FileStamp),
    serving: ServingCertificate,
    /// The load that last used it.
    used_by: u64,
}

/// Parsed certificate/key pairs by their two paths (as the configuration resolves them).
#[derive(Debug, Default)]
pub struct CertificateCache {
    pairs: HashMap<(PathBuf, PathBuf), Parsed>,
    /// Counts loads; a pair not used by the last one is dropped when it ends.
    load: u64,
    loads: CertificateLoads,
    started: Option<SystemTime>,
}

impl CertificateCache {
    /// Start a load: what earlier loads parsed is what may be reused.
    pub fn begin(&mut self) {
        self.load += 1;
        self.loads = CertificateLoads::default();
        self.started = Some(SystemTime::now());
    }

    /// End a load (whether it succeeded or not): keep what it used, drop the rest.
    pub fn finish(&mut self) -> CertificateLoads {
        let load = self.load;
        self.pairs.retain(|_, parsed| parsed.used_by == load);
        self.loads
    }

    /// Keep the pair at `certificate` and `key` for the next load: an environment reused as a
    /// whole still serves it (its files were checked to be unchanged).
    pub fn retain(&mut self, certificate: &Path, key: &Path) {
        let id = (certificate.to_path_buf(), key.to_path_buf());
        if let Some(parsed) = self.pairs.get_mut(&id) {
            self.loads.reused += 1;
            parsed.used_by = self.load;
        }
    }

    /// The pair at `certificate` and `key`: reused if both files are as they were when last
    /// parsed, otherwise read and checked now.
    pub fn serving(
        &mut self,
        certificate: &Path,
        key: &Path,
        provider: &CryptoProvider,
    ) -> Result<ServingCertificate, MaterialError> {
        let id = (certificate.to_path_buf(), key.to_path_buf());
        // Stamped before reading: a change while reading gives a stamp that differs next time.
        let stamps = FileStamp::of(certificate).ok().zip(FileStamp::of(key).ok());
        if let Some(stamps) = stamps
            && let Some(parsed) = self.pairs.get_mut(&id)
            && parsed.stamps == stamps
        {
            self.loads.reused += 1;
            parsed.used_by = self.load;
            return Ok(parsed.serving.clone());
        }
        let serving = ServingCertificate::from_files(certificate, key, provider)?;
        self.loads.parsed += 1;
        let now = self.started.unwrap_or_else(SystemTime::now);
        match stamps.filter(|(c, k)| c.settled(now) && k.settled(now)) {
            Some(stamps) => {
                let parsed = Parsed {
                    stamps,
                    serving: serving.clone(),
                    used_by: self.load,
                };
                self.pairs.insert(id, parsed);
            }
            None => {
                self.pairs.remove(&id);
            }
        }
        Ok(serving)
    }
}
