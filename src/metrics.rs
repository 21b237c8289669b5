//! Prometheus metrics.
//!
//! The families live in one registry per running proxy. The request path never looks a series up
//! by label: each environment holds an [`EnvironmentMetrics`] whose series are resolved the first
//! time they are needed (one registry lookup per environment and label set) and kept in
//! `OnceLock`s, so every later recording is a lock-free atomic add. Series that never occurred are
//! never exported, which keeps 10,000 environments' output proportional to their traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::access::profile::Decision;

/// Label value for requests that matched no environment (404, 400 before routing, 421).
/// Environment names cannot start with '_', so it cannot collide with one.
pub const UNROUTED: &str = "_unrouted";

/// The `status` label: the class of the status code, by its first digit.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Each label's values come from the enum they describe: `ALL` lists the variants in
/// declaration order (so a variant's `as usize` is its place in `ALL` and in the arrays of
/// series slots sized by it), and `as_str` is the label value.
macro_rules! label_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$variant_meta])* $variant,)+ }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $label,)+ }
            }
        }
    };
}

label_enum! {
    /// The `method` label: the common methods by name, every other one as `other`, so that
    /// clients cannot make up series.
    pub enum MethodLabel {
        Get => "GET",
        Head => "HEAD",
        Post => "POST",
        Put => "PUT",
        Delete => "DELETE",
        Patch => "PATCH",
        Options => "OPTIONS",
        Other => "other",
    }
}

impl MethodLabel {
    pub fn of(method: &Method) -> Self {
        match *method {
            Method::GET => Self::Get,
            Method::HEAD => Self::Head,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::DELETE => Self::Delete,
            Method::PATCH => Self::Patch,
            Method::OPTIONS => Self::Options,
            _ => Self::Other,
        }
    }
}

label_enum! {
    /// Why an upstream request failed, as counted.
    pub enum UpstreamError {
        Connect => "connect",
        Timeout => "timeout",
        Other => "other",
        /// No instance was available (all down or ejected): 503.
        NoInstance => "no_instance",
    }
}

label_enum! {
    /// Why a TLS handshake failed, as counted.
    pub enum HandshakeFailure {
        Timeout => "timeout",
        ProxyProtocol => "proxy_protocol",
        NotTls => "not_tls",
        ProtocolVersion => "protocol_version",
        NoSharedCipher => "no_shared_cipher",
        BadCertificate => "bad_certificate",
        PeerClosed => "peer_closed",
        Other => "other",
    }
}

label_enum! {
    /// Why access or audit log lines did not reach their log, as counted.
    pub enum LogDrop {
        /// The writer's queue was full: it fell behind the requests.
        QueueFull => "queue_full",
        /// The log file could not be opened, or a write to it failed (disk full, closed pipe).
        WriteFailed => "write_failed",
    }
}

label_enum! {
    /// Which connection limit closed a connection at accept.
    pub enum ConnectionLimit {
        Total => "max_connections",
        PerClient => "max_connections_per_client",
    }
}

/// One series per variant of a label enum, in the order of its `ALL`.
fn series_by<E: Copy>(
    all: &[E],
    label: impl Fn(E) -> &'static str,
    lookup: impl Fn(&str) -> Result<IntCounter>,
) -> Result<Box<[IntCounter]>> {
    all.iter().map(|&value| lookup(label(value))).collect()
}

/// The metric families whose series are per environment.
#[derive(Debug)]
struct Families {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    received_bytes: IntCounterVec,
    sent_bytes: IntCounterVec,
    access_decisions: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_ejections: IntCounterVec,
    health_checks: IntCounterVec,
    request_body_timeouts: IntCounterVec,
    access_log_skipped: IntCounterVec,
    instance_requests: IntCounterVec,
    instance_failures: IntCounterVec,
    instance_connect: HistogramVec,
}

