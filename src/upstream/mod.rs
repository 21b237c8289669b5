//! The app instances behind each environment, as a running proxy keeps them: which are healthy,
//! how many requests each has in flight, their keep-alive connections, and how a request is
//! sent to one of them (with a retry on another where that is safe).
//!
//! The compiled configuration holds only an environment's settings and resolved addresses
//! ([`spec::ResolvedUpstream`]). The running proxy's live state ([`crate::live`]) builds an
//! [`UpstreamGroup`] from them and keeps it across reloads while the settings stay the same, with
//! its pool, health states and ejections, so a reload costs the apps nothing.

mod body;
mod connect;
pub mod exchange;
mod health;
mod instance;
mod pool;
pub mod resolve;
pub mod spec;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::metrics::UpstreamConnections;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;

pub use body::{BodyTimedOut, Deadlines, UpstreamBody};
pub use connect::client_configs;
pub use health::{REAP_TICK, reap_idle};
pub use instance::Instance;
use instance::{Outcome, millis};
use spec::{LoadBalancing, ResolvedUpstream, Target, UpstreamSpec};

use crate::body::CountedBody;
use crate::metrics::{EnvironmentMetrics, InstanceMetrics};

/// What gatehouse sends to an instance: the client's body, or nothing (health checks, replays).
pub type RequestBody = Either<CountedBody<Incoming>, Empty<Bytes>>;

/// An environment's instances and how requests are spread over them.
#[derive(Debug)]
pub struct UpstreamGroup {
    pub environment: Box<str>,
    pub spec: UpstreamSpec,
    instances: ArcSwap<Vec<Arc<Instance>>>,
    next: AtomicUsize,
    epoch: Instant,
    /// When [`health::reap_idle`] next closes this group's idle connections (ms since `epoch`).
    next_reap: std::sync::atomic::AtomicU64,
    metrics: Arc<EnvironmentMetrics>,
    connections: UpstreamConnections,
}

impl UpstreamGroup {
    /// A group over already resolved addresses (each with the target it came from), recording
    /// into the environment's `metrics`. Not yet checked: see [`UpstreamGroup::start`].
    pub fn new(
        environment: &str,
        resolved: &ResolvedUpstream,
        metrics: Arc<EnvironmentMetrics>,
        connections: UpstreamConnections,
    ) -> Self {
        let spec = resolved.spec.clone();
        let instances = resolved
            .addresses
            .iter()
            .map(|&(addr, target)| Arc::new(Instance::new(addr, target, server_name(&spec, target))))
            .collect();
        Self {
            environment: environment.into(),
            spec,
            instances: ArcSwap::from_pointee(instances),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            next_reap: std::sync::atomic::AtomicU64::new(0),
            metrics,
            connections,
        }
    }

    /// A new group whose health checks, re-resolution and idle-connection housekeeping run from
    /// now on, for as long as the group lives. Must run inside a tokio runtime.
    pub fn start(
        environment: &str,
        resolved: &ResolvedUpstream,
        metrics: Arc<EnvironmentMetrics>,
        connections: UpstreamConnections,
    ) -> Arc<Self> {
        let group = Arc::new(Self::new(environment, resolved, metrics, connections));
        health::supervise(&group);
        group
    }

    /// Milliseconds since the group started: the clock of health states.
    pub fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    pub fn instances(&self) -> arc_swap::Guard<Arc<Vec<Arc<Instance>>>> {
        self.instances.load()
    }

    fn metrics(&self) -> &EnvironmentMetrics {
        &self.metrics
    }

