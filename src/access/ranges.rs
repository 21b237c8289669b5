//! Sets of IP address ranges that answer "does this address belong?" by binary search over
//! merged intervals: cost grows with the logarithm of the number of ranges, not linearly.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl RangeSet {
    pub fn new(networks: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for network in networks {
            match network.trunc() {
                IpNet::V4(net) => v4.push((u32::from(net.network()), u32::from(net.broadcast()))),
                // An IPv4-mapped IPv6 range is the IPv4 range it maps, so both spellings match.
                IpNet::V6(net) => match (net.network().to_ipv4_mapped(), net.prefix_len()) {
                    (Some(start), prefix) if prefix >= 96 => {
                        let len = prefix - 96;
                        if let Ok(mapped) = ipnet::Ipv4Net::new(start, len) {
                            v4.push((u32::from(mapped.network()), u32::from(mapped.broadcast())));
                        }
                    }
                    _ => v6.push((u128::from(net.network()), u128::from(net.broadcast()))),
                },
            }
        }
        Self {
            v4: merge(v4, |end| end.saturating_add(1)),
            v6: merge(v6, |end| end.saturating_add(1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `addr` is in any range. IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(v4) => contains(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => contains(&self.v6, u128::from(v6)),
        }
    }
}

/// Sort and merge overlapping or adjacent intervals; `next` is the value after an end.
fn merge<T: Ord + Copy>(mut intervals: Vec<(T, T)>, next: fn(T) -> T) -> Vec<(T, T)> {
    intervals.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(intervals.len());
    for (start, end) in intervals {
        match merged.last_mut() {
            Some(last) if start <= next(last.1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn contains<T: Ord + Copy>(intervals: &[(T, T)], value: T) -> bool {
    let after = intervals.partition_point(|&(start, _)| start <= value);
    after > 0 && intervals[after - 1].1 >= value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[&str]) -> RangeSet {
        let nets: Vec<IpNet> = ranges.iter().map(|r| r.parse().unwrap()).collect();
        RangeSet::new(&nets)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn boundaries_are_inclusive_and_exact() {
        let ranges = set(&["192.0.2.0/24", "2001:db8::/32"]);
        assert!(ranges.contains(ip("192.0.2.0")));
        assert!(ranges.contains(ip("192.0.2.255")));
        assert!(!ranges.contains(ip("192.0.1.255")));
        assert!(!ranges.contains(ip("192.0.3.0")));
        assert!(ranges.contains(ip("2001:db8::")));
        assert!(ranges.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!ranges.contains(ip("2001:db9::")));
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_ranges() {
        let ranges = set(&["192.0.2.0/24", "::ffff:198.51.100.0/120"]);
        assert!(ranges.contains(ip("::ffff:192.0.2.10")));
        assert!(ranges.contains(ip("198.51.100.7")));
        assert!(!ranges.contains(ip("::ffff:192.0.3.10")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let ranges = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "0.0.0.0/0"]);
        assert_eq!(ranges.v4.len(), 1);
        assert!(ranges.contains(ip("255.255.255.255")));
        let hosts = set(&["10.0.0.1/32", "10.0.0.3/32"]);
        assert!(hosts.contains(ip("10.0.0.3")));
        assert!(!hosts.contains(ip("10.0.0.2")));
        assert!(!set(&[]).contains(ip("10.0.0.2")));
    }
}