/// Upstream connections: how many are open now, and how many were ever opened (openings that
/// grow with the request rate mean the keep-alive pool is too small for the bursts).
#[derive(Debug, Clone)]
pub struct UpstreamConnections {
    pub open: IntGauge,
    pub opened: IntCounter,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    http1_connections: IntGauge,
    http2_connections: IntGauge,
    handshakes: IntCounterVec,
    /// `gatehouse_tls_handshake_failures_total` by [`HandshakeFailure`].
    handshake_failures: Box<[IntCounter]>,
    /// `gatehouse_tls_handshakes_total{result="failure"}`: version and policy are not known.
    handshakes_failed: IntCounter,
    reloads_succeeded: IntCounter,
    reloads_failed: IntCounter,
    generation: IntGauge,
    last_reload: Gauge,
    config_info: IntGaugeVec,
    /// `gatehouse_certificate_expiry_timestamp_seconds` by (environment, domain), written into
    /// the exposition by [`Metrics::render`] rather than kept as gauges: 10,000 environments
    /// have 20,000 such series, which cost 14 MB as the client library's gauges and 1.5 MB here.
    certificate_expiry: Mutex<Vec<ExpiryEntry>>,
    crl_next_update: GaugeVec,
    ticket_key_installed: GaugeVec,
    /// `gatehouse_tls_resumed_handshakes_total` for TLS 1.3 and TLS 1.2.
    resumed: [IntCounter; 2],
    /// `gatehouse_log_lines_dropped_total` by [`LogDrop`].
    log_lines_dropped: Box<[IntCounter]>,
    upstream_connections: UpstreamConnections,
    instance_healthy: IntGaugeVec,
    /// `gatehouse_connections_refused_total` by [`ConnectionLimit`].
    connections_refused: Box<[IntCounter]>,
    environments: Mutex<HashMap<Box<str>, Arc<EnvironmentMetrics>>>,
}

/// (environment, domain, end of validity in seconds since the Unix epoch).
type ExpiryEntry = (Box<str>, Box<str>, i64);

const CERTIFICATE_EXPIRY: &str = "gatehouse_certificate_expiry_timestamp_seconds";

/// A label value escaped for the text format: backslash, double quote and newline.
struct LabelValue<'a>(&'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for character in self.0.chars() {
            match character {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                other => f.write_char(other)?,
            }
        }
        Ok(())
    }
}

/// A registration that cannot fail for the fixed, valid names used here; kept fallible anyway.
type Result<T> = std::result::Result<T, prometheus::Error>;

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<HistogramVec> {
    let buckets = vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

/// At most this many instances of one environment get series of their own (labelled by address);
/// further ones share `instance="other"`. Series are made only for instances that are sent
/// requests, so the bound is per environment: 64 x (requests, up to 4 failure kinds, a
/// connect-time histogram of 9 buckets) = at most 64 x 16 series, plus "other".
pub const INSTANCE_SERIES_PER_ENVIRONMENT: usize = 64;

/// Why an attempt at one instance failed, as `gatehouse_upstream_instance_failures_total` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceFailure {
    /// No connection could be opened.
    Connect,
    /// No response head within the environment's response timeout.
    Timeout,
    /// The connection broke before a response.
    Broken,
    /// The instance answered 502, 503 or 504.
    BadStatus,
}

impl InstanceFailure {
    pub const ALL: [Self; 4] = [Self::Connect, Self::Timeout, Self::Broken, Self::BadStatus];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Broken => "broken",
            Self::BadStatus => "bad_status",
        }
    }
}

/// One instance's series, resolved when the instance is first sent a request.
#[derive(Debug)]
pub struct InstanceMetrics {
    environment: Box<str>,
    /// The address, or "other" past [`INSTANCE_SERIES_PER_ENVIRONMENT`].
    label: Box<str>,
    families: Arc<Families>,
    requests: Option<IntCounter>,
    connect: Option<Histogram>,
    failures: [OnceLock<IntCounter>; InstanceFailure::ALL.len()],
}

impl InstanceMetrics {
    /// Count an attempt sent to the instance (each retry is an attempt of its own).
    pub fn attempted(&self) {
        if let Some(counter) = &self.requests {
            counter.inc();
        }
    }

    pub fn failed(&self, failure: InstanceFailure) {
        let Some(slot) = self.failures.get(failure as usize) else {
            return;
        };
        let families = &self.families;
        let labels = [&*self.environment, &*self.label, failure.as_str()];
        if let Some(counter) = resolve(slot, || {
            families.instance_failures.get_metric_with_label_values(&labels).ok()
        }) {
            counter.inc();
        }
    }

