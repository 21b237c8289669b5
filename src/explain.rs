//! `gatehouse explain`: what would happen to a request, and why, decided by the same code the
//! request path runs, on a configuration that need not be running anywhere.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::access::path::normalize;
use crate::access::profile::{AllowReason, CertificateStatus, Decision, DenyReason, Profile};
use crate::access::{self, Evaluation};
use crate::snapshot::Snapshot;
use crate::tls::client_auth::{apply_revocation, verify_against};
use crate::tls::client_certificate::CertificateIdentity;
use crate::tls::revocation::revocation_keys;

/// The request to explain.
pub struct Question<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub client: IpAddr,
    /// A PEM chain (leaf first) the client would present.
    pub certificate: Option<&'a Path>,
}

/// The answer, printable for people.
pub struct Explanation {
    lines: Vec<(String, String)>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    /// The request would not get as far as a decision (404, 400).
    NotRouted,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, text) in &self.lines {
            writeln!(f, "{label:<12} {text}")?;
        }
        Ok(())
    }
}

/// Why a certificate file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read certificate {path}: {reason}")]
pub struct CertificateFileError {
    path: String,
    reason: String,
}

pub fn explain(snapshot: &Snapshot, question: &Question<'_>) -> Result<Explanation, CertificateFileError> {
    let chain = question.certificate.map(read_chain).transpose()?;
    let mut lines = vec![("host".to_owned(), question.host.to_owned())];
    let mut say = |label: &str, text: String| lines.push((label.to_owned(), text));

    let route = match snapshot.route(question.host.as_bytes()) {
        Ok(Some(route)) => route,
        Ok(None) => {
            say("result", "404 Not Found: no environment serves this host".to_owned());
            return Ok(Explanation {
                lines,
                outcome: Outcome::NotRouted,
            });
        }
        Err(_) => {
            say("result", "400 Bad Request: this is not a host name".to_owned());
            return Ok(Explanation {
                lines,
                outcome: Outcome::NotRouted,
            });
        }
    };
    let (Some(environment), Some(summary)) = (
        snapshot.environments.get(route.environment),
        snapshot.summary.environments.get(route.environment),
    ) else {
        return Ok(Explanation {
            lines,
            outcome: Outcome::NotRouted,
        });
    };
    say(
        "environment",
        format!("{} ({})", environment.name, summary.file.display()),
    );
    if let Some(policy) = snapshot.policies.get(route.policy) {
        let cas: Vec<&str> = policy.client_cas.iter().map(|ca| ca.source.as_str()).collect();
        let asks = if cas.is_empty() {
            "no client certificate is asked for".to_owned()
        } else {
            format!(
                "a client certificate is asked for (not required), CAs: {}",
                cas.join(", ")
            )
        };
        say("tls", asks);
    }

    let normal = match normalize(question.path) {
        Ok(normal) => normal.into_owned(),
        Err(err) if !environment.rules.is_empty() => {
            say("path", question.path.to_owned());
            say("result", format!("400 Bad Request: {err}"));
            return Ok(Explanation {
                lines,
                outcome: Outcome::NotRouted,
            });
        }
        Err(_) => question.path.to_owned(),
    };
    say("path", format!("{} (as the app sees it: {normal})", question.path));
    say("client", question.client.to_string());
    if let Some(chain) = &chain {
        let subject = chain
            .first()
            .and_then(CertificateIdentity::of)
            .map_or_else(|| "unreadable".to_owned(), |id| id.subject_dn);
        say("certificate", subject);
    }

    let revocation_keys = chain.as_deref().map(revocation_keys).unwrap_or_default();
    let mut revoked_by = None;
    let certificate_status = |ca: &crate::access::profile::ClientCa| {
        let status = chain
            .as_deref()
            .map_or(CertificateStatus::Absent, |chain| verify_against(ca, chain));
        let status = apply_revocation(ca, status, &revocation_keys);
        if let (CertificateStatus::Revoked, Some(list)) = (status, &ca.revocation)
            && let Some(crl) = list.revoked_by(&revocation_keys)
        {
            revoked_by = Some(format!("listed in CRL {} (issued by \"{}\")", crl.source, crl.issuer));
        }
        status
    };
    let evaluation = match access::evaluate(
        &snapshot.profiles,
        &environment.rules,
        question.path,
        question.client,
        certificate_status,
    ) {
        Ok(evaluation) => evaluation,
        Err(err) => {
            say("result", format!("400 Bad Request: {err}"));
            return Ok(Explanation {
                lines,
                outcome: Outcome::NotRouted,
            });
        }
    };
    describe_rule(snapshot, &evaluation, &mut say);
    let (outcome, verdict) = match evaluation.decision {
        Decision::Allow(reason) => (
            Outcome::Allowed,
            format!("ALLOW ({}): {}", reason.as_str(), allow_text(reason)),
        ),
        Decision::Deny(reason) => (
            Outcome::Denied,
            format!("DENY 403 ({}): {}", reason.as_str(), deny_text(reason)),
        ),
        Decision::WouldDeny(reason) => (
            Outcome::Allowed,
            format!(
                "ALLOW, REPORT-ONLY: the profile would deny ({}): {}; it is staged (report_only = true), so the request goes to the app and is counted and audited as would_deny",
                reason.as_str(),
                deny_text(reason)
            ),
        ),
    };
    say("decision", verdict);
    if let Some(revocation) = revoked_by {
        say("revocation", revocation);
    }
    Ok(Explanation { lines, outcome })
}

