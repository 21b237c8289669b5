//! The compiled configuration: plain data (parsed settings, routes, rules, TLS configs, header
//! values), with no live handle, metric or running task inside.
//!
//! A `Snapshot` is built once per load by [`compile`] and never changes afterwards, so `check`,
//! `explain`, the benches and the fuzz targets build and read it without a running proxy. A
//! running proxy pairs it with its live state ([`crate::live`]) and swaps the pair as a whole;
//! every request reads the pair that was current when it arrived.

mod access;
mod compile;
mod headers;
mod reuse;
pub mod summary;
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::access::profile::{ClientCa, Profile};
use crate::access::ranges::RangeSet;
use crate::access::rules::PathRules;
use crate::config::ConfigErrors;
use crate::headers::HeaderPolicy;
use crate::pages::CustomPage;
use crate::route::{MAX_HOST_LEN, MalformedHost, Route, RouteTable, normalize_host};
use crate::tls::policy::TlsPolicy;
use crate::upstream::spec::ResolvedUpstream;

pub use compile::{admin_address, compile, compile_reusing};
pub use summary::Summary;

use crate::config::load::ParsedFiles;
pub use reuse::CompileCache;

/// What one load leaves for the next to reuse, where the files it came from are unchanged:
/// parsed environment files, compiled environments, TLS policies and certificate/key pairs. A running gatehouse keeps one across
/// reloads; `check` and `explain` start from an empty one.
#[derive(Debug, Default)]
pub struct LoadCache {
    pub files: ParsedFiles,
    pub compiled: CompileCache,
}

/// Read, validate and compile the configuration rooted at `main_file`.
pub fn load(main_file: &Path) -> Result<Snapshot, ConfigErrors> {
    load_reusing(main_file, &mut LoadCache::default())
}

/// [`load`], reusing what `cache` kept from the previous load of unchanged files.
pub fn load_reusing(main_file: &Path, cache: &mut LoadCache) -> Result<Snapshot, ConfigErrors> {
    let loaded = crate::config::load::load_reusing(main_file, &mut cache.files)?;
    compile_reusing(&loaded, &mut cache.compiled)
}

#[derive(Debug)]
pub struct Snapshot {
    /// SHA-256 of the configuration files this snapshot was compiled from.
    pub sha256: String,
    /// Every file the configuration read, absolute, and the environment files' folder: what a
    /// file watcher watches.
    pub inputs: Vec<std::path::PathBuf>,
    pub environment_dir: std::path::PathBuf,
    /// Headers on answers to requests that reach no environment (the platform defaults).
    pub unrouted_headers: HeaderPolicy,
    pub routes: RouteTable,
    /// Shared with the live state's pairing ([`crate::live::Installed`]), so that one reference
    /// gives the request path an environment's settings and its live state together.
    pub environments: Vec<Arc<Environment>>,
    /// The platform certificate's policy, used for no or unknown SNI.
    pub platform_policy: TlsPolicy,
    /// Every TLS policy that a route can name; index 0 is the platform policy.
    pub policies: Vec<TlsPolicy>,
    pub settings: Settings,
    /// Access profiles; indices 0 and 1 are the presets `allow-all` and `deny-all`.
    pub profiles: Vec<Profile>,
    /// Profile names, by the same index.
    pub profile_names: Vec<String>,
    /// What `gatehouse check` prints and start-up logs; not read per request.
    pub summary: Summary,
}

/// Process-wide settings from the main file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    /// The admin listener, if enabled.
    pub admin: Option<SocketAddr>,
    pub access_log: crate::logs::Target,
    pub access_log_format: crate::logs::AccessFormat,
    pub audit_log: crate::logs::Target,
    pub redirect_port: u16,
    pub proxy_protocol: bool,
    pub trusted_forwarders: RangeSet,
    pub tls_handshake_timeout: Duration,
    pub request_header_timeout: Duration,
    pub shutdown_grace: Duration,
    pub shutdown_drain_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// `tls.ticket_keys`: session ticket keys shared by a fleet, if configured.
    pub ticket_keys: Option<Arc<crate::tls::tickets::TicketKeyFile>>,
    /// How per-client limits count clients (by address prefix).
    pub client_prefixes: crate::client_prefix::ClientPrefixes,
    pub max_request_header_bytes: usize,
    pub max_request_headers: usize,
    pub max_uri_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub max_requests_per_connection: u64,
    pub watch_files: bool,
    pub watch_debounce: Duration,
    pub upstream_connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_instance: usize,
    /// Where upstream host names are resolved, and how often again.
    pub resolver: crate::upstream::resolve::Resolver,
    pub resolve_interval: Duration,
}