    /// A new connection to the instance was opened in `took`.
    pub fn connected(&self, took: Duration) {
        if let Some(histogram) = &self.connect {
            histogram.observe(took.as_secs_f64());
        }
    }
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let families = Families {
            requests: counter_vec(
                &registry,
                "gatehouse_http_requests_total",
                "HTTP requests answered, by environment, method and status class.",
                &["environment", "method", "status"],
            )?,
            request_duration: histogram_vec(
                &registry,
                "gatehouse_http_request_duration_seconds",
                "Time from receiving a request to the end of its response body.",
                &["environment"],
            )?,
            upstream_duration: histogram_vec(
                &registry,
                "gatehouse_upstream_response_duration_seconds",
                "Time from sending a request to an app instance to receiving its response head.",
                &["environment"],
            )?,
            received_bytes: counter_vec(
                &registry,
                "gatehouse_http_request_body_bytes_total",
                "Request body bytes received from clients.",
                &["environment"],
            )?,
            sent_bytes: counter_vec(
                &registry,
                "gatehouse_http_response_body_bytes_total",
                "Response body bytes sent to clients.",
                &["environment"],
            )?,
            instance_requests: counter_vec(
                &registry,
                "gatehouse_upstream_instance_requests_total",
                "Attempts sent to one app instance (a retry is an attempt of its own), by environment and instance.",
                &["environment", "instance"],
            )?,
            instance_failures: counter_vec(
                &registry,
                "gatehouse_upstream_instance_failures_total",
                "Failed attempts at one app instance, by environment, instance and kind (connect, timeout, broken, bad_status).",
                &["environment", "instance", "kind"],
            )?,
            instance_connect: {
                let buckets = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0];
                let opts = HistogramOpts::new(
                    "gatehouse_upstream_instance_connect_seconds",
                    "Time to open a connection to one app instance (TCP, and TLS when used), by environment and instance.",
                )
                .buckets(buckets);
                let vec = HistogramVec::new(opts, &["environment", "instance"])?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            access_decisions: counter_vec(
                &registry,
                "gatehouse_access_decisions_total",
                "Access restriction decisions, by environment, outcome and reason.",
                &["environment", "outcome", "reason"],
            )?,
            upstream_errors: counter_vec(
                &registry,
                "gatehouse_upstream_errors_total",
                "Requests to app instances that failed, by kind (connect, timeout, other, no_instance).",
                &["environment", "kind"],
            )?,
            upstream_retries: counter_vec(
                &registry,
                "gatehouse_upstream_retries_total",
                "Requests sent again to another instance after a failed attempt that was safe to repeat.",
                &["environment"],
            )?,
            upstream_ejections: counter_vec(
                &registry,
                "gatehouse_upstream_ejections_total",
                "Instances taken out of rotation by passive detection (consecutive failures).",
                &["environment"],
            )?,
            health_checks: counter_vec(
                &registry,
                "gatehouse_upstream_health_checks_total",
                "Active health checks, by result (success, failure).",
                &["environment", "result"],
            )?,
            access_log_skipped: counter_vec(
                &registry,
                "gatehouse_access_log_lines_skipped_total",
                "Requests that got no access log line by their environment's [access_log] (requests = \"notable\").",
                &["environment"],
            )?,
            request_body_timeouts: counter_vec(
                &registry,
                "gatehouse_request_body_timeouts_total",
                "Requests whose client left the body without a byte for the environment's timeouts.request_body (answered 408, the app's request aborted).",
                &["environment"],
            )?,
        };
        let instance_healthy = IntGaugeVec::new(
            Opts::new(
                "gatehouse_upstream_instance_healthy",
                "Whether an instance takes new requests (1) or is down or ejected (0), by environment and instance.",
            ),
            &["environment", "instance"],
        )?;
        registry.register(Box::new(instance_healthy.clone()))?;
        let connections_vec = IntGaugeVec::new(
            Opts::new(
                "gatehouse_downstream_connections",
                "Open client connections, by protocol.",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(connections_vec.clone()))?;
        let handshakes = counter_vec(
            &registry,
            "gatehouse_tls_handshakes_total",
            "TLS handshakes, by result, protocol version and the TLS policy chosen by SNI.",
            &["result", "version", "policy"],
        )?;
        let failures_vec = counter_vec(
            &registry,
            "gatehouse_tls_handshake_failures_total",
            "TLS handshakes that failed, by reason.",
            &["reason"],
        )?;
        let reloads_vec = counter_vec(
            &registry,
            "gatehouse_config_reloads_total",
            "Attempts to load a new configuration, by result.",
            &["result"],
        )?;
        let generation = IntGauge::new(
            "gatehouse_config_generation",
            "Generation of the configuration in force (1 at start).",
        )?;
        registry.register(Box::new(generation.clone()))?;
        let last_reload = Gauge::new(
            "gatehouse_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was installed, in seconds since the Unix epoch.",
        )?;
        registry.register(Box::new(last_reload.clone()))?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "gatehouse_config_info",
                "The configuration in force, by the SHA-256 of its files (always 1).",
            ),
            &["sha256"],
        )?;
        registry.register(Box::new(config_info.clone()))?;
        let crl_next_update = GaugeVec::new(
            Opts::new(
                "gatehouse_client_crl_next_update_timestamp_seconds",
                "nextUpdate of each client certificate revocation list in force, by profile and file, in seconds since the Unix epoch.",
            ),
            &["profile", "file"],
        )?;
        registry.register(Box::new(crl_next_update.clone()))?;
        let ticket_key_installed = GaugeVec::new(
            Opts::new(
                "gatehouse_tls_ticket_key_installed_timestamp_seconds",
                "When the shared session ticket key that encrypts new tickets (the first of tls.ticket_keys) was first installed, in seconds since the Unix epoch; absent without tls.ticket_keys.",
            ),
            &["file"],
        )?;
        registry.register(Box::new(ticket_key_installed.clone()))?;
        let resumed = IntCounterVec::new(
            Opts::new(
                "gatehouse_tls_resumed_handshakes_total",
                "TLS handshakes that resumed a session (from a ticket), by version.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(resumed.clone()))?;
        let log_lines_dropped = counter_vec(
            &registry,
            "gatehouse_log_lines_dropped_total",
            "Access and audit log lines that did not reach their log: the writer fell behind (queue_full), or the log could not be opened or written (write_failed).",
            &["reason"],
        )?;
        let upstream_connections = IntGauge::new(
            "gatehouse_upstream_connections",
            "Open connections to app instances, idle in the keep-alive pool or in use.",
        )?;
        registry.register(Box::new(upstream_connections.clone()))?;
        let upstream_connections_opened = IntCounter::new(
            "gatehouse_upstream_connections_opened_total",
            "Connections opened to app instances: by requests that found no idle keep-alive connection, and by health checks.",
        )?;
        registry.register(Box::new(upstream_connections_opened.clone()))?;
        let refused = counter_vec(
            &registry,
            "gatehouse_connections_refused_total",
            "Client connections closed at accept because a connection limit was reached.",
            &["limit"],
        )?;
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        Ok(Self {
            http1_connections: connections_vec.get_metric_with_label_values(&["http1"])?,
            http2_connections: connections_vec.get_metric_with_label_values(&["http2"])?,
            handshake_failures: series_by(HandshakeFailure::ALL, HandshakeFailure::as_str, |reason| {
                failures_vec.get_metric_with_label_values(&[reason])
            })?,
            handshakes_failed: handshakes.get_metric_with_label_values(&["failure", "unknown", "unknown"])?,
            reloads_succeeded: reloads_vec.get_metric_with_label_values(&["success"])?,
            reloads_failed: reloads_vec.get_metric_with_label_values(&["failure"])?,
            handshakes,
            registry,
            families: Arc::new(families),
            generation,
            last_reload,
            config_info,
            certificate_expiry: Mutex::default(),
            crl_next_update,
            ticket_key_installed,
            resumed: [
                resumed.with_label_values(&["TLSv1.3"]),
                resumed.with_label_values(&["TLSv1.2"]),
            ],
            log_lines_dropped: series_by(LogDrop::ALL, LogDrop::as_str, |reason| {
                log_lines_dropped.get_metric_with_label_values(&[reason])
            })?,
            upstream_connections: UpstreamConnections {
                open: upstream_connections,
                opened: upstream_connections_opened,
            },
            instance_healthy,
            connections_refused: series_by(ConnectionLimit::ALL, ConnectionLimit::as_str, |limit| {
                refused.get_metric_with_label_values(&[limit])
            })?,
            environments: Mutex::new(HashMap::new()),
        })
    }

    /// Publish every instance's availability (environment, instance, available), replacing what
    /// was published before, so that instances that are gone disappear. Called per scrape.
    pub fn set_instance_states(&self, states: &[(Box<str>, Box<str>, bool)]) {
        self.instance_healthy.reset();
        for (environment, instance, available) in states {
            if let Ok(gauge) = self
                .instance_healthy
                .get_metric_with_label_values(&[environment, instance])
            {
                gauge.set(i64::from(*available));
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for the text format's valid families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        let mut text = String::from_utf8_lossy(&buffer).into_owned();
        self.render_certificate_expiry(&mut text);
        text
    }

    /// The certificate expiry family, in the text format as the encoder writes a gauge family
    /// (labels in name order, escaped).
    fn render_certificate_expiry(&self, text: &mut String) {
        use std::fmt::Write as _;
        let expiry = self
            .certificate_expiry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = writeln!(
            text,
            "# HELP {CERTIFICATE_EXPIRY} End of validity of the certificate served for each domain, in seconds since the Unix epoch.\n# TYPE {CERTIFICATE_EXPIRY} gauge"
        );
        text.reserve(expiry.len() * 110);
        for (environment, domain, not_after) in expiry.iter() {
            let _ = writeln!(
                text,
                "{CERTIFICATE_EXPIRY}{{domain=\"{}\",environment=\"{}\"}} {not_after}",
                LabelValue(domain),
                LabelValue(environment)
            );
        }
    }

    /// The handles of an environment, the same across configuration generations so that its
    /// counters continue. Called when a snapshot is installed, never per request.
    pub fn environment(&self, name: &str) -> Arc<EnvironmentMetrics> {
        let mut environments = self
            .environments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        environments
            .entry(name.into())
            .or_insert_with(|| Arc::new(EnvironmentMetrics::attached(name, self.families.clone())))
            .clone()
    }

    /// Publish what a configuration being installed says about itself: its generation, the
    /// SHA-256 of its files, the end of validity of the certificate served for each
    /// (environment, domain), and the `nextUpdate` of each (profile, CRL file).
    pub fn configuration_installed<'a>(
        &self,
        generation: u64,
        sha256: &str,
        certificate_expiry: impl Iterator<Item = (&'a str, &'a str, i64)>,
        crl_next_update: impl Iterator<Item = (&'a str, &'a str, i64)>,
    ) {
        self.generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_reload.set(now.as_secs() as f64);
        self.config_info.reset();
        if let Ok(info) = self.config_info.get_metric_with_label_values(&[sha256]) {
            info.set(1);
        }
        let expiry = certificate_expiry
            .map(|(environment, domain, not_after)| (environment.into(), domain.into(), not_after))
            .collect();
        *self
            .certificate_expiry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = expiry;
        self.crl_next_update.reset();
        for (profile, file, next_update) in crl_next_update {
            if let Ok(gauge) = self.crl_next_update.get_metric_with_label_values(&[profile, file]) {
                gauge.set(next_update as f64);
            }
        }
    }

    /// The shared ticket key in force: its file and when its encrypting key was first
    /// installed (`None`: no shared keys, the series goes).
    pub fn ticket_keys_installed(&self, installed: Option<(&str, i64)>) {
        self.ticket_key_installed.reset();
        if let Some((file, since)) = installed
            && let Ok(gauge) = self.ticket_key_installed.get_metric_with_label_values(&[file])
        {
            gauge.set(since as f64);
        }
    }

    /// Count a handshake that resumed a session.
    pub fn tls_resumed(&self, tls12: bool) {
        self.resumed[usize::from(tls12)].inc();
    }

    pub fn reload_succeeded(&self) {
        self.reloads_succeeded.inc();
    }

    pub fn reload_failed(&self) {
        self.reloads_failed.inc();
    }

    pub fn connection_opened(&self, http2: bool) -> ConnectionGuard {
        let gauge = if http2 {
            &self.http2_connections
        } else {
            &self.http1_connections
        }
        .clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// A series of `gatehouse_tls_handshakes_total`, to be resolved once per policy.
    fn handshake_counter(&self, version: &str, policy: &str) -> Option<IntCounter> {
        self.handshakes
            .get_metric_with_label_values(&["success", version, policy])
            .ok()
    }

    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshakes_failed.inc();
        if let Some(counter) = self.handshake_failures.get(reason as usize) {
            counter.inc();
        }
    }

    /// The upstream connection metrics the pool keeps current.
    pub fn upstream_connections(&self) -> UpstreamConnections {
        self.upstream_connections.clone()
    }

    /// A connection was closed at accept: over the total limit, or over its client's.
    pub fn connection_refused(&self, limit: ConnectionLimit) {
        if let Some(counter) = self.connections_refused.get(limit as usize) {
            counter.inc();
        }
    }

    /// `count` log lines did not reach their log, for `reason`.
    pub fn log_lines_dropped(&self, reason: LogDrop, count: u64) {
        if let Some(counter) = self.log_lines_dropped.get(reason as usize) {
            counter.inc_by(count);
        }
    }
}

/// The successful handshakes of one TLS policy (by its label), for TLS 1.3 and 1.2, each series
/// resolved the first time it is counted, so that versions a policy never saw are not exported.
#[derive(Debug)]
pub struct HandshakeCounters {
    policy: Box<str>,
    by_version: [OnceLock<IntCounter>; 2],
}

impl HandshakeCounters {
    pub fn new(policy: &str) -> Self {
        Self {
            policy: policy.into(),
            by_version: Default::default(),
        }
    }

    /// Count one successful handshake.
    pub fn count(&self, metrics: &Metrics, tls12: bool) {
        let (index, version) = if tls12 { (1, "TLSv1.2") } else { (0, "TLSv1.3") };
        let slot = &self.by_version[index];
        if let Some(counter) = resolve(slot, || metrics.handshake_counter(version, &self.policy)) {
            counter.inc();
        }
    }
}

/// Decrements the open-connections gauge when the connection ends.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An environment's counts since the start (see [`EnvironmentMetrics::totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTotals {
    pub requests: u64,
    pub denied: u64,
    pub would_deny: u64,
}

