//! Access restriction profiles and the decision they make for one request.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;

use super::ranges::RangeSet;
use crate::tls::revocation::RevocationList;

/// What a profile asks of a request.
#[derive(Debug, Clone)]
pub enum Profile {
    AllowAll,
    DenyAll,
    Restricted(Restriction),
}

/// Names of the two presets that every configuration has.
pub const ALLOW_ALL: &str = "allow-all";
pub const DENY_ALL: &str = "deny-all";

#[derive(Debug, Clone)]
pub struct Restriction {
    /// Addresses let in (subject to `require`).
    pub allow: RangeSet,
    /// Addresses always refused, checked first.
    pub deny: RangeSet,
    pub client_ca: Option<Arc<ClientCa>>,
    pub require: Require,
    /// Staged: a request the profile would refuse is let through, and counted, audited and
    /// explained as [`Decision::WouldDeny`] (as a browser applies `Content-Security-Policy-Report-Only`).
    pub report_only: bool,
}

/// How ranges and the client certificate combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// A matching range or a verified certificate lets the request in.
    Any,
    /// Every configured condition must hold.
    All,
}

impl Require {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::All => "all",
        }
    }
}

/// A client certificate authority bundle, the verifier that checks chains against it, and the
/// revocation lists in force for it.
#[derive(Debug)]
pub struct ClientCa {
    /// Identifies the bundle by content: the first 8 bytes of the SHA-256 of its certificates.
    /// Stable across reloads (a CRL update leaves it, and so the TLS policies built on it,
    /// unchanged) and across processes and versions: the access log names CAs by it, and
    /// `gatehouse replay` matches them to another configuration's.
    pub id: u64,
    pub source: String,
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The profile's `client_crls`, looked up per request; `None` when it has none.
    pub revocation: Option<RevocationList>,
}

impl ClientCa {
    /// The id of a bundle whose certificates' SHA-256 is `digest`.
    pub fn id_of(digest: &[u8]) -> u64 {
        let mut first = [0u8; 8];
        for (slot, byte) in first.iter_mut().zip(digest) {
            *slot = *byte;
        }
        u64::from_be_bytes(first)
    }

    /// The id as the access log writes it: 16 hexadecimal digits.
    pub fn id_text(id: u64) -> String {
        format!("{id:016x}")
    }
}

/// What is known about the client's certificate with respect to one CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    /// The client sent no certificate.
    Absent,
    /// It chains to the CA, is within its validity and allows client authentication.
    Verified,
    /// It was sent but does not pass for this CA.
    Rejected,
    /// It passes for this CA, but a CRL of the profile lists it (or a certificate of its chain).
    Revoked,
}

impl CertificateStatus {
    /// As the access log's `client_cas` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Verified => "verified",
            Self::Rejected => "rejected",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "absent" => Self::Absent,
            "verified" => Self::Verified,
            "rejected" => Self::Rejected,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// The outcome for one request, with the reason operators see in logs and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow(AllowReason),
    Deny(DenyReason),
    /// A report-only profile would have refused the request for this reason; it is let through.
    WouldDeny(DenyReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowReason {
    /// The environment has no rule for this path, or the rule is `allow-all`.
    Open,
    Range,
    Certificate,
    RangeAndCertificate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    DenyAll,
    DenyRange,
    NotInRange,
    NoCertificate,
    CertificateRejected,
    CertificateRevoked,
}

impl AllowReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Range => "range",
            Self::Certificate => "certificate",
            Self::RangeAndCertificate => "range_and_certificate",
        }
    }
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DenyAll => "deny_all",
            Self::DenyRange => "deny_range",
            Self::NotInRange => "not_in_range",
            Self::NoCertificate => "no_certificate",
            Self::CertificateRejected => "certificate_rejected",
            Self::CertificateRevoked => "certificate_revoked",
        }
    }
}

