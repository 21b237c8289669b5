//! The running proxy's live state, apart from the compiled configuration: what it keeps per
//! environment across reloads (metric series, rate-limit buckets, upstream groups with their
//! pools and health) and per TLS policy (handshake counters).
//!
//! [`LiveState`] is the one home of that state, keyed by environment name (and policy label).
//! [`LiveState::reconcile`] pairs a newly compiled [`Snapshot`] with its live state: every entry
//! whose spec is unchanged is kept (a reload costs the apps and the counters nothing), the rest
//! is built, and entries of environments that are gone are dropped. The pair, [`Installed`], is
//! what the request path reads, swapped as a whole through `arc-swap`, so a request never sees a
//! snapshot with another snapshot's live state, and no "attach in the right order" step exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::access::profile::Profile;
use crate::metrics::{EnvironmentMetrics, HandshakeCounters, Metrics, UNROUTED};
use crate::rate_limit::{ClientLimiter, Rate};
use crate::snapshot::{Environment, Snapshot};
use crate::tls::policy::{PolicyKey, TlsPolicy};
use crate::tls::tickets::TicketRing;
use crate::upstream::UpstreamGroup;
use rustls::ServerConfig;

/// A compiled configuration with the live state of its environments: what the request path
/// reads, read through one `ArcSwap` load per request.
#[derive(Debug)]
pub struct Installed {
    pub snapshot: Arc<Snapshot>,
    /// 1 at start, +1 per installed configuration.
    pub generation: u64,
    /// By the index of `snapshot.environments`.
    environments: Box<[ServedEnvironment]>,
    /// Counted for requests that reach no environment.
    unrouted: Arc<EnvironmentMetrics>,
    /// By the index of `snapshot.policies`.
    handshakes: Box<[Arc<HandshakeCounters>]>,
    platform_handshakes: Arc<HandshakeCounters>,
    /// Each policy's TLS configuration with the live session ticketer, by the index of
    /// `snapshot.policies`.
    tls_configs: Box<[Arc<ServerConfig>]>,
    platform_tls: Arc<ServerConfig>,
}

/// One environment's live state.
#[derive(Debug)]
pub struct EnvironmentState {
    pub metrics: Arc<EnvironmentMetrics>,
    /// The buckets of the environment's `rate`, if it has one.
    pub rate_limiter: Option<Arc<ClientLimiter>>,
    pub upstream: Arc<UpstreamGroup>,
}

/// An environment as the request path uses it: its compiled settings and its live state, so
/// that one reference carries both through the request's wait.
#[derive(Debug)]
pub struct ServedEnvironment {
    pub config: Arc<Environment>,
    pub live: EnvironmentState,
}

impl Installed {
    /// The environment at `index` of the snapshot, with its live state.
    pub fn environment(&self, index: usize) -> Option<&ServedEnvironment> {
        self.environments.get(index)
    }

    /// Every environment with its live state, by the index of the snapshot's.
    pub fn environments(&self) -> &[ServedEnvironment] {
        &self.environments
    }

    /// The metric series of requests that reach no environment.
    pub fn unrouted_metrics(&self) -> &Arc<EnvironmentMetrics> {
        &self.unrouted
    }

    /// The handshake counters of the policy at `index` of `snapshot.policies`; `None` means the
    /// platform policy's fallback.
    pub fn handshake_counters(&self, policy: Option<usize>) -> &Arc<HandshakeCounters> {
        policy
            .and_then(|index| self.handshakes.get(index))
            .unwrap_or(&self.platform_handshakes)
    }

    /// The TLS configuration of the policy at `policy` (`None`: the platform policy), with the
    /// live session ticketer.
    pub fn tls_config(&self, policy: Option<usize>) -> &Arc<ServerConfig> {
        policy
            .and_then(|index| self.tls_configs.get(index))
            .unwrap_or(&self.platform_tls)
    }
}

/// What the home keeps of one environment between reloads, with the spec it was built for.
#[derive(Debug)]
struct Entry {
    metrics: Arc<EnvironmentMetrics>,
    limiter: Option<(Rate, Arc<ClientLimiter>)>,
    upstream: Arc<UpstreamGroup>,
}

#[derive(Debug, Default)]
struct Entries {
    environments: HashMap<Box<str>, Entry>,
    handshakes: HashMap<Box<str>, Arc<HandshakeCounters>>,
    /// Each policy's configuration with the live ticketer, by the policy's own configuration:
    /// a policy that a reload took over unchanged keeps it (10,000 copies cost 30 ms a reload).
    tls_configs: HashMap<PolicyKey, (Arc<ServerConfig>, Arc<ServerConfig>)>,
}

/// The live state of every environment of the configuration in force, across reloads.
#[derive(Debug)]
pub struct LiveState {
    metrics: Arc<Metrics>,
    unrouted: Arc<EnvironmentMetrics>,
    entries: Mutex<Entries>,
    /// Session tickets: the ticket keys in force (shared by a fleet), or the process's own.
    tickets: Arc<TicketRing>,
}

