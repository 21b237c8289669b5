//! Per-path rules of one environment: path prefix → profile. The longest prefix that matches on
//! a segment boundary wins and applies its whole profile.

// Keys come from the configuration only, so a seeded fast hash is as safe as SipHash here.
use foldhash::HashMap;

/// A rule's prefix in the form lookups use: no trailing slash, except the root `/`.
pub fn rule_key(prefix: &str) -> &str {
    match prefix.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

#[derive(Debug, Clone, Default)]
pub struct PathRules {
    /// Rule key → (the prefix as written, index into the snapshot's profiles).
    rules: HashMap<Box<str>, (Box<str>, usize)>,
    case_insensitive: bool,
}

/// The rule that applies to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedRule<'a> {
    pub prefix: &'a str,
    pub profile: usize,
}

impl PathRules {
    pub fn new(case_insensitive: bool) -> Self {
        Self {
            rules: HashMap::default(),
            case_insensitive,
        }
    }

    /// Add a rule; returns false if the same prefix (in lookup form) is already there.
    pub fn insert(&mut self, prefix: &str, profile: usize) -> bool {
        let mut key = rule_key(prefix).to_owned();
        if self.case_insensitive {
            key.make_ascii_lowercase();
        }
        if self.rules.contains_key(key.as_str()) {
            return false;
        }
        self.rules.insert(key.into(), (prefix.into(), profile));
        true
    }

    /// Whether rules match without regard to ASCII case.
    pub fn case_insensitive(&self) -> bool {
        self.case_insensitive
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule: its prefix as written and its profile index, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.rules.values().map(|(prefix, profile)| (&**prefix, *profile))
    }

    /// The profile indices the rules use.
    pub fn profiles(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules.values().map(|(_, profile)| *profile)
    }

    /// The rule for a normalised path: `/rest-doc` and `/rest-doc/x` fall under `/rest-doc/`,
    /// `/rest-docs` does not.
    pub fn lookup(&self, normalized: &str) -> Option<MatchedRule<'_>> {
        let lowered;
        let path = if self.case_insensitive && normalized.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = normalized.to_ascii_lowercase();
            lowered.as_str()
        } else {
            normalized
        };
        let mut candidate = rule_key(path);
        loop {
            if let Some((prefix, profile)) = self.rules.get(candidate) {
                return Some(MatchedRule {
                    prefix,
                    profile: *profile,
                });
            }
            if candidate == "/" {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(0) | None => "/",
                Some(slash) => &candidate[..slash],
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(case_insensitive: bool) -> PathRules {
        let mut rules = PathRules::new(case_insensitive);
        assert!(rules.insert("/", 0));
        assert!(rules.insert("/api/", 1));
        assert!(rules.insert("/api/admin", 2));
        assert!(rules.insert("/rest-doc/", 3));
        rules
    }

    fn profile(rules: &PathRules, path: &str) -> Option<usize> {
        rules.lookup(path).map(|rule| rule.profile)
    }

    #[test]
    fn longest_prefix_on_a_segment_boundary_wins() {
        let rules = rules(false);
        assert_eq!(profile(&rules, "/"), Some(0));
        assert_eq!(profile(&rules, "/index.html"), Some(0));
        assert_eq!(profile(&rules, "/api"), Some(1));
        assert_eq!(profile(&rules, "/api/"), Some(1));
        assert_eq!(profile(&rules, "/api/users/1"), Some(1));
        assert_eq!(profile(&rules, "/api/admin/x"), Some(2));
        assert_eq!(profile(&rules, "/api/administrator"), Some(1));
        assert_eq!(profile(&rules, "/apis"), Some(0));
        assert_eq!(profile(&rules, "/rest-doc"), Some(3));
        assert_eq!(profile(&rules, "/rest-docs"), Some(0));
        assert_eq!(profile(&rules, "/REST-DOC/"), Some(0));
        assert_eq!(rules.lookup("/api/admin/x").map(|r| r.prefix), Some("/api/admin"));
    }

    #[test]
    fn without_a_root_rule_other_paths_match_nothing() {
        let mut rules = PathRules::new(false);
        rules.insert("/private/", 0);
        assert_eq!(profile(&rules, "/public"), None);
        assert_eq!(profile(&rules, "/private/x"), Some(0));
    }

    #[test]
    fn case_insensitive_rules_fold_case() {
        let rules = rules(true);
        assert_eq!(profile(&rules, "/REST-DOC/"), Some(3));
        assert_eq!(profile(&rules, "/Api/Admin"), Some(2));
    }

    #[test]
    fn duplicate_prefixes_are_refused() {
        let mut rules = rules(false);
        assert!(!rules.insert("/api", 9));
        assert!(!rules.insert("/rest-doc//", 9));
    }
}