/// One environment's series, resolved on first use.
#[derive(Debug)]
pub struct EnvironmentMetrics {
    name: Box<str>,
    families: Arc<Families>,
    /// Made on the environment's first use: of 10,000 environments most may stay idle, and
    /// their unused slots would cost a kilobyte each.
    slots: OnceLock<Box<SeriesSlots>>,
    /// The instance addresses with series of their own (at most [`INSTANCE_SERIES_PER_ENVIRONMENT`]).
    instances_labelled: Mutex<std::collections::HashSet<Box<str>>>,
}

/// An environment's series, each resolved on its first use.
#[derive(Debug, Default)]
struct SeriesSlots {
    requests: [[OnceLock<IntCounter>; STATUS_CLASSES.len()]; MethodLabel::ALL.len()],
    request_duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    received_bytes: OnceLock<IntCounter>,
    sent_bytes: OnceLock<IntCounter>,
    decisions: [OnceLock<IntCounter>; Decision::ALL.len()],
    upstream_errors: [OnceLock<IntCounter>; UpstreamError::ALL.len()],
    retries: OnceLock<IntCounter>,
    ejections: OnceLock<IntCounter>,
    health_checks: [OnceLock<IntCounter>; 2],
    request_body_timeouts: OnceLock<IntCounter>,
    access_log_skipped: OnceLock<IntCounter>,
}

