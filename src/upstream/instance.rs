//! One app instance: its address, its health as far as gatehouse knows it, the requests in
//! flight to it, and its idle keep-alive connections.
//!
//! Health is kept in atomics, so the request path reads it without a lock. Times are
//! milliseconds since the group's epoch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use rustls::pki_types::ServerName;

use super::pool::Pool;
use super::spec::{HealthCheck, Outlier};

/// What came of one request (or one health check) to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused or timed-out connection, broken connection, response timeout, or a 5xx answer.
    Failure,
}

#[derive(Debug)]
pub struct Instance {
    pub addr: SocketAddr,
    /// `addr` as text, for logs and metric labels.
    pub label: Box<str>,
    /// Index of the `upstreams` entry it came from.
    pub target: usize,
    /// The name its TLS certificate must carry (when the environment uses TLS to its apps).
    pub server_name: Option<ServerName<'static>>,
    pub pool: Pool,
    outstanding: AtomicUsize,
    /// The active health checks' verdict; true until checks prove otherwise.
    checked_healthy: AtomicBool,
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    /// Consecutive failed requests, for passive detection.
    failures: AtomicU32,
    ejected_until: AtomicU64,
    /// Ejections in a row; reset once the instance has stayed in for `max_ejection`.
    ejections: AtomicU32,
    /// When the instance came back (after an ejection or a failed health state) + 1; 0: never.
    back_since: AtomicU64,
    /// Its own series (requests, failures, connect time), made when it is first sent a request.
    pub metrics: std::sync::OnceLock<crate::metrics::InstanceMetrics>,
}

impl Instance {
    pub fn new(addr: SocketAddr, target: usize, server_name: Option<ServerName<'static>>) -> Self {
        Self {
            addr,
            label: addr.to_string().into(),
            target,
            server_name,
            pool: Pool::default(),
            outstanding: AtomicUsize::new(0),
            checked_healthy: AtomicBool::new(true),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            back_since: AtomicU64::new(0),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Whether the instance may get new requests at `now`.
    pub fn available(&self, now: u64) -> bool {
        self.checked_healthy.load(Ordering::Relaxed) && !self.ejected(now)
    }

    pub fn ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// The share (0..=1000 per mille) of new requests an available instance takes while it
    /// warms up after coming back; 1000 once `slow_start` has passed.
    pub fn weight(&self, now: u64, slow_start_ms: u64) -> u64 {
        let back_since = self.back_since.load(Ordering::Relaxed);
        if back_since == 0 || slow_start_ms == 0 {
            return 1000;
        }
        let elapsed = now.saturating_sub(back_since - 1);
        if elapsed >= slow_start_ms {
            1000
        } else {
            // Never quite nothing, so that a warming instance is tried at all.
            (elapsed * 1000 / slow_start_ms).max(10)
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn request_started(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_ended(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// Passive detection: count a request's outcome. Returns the ejection's length in
    /// milliseconds when this failure ejected the instance. `may_eject` says whether the group
    /// can spare one more ejected instance.
    pub fn record(
        &self,
        outcome: Outcome,
        now: u64,
        outlier: &Outlier,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<u64> {
        if outcome == Outcome::Success {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if outlier.consecutive_failures == 0 || failures < outlier.consecutive_failures || self.ejected(now) {
            return None;
        }
        if !may_eject() {
            return None;
        }
        let max_ms = millis(outlier.max_ejection);
        let last_end = self.ejected_until.load(Ordering::Relaxed);
        if last_end != 0 && now.saturating_sub(last_end) > max_ms {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let ejections = u64::from(self.ejections.fetch_add(1, Ordering::Relaxed)) + 1;
        let length = millis(outlier.base_ejection).saturating_mul(ejections).min(max_ms);
        let until = now + length;
        self.ejected_until.store(until, Ordering::Relaxed);
        self.back_since.store(until + 1, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        // Its idle connections are suspect too.
        self.pool.clear();
        Some(length)
    }

    /// Active detection: count one health check. Returns the new state when it changed.
    pub fn checked(&self, passed: bool, now: u64, check: &HealthCheck) -> Option<bool> {
        let healthy = self.checked_healthy.load(Ordering::Relaxed);
        if passed {
            self.check_failures.store(0, Ordering::Relaxed);
            let passes = self.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !healthy && passes >= check.healthy_threshold {
                self.back_since.store(now + 1, Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                self.checked_healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.check_passes.store(0, Ordering::Relaxed);
            let failures = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if healthy && failures >= check.unhealthy_threshold {
                self.checked_healthy.store(false, Ordering::Relaxed);
                self.pool.clear();
                return Some(false);
            }
        }
        None
    }
}

pub fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outlier() -> Outlier {
        Outlier {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
            slow_start: Duration::from_secs(10),
        }
    }

    fn instance() -> Instance {
        Instance::new(SocketAddr::from(([127, 0, 0, 1], 9000)), 0, None)
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times_up_to_the_maximum() {
        let instance = instance();
        let outlier = outlier();
        assert_eq!(instance.record(Outcome::Failure, 0, &outlier, || true), None);
        assert_eq!(instance.record(Outcome::Failure, 0, &outlier, || true), None);
        assert_eq!(instance.record(Outcome::Failure, 0, &outlier, || true), Some(10_000));
        assert!(!instance.available(9_999));
        assert!(instance.available(10_000));
        for _ in 0..3 {
            instance.record(Outcome::Failure, 11_000, &outlier, || true);
        }
        assert!(!instance.available(30_999), "second ejection lasts 20 s");
        for _ in 0..3 {
            instance.record(Outcome::Failure, 32_000, &outlier, || true);
        }
        assert!(
            !instance.available(56_999) && instance.available(57_000),
            "capped at 25 s"
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let instance = instance();
        let outlier = outlier();
        instance.record(Outcome::Failure, 0, &outlier, || true);
        instance.record(Outcome::Failure, 0, &outlier, || true);
        instance.record(Outcome::Success, 0, &outlier, || true);
        assert_eq!(instance.record(Outcome::Failure, 0, &outlier, || true), None);
        assert!(instance.available(0));
    }

    #[test]
    fn no_ejection_when_the_group_cannot_spare_the_instance() {
        let instance = instance();
        let outlier = outlier();
        for _ in 0..5 {
            assert_eq!(instance.record(Outcome::Failure, 0, &outlier, || false), None);
        }
        assert!(instance.available(0));
    }

    #[test]
    fn a_returning_instance_warms_up() {
        let instance = instance();
        let outlier = outlier();
        for _ in 0..3 {
            instance.record(Outcome::Failure, 0, &outlier, || true);
        }
        assert_eq!(instance.weight(10_000, 10_000), 10);
        assert_eq!(instance.weight(15_000, 10_000), 500);
        assert_eq!(instance.weight(20_000, 10_000), 1000);
    }

    #[test]
    fn health_checks_change_state_at_their_thresholds() {
        let instance = instance();
        let check = HealthCheck {
            path: "/".into(),
            host: "a".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected_status: 200..=399,
        };
        assert_eq!(instance.checked(false, 0, &check), None);
        assert_eq!(instance.checked(false, 0, &check), None);
        assert_eq!(instance.checked(false, 0, &check), Some(false));
        assert!(!instance.available(0));
        assert_eq!(instance.checked(true, 0, &check), None);
        assert_eq!(instance.checked(true, 0, &check), Some(true));
        assert!(instance.available(0));
    }
}
