//! The typed shape of the configuration files. Every table refuses unknown keys, so a typo is an
//! error instead of a silently ignored setting. Values that validation must point back at are
//! kept `Spanned`, so errors can name their line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::duration::{ConfigDuration, OptionalDuration};
use super::size::ConfigSize;
use crate::access::profile::Require;
use crate::logs::AccessFormat;

/// `gatehouse.toml`: process-wide settings and where the environment files are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainFile {
    /// Glob of environment files, relative to the main file.
    pub environments: Spanned<String>,
    pub listen: ListenSection,
    pub tls: TlsSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub logging: LoggingSection,
    #[serde(default)]
    pub reload: ReloadSection,
    /// Named access restriction profiles, usable by every environment.
    #[serde(default)]
    pub profiles: BTreeMap<String, Spanned<ProfileSection>>,
}

/// `[reload]`: reloading when configuration files change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadSection {
    /// Watch every file the configuration uses and reload when one changes.
    #[serde(default = "default_true")]
    pub watch_files: bool,
    /// Quiet time after the last change before reloading, so that an editor's save (often
    /// several writes and renames) is one reload.
    #[serde(default = "default_watch_debounce")]
    pub watch_debounce: ConfigDuration,
}

impl Default for ReloadSection {
    fn default() -> Self {
        Self {
            watch_files: true,
            watch_debounce: default_watch_debounce(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_watch_debounce() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_millis(500))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// `"stdout"`, `"stderr"`, `"off"`, or a file path.
    #[serde(default = "default_log_target")]
    pub access_log: String,
    #[serde(default = "default_access_format")]
    pub access_log_format: AccessFormat,
    /// `"stdout"`, `"stderr"`, `"off"`, or a file path. JSON lines marked `"log":"audit"`.
    #[serde(default = "default_log_target")]
    pub audit_log: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            access_log: default_log_target(),
            access_log_format: default_access_format(),
            audit_log: default_log_target(),
        }
    }
}

fn default_log_target() -> String {
    "stdout".to_owned()
}

fn default_access_format() -> AccessFormat {
    AccessFormat::Json
}

/// `[profiles.NAME]`: who may pass.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSection {
    /// Address ranges let in (CIDR, or a single address).
    #[serde(default)]
    pub ranges: Vec<Spanned<String>>,
    /// Address ranges always refused, checked before anything else.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// PEM bundle of the CA (root and optional intermediates) client certificates must chain to.
    pub client_ca: Option<Spanned<String>>,
    /// Certificate revocation lists (PEM or DER files) issued by a certificate of `client_ca`.
    #[serde(default)]
    pub client_crls: Vec<Spanned<String>>,
    /// `"any"`: a matching range or a verified certificate; `"all"`: every configured condition.
    #[serde(default = "default_require")]
    pub require: Require,
    /// Stage the profile: its denials are counted, audited and explained, not enforced.
    #[serde(default)]
    pub report_only: bool,
}

fn default_require() -> Require {
    Require::Any
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// Addresses that terminate TLS.
    #[serde(default)]
    pub https: Vec<Spanned<String>>,
    /// Plain-HTTP addresses that only redirect to https.
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
    /// The port written into the redirect's `Location` (left out when it is 443).
    #[serde(default = "default_redirect_port")]
    pub redirect_port: u16,
    /// Every connection (https and http listeners) starts with a PROXY protocol v1 or v2 header.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The admin listener (metrics, health, configuration): `ip:port` or `"off"`.
    /// Default `127.0.0.1:9901`.
    pub admin: Option<Spanned<String>>,
    /// Peers whose `X-Forwarded-For` is believed (CIDR ranges or addresses).
    #[serde(default)]
    pub trusted_forwarders: Vec<Spanned<String>>,
}