fn resolve<M: Clone>(slot: &OnceLock<M>, lookup: impl FnOnce() -> Option<M>) -> Option<&M> {
    if let Some(metric) = slot.get() {
        return Some(metric);
    }
    let metric = lookup()?;
    Some(slot.get_or_init(|| metric))
}

impl EnvironmentMetrics {
    fn attached(name: &str, families: Arc<Families>) -> Self {
        Self {
            name: name.into(),
            families,
            slots: OnceLock::new(),
            instances_labelled: Mutex::default(),
        }
    }

    fn slots(&self) -> &SeriesSlots {
        self.slots.get_or_init(Box::default)
    }

    /// The series of the instance at `address` (its label), made now: under its own label for
    /// the first [`INSTANCE_SERIES_PER_ENVIRONMENT`] instances the environment ever sent a
    /// request to, under "other" past that.
    pub fn instance(&self, address: &str) -> InstanceMetrics {
        let label: Box<str> = {
            let mut labelled = self
                .instances_labelled
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if labelled.contains(address) || labelled.len() < INSTANCE_SERIES_PER_ENVIRONMENT {
                labelled.insert(address.into());
                address.into()
            } else {
                "other".into()
            }
        };
        let families = &self.families;
        let labels = [&*self.name, &*label];
        InstanceMetrics {
            requests: families.instance_requests.get_metric_with_label_values(&labels).ok(),
            connect: families.instance_connect.get_metric_with_label_values(&labels).ok(),
            failures: Default::default(),
            environment: self.name.clone(),
            label,
            families: families.clone(),
        }
    }