impl Decision {
    /// Every decision, in the order of [`Decision::index`] (metric series are resolved by it).
    pub const ALL: [Self; 16] = [
        Self::Allow(AllowReason::Open),
        Self::Allow(AllowReason::Range),
        Self::Allow(AllowReason::Certificate),
        Self::Allow(AllowReason::RangeAndCertificate),
        Self::Deny(DenyReason::DenyAll),
        Self::Deny(DenyReason::DenyRange),
        Self::Deny(DenyReason::NotInRange),
        Self::Deny(DenyReason::NoCertificate),
        Self::Deny(DenyReason::CertificateRejected),
        Self::Deny(DenyReason::CertificateRevoked),
        Self::WouldDeny(DenyReason::DenyAll),
        Self::WouldDeny(DenyReason::DenyRange),
        Self::WouldDeny(DenyReason::NotInRange),
        Self::WouldDeny(DenyReason::NoCertificate),
        Self::WouldDeny(DenyReason::CertificateRejected),
        Self::WouldDeny(DenyReason::CertificateRevoked),
    ];

    /// The position of this decision in [`Decision::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::Allow(AllowReason::Open) => 0,
            Self::Allow(AllowReason::Range) => 1,
            Self::Allow(AllowReason::Certificate) => 2,
            Self::Allow(AllowReason::RangeAndCertificate) => 3,
            Self::Deny(DenyReason::DenyAll) => 4,
            Self::Deny(DenyReason::DenyRange) => 5,
            Self::Deny(DenyReason::NotInRange) => 6,
            Self::Deny(DenyReason::NoCertificate) => 7,
            Self::Deny(DenyReason::CertificateRejected) => 8,
            Self::Deny(DenyReason::CertificateRevoked) => 9,
            Self::WouldDeny(DenyReason::DenyAll) => 10,
            Self::WouldDeny(DenyReason::DenyRange) => 11,
            Self::WouldDeny(DenyReason::NotInRange) => 12,
            Self::WouldDeny(DenyReason::NoCertificate) => 13,
            Self::WouldDeny(DenyReason::CertificateRejected) => 14,
            Self::WouldDeny(DenyReason::CertificateRevoked) => 15,
        }
    }

    /// Whether the request goes on to the app (a report-only denial does).
    pub fn is_allowed(self) -> bool {
        !matches!(self, Self::Deny(_))
    }

    /// `allow`, `deny` or `would_deny`, as the `outcome` label says.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Allow(_) => "allow",
            Self::Deny(_) => "deny",
            Self::WouldDeny(_) => "would_deny",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Allow(reason) => reason.as_str(),
            Self::Deny(reason) | Self::WouldDeny(reason) => reason.as_str(),
        }
    }
}

impl Profile {
    /// Decide for a client address; `certificate` tells how the client's certificate stands
    /// with a given CA (asked only when the profile has one).
    pub fn decide(&self, client: IpAddr, certificate: impl FnOnce(&ClientCa) -> CertificateStatus) -> Decision {
        match (self, self.enforced_decision(client, certificate)) {
            (Self::Restricted(restriction), Decision::Deny(reason)) if restriction.report_only => {
                Decision::WouldDeny(reason)
            }
            (_, decision) => decision,
        }
    }