fn default_redirect_port() -> u16 {
    443
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The platform certificate chain (leaf first, then intermediates), PEM.
    pub certificate: Option<Spanned<String>>,
    /// The platform certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<Spanned<String>>,
    /// Generate a self-signed platform certificate in memory at start, covering every configured
    /// domain. For development only; excludes `certificate` and `key`.
    pub development_certificate: Option<Spanned<bool>>,
    /// Session ticket keys shared by the instances of a fleet (base64, one per line; the first
    /// encrypts). Without it each process makes its own.
    pub ticket_keys: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Time allowed for the TLS handshake, from accept to the end of the handshake.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout: ConfigDuration,
    /// Time allowed for a client to send a complete request head (HTTP/1.1).
    #[serde(default = "default_header_read_timeout")]
    pub request_header_timeout: ConfigDuration,
    /// On SIGTERM/SIGINT, how long gatehouse keeps accepting and serving with `/readyz` at 503
    /// before it closes its listeners: the time a load balancer needs to take it out. `"off"`
    /// closes them at once.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: OptionalDuration,
    /// On SIGTERM/SIGINT, once the listeners are closed, how long requests in flight may take to
    /// finish.
    #[serde(default = "default_drain_timeout")]
    pub shutdown_drain_timeout: ConfigDuration,
    /// Open client connections at most; more are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections per client (address prefix) at most; more are closed at accept.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Per-client limits count IPv4 clients by this prefix length (default 32: each address).
    pub client_ipv4_prefix: Option<Spanned<u8>>,
    /// Per-client limits count IPv6 clients by this prefix length (default 64: what one host
    /// usually holds).
    pub client_ipv6_prefix: Option<Spanned<u8>>,
    /// Bytes of a request head (request line and headers) at most; more is 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_request_header_bytes: usize,
    /// Request header fields at most; more is 431.
    #[serde(default = "default_max_headers")]
    pub max_request_headers: usize,
    /// Bytes of a request URI at most; more is 414.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Requests one connection may carry; then it finishes (HTTP/1.1 closes, HTTP/2 GOAWAY).
    #[serde(default = "default_max_requests_per_connection")]
    pub max_requests_per_connection: u64,
    /// Concurrent streams per HTTP/2 connection.
    #[serde(default = "default_max_streams")]
    pub http2_max_concurrent_streams: u32,
}

fn default_max_connections() -> usize {
    100_000
}

/// More than a large office behind one NAT address opens at once (thousands of users, one to six
/// connections each); see README, "Running a fleet", for sizing.
fn default_max_connections_per_client() -> usize {
    10_000
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_max_uri_bytes() -> usize {
    8 * 1024
}

fn default_max_requests_per_connection() -> u64 {
    10_000
}

fn default_max_streams() -> u32 {
    100
}

fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration::secs(30)
}

/// Two health checks of a load balancer probing every 5 s (Kubernetes' endpoint removal takes a
/// second or two; see README, "Running a fleet", for balancers that probe less often).
fn default_shutdown_grace() -> OptionalDuration {
    OptionalDuration(Some(std::time::Duration::from_secs(10)))
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: default_handshake_timeout(),
            request_header_timeout: default_header_read_timeout(),
            shutdown_grace: default_shutdown_grace(),
            shutdown_drain_timeout: default_drain_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            client_ipv4_prefix: None,
            client_ipv6_prefix: None,
            max_request_header_bytes: default_max_header_bytes(),
            max_request_headers: default_max_headers(),
            max_uri_bytes: default_max_uri_bytes(),
            http2_max_concurrent_streams: default_max_streams(),
            max_requests_per_connection: default_max_requests_per_connection(),
        }
    }
}

fn default_handshake_timeout() -> ConfigDuration {
    ConfigDuration::secs(10)
}

fn default_header_read_timeout() -> ConfigDuration {
    ConfigDuration::secs(30)
}

/// `[upstream]`: defaults for every environment's connections to its instances, and name resolution.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Time allowed to open a TCP connection to an app instance.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// How long an unused keep-alive connection is kept.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: ConfigDuration,
    /// Idle keep-alive connections kept per app instance.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_instance: usize,
    /// Name servers (`ip:port`) for upstream host names; empty: the system resolver.
    #[serde(default)]
    pub nameservers: Vec<Spanned<String>>,
    /// How often upstream host names are resolved again.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: ConfigDuration,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            pool_idle_timeout: default_pool_idle_timeout(),
            pool_max_idle_per_instance: default_pool_max_idle(),
            nameservers: Vec::new(),
            resolve_interval: default_resolve_interval(),
        }
    }
}

fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
}

fn default_pool_idle_timeout() -> ConfigDuration {
    ConfigDuration::secs(60)
}

fn default_pool_max_idle() -> usize {
    64
}

fn default_resolve_interval() -> ConfigDuration {
    ConfigDuration::secs(30)
}