    /// The series of one of this group's instances (made on its first request).
    pub fn instance_metrics<'a>(&self, instance: &'a Instance) -> &'a InstanceMetrics {
        instance.metrics.get_or_init(|| self.metrics.instance(&instance.label))
    }

    /// The instance for the next request, never `avoid` unless it is the only one available;
    /// `None` when every instance is down or ejected.
    pub fn pick(&self, avoid: Option<&Instance>) -> Option<Arc<Instance>> {
        let instances = self.instances.load();
        let count = instances.len();
        if count == 0 {
            return None;
        }
        let now = self.now();
        let slow_start = millis(self.spec.outlier.slow_start);
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let is_avoided = |instance: &Instance| avoid.is_some_and(|avoided| std::ptr::eq(avoided, instance));
        let mut fallback: Option<&Arc<Instance>> = None;
        let mut best: Option<(&Arc<Instance>, u64)> = None;
        for offset in 0..count {
            let Some(instance) = instances.get((turn + offset) % count) else {
                continue;
            };
            if !instance.available(now) {
                continue;
            }
            if is_avoided(instance) {
                fallback = Some(instance);
                continue;
            }
            let weight = instance.weight(now, slow_start);
            match self.spec.balance {
                LoadBalancing::RoundRobin => {
                    // A warming instance takes its share of turns, decided by the turn number.
                    if weight >= 1000 || spread(turn) < weight {
                        return Some(instance.clone());
                    }
                    fallback = fallback.or(Some(instance));
                }
                LoadBalancing::LeastOutstanding => {
                    // Load per unit of weight: a warming instance looks busier than it is.
                    let load = (instance.outstanding() as u64 + 1) * 1000 / weight.max(1);
                    if best.is_none_or(|(_, lowest)| load < lowest) {
                        best = Some((instance, load));
                    }
                }
            }
        }
        best.map(|(instance, _)| instance).or(fallback).cloned()
    }

    fn retried(&self) {
        self.metrics().upstream_retried();
    }

    /// Count a request's outcome on `instance`; eject it if it keeps failing.
    ///
    /// Passive detection never takes out the last available instance (as nginx never marks a
    /// group's only server down): an environment with one instance, or whose other instances are
    /// already out, keeps getting its requests rather than 503s. Within that, at most
    /// `max_ejected_percent` of the instances are ejected at once (one may always be).
    fn record(&self, instance: &Instance, outcome: Outcome) {
        let now = self.now();
        let may_eject = || {
            let instances = self.instances.load();
            let others_available = instances
                .iter()
                .any(|other| !std::ptr::eq(other.as_ref(), instance) && other.available(now));
            let ejected = instances.iter().filter(|other| other.ejected(now)).count();
            let allowed = (instances.len() * usize::from(self.spec.outlier.max_ejected_percent) / 100).max(1);
            others_available && ejected < allowed
        };
        if let Some(length) = instance.record(outcome, now, &self.spec.outlier, may_eject) {
            tracing::warn!(environment = %self.environment, instance = %instance.label, seconds = length / 1000, "instance ejected after consecutive failures");
            self.metrics().instance_ejected();
        }
    }

    /// Take a new list of resolved addresses, keeping the state of instances whose address
    /// stays.
    pub fn replace_addresses(&self, addresses: &[(SocketAddr, usize)]) -> bool {
        let current = self.instances.load();
        let unchanged = current.len() == addresses.len()
            && current
                .iter()
                .zip(addresses)
                .all(|(instance, (addr, _))| instance.addr == *addr);
        if unchanged {
            return false;
        }
        let next: Vec<Arc<Instance>> = addresses
            .iter()
            .map(|(addr, target)| {
                current
                    .iter()
                    .find(|instance| instance.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Instance::new(*addr, *target, server_name(&self.spec, *target))))
            })
            .collect();
        tracing::info!(environment = %self.environment, instances = ?addresses.iter().map(|(addr, _)| addr).collect::<Vec<_>>(), "upstream addresses changed");
        self.instances.store(Arc::new(next));
        true
    }
}

/// Spread turn numbers evenly over 0..1000 (Fibonacci hashing), so that a warming instance's
/// share does not follow the plain turn order.
fn spread(turn: usize) -> u64 {
    ((turn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) % 1000
}

fn server_name(spec: &UpstreamSpec, target: usize) -> Option<ServerName<'static>> {
    spec.tls.as_ref()?;
    spec.targets.get(target).and_then(Target::server_name)
}