    /// The decision as if the profile were enforced.
    fn enforced_decision(&self, client: IpAddr, certificate: impl FnOnce(&ClientCa) -> CertificateStatus) -> Decision {
        let restriction = match self {
            Self::AllowAll => return Decision::Allow(AllowReason::Open),
            Self::DenyAll => return Decision::Deny(DenyReason::DenyAll),
            Self::Restricted(restriction) => restriction,
        };
        if restriction.deny.contains(client) {
            return Decision::Deny(DenyReason::DenyRange);
        }
        let has_ranges = !restriction.allow.is_empty();
        let in_range = has_ranges && restriction.allow.contains(client);
        let certificate = restriction.client_ca.as_deref().map(certificate);
        let verified = certificate == Some(CertificateStatus::Verified);
        let certificate_denial = match certificate {
            Some(CertificateStatus::Rejected) => DenyReason::CertificateRejected,
            Some(CertificateStatus::Revoked) => DenyReason::CertificateRevoked,
            _ => DenyReason::NoCertificate,
        };
        match restriction.require {
            Require::Any if in_range => Decision::Allow(AllowReason::Range),
            Require::Any if verified => Decision::Allow(AllowReason::Certificate),
            Require::Any if certificate.is_some() && !has_ranges => Decision::Deny(certificate_denial),
            Require::Any => Decision::Deny(DenyReason::NotInRange),
            Require::All if has_ranges && !in_range => Decision::Deny(DenyReason::NotInRange),
            Require::All if certificate.is_some() && !verified => Decision::Deny(certificate_denial),
            Require::All if has_ranges && verified => Decision::Allow(AllowReason::RangeAndCertificate),
            Require::All if verified => Decision::Allow(AllowReason::Certificate),
            Require::All => Decision::Allow(AllowReason::Range),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decision_sits_at_its_index_with_a_distinct_label() {
        let mut labels = std::collections::HashSet::new();
        for (position, decision) in Decision::ALL.into_iter().enumerate() {
            assert_eq!(decision.index(), position, "{decision:?}");
            assert!(labels.insert((decision.outcome(), decision.reason())), "{decision:?}");
        }
    }

    fn restricted(allow: &[&str], deny: &[&str], require: Require) -> Profile {
        let parse = |list: &[&str]| RangeSet::new(&list.iter().map(|r| r.parse().unwrap()).collect::<Vec<_>>());
        Profile::Restricted(Restriction {
            allow: parse(allow),
            deny: parse(deny),
            client_ca: None,
            require,
            report_only: false,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_report_only_profile_lets_through_what_it_would_refuse_and_says_why() {
        let Profile::Restricted(mut staged) = restricted(&["192.0.2.0/24"], &["192.0.2.66/32"], Require::Any) else {
            unreachable!("restricted() makes a restricted profile")
        };
        staged.report_only = true;
        let staged = Profile::Restricted(staged);
        let absent = |_: &ClientCa| CertificateStatus::Absent;
        assert_eq!(
            staged.decide(ip("192.0.2.1"), absent),
            Decision::Allow(AllowReason::Range)
        );
        let would = staged.decide(ip("203.0.113.1"), absent);
        assert_eq!(would, Decision::WouldDeny(DenyReason::NotInRange));
        assert!(would.is_allowed());
        assert_eq!((would.outcome(), would.reason()), ("would_deny", "not_in_range"));
        assert_eq!(
            staged.decide(ip("192.0.2.66"), absent),
            Decision::WouldDeny(DenyReason::DenyRange)
        );
    }

    #[test]
    fn presets_decide_alone() {
        assert_eq!(
            Profile::AllowAll.decide(ip("203.0.113.1"), |_| CertificateStatus::Absent),
            Decision::Allow(AllowReason::Open)
        );
        assert_eq!(
            Profile::DenyAll.decide(ip("127.0.0.1"), |_| CertificateStatus::Verified),
            Decision::Deny(DenyReason::DenyAll)
        );
    }

    #[test]
    fn deny_ranges_win_over_allow_ranges() {
        let profile = restricted(&["192.0.2.0/24"], &["192.0.2.66/32"], Require::Any);
        assert_eq!(
            profile.decide(ip("192.0.2.65"), |_| CertificateStatus::Absent),
            Decision::Allow(AllowReason::Range)
        );
        assert_eq!(
            profile.decide(ip("192.0.2.66"), |_| CertificateStatus::Absent),
            Decision::Deny(DenyReason::DenyRange)
        );
        assert_eq!(
            profile.decide(ip("198.51.100.1"), |_| CertificateStatus::Absent),
            Decision::Deny(DenyReason::NotInRange)
        );
    }
}