/// One file per app environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentFile {
    pub name: Spanned<String>,
    /// Exact names and `*.suffix` wildcards.
    pub domains: Spanned<Vec<Spanned<String>>>,
    /// The app instances, as `ip:port` or `host:port`.
    pub upstreams: Spanned<Vec<Spanned<String>>>,
    /// How requests are spread over the instances.
    #[serde(default)]
    pub load_balancing: crate::upstream::spec::LoadBalancing,
    /// Times a failed request is sent again to another instance, where that is safe.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// A file whose content replaces gatehouse's 503 page when no instance is available.
    pub maintenance_page: Option<Spanned<String>>,
    /// `Retry-After` of that 503.
    #[serde(default = "default_maintenance_retry_after")]
    pub maintenance_retry_after: ConfigDuration,
    /// Keep-alive pool limits; default: the main file's `[upstream]` values.
    #[serde(default)]
    pub pool: PoolSection,
    /// Active health checks; none by default. (This and the other optional sections are boxed:
    /// a reload keeps every environment's parsed file, and most environments have none.)
    pub health_check: Option<Box<HealthCheckSection>>,
    /// Passive detection: ejecting instances that keep failing.
    #[serde(default)]
    pub outlier_detection: OutlierSection,
    /// TLS to the instances; plain HTTP by default.
    pub upstream_tls: Option<Box<UpstreamTlsSection>>,
    /// Custom-domain certificates; each serves the environment's domains it covers.
    #[serde(default)]
    pub certificates: Vec<CertificateEntry>,
    #[serde(default)]
    pub timeouts: EnvironmentTimeouts,
    /// Path prefix → profile name. No rule: the environment is open.
    #[serde(default)]
    pub access: BTreeMap<String, Spanned<String>>,
    /// Request body bytes at most; a larger declared length is 413 before anything is sent to
    /// the app, and a streamed body that grows larger is cut off with 413.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: ConfigSize,
    /// Per-client rate limit; none by default.
    pub rate_limit: Option<Box<RateLimitSection>>,
    /// Which of the environment's requests get an access log line.
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// Match access rules without regard to ASCII case (the default: many apps treat `/Admin`
    /// as `/admin`, and a rule must not be escaped by spelling a path in capitals); `false` for
    /// exact-case matching.
    #[serde(default = "default_true")]
    pub case_insensitive_paths: bool,
    /// A file whose content replaces gatehouse's 403 page for this environment.
    pub forbidden_page: Option<Spanned<String>>,
    /// Validated security headers: name → value, `{ value, mode }`, `{ mode = "remove" }` or `false`.
    #[serde(default)]
    pub response_headers: BTreeMap<String, Spanned<toml::Value>>,
    /// Any other response header, checked for HTTP syntax only; same forms.
    #[serde(default)]
    pub custom_response_headers: BTreeMap<String, Spanned<toml::Value>>,
}

/// `[access_log]`: how many of an environment's requests the access log writes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `"all"`: every request; `"notable"`: errors (status 400 and above, denials among them)
    /// and requests slower than `slow`, plus a `sample` of the rest.
    #[serde(default)]
    pub requests: LoggedRequests,
    /// With `"notable"`: a request at least this slow is always written.
    #[serde(default = "default_slow_request")]
    pub slow: ConfigDuration,
    /// With `"notable"`: the share of the other requests written, 0 to 1.
    #[serde(default)]
    pub sample: Option<Spanned<f64>>,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        Self {
            requests: LoggedRequests::All,
            slow: default_slow_request(),
            sample: None,
        }
    }
}

