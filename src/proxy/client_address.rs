//! The real client address of a request. It is the connection's peer (or what the PROXY header
//! named), unless that peer is a configured trusted forwarder: then `X-Forwarded-For` is read
//! from the right, skipping trusted forwarders, and the first other address is the client.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderValue};

use super::fields::X_FORWARDED_FOR;
use crate::access::ranges::RangeSet;

/// The client address and the `X-Forwarded-For` value to pass on.
#[derive(Debug)]
pub struct ClientAddress {
    pub ip: IpAddr,
    /// `Some` when the request's own `X-Forwarded-For` chain was trusted and is passed on,
    /// extended with the peer; `None` to send the peer alone.
    pub forwarded_for: Option<HeaderValue>,
    /// The peer is a trusted forwarder whose `X-Forwarded-For` (if any) could be read: what it
    /// says of the request (its trace context) may be believed.
    pub via_trusted_forwarder: bool,
}

pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &RangeSet) -> ClientAddress {
    let untrusted = ClientAddress {
        ip: peer.to_canonical(),
        forwarded_for: None,
        via_trusted_forwarder: false,
    };
    if trusted.is_empty() || !trusted.contains(peer) {
        return untrusted;
    }
    // Several X-Forwarded-For fields form one list, in order.
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else { return untrusted };
        for entry in text.split(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => chain.push(ip),
                // One unreadable entry makes the whole chain doubtful: trust none of it.
                Err(_) => return untrusted,
            }
        }
    }
    let Some(&leftmost) = chain.first() else {
        // A trusted forwarder that named no client: the peer is the client.
        return ClientAddress {
            via_trusted_forwarder: true,
            ..untrusted
        };
    };
    let client = chain
        .iter()
        .rev()
        .copied()
        .find(|ip| !trusted.contains(*ip))
        .unwrap_or(leftmost);
    let mut passed_on = chain.iter().map(|ip| ip.to_canonical().to_string()).collect::<Vec<_>>();
    passed_on.push(peer.to_canonical().to_string());
    ClientAddress {
        ip: client.to_canonical(),
        forwarded_for: HeaderValue::try_from(passed_on.join(", ")).ok(),
        via_trusted_forwarder: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> RangeSet {
        RangeSet::new(&["10.0.0.0/8".parse().unwrap()])
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(X_FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let resolved = resolve(ip("203.0.113.5"), &headers(&["192.0.2.1"]), &trusted());
        assert_eq!(resolved.ip, ip("203.0.113.5"));
        assert!(resolved.forwarded_for.is_none());
    }

    #[test]
    fn trusted_peers_are_skipped_from_the_right() {
        let resolved = resolve(
            ip("10.0.0.1"),
            &headers(&["198.51.100.9, 192.0.2.1", "10.1.1.1"]),
            &trusted(),
        );
        assert_eq!(resolved.ip, ip("192.0.2.1"));
        assert_eq!(
            resolved.forwarded_for.unwrap(),
            "198.51.100.9, 192.0.2.1, 10.1.1.1, 10.0.0.1"
        );
    }

    #[test]
    fn malformed_chains_are_not_trusted() {
        let resolved = resolve(ip("10.0.0.1"), &headers(&["192.0.2.1, unknown"]), &trusted());
        assert_eq!(resolved.ip, ip("10.0.0.1"));
        let resolved = resolve(ip("10.0.0.1"), &headers(&[]), &trusted());
        assert_eq!(resolved.ip, ip("10.0.0.1"));
    }
}