    fn counter(&self, slot: &OnceLock<IntCounter>, pick: impl FnOnce(&Families) -> &IntCounterVec, labels: &[&str]) {
        let families = &self.families;
        if let Some(counter) = resolve(slot, || pick(families).get_metric_with_label_values(labels).ok()) {
            counter.inc();
        }
    }

    pub fn request_done(&self, method: &Method, status: StatusCode, duration: Duration) {
        let families = &self.families;
        let method = MethodLabel::of(method);
        let class = usize::from(status.as_u16() / 100).clamp(1, STATUS_CLASSES.len()) - 1;
        let slot = self
            .slots()
            .requests
            .get(method as usize)
            .and_then(|by_class| by_class.get(class));
        if let Some(counter) = slot.and_then(|slot| {
            resolve(slot, || {
                let status = STATUS_CLASSES.get(class).copied().unwrap_or("5xx");
                families
                    .requests
                    .get_metric_with_label_values(&[&self.name, method.as_str(), status])
                    .ok()
            })
        }) {
            counter.inc();
        }
        if let Some(histogram) = resolve(&self.slots().request_duration, || {
            families
                .request_duration
                .get_metric_with_label_values(&[&self.name])
                .ok()
        }) {
            histogram.observe(duration.as_secs_f64());
        }
    }

