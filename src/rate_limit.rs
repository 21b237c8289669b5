//! Per-client rate limiting per environment: a token bucket per client address (GCRA, the
//! `governor` crate), answering 429 with `Retry-After`. Limiter state outlives reloads as long as
//! an environment's quota is unchanged (kept by [`crate::live`]). Memory is bounded: idle buckets are dropped every few
//! seconds, and past `MAX_CLIENTS` tracked addresses new addresses are refused (deny on doubt: an
//! attacker needs that many real addresses).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Client addresses tracked per environment at most.
pub const MAX_CLIENTS: usize = 100_000;

/// An environment's configured rate: sustained requests per second per client, and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// One environment's buckets.
#[derive(Debug)]
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl ClientLimiter {
    pub fn new(rate: Rate) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when `client` is over its rate: it may try again after `wait`.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self.limiter.len() >= MAX_CLIENTS {
            self.limiter.retain_recent();
            if self.limiter.len() >= MAX_CLIENTS {
                return Err(Duration::from_secs(1));
            }
        }
        self.limiter
            .check_key(&client.to_canonical())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drop idle buckets.
    pub fn tidy(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