fn default_slow_request() -> ConfigDuration {
    ConfigDuration::secs(1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoggedRequests {
    #[default]
    All,
    Notable,
}

/// `[rate_limit]`: a token bucket per client address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Sustained requests per second per client (address prefix, see `limits.client_*_prefix`).
    pub requests_per_second: std::num::NonZeroU32,
    /// Requests a client may make at once; default: `requests_per_second`.
    pub burst: Option<std::num::NonZeroU32>,
    /// Clients tracked at once (16 bytes each); rounded up to a power of two.
    #[serde(default = "default_tracked_clients")]
    pub tracked_clients: usize,
}

fn default_tracked_clients() -> usize {
    crate::rate_limit::DEFAULT_TRACKED_CLIENTS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    pub certificate: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentTimeouts {
    /// Time allowed to open a connection (and TLS) to an instance; default: the main file's
    /// `upstream.connect_timeout`.
    pub connect: Option<ConfigDuration>,
    /// Time allowed between sending the request and receiving the response head (then 504).
    #[serde(default = "default_response_timeout")]
    pub response: ConfigDuration,
    /// Time the app may leave a response body without sending anything; `"off"`: no limit.
    #[serde(default = "default_idle_timeout")]
    pub idle: OptionalDuration,
    /// Time for a whole exchange, from the request to the end of the response body, except for
    /// upgraded (WebSocket) connections; `"off"` (the default): no limit.
    #[serde(default)]
    pub total: OptionalDuration,
    /// Time the client may leave its request body without sending anything (then 408 and the
    /// app's request is aborted), as nginx's `client_body_timeout`; `"off"`: no limit.
    #[serde(default = "default_idle_timeout")]
    pub request_body: OptionalDuration,
}

impl Default for EnvironmentTimeouts {
    fn default() -> Self {
        Self {
            connect: None,
            response: default_response_timeout(),
            idle: default_idle_timeout(),
            total: OptionalDuration::default(),
            request_body: default_idle_timeout(),
        }
    }
}

fn default_idle_timeout() -> OptionalDuration {
    OptionalDuration(Some(std::time::Duration::from_secs(60)))
}

fn default_retries() -> u32 {
    1
}

fn default_maintenance_retry_after() -> ConfigDuration {
    ConfigDuration::secs(30)
}

/// `[pool]`: idle keep-alive connections to the instances.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub max_idle_per_instance: Option<usize>,
    pub idle_timeout: Option<ConfigDuration>,
}

/// `[health_check]`: a GET to every instance at each interval.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    pub path: Spanned<String>,
    /// `Host` of the checks; default: the environment's first exact domain.
    pub host: Option<String>,
    #[serde(default = "default_check_interval")]
    pub interval: ConfigDuration,
    #[serde(default = "default_check_timeout")]
    pub timeout: ConfigDuration,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: std::num::NonZeroU32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: std::num::NonZeroU32,
    /// A status (`"200"`) or an inclusive range (`"200-399"`, the default).
    pub expected_status: Option<Spanned<String>>,
}

fn default_check_interval() -> ConfigDuration {
    ConfigDuration::secs(5)
}

fn default_check_timeout() -> ConfigDuration {
    ConfigDuration::secs(2)
}

fn default_healthy_threshold() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::MIN.saturating_add(1)
}

fn default_unhealthy_threshold() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::MIN.saturating_add(2)
}

/// `[outlier_detection]`: ejecting an instance after consecutive failures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// 0 turns passive detection off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_base_ejection")]
    pub base_ejection: ConfigDuration,
    #[serde(default = "default_max_ejection")]
    pub max_ejection: ConfigDuration,
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: Spanned<u8>,
    /// `"off"`: a returning instance takes its full share at once.
    #[serde(default = "default_slow_start")]
    pub slow_start: OptionalDuration,
}

impl Default for OutlierSection {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejected_percent: default_max_ejected_percent(),
            slow_start: default_slow_start(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}

fn default_base_ejection() -> ConfigDuration {
    ConfigDuration::secs(10)
}

fn default_max_ejection() -> ConfigDuration {
    ConfigDuration::secs(300)
}

fn default_max_ejected_percent() -> Spanned<u8> {
    Spanned::new(0..0, 50)
}

fn default_slow_start() -> OptionalDuration {
    OptionalDuration(Some(std::time::Duration::from_secs(30)))
}

/// `[upstream_tls]`: HTTPS to the instances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// PEM bundle of the CA(s) that sign the instances' certificates.
    pub ca: Spanned<String>,
    /// Name the certificates must carry; default: each upstream's host name (or IP address).
    pub server_name: Option<Spanned<String>>,
    /// Client certificate chain and key (PEM) to present, for apps that require mTLS.
    pub certificate: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// Offer HTTP/2 over ALPN (used when the instance picks it).
    #[serde(default = "default_true")]
    pub http2: bool,
}

fn default_max_request_body() -> ConfigSize {
    ConfigSize(100 * 1024 * 1024)
}

fn default_response_timeout() -> ConfigDuration {
    ConfigDuration::secs(60)
}
