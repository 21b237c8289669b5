//! A human-readable account of a compiled configuration, for `gatehouse check` and start-up logs.

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Certificates closer than this to their end of validity are reported.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

#[derive(Debug, Clone)]
pub struct Summary {
    pub main_file: PathBuf,
    pub listeners: Vec<String>,
    pub platform_certificate: CertificateSummary,
    /// Shared with the compile cache, which hands an unchanged environment's on to the next load.
    pub environments: Vec<std::sync::Arc<EnvironmentSummary>>,
    pub warnings: Vec<String>,
    /// How many certificate/key pairs this load parsed, and how many it reused from the
    /// previous load because their files had not changed.
    pub certificate_loads: crate::tls::certificate_cache::CertificateLoads,
    /// How many environments this load took as the previous load compiled them, their files
    /// unchanged.
    pub environments_reused: usize,
}

#[derive(Debug, Clone)]
pub struct EnvironmentSummary {
    pub name: String,
    pub file: PathBuf,
    pub domains: Vec<String>,
    pub upstreams: Vec<String>,
    pub certificates: Vec<CertificateSummary>,
    /// Each domain with the end of validity of the certificate served for it.
    pub domain_expiry: Vec<(String, i64)>,
    /// SHA-256 of the environment's file, to tell changed environments apart on reload.
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct CertificateSummary {
    pub source: String,
    pub subject: String,
    pub names: Vec<String>,
    pub not_after: i64,
}

impl CertificateSummary {
    /// Whole days until the certificate expires (negative once it has).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

/// A warning for a certificate that expires within [`EXPIRY_WARNING_DAYS`], or already has.
pub fn expiry_warning(certificate: &CertificateSummary, now: i64) -> Option<String> {
    let days = certificate.days_left(now);
    if certificate.not_after <= now {
        Some(format!(
            "certificate {} ({}) has EXPIRED",
            certificate.source, certificate.subject
        ))
    } else if days < EXPIRY_WARNING_DAYS {
        Some(format!(
            "certificate {} ({}) expires in {days} days",
            certificate.source, certificate.subject
        ))
    } else {
        None
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = unix_now();
        writeln!(f, "configuration {} is valid", self.main_file.display())?;
        writeln!(f, "listeners: {}", self.listeners.join(", "))?;
        write_certificate(f, "platform certificate", &self.platform_certificate, now)?;
        writeln!(f, "{} environment(s):", self.environments.len())?;
        for environment in &self.environments {
            writeln!(f, "  {} ({})", environment.name, environment.file.display())?;
            writeln!(f, "    domains:   {}", environment.domains.join(", "))?;
            writeln!(f, "    upstreams: {}", environment.upstreams.join(", "))?;
            for certificate in &environment.certificates {
                write_certificate(f, "    certificate", certificate, now)?;
            }
        }
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}

fn write_certificate(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    certificate: &CertificateSummary,
    now: i64,
) -> fmt::Result {
    writeln!(
        f,
        "{label}: {} [{}] expires in {} days ({})",
        certificate.source,
        certificate.names.join(", "),
        certificate.days_left(now),
        certificate.subject
    )
}
