//! An environment's upstream settings as compiled from its file: which instances, how to pick
//! one, how to tell whether one is healthy, and how to talk to it.
//!
//! Two specs that compare equal describe the same upstream group, so a reload that leaves them
//! unchanged keeps the group's pool, health states and ejections.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

pub use super::resolve::Resolver;
use rustls::pki_types::ServerName;

/// One `upstreams` entry: an address, or a host name that is resolved (and re-resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Address(SocketAddr),
    Name { host: Box<str>, port: u16 },
}

impl Target {
    /// The name to verify an instance's certificate against when `upstream_tls.server_name` is
    /// not set: the host name, or the address for an address entry (matched against IP SANs).
    pub fn server_name(&self) -> Option<ServerName<'static>> {
        match self {
            Self::Address(addr) => Some(ServerName::IpAddress(addr.ip().into())),
            Self::Name { host, .. } => ServerName::try_from(host.to_string()).ok(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Address(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// How an instance is chosen for a request.
/// How requests are spread over an environment's instances: the `load_balancing` key as written
/// (deserialised straight from the environment file) and as the upstream group uses it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastOutstanding,
}

impl LoadBalancing {
    /// The name as written in the configuration and shown by `/upstreams`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastOutstanding => "least_outstanding",
        }
    }
}

/// Active health checking: a request to every instance at each interval, off the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    /// The `Host` header of checks.
    pub host: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passed checks that bring an unhealthy instance back.
    pub healthy_threshold: u32,
    /// Consecutive failed checks that take a healthy instance out.
    pub unhealthy_threshold: u32,
    pub expected_status: RangeInclusive<u16>,
}

/// Passive detection: instances that fail requests in a row are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive failures (connect errors, timeouts, broken connections, 5xx) that eject an
    /// instance; 0 turns passive detection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeated ejection lasts one `base_ejection` longer.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of the instances is ejected at once (at least one may always be).
    pub max_ejected_percent: u8,
    /// After an ejection or a failed health state ends, the instance's share of new requests
    /// grows from nothing to full over this time.
    pub slow_start: Duration,
}

/// Idle keep-alive connections kept per instance, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_idle_per_instance: usize,
    pub idle_timeout: Duration,
}

/// TLS to the app instances.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Offers `h2` and `http/1.1` over ALPN (or only `http/1.1` when HTTP/2 is off).
    pub config: Arc<ClientConfig>,
    /// Offers only `http/1.1`: for upgrades (WebSocket), which need an HTTP/1.1 connection.
    pub http1_config: Arc<ClientConfig>,
    /// The name to verify instance certificates against; `None`: each target's own.
    pub server_name: Option<ServerName<'static>>,
    /// SHA-256 of everything that makes this TLS setup what it is (files' content, settings).
    pub identity: [u8; 32],
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

impl Eq for UpstreamTls {}

/// Everything that defines an environment's upstream group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub targets: Vec<Target>,
    pub balance: LoadBalancing,
    pub health_check: Option<HealthCheck>,
    pub outlier: Outlier,
    pub pool: PoolLimits,
    pub connect_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    /// Where host names are resolved, and how often again.
    pub resolver: Resolver,
    pub resolve_interval: Duration,
}

/// An environment's upstream settings with its targets resolved, as compiled: plain data, from
/// which a running proxy builds (or keeps) the environment's live [`super::UpstreamGroup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUpstream {
    pub spec: UpstreamSpec,
    /// Each resolved address, with the index of the target it came from.
    pub addresses: Vec<(std::net::SocketAddr, usize)>,
}
