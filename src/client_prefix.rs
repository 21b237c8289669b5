//! How per-client limits (rate limits, connections per client) name a client: by its address
//! prefix, /32 for IPv4 and /64 for IPv6 by default (`limits.client_ipv4_prefix`,
//! `limits.client_ipv6_prefix`). One IPv6 host usually holds a whole /64 and can pick any
//! address in it, so counting full addresses would let it walk around every per-client limit.

use std::net::IpAddr;

/// The prefix lengths clients are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPrefixes {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for ClientPrefixes {
    fn default() -> Self {
        Self { ipv4: 32, ipv6: 64 }
    }
}

/// A client as per-client limits count it: its address masked to the configured prefix, as a
/// 128-bit number (IPv4 in its IPv4-mapped IPv6 form, so the two families never meet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientPrefix(u128);

impl ClientPrefixes {
    /// The prefix `client` is counted under. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn of(self, client: IpAddr) -> ClientPrefix {
        match client.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask32(self.ipv4);
                ClientPrefix(0xffff_0000_0000 | u128::from(bits))
            }
            IpAddr::V6(v6) => ClientPrefix(u128::from(v6) & mask128(self.ipv6)),
        }
    }
}

impl ClientPrefix {
    pub fn bits(self) -> u128 {
        self.0
    }
}

fn mask32(length: u8) -> u32 {
    match length {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - n),
    }
}

fn mask128(length: u8) -> u128 {
    match length {
        0 => 0,
        n if n >= 128 => u128::MAX,
        n => u128::MAX << (128 - n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    #[test]
    fn addresses_of_one_prefix_are_one_client_and_others_are_not() {
        let prefixes = ClientPrefixes::default();
        assert_eq!(
            prefixes.of(ip("2001:db8:1:2::1")),
            prefixes.of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(prefixes.of(ip("2001:db8:1:2::1")), prefixes.of(ip("2001:db8:1:3::1")));
        assert_eq!(prefixes.of(ip("192.0.2.1")), prefixes.of(ip("::ffff:192.0.2.1")));
        assert_ne!(prefixes.of(ip("192.0.2.1")), prefixes.of(ip("192.0.2.2")));
        // An IPv6 address never meets an IPv4 one, whatever its bits.
        assert_ne!(prefixes.of(ip("::c000:201")), prefixes.of(ip("192.0.2.1")));

        let wide = ClientPrefixes { ipv4: 24, ipv6: 48 };
        assert_eq!(wide.of(ip("192.0.2.1")), wide.of(ip("192.0.2.254")));
        assert_ne!(wide.of(ip("192.0.2.1")), wide.of(ip("192.0.3.1")));
        assert_eq!(wide.of(ip("2001:db8:1:2::1")), wide.of(ip("2001:db8:1:ffff::1")));
        let exact = ClientPrefixes { ipv4: 32, ipv6: 128 };
        assert_ne!(exact.of(ip("2001:db8::1")), exact.of(ip("2001:db8::2")));
    }
}