    pub fn upstream_answered(&self, duration: Duration) {
        let families = &self.families;
        if let Some(histogram) = resolve(&self.slots().upstream_duration, || {
            families
                .upstream_duration
                .get_metric_with_label_values(&[&self.name])
                .ok()
        }) {
            histogram.observe(duration.as_secs_f64());
        }
    }

    pub fn upstream_failed(&self, error: UpstreamError) {
        if let Some(slot) = self.slots().upstream_errors.get(error as usize) {
            self.counter(slot, |f| &f.upstream_errors, &[&self.name, error.as_str()]);
        }
    }

    /// A request its environment's `[access_log]` left out of the access log.
    pub fn access_log_skipped(&self) {
        self.counter(
            &self.slots().access_log_skipped,
            |f| &f.access_log_skipped,
            &[&self.name],
        );
    }

    pub fn request_body_timed_out(&self) {
        self.counter(
            &self.slots().request_body_timeouts,
            |f| &f.request_body_timeouts,
            &[&self.name],
        );
    }

    pub fn upstream_retried(&self) {
        self.counter(&self.slots().retries, |f| &f.upstream_retries, &[&self.name]);
    }

    pub fn instance_ejected(&self) {
        self.counter(&self.slots().ejections, |f| &f.upstream_ejections, &[&self.name]);
    }

    pub fn health_checked(&self, passed: bool) {
        let (index, result) = if passed { (0, "success") } else { (1, "failure") };
        self.counter(
            &self.slots().health_checks[index],
            |f| &f.health_checks,
            &[&self.name, result],
        );
    }

    /// Requests answered so far, and how many of them an access profile refused and would
    /// refuse (report-only): for the status page, which reads them every few seconds.
    pub fn totals(&self) -> RequestTotals {
        let Some(slots) = self.slots.get() else {
            return RequestTotals::default();
        };
        let count = |slot: &OnceLock<IntCounter>| slot.get().map_or(0, IntCounter::get);
        let requests = slots.requests.iter().flatten().map(count).sum();
        let (mut denied, mut would_deny) = (0, 0);
        for (decision, slot) in Decision::ALL.iter().zip(&slots.decisions) {
            match decision {
                Decision::Deny(_) => denied += count(slot),
                Decision::WouldDeny(_) => would_deny += count(slot),
                Decision::Allow(_) => {}
            }
        }
        RequestTotals {
            requests,
            denied,
            would_deny,
        }
    }

    pub fn decided(&self, decision: Decision) {
        if let Some(slot) = self.slots().decisions.get(decision.index()) {
            self.counter(
                slot,
                |f| &f.access_decisions,
                &[&self.name, decision.outcome(), decision.reason()],
            );
        }
    }

