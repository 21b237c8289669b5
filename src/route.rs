//! Host → environment. Exact names first, then the longest `*.suffix` wildcard. A lookup costs a
//! handful of hash probes (one per label of the host), however many environments there are.

// Keys come from the configuration only (no request inserts), so a seeded fast hash is as safe
// as SipHash here and several times cheaper per lookup.
use foldhash::HashMap;
use http::{HeaderValue, Request, header};

/// Where a host name leads: which environment, under which TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index into `Snapshot::environments`.
    pub environment: usize,
    /// Index into `Snapshot::policies`.
    pub policy: usize,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Route>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Route>,
}

impl RouteTable {
    /// Add a configured domain (already lowercase and validated). Returns false if taken.
    pub fn insert(&mut self, domain: &str, route: Route) -> bool {
        let (map, key) = match domain.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, domain),
        };
        if map.contains_key(key) {
            return false;
        }
        map.insert(key.into(), route);
        true
    }

    /// Route a normalised host (see [`normalize_host`]).
    pub fn lookup(&self, host: &str) -> Option<Route> {
        if let Some(route) = self.exact.get(host) {
            return Some(*route);
        }
        // Walk the suffixes from the longest: "a.b.c" tries "b.c", then "c".
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(route) = self.wildcard.get(suffix) {
                return Some(*route);
            }
            rest = suffix;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A `Host`, `:authority` or SNI value that is no host name; the request gets 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed host")]
pub struct MalformedHost;

/// Longest host name that DNS allows, plus room for a trailing dot.
pub const MAX_HOST_LEN: usize = 254;

/// Turn a `Host`/`:authority`/SNI value into the form routes are keyed by: port removed, one
/// trailing dot removed, ASCII lowercase. Returns `None` for a value that is no host name (bad
/// characters, too long, empty): the caller answers 400. Written into `buffer` so that routing
/// allocates nothing.
pub fn normalize_host<'b>(raw: &[u8], buffer: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    let host = strip_port(raw)?;
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > buffer.len() {
        return None;
    }
    let out = &mut buffer[..host.len()];
    for (slot, &byte) in out.iter_mut().zip(host) {
        *slot = match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => byte,
            b'A'..=b'Z' => byte.to_ascii_lowercase(),
            // IPv6 literals keep their brackets and colons; they route nowhere but are not malformed.
            b'[' | b']' | b':' => byte,
            _ => return None,
        };
    }
    std::str::from_utf8(out).ok()
}

fn strip_port(raw: &[u8]) -> Option<&[u8]> {
    if raw.first() == Some(&b'[') {
        let close = raw.iter().position(|&b| b == b']')?;
        let rest = &raw[close + 1..];
        return (rest.is_empty() || valid_port(rest.strip_prefix(b":")?)).then_some(&raw[..=close]);
    }
    match raw.iter().rposition(|&b| b == b':') {
        Some(colon) if valid_port(&raw[colon + 1..]) => Some(&raw[..colon]),
        Some(_) => None,
        None => Some(raw),
    }
}

fn valid_port(digits: &[u8]) -> bool {
    !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
}

/// The host the request is for: `:authority` (HTTP/2, absolute-form) or `Host`. A request with
/// neither, with several `Host` headers, or whose two disagree, is malformed: answering it would
/// let the app and gatehouse disagree about which site is meant.
pub fn request_host<B>(request: &Request<B>) -> Result<HeaderValue, MalformedHost> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(MalformedHost);
    }
    match (request.uri().authority(), host_header) {
        (Some(authority), Some(host)) => {
            let agree = host
                .to_str()
                .is_ok_and(|host| authority.as_str().eq_ignore_ascii_case(host));
            if agree { Ok(host.clone()) } else { Err(MalformedHost) }
        }
        (Some(authority), None) => HeaderValue::from_str(authority.as_str()).map_err(|_| MalformedHost),
        (None, Some(host)) => Ok(host.clone()),
        (None, None) => Err(MalformedHost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut table = RouteTable::default();
        assert!(table.insert(
            "shop.example",
            Route {
                environment: 0,
                policy: 0
            }
        ));
        assert!(table.insert(
            "*.apps.example",
            Route {
                environment: 1,
                policy: 0
            }
        ));
        assert!(table.insert(
            "*.eu.apps.example",
            Route {
                environment: 2,
                policy: 0
            }
        ));
        table
    }

    #[test]
    fn exact_before_wildcard_and_longest_wildcard_wins() {
        let table = table();
        assert_eq!(table.lookup("shop.example").map(|r| r.environment), Some(0));
        assert_eq!(table.lookup("x.apps.example").map(|r| r.environment), Some(1));
        assert_eq!(table.lookup("x.eu.apps.example").map(|r| r.environment), Some(2));
        assert_eq!(table.lookup("a.b.eu.apps.example").map(|r| r.environment), Some(2));
        assert_eq!(table.lookup("apps.example"), None);
        assert_eq!(table.lookup("other.example"), None);
    }

    #[test]
    fn duplicate_domains_are_refused() {
        let mut table = table();
        assert!(!table.insert(
            "shop.example",
            Route {
                environment: 3,
                policy: 0
            }
        ));
        assert!(!table.insert(
            "*.apps.example",
            Route {
                environment: 3,
                policy: 0
            }
        ));
    }

    #[test]
    fn hosts_are_normalised() {
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(b"Shop.Example:8443", &mut buffer), Some("shop.example"));
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(b"shop.example.", &mut buffer), Some("shop.example"));
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(b"[::1]:443", &mut buffer), Some("[::1]"));
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(b"shop.example:x", &mut buffer), None);
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(b"sh op", &mut buffer), None);
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(b"", &mut buffer), None);
        let long = vec![b'a'; 300];
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(normalize_host(&long, &mut buffer), None);
    }
}
