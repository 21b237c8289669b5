//! What a compile leaves for the next one: environments compiled from files that have not
//! changed since, their TLS policies, and the certificate/key pairs parsed.
//!
//! With thousands of environments a reload usually follows one changed file, yet compiling every
//! environment again (upstreams, rules, headers, pages, policies) cost most of a reload. An
//! environment is taken as it was compiled when all of these hold:
//! - its file is the same parsed file (the loader hands an unchanged file on as it is);
//! - every other file it names (certificates, keys, pages) has the same [`FileStamp`];
//! - the main file's text and every file the main file names (platform certificate, client CAs,
//!   CRLs, ticket keys) are unchanged, so settings and profiles are what it was compiled against;
//! - it names no upstream by host name and has no `upstream_tls` (host names are resolved again on
//!   every reload, and upstream TLS files are not tracked here).
//!
//! Everything that spans environments (unique names, domains claimed once, routes, policies) is
//! still checked and built on every load, so the result is the same as a full compile.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::Environment;
use super::summary::EnvironmentSummary;
use crate::access::profile::ClientCa;
use crate::config::SourceFile;
use crate::config::schema::EnvironmentFile;
use crate::files::FileStamp;
use crate::tls::certificate_cache::CertificateCache;
use crate::tls::material::ServingCertificate;
use crate::tls::policy::{PolicyKey, TlsPolicy};

/// Kept by a running gatehouse from one load to the next (see the module's notes).
#[derive(Debug, Default)]
pub struct CompileCache {
    pub certificates: CertificateCache,
    main: Option<MainContext>,
    /// By file path, with the compile that last used it (entries not used by the last
    /// successful compile are dropped at its end, without rebuilding the maps).
    environments: HashMap<PathBuf, (Arc<CompiledEnvironment>, u64)>,
    policies: HashMap<PolicyKey, (TlsPolicy, u64)>,
    compile: u64,
}

/// What every environment is compiled against: the main file and the files it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MainContext {
    pub sha256: String,
    pub inputs: Vec<(PathBuf, Option<FileStamp>)>,
}

/// One environment as compiled, with what it was compiled from.
#[derive(Debug)]
pub(super) struct CompiledEnvironment {
    pub file: Arc<SourceFile<EnvironmentFile>>,
    /// The other files it read (certificates, keys, pages), stamped before they were read.
    pub inputs: Vec<(PathBuf, FileStamp)>,
    /// Whether the next load may take it (see the module's notes).
    pub reusable: bool,
    pub name: String,
    pub domains: Vec<super::compile::DomainDraft>,
    pub certificates: Vec<(ServingCertificate, String)>,
    pub certificate_files: Vec<(PathBuf, PathBuf)>,
    pub client_cas: Vec<Arc<ClientCa>>,
    pub environment: Arc<Environment>,
    pub summary: Arc<EnvironmentSummary>,
}

impl CompileCache {
    /// Begin a compile against `main`: environments compiled against another context are gone.
    pub(super) fn begin(&mut self, main: Option<MainContext>) {
        if main.is_none() || self.main != main {
            self.environments.clear();
            self.main = main;
        }
        self.compile += 1;
        self.certificates.begin();
    }

    /// For each of `files`, whether the environment compiled earlier from it may be taken: the
    /// same parsed file, and every other file it read unchanged (stamped all at once).
    pub(super) fn unchanged(&self, files: &[Arc<SourceFile<EnvironmentFile>>]) -> Vec<bool> {
        let earlier: Vec<Option<&CompiledEnvironment>> = files
            .iter()
            .map(|file| {
                let (compiled, _) = self.environments.get(&file.path)?;
                Arc::ptr_eq(&compiled.file, file).then_some(&**compiled)
            })
            .collect();
        let paths: Vec<&std::path::Path> = (earlier.iter().flatten())
            .flat_map(|compiled| compiled.inputs.iter().map(|(path, _)| path.as_path()))
            .collect();
        let mut stamps = crate::files::stamps_of(&paths).into_iter();
        earlier
            .iter()
            .map(|compiled| {
                let Some(compiled) = compiled else { return false };
                // Every stamp is consumed, so that the next environment's line up.
                (compiled.inputs.iter()).fold(true, |same, (_, stamp)| {
                    let now = stamps.next().flatten();
                    same && now.as_ref() == Some(stamp)
                })
            })
            .collect()
    }

    /// The environment compiled earlier from `file`, which [`CompileCache::unchanged`] found
    /// unchanged.
    pub(super) fn environment(&mut self, file: &Arc<SourceFile<EnvironmentFile>>) -> Option<Arc<CompiledEnvironment>> {
        let (compiled, used_by) = self.environments.get_mut(&file.path)?;
        *used_by = self.compile;
        for (certificate, key) in &compiled.certificate_files {
            self.certificates.retain(certificate, key);
        }
        Some(compiled.clone())
    }

    /// A TLS policy made by an earlier compile with the same terms, certificate and label.
    pub(super) fn policy(
        &mut self,
        key: PolicyKey,
        certificate: &ServingCertificate,
        label: &str,
    ) -> Option<TlsPolicy> {
        let (policy, used_by) = self.policies.get_mut(&key)?;
        if !policy.serves(certificate) || &*policy.label != label {
            return None;
        }
        *used_by = self.compile;
        Some(policy.clone())
    }

    /// End a successful compile: what it compiled, made or took over is what the next may reuse.
    pub(super) fn keep<'a>(
        &mut self,
        fresh: impl Iterator<Item = &'a Arc<CompiledEnvironment>>,
        policies: &[TlsPolicy],
    ) {
        let compile = self.compile;
        for compiled in fresh {
            self.environments
                .insert(compiled.file.path.clone(), (compiled.clone(), compile));
        }
        self.environments.retain(|_, (_, used_by)| *used_by == compile);
        for policy in policies.iter().filter(|policy| policy.client_cas.is_empty()) {
            self.policies
                .entry(policy.key)
                .and_modify(|(_, used_by)| *used_by = compile)
                .or_insert_with(|| (policy.clone(), compile));
        }
        self.policies.retain(|_, (_, used_by)| *used_by == compile);
    }
}

/// The stamps of `paths` if every file can be stamped and has settled (see
/// [`FileStamp::settled`]); otherwise the environment is not kept for reuse.
pub(super) fn settled_stamps(paths: Vec<PathBuf>, now: SystemTime) -> Option<Vec<(PathBuf, FileStamp)>> {
    paths
        .into_iter()
        .map(|path| {
            let stamp = FileStamp::of(&path).ok().filter(|stamp| stamp.settled(now))?;
            Some((path, stamp))
        })
        .collect()
}
