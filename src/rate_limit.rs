//! Per-client rate limiting per environment: a token bucket (GCRA: one "theoretical arrival
//! time" per client) per client prefix ([`crate::client_prefix`]), answering 429 with
//! `Retry-After`. Limiter state outlives reloads as long as an environment's quota is unchanged
//! (kept by [`crate::live`]).
//!
//! The buckets live in a fixed table of `rate_limit.tracked_clients` slots (16 bytes each,
//! allocated on the environment's first rate-limited request), four-way set-associative: a
//! client's prefix hashes (with a per-process random key) to one set of four slots, and each slot
//! is one 128-bit word, the prefix's 64-bit fingerprint beside its bucket, updated with one
//! compare-and-swap. So a check costs the same whether the table is empty or full: no lock, no
//! scan, no allocation. A client not in its set takes the slot of the set's client with the least
//! debt (an empty one, or one whose bucket has refilled, first: forgetting those loses nothing).
//! A full table therefore never turns a client away: at worst a client it forgot starts afresh,
//! with a full burst.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use portable_atomic::{AtomicU128, Ordering};

use crate::client_prefix::ClientPrefix;

/// Slots per environment by default (`rate_limit.tracked_clients`): 256 KiB once allocated.
pub const DEFAULT_TRACKED_CLIENTS: usize = 16_384;
/// Slots a client's prefix may sit in.
const WAYS: usize = 4;
/// Compare-and-swap attempts per check; past them (other requests kept changing the same set),
/// the request is let through rather than refused on doubt about the table.
const ATTEMPTS: usize = 16;

/// An environment's configured rate: sustained requests per second per client, and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
    /// Slots of the table (a power of two, at least one set).
    pub tracked_clients: usize,
}

/// One environment's buckets.
#[derive(Debug)]
pub struct ClientLimiter {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a client's arrival time may run: `interval * (burst - 1)`.
    tolerance: u64,
    slots: usize,
    table: OnceLock<Box<[AtomicU128]>>,
    hasher: RandomState,
    epoch: Instant,
}

impl ClientLimiter {
    pub fn new(rate: Rate) -> Self {
        let interval = 1_000_000_000 / u64::from(rate.per_second.get());
        Self {
            interval,
            tolerance: interval * u64::from(rate.burst.get() - 1),
            slots: rate.tracked_clients.max(WAYS).next_power_of_two(),
            table: OnceLock::new(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// `Err(wait)` when `client` is over its rate: it may try again after `wait`.
    pub fn check(&self, client: ClientPrefix) -> Result<(), Duration> {
        // Nanoseconds since the limiter started, plus one, so that 0 never means "now".
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        let fingerprint = self.hasher.hash_one(client.bits()) | 1;
        let table = self
            .table
            .get_or_init(|| (0..self.slots).map(|_| AtomicU128::new(0)).collect());
        let first = (fingerprint >> 32) as usize % (self.slots / WAYS) * WAYS;
        let set = &table[first..first + WAYS];
        for _ in 0..ATTEMPTS {
            let words: [u128; WAYS] = std::array::from_fn(|way| set[way].load(Ordering::Acquire));
            let (slot, word, arrival) = match words.iter().position(|&word| key(word) == fingerprint) {
                Some(way) => (way, words[way], arrival(words[way])),
                // Not tracked: take the slot of the least debt (empty slots have arrival 0).
                None => {
                    let way = (0..WAYS).min_by_key(|&way| arrival(words[way])).unwrap_or(0);
                    (way, words[way], 0)
                }
            };
            let start = arrival.max(now);
            if start - now > self.tolerance {
                return Err(Duration::from_nanos(start - now - self.tolerance));
            }
            let updated = (u128::from(fingerprint) << 64) | u128::from(start + self.interval);
            if set[slot]
                .compare_exchange(word, updated, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn key(word: u128) -> u64 {
    (word >> 64) as u64
}

fn arrival(word: u128) -> u64 {
    word as u64
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::client_prefix::ClientPrefixes;

    fn limiter(per_second: u32, burst: u32, tracked_clients: usize) -> ClientLimiter {
        ClientLimiter::new(Rate {
            per_second: NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
            tracked_clients,
        })
    }

    fn client(text: &str) -> ClientPrefix {
        let ip: IpAddr = text.parse().unwrap_or_else(|err| panic!("{text}: {err}"));
        ClientPrefixes::default().of(ip)
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_the_rate() {
        let limiter = limiter(1, 3, 64);
        let one = client("192.0.2.1");
        for _ in 0..3 {
            assert!(limiter.check(one).is_ok());
        }
        let wait = limiter
            .check(one)
            .expect_err("the fourth request within the second passed");
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client has its own bucket.
        assert!(limiter.check(client("192.0.2.2")).is_ok());
    }

    #[test]
    fn every_address_of_one_ipv6_prefix_is_one_client() {
        let limiter = limiter(1, 5, 64);
        let passed = (0..1000)
            .filter(|n| limiter.check(client(&format!("2001:db8:1:2::{n:x}"))).is_ok())
            .count();
        assert_eq!(passed, 5, "distinct addresses of one /64 walked around the limit");
        assert!(
            limiter.check(client("2001:db8:1:3::1")).is_ok(),
            "another /64 is another client"
        );
    }

    #[test]
    fn a_flood_of_distinct_prefixes_never_turns_away_a_client_under_its_limit() {
        // A small table, flooded with 100 times as many prefixes as it has slots, while one
        // client keeps within its limit (a burst of 2, never more than 2 requests in a row).
        let limiter = limiter(1, 2, 64);
        let normal = client("198.51.100.7");
        for round in 0..100u32 {
            for n in 0..64u32 {
                let flood = format!("2001:db8:{:x}:{:x}::1", round, n);
                let _ = limiter.check(client(&flood));
            }
            if round % 50 == 0 {
                assert!(
                    limiter.check(normal).is_ok(),
                    "round {round}: the normal client was refused"
                );
            }
        }
        // The flood's own clients, forgotten in turn, were never refused either: the table only
        // ever forgets, it never refuses.
        let refused = (0..10_000u32)
            .filter(|n| limiter.check(client(&format!("2001:db8:ffff:{n:x}::1"))).is_err())
            .count();
        assert_eq!(refused, 0);
    }

    #[test]
    fn a_full_table_forgets_the_least_debt_first() {
        // A client deep in debt (its whole burst used) is kept while newcomers, with less debt,
        // take the other slots of its set and forget each other.
        let limiter = limiter(1, 5, 64);
        let held = client("192.0.2.9");
        for _ in 0..5 {
            assert!(limiter.check(held).is_ok());
        }
        assert!(limiter.check(held).is_err());
        for n in 0..256u32 {
            let _ = limiter.check(client(&format!("2001:db8:{n:x}::1")));
        }
        assert!(
            limiter.check(held).is_err(),
            "the client with the most debt was forgotten first"
        );
    }
}