    pub fn bytes(&self, received: u64, sent: u64) {
        let families = &self.families;
        if received > 0
            && let Some(counter) = resolve(&self.slots().received_bytes, || {
                families.received_bytes.get_metric_with_label_values(&[&self.name]).ok()
            })
        {
            counter.inc_by(received);
        }
        if sent > 0
            && let Some(counter) = resolve(&self.slots().sent_bytes, || {
                families.sent_bytes.get_metric_with_label_values(&[&self.name]).ok()
            })
        {
            counter.inc_by(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variant's `as usize` picks its series slot; `ALL` must list the variants in declaration
    /// order for that slot to be the one resolved with its label.
    fn in_order<E: Copy + std::fmt::Debug>(all: &[E], index: impl Fn(E) -> usize, label: impl Fn(E) -> &'static str) {
        let mut labels = std::collections::HashSet::new();
        for (position, &value) in all.iter().enumerate() {
            assert_eq!(index(value), position, "{value:?}");
            assert!(labels.insert(label(value)), "{value:?}: label used twice");
        }
    }

    #[test]
    fn certificate_expiry_is_written_per_domain_escaped_and_replaced_by_the_next_configuration() {
        let metrics = Metrics::new().unwrap_or_else(|err| panic!("{err}"));
        let first = [("shop", "shop.example", 100), ("odd\"env\\", "a.example", 200)];
        metrics.configuration_installed(1, "abc", first.into_iter(), std::iter::empty());
        let text = metrics.render();
        assert!(text.contains("# TYPE gatehouse_certificate_expiry_timestamp_seconds gauge\n"));
        assert!(text.contains(
            "gatehouse_certificate_expiry_timestamp_seconds{domain=\"shop.example\",environment=\"shop\"} 100\n"
        ));
        assert!(text.contains(
            "gatehouse_certificate_expiry_timestamp_seconds{domain=\"a.example\",environment=\"odd\\\"env\\\\\"} 200\n"
        ));
        // A reload replaces the family: the removed domain goes, the renewed one is updated.
        metrics.configuration_installed(
            2,
            "def",
            [("shop", "shop.example", 300)].into_iter(),
            std::iter::empty(),
        );
        let text = metrics.render();
        assert_eq!(
            text.matches("gatehouse_certificate_expiry_timestamp_seconds{").count(),
            1
        );
        assert!(text.contains("environment=\"shop\"} 300\n"));
    }

    #[test]
    fn every_label_enum_lists_its_variants_in_order_with_distinct_labels() {
        in_order(MethodLabel::ALL, |v| v as usize, MethodLabel::as_str);
        in_order(UpstreamError::ALL, |v| v as usize, UpstreamError::as_str);
        in_order(HandshakeFailure::ALL, |v| v as usize, HandshakeFailure::as_str);
        in_order(LogDrop::ALL, |v| v as usize, LogDrop::as_str);
        in_order(ConnectionLimit::ALL, |v| v as usize, ConnectionLimit::as_str);
        in_order(&InstanceFailure::ALL, |v| v as usize, InstanceFailure::as_str);
        assert_eq!(
            MethodLabel::of(&Method::from_bytes(b"PURGE").unwrap_or_default()),
            MethodLabel::Other
        );
    }

    #[test]
    fn instance_labels_are_bounded_per_environment() {
        let metrics = Metrics::new().unwrap_or_else(|err| panic!("{err}"));
        let shop = metrics.environment("shop");
        let other_environment = metrics.environment("blog");
        for n in 0..100u16 {
            let address = format!("10.0.{}.{}:80", n / 256, n % 256);
            shop.instance(&address).attempted();
        }
        other_environment.instance("10.9.9.9:80").attempted();
        // Seen again: still its own label, not "other".
        shop.instance("10.0.0.1:80").attempted();
        let text = metrics.render();
        let labelled: std::collections::HashSet<&str> = text
            .lines()
            .filter(|line| line.starts_with("gatehouse_upstream_instance_requests_total{environment=\"shop\""))
            .filter_map(|line| line.split("instance=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(labelled.len(), INSTANCE_SERIES_PER_ENVIRONMENT + 1, "{labelled:?}");
        assert!(labelled.contains("other"));
        assert!(
            text.contains("gatehouse_upstream_instance_requests_total{environment=\"shop\",instance=\"other\"} 36")
        );
        assert!(
            text.contains(
                "gatehouse_upstream_instance_requests_total{environment=\"shop\",instance=\"10.0.0.1:80\"} 2"
            )
        );
        assert!(
            text.contains(
                "gatehouse_upstream_instance_requests_total{environment=\"blog\",instance=\"10.9.9.9:80\"} 1"
            )
        );
    }

    #[test]
    fn each_variant_is_counted_under_its_own_label() {
        let metrics = Metrics::new().unwrap_or_else(|err| panic!("{err}"));
        metrics.connection_refused(ConnectionLimit::PerClient);
        metrics.log_lines_dropped(LogDrop::WriteFailed, 3);
        metrics.handshake_failed(HandshakeFailure::ProxyProtocol);
        let shop = metrics.environment("shop");
        shop.upstream_failed(UpstreamError::NoInstance);
        shop.request_done(&Method::PATCH, StatusCode::NOT_FOUND, Duration::from_millis(1));
        let text = metrics.render();
        for line in [
            "gatehouse_connections_refused_total{limit=\"max_connections_per_client\"} 1",
            "gatehouse_connections_refused_total{limit=\"max_connections\"} 0",
            "gatehouse_log_lines_dropped_total{reason=\"write_failed\"} 3",
            "gatehouse_tls_handshake_failures_total{reason=\"proxy_protocol\"} 1",
            "gatehouse_upstream_errors_total{environment=\"shop\",kind=\"no_instance\"} 1",
            "gatehouse_http_requests_total{environment=\"shop\",method=\"PATCH\",status=\"4xx\"} 1",
        ] {
            assert!(text.lines().any(|exposed| exposed == line), "missing: {line}");
        }
    }
}