/// One environment's instances, as `/upstreams` shows them.
#[derive(Debug, serde::Serialize)]
pub struct GroupReport {
    pub environment: String,
    pub load_balancing: &'static str,
    pub instances: Vec<InstanceReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct InstanceReport {
    pub address: String,
    /// The `upstreams` entry it came from (a host name, or the address itself).
    pub upstream: String,
    pub available: bool,
    pub health_check_passing: bool,
    pub ejected: bool,
    pub requests_in_flight: usize,
    pub idle_connections: usize,
    /// The share of new requests it takes while it warms up after coming back (slow start),
    /// in percent of a warm instance's; 100 once warm.
    pub share_percent: u64,
}

/// What `/upstreams` shows: every environment's instances and their state now.
pub fn report(groups: &[Arc<UpstreamGroup>]) -> Vec<GroupReport> {
    let mut report: Vec<GroupReport> = groups
        .iter()
        .map(|group| {
            let now = group.now();
            GroupReport {
                environment: group.environment.to_string(),
                load_balancing: group.spec.balance.as_str(),
                instances: group
                    .instances()
                    .iter()
                    .map(|instance| InstanceReport {
                        address: instance.label.to_string(),
                        upstream: group
                            .spec
                            .targets
                            .get(instance.target)
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        available: instance.available(now),
                        health_check_passing: instance.checked_healthy(),
                        ejected: instance.ejected(now),
                        requests_in_flight: instance.outstanding(),
                        idle_connections: instance.pool.idle_count(),
                        share_percent: instance.weight(now, instance::millis(group.spec.outlier.slow_start)) / 10,
                    })
                    .collect(),
            }
        })
        .collect();
    report.sort_by(|a, b| a.environment.cmp(&b.environment));
    report
}

/// Every instance's availability, for the `gatehouse_upstream_instance_healthy` gauge.
pub fn states(groups: &[Arc<UpstreamGroup>]) -> Vec<(Box<str>, Box<str>, bool)> {
    let mut states = Vec::new();
    for group in groups {
        let now = group.now();
        for instance in group.instances().iter() {
            states.push((
                group.environment.clone(),
                instance.label.clone(),
                instance.available(now),
            ));
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::resolve::Resolver;
    use super::spec::{HealthCheck, Outlier, PoolLimits};
    use super::*;
    use crate::metrics::Metrics;

    fn group(balance: LoadBalancing, instances: u16) -> UpstreamGroup {
        let addresses: Vec<(SocketAddr, usize)> = (0..instances)
            .map(|index| (SocketAddr::from(([127, 0, 0, 1], 9000 + index)), usize::from(index)))
            .collect();
        let spec = UpstreamSpec {
            targets: addresses.iter().map(|(addr, _)| Target::Address(*addr)).collect(),
            balance,
            health_check: None,
            outlier: Outlier {
                consecutive_failures: 5,
                base_ejection: Duration::from_secs(10),
                max_ejection: Duration::from_secs(300),
                max_ejected_percent: 50,
                slow_start: Duration::ZERO,
            },
            pool: PoolLimits {
                max_idle_per_instance: 8,
                idle_timeout: Duration::from_secs(60),
            },
            connect_timeout: Duration::from_secs(1),
            tls: None,
            resolver: Resolver::System,
            resolve_interval: Duration::from_secs(30),
        };
        let metrics = Metrics::new().unwrap_or_else(|err| panic!("metrics: {err}"));
        let resolved = ResolvedUpstream { spec, addresses };
        UpstreamGroup::new(
            "shop",
            &resolved,
            metrics.environment("shop"),
            metrics.upstream_connections(),
        )
    }

    /// Take `instance` out as a failed health check does.
    fn fail_check(group: &UpstreamGroup, index: usize) {
        let check = HealthCheck {
            path: "/".into(),
            host: "shop".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            expected_status: 200..=399,
        };
        group.instances()[index].checked(false, group.now(), &check);
    }

    fn picked_ports(group: &UpstreamGroup, times: usize, avoid: Option<&Instance>) -> Vec<u16> {
        (0..times)
            .map(|_| group.pick(avoid).map_or(0, |instance| instance.addr.port()))
            .collect()
    }

    #[test]
    fn round_robin_takes_the_available_instances_in_turn() {
        let group = group(LoadBalancing::RoundRobin, 3);
        let mut ports = picked_ports(&group, 6, None);
        ports.sort_unstable();
        assert_eq!(ports, [9000, 9000, 9001, 9001, 9002, 9002]);
        // A down instance's turn passes to the next available one.
        fail_check(&group, 1);
        let ports = picked_ports(&group, 6, None);
        assert!(!ports.contains(&9001), "a down instance was picked: {ports:?}");
        assert!(ports.contains(&9000) && ports.contains(&9002), "{ports:?}");
    }

    #[test]
    fn an_avoided_instance_is_picked_only_when_no_other_is_available() {
        for balance in [LoadBalancing::RoundRobin, LoadBalancing::LeastOutstanding] {
            let group = group(balance, 2);
            let first = group.instances()[0].clone();
            assert_eq!(picked_ports(&group, 4, Some(&first)), [9001; 4], "{balance:?}");
            fail_check(&group, 1);
            assert_eq!(picked_ports(&group, 2, Some(&first)), [9000; 2], "{balance:?}");
            fail_check(&group, 0);
            assert!(
                group.pick(Some(&first)).is_none(),
                "{balance:?}: every instance is down"
            );
            assert!(group.pick(None).is_none(), "{balance:?}: every instance is down");
        }
    }

    #[test]
    fn least_outstanding_picks_the_instance_with_the_fewest_requests_in_flight() {
        let group = group(LoadBalancing::LeastOutstanding, 3);
        let instances = group.instances();
        instances[0].request_started();
        instances[0].request_started();
        instances[2].request_started();
        assert_eq!(picked_ports(&group, 5, None), [9001; 5]);
        instances[1].request_started();
        instances[1].request_started();
        assert_eq!(picked_ports(&group, 5, None), [9002; 5]);
    }
}