impl LiveState {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            unrouted: metrics.environment(UNROUTED),
            metrics,
            entries: Mutex::default(),
            tickets: Arc::new(TicketRing::default()),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// When the shared ticket key that encrypts new tickets was first installed (seconds since
    /// the Unix epoch); `None` without `tls.ticket_keys`.
    pub fn shared_ticket_key_since(&self) -> Option<i64> {
        self.tickets.encrypting_since()
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Pair `snapshot` with its live state: for each environment, the state it had if its spec
    /// is unchanged (an upstream group takes the addresses just resolved), else new state, whose
    /// health checks and housekeeping start now; state of environments that are gone is
    /// dropped. Publishes the configuration's own metrics (generation, hash, certificate
    /// expiry). Runs once per install, never per request; must run inside a tokio runtime.
    pub fn reconcile(&self, snapshot: Arc<Snapshot>, generation: u64) -> Installed {
        let mut entries = self.entries();
        let mut kept = HashMap::with_capacity(snapshot.environments.len());
        let mut environments = Vec::with_capacity(snapshot.environments.len());
        for environment in &snapshot.environments {
            let previous = entries.environments.remove(&environment.name);
            let entry = self.reconcile_environment(environment, previous);
            environments.push(ServedEnvironment {
                config: environment.clone(),
                live: EnvironmentState {
                    metrics: entry.metrics.clone(),
                    rate_limiter: entry.limiter.as_ref().map(|(_, limiter)| limiter.clone()),
                    upstream: entry.upstream.clone(),
                },
            });
            kept.insert(environment.name.clone(), entry);
        }
        entries.environments = kept;

        let mut counters = std::mem::take(&mut entries.handshakes);
        let mut counters_for = |label: &str| {
            let counter = counters
                .remove(label)
                .unwrap_or_else(|| Arc::new(HandshakeCounters::new(label)));
            entries.handshakes.insert(label.into(), counter.clone());
            counter
        };
        let platform_handshakes = counters_for(&snapshot.platform_policy.label);
        let handshakes = snapshot
            .policies
            .iter()
            .map(|policy| counters_for(&policy.label))
            .collect();
        drop(entries);

        let expiry = snapshot.summary.environments.iter().flat_map(|environment| {
            environment
                .domain_expiry
                .iter()
                .map(|(domain, not_after)| (environment.name.as_str(), domain.as_str(), *not_after))
        });
        let crls = (snapshot.profile_names.iter().zip(&snapshot.profiles)).flat_map(|(name, profile)| {
            let list = match profile {
                Profile::Restricted(restriction) => {
                    restriction.client_ca.as_ref().and_then(|ca| ca.revocation.as_ref())
                }
                Profile::AllowAll | Profile::DenyAll => None,
            };
            (list.into_iter().flat_map(|list| &list.files))
                .filter_map(move |crl| Some((name.as_str(), crl.source.as_str(), crl.next_update?)))
        });
        self.metrics
            .configuration_installed(generation, &snapshot.sha256, expiry, crls);

        self.tickets.install(snapshot.settings.ticket_keys.as_ref());
        let ticket_keys = (snapshot.settings.ticket_keys.as_ref()).zip(self.tickets.encrypting_since());
        self.metrics
            .ticket_keys_installed(ticket_keys.map(|(file, since)| (file.source.as_str(), since)));
        let mut entries = self.entries();
        let mut previous = std::mem::take(&mut entries.tls_configs);
        let mut with_tickets = |policy: &TlsPolicy| {
            let ticketed = match previous.remove(&policy.key) {
                Some((made_from, ticketed)) if Arc::ptr_eq(&made_from, &policy.server_config) => ticketed,
                _ => {
                    let mut config = ServerConfig::clone(&policy.server_config);
                    config.ticketer = self.tickets.clone();
                    Arc::new(config)
                }
            };
            let kept = (policy.server_config.clone(), ticketed.clone());
            entries.tls_configs.insert(policy.key, kept);
            ticketed
        };
        let platform_tls = with_tickets(&snapshot.platform_policy);
        let tls_configs = snapshot.policies.iter().map(&mut with_tickets).collect();
        drop(entries);
        Installed {
            generation,
            environments: environments.into(),
            unrouted: self.unrouted.clone(),
            handshakes,
            platform_handshakes,
            tls_configs,
            platform_tls,
            snapshot,
        }
    }

    fn reconcile_environment(&self, environment: &Environment, previous: Option<Entry>) -> Entry {
        let (metrics, old_limiter, old_upstream) = match previous {
            Some(entry) => (entry.metrics, entry.limiter, Some(entry.upstream)),
            None => (self.metrics.environment(&environment.name), None, None),
        };
        let limiter = environment.rate.map(|rate| match old_limiter {
            Some((old_rate, limiter)) if old_rate == rate => (rate, limiter),
            _ => (rate, Arc::new(ClientLimiter::new(rate))),
        });
        let upstream = match old_upstream {
            Some(running) if running.spec == environment.upstream.spec => {
                running.replace_addresses(&environment.upstream.addresses);
                running
            }
            _ => UpstreamGroup::start(
                &environment.name,
                &environment.upstream,
                metrics.clone(),
                self.metrics.upstream_connections(),
            ),
        };
        Entry {
            metrics,
            limiter,
            upstream,
        }
    }

    /// Every environment's upstream group, for `/upstreams` and the instance gauge.
    pub fn upstream_groups(&self) -> Vec<Arc<UpstreamGroup>> {
        self.entries()
            .environments
            .values()
            .map(|entry| entry.upstream.clone())
            .collect()
    }
}