/// One app environment as the request path needs it.
#[derive(Debug)]
pub struct Environment {
    pub name: Box<str>,
    /// The app instances: settings and resolved addresses.
    pub upstream: ResolvedUpstream,
    /// Attempts after the first, on another instance, where repeating is safe.
    pub retries: u32,
    pub response_timeout: Duration,
    /// The app may leave a response body without progress this long.
    pub idle_timeout: Option<Duration>,
    /// Limit of a whole exchange (not upgraded connections).
    pub total_timeout: Option<Duration>,
    /// The client may leave its request body without progress this long (408 beyond).
    pub request_body_timeout: Option<Duration>,
    /// The 503 page when no instance is available, and its `Retry-After`.
    pub maintenance_page: Option<CustomPage>,
    pub maintenance_retry_after: HeaderValue,
    /// Request body bytes at most (413 beyond).
    pub max_request_body: u64,
    /// Per-client rate, if limited.
    pub rate: Option<crate::rate_limit::Rate>,
    /// Which requests get an access log line.
    pub access_log: crate::proxy::observe::LogPolicy,
    /// Path prefix → profile; empty means the environment is open.
    pub rules: PathRules,
    /// The environment's own 403 page, if any.
    pub forbidden_page: Option<CustomPage>,
    /// The client CA of each profile its rules use: a client certificate's identity goes to the
    /// app (`SSL-Client-*`) when it passes for one of them and none revokes it.
    pub client_cas: Vec<Arc<ClientCa>>,
    /// Response headers applied to every answer for this environment.
    pub headers: HeaderPolicy,
}

impl Environment {
    pub fn new(name: Box<str>, upstream: ResolvedUpstream, response_timeout: Duration) -> Self {
        Self {
            name,
            upstream,
            retries: 0,
            response_timeout,
            idle_timeout: None,
            total_timeout: None,
            request_body_timeout: None,
            maintenance_page: None,
            maintenance_retry_after: HeaderValue::from_static("30"),
            max_request_body: u64::MAX,
            rate: None,
            rules: PathRules::default(),
            forbidden_page: None,
            client_cas: Vec::new(),
            access_log: crate::proxy::observe::LogPolicy::EVERY,
            headers: HeaderPolicy::default(),
        }
    }
}

impl Snapshot {
    /// Route a raw `Host`/`:authority` value; `Ok(None)` when no environment serves it.
    pub fn route(&self, raw_host: &[u8]) -> Result<Option<Route>, MalformedHost> {
        let mut buffer = [0u8; MAX_HOST_LEN];
        let host = normalize_host(raw_host, &mut buffer).ok_or(MalformedHost)?;
        Ok(self.routes.lookup(host))
    }

    /// The TLS policy for a ClientHello's SNI: the policy of the domain it names, else the
    /// platform policy (also when the client sent no SNI).
    pub fn policy_for_sni(&self, sni: Option<&str>) -> &TlsPolicy {
        self.policy_index_for_sni(sni)
            .and_then(|index| self.policies.get(index))
            .unwrap_or(&self.platform_policy)
    }

    /// The index in `policies` of the policy for a ClientHello's SNI; `None` for the platform
    /// policy's fallback (no SNI, or a name no environment serves).
    pub fn policy_index_for_sni(&self, sni: Option<&str>) -> Option<usize> {
        sni.and_then(|name| self.route(name.as_bytes()).ok().flatten())
            .map(|route| route.policy)
            .filter(|&index| index < self.policies.len())
    }
}
