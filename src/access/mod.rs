//! Access restriction: who may reach which paths of an environment.
//!
//! `path` normalises the request path as the app would see it; `rules` finds the longest
//! matching prefix rule of the environment; `profile` decides from the client address and the
//! client certificate; `ranges` answers address-range membership in logarithmic time.

pub mod path;
pub mod profile;
pub mod ranges;
pub mod rules;

use std::net::IpAddr;

use path::PathError;
use profile::{AllowReason, CertificateStatus, ClientCa, Decision, DenyReason, Profile};
use rules::{MatchedRule, PathRules};

/// The access outcome for one request: which rule applied (if any) and the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation<'a> {
    pub rule: Option<MatchedRule<'a>>,
    pub decision: Decision,
}

/// Decide a request: normalise its path, find the environment's rule, apply the rule's profile.
/// A path that cannot be normalised safely is an error (400); no rule means the path is open.
pub fn evaluate<'a>(
    profiles: &[Profile],
    rules: &'a PathRules,
    raw_path: &str,
    client: IpAddr,
    certificate: impl FnOnce(&ClientCa) -> CertificateStatus,
) -> Result<Evaluation<'a>, PathError> {
    if rules.is_empty() {
        return Ok(Evaluation {
            rule: None,
            decision: Decision::Allow(AllowReason::Open),
        });
    }
    let normal = path::normalize(raw_path)?;
    let rule = rules.lookup(&normal);
    let decision = match rule {
        None => Decision::Allow(AllowReason::Open),
        // Deny on doubt: a rule naming a profile that is not there (impossible after validation).
        Some(rule) => profiles
            .get(rule.profile)
            .map_or(Decision::Deny(DenyReason::DenyAll), |profile| {
                profile.decide(client, certificate)
            }),
    };
    Ok(Evaluation { rule, decision })
}