fn describe_rule(snapshot: &Snapshot, evaluation: &Evaluation<'_>, say: &mut impl FnMut(&str, String)) {
    let Some(rule) = evaluation.rule else {
        say("rule", "none: no rule covers this path, so it is open".to_owned());
        return;
    };
    let name = snapshot.profile_names.get(rule.profile).map_or("?", String::as_str);
    say("rule", format!("{:?} -> profile {name:?}", rule.prefix));
    if let Some(Profile::Restricted(restriction)) = snapshot.profiles.get(rule.profile) {
        let ca = restriction.client_ca.as_ref().map_or("none", |ca| ca.source.as_str());
        let staged = if restriction.report_only {
            ", report-only (not enforced)"
        } else {
            ""
        };
        say(
            "profile",
            format!("require {}, client CA: {ca}{staged}", restriction.require.as_str()),
        );
    }
}

fn allow_text(reason: AllowReason) -> &'static str {
    match reason {
        AllowReason::Open => "the path is open (no rule, or the rule's profile is allow-all)",
        AllowReason::Range => "the client address is in the profile's ranges",
        AllowReason::Certificate => {
            "the client certificate chains to the profile's CA, is valid and allows client authentication"
        }
        AllowReason::RangeAndCertificate => {
            "the client address is in the profile's ranges and its certificate is verified"
        }
    }
}

fn deny_text(reason: DenyReason) -> &'static str {
    match reason {
        DenyReason::DenyAll => "the profile refuses every request",
        DenyReason::DenyRange => "the client address is in the profile's deny ranges",
        DenyReason::NotInRange => {
            "the client address is not in the profile's ranges (and no verified certificate lets it in)"
        }
        DenyReason::NoCertificate => "the profile needs a client certificate and none was presented",
        DenyReason::CertificateRejected => {
            "the client certificate does not chain to the profile's CA, has expired, or does not allow client authentication"
        }
        DenyReason::CertificateRevoked => {
            "the client certificate (or a certificate of its chain) is listed in a revocation list of the profile's client CA"
        }
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateFileError> {
    let error = |reason: String| CertificateFileError {
        path: path.display().to_string(),
        reason,
    };
    let bytes = crate::files::read_bounded(path, crate::files::MAX_PEM_FILE).map_err(|err| error(err.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .map(|certificate| certificate.map(CertificateDer::into_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| error(err.to_string()))?;
    if chain.is_empty() {
        return Err(error("no PEM certificate in the file".to_owned()));
    }
    Ok(chain)
}
