//! Per-client rate limiting per environment: a token bucket per client address (GCRA, the
//! `governor` crate), answering 429 with `Retry-After`. Limiter state outlives reloads as long as
//! an environment's quota is unchanged. Memory is bounded: idle buckets are dropped every few
//! seconds, and past `MAX_CLIENTS` tracked addresses new addresses are refused (deny on doubt: an
//! attacker needs that many real addresses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::snapshot::Snapshot;

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
    fn new(rate: Rate) -> Self {
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

    fn tidy(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Each environment's rate and buckets, by environment name.
type LimitersByEnvironment = HashMap<Box<str>, (Rate, Arc<ClientLimiter>)>;

/// The limiters of every environment, by name, across reloads.
#[derive(Debug, Default)]
pub struct RateLimits {
    by_environment: Mutex<LimitersByEnvironment>,
}

impl RateLimits {
    /// Give each environment of a snapshot about to be installed its limiter: the one it had if
    /// its rate is unchanged, else a new one. Limiters of environments that are gone are dropped.
    pub fn attach(&self, snapshot: &mut Snapshot) {
        let mut known = self
            .by_environment
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut kept = HashMap::new();
        for environment in &mut snapshot.environments {
            let Some(rate) = environment.rate else { continue };
            let limiter = match known.remove(&environment.name) {
                Some((old_rate, limiter)) if old_rate == rate => limiter,
                _ => Arc::new(ClientLimiter::new(rate)),
            };
            environment.rate_limiter = Some(limiter.clone());
            kept.insert(environment.name.clone(), (rate, limiter));
        }
        *known = kept;
    }

    /// Drop idle buckets (run every few seconds off the request path).
    pub fn tidy(&self) {
        let limiters: Vec<Arc<ClientLimiter>> = {
            let known = self
                .by_environment
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            known.values().map(|(_, limiter)| limiter.clone()).collect()
        };
        for limiter in limiters {
            limiter.tidy();
        }
    }
}
