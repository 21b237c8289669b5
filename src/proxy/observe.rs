//! Observing a request from arrival to the end of its response body: metrics and the access log
//! line are recorded when the response body is dropped, that is when it has been sent in full or
//! the client went away, so durations and byte counts are the real ones.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Method, StatusCode, Uri, Version};
use serde::Serialize;

use crate::access::profile::{CertificateStatus, Decision};
use crate::body::{CountingBody, Settle};
use crate::logs::{AccessFormat, LogSink, push_common_log_time, rfc3339_now};
use crate::metrics::EnvironmentMetrics;

/// What the request path learned about a request, for metrics and logs.
#[derive(Debug, Default)]
pub struct Details {
    pub environment: Option<usize>,
    pub client: Option<IpAddr>,
    pub decision: Option<Decision>,
    pub upstream: Option<(SocketAddr, Duration)>,
    /// The client's trace id, when its trace was continued ([`super::trace`]); otherwise the
    /// trace is the request id.
    pub trace_id: Option<super::trace::TraceId>,
}

/// Which requests of an environment get an access log line (`[access_log]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogPolicy {
    /// Every request (the default).
    every: bool,
    /// Otherwise: errors (status 400 and above, denials among them), requests that a report-only
    /// profile would deny, and requests at least this slow, and of the rest, `sample_per_million`
    /// in a million.
    slow: Duration,
    sample_per_million: u64,
}

impl LogPolicy {
    pub const EVERY: Self = Self {
        every: true,
        slow: Duration::ZERO,
        sample_per_million: 1_000_000,
    };

    pub fn notable(slow: Duration, sample: f64) -> Self {
        Self {
            every: false,
            slow,
            sample_per_million: (sample.clamp(0.0, 1.0) * 1_000_000.0).round() as u64,
        }
    }

    /// Whether the request with sequence number `sequence` (its request id's counter) gets a
    /// line. The sample is exact over consecutive numbers, and needs no random draw.
    fn keeps(&self, status: StatusCode, elapsed: Duration, sequence: impl FnOnce() -> u64) -> bool {
        let sampled = || {
            let sequence = sequence();
            let share = |n: u64| u128::from(n) * u128::from(self.sample_per_million) / 1_000_000;
            share(sequence.wrapping_add(1)) != share(sequence)
        };
        self.every || status.as_u16() >= 400 || elapsed >= self.slow || sampled()
    }
}

/// The request's number within its process: the counter in the last 16 hex digits of its id.
fn sequence_of(request_id: &HeaderValue) -> u64 {
    let digits = request_id.as_bytes();
    digits
        .get(digits.len().saturating_sub(16)..)
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

/// The fields of an access log line that are known when the response head is ready.
#[derive(Debug)]
pub struct AccessEntry {
    pub request_id: HeaderValue,
    pub trace_id: Option<super::trace::TraceId>,
    pub environment: Option<Box<str>>,
    /// The client address as text (the `X-Real-IP` the app was given).
    pub client: HeaderValue,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub version: Version,
    pub tls_version: HeaderValue,
    pub sni: Option<HeaderValue>,
    pub client_certificate: Option<String>,
    /// How the client's certificate stood with each CA of the connection's policy (its id and
    /// the verdict), when the policy asks for a certificate: what `gatehouse replay` needs to
    /// judge a certificate decision under another configuration.
    pub client_cas: Option<Vec<(u64, CertificateStatus)>>,
    pub status: StatusCode,
    pub upstream: Option<(SocketAddr, Duration)>,
    pub decision: Option<Decision>,
    pub format: AccessFormat,
    /// The environment's `[access_log]`: whether this request gets a line is decided at its end.
    pub policy: LogPolicy,
}

/// Everything recorded when the response body ends.
#[derive(Debug)]
pub struct Exchange {
    pub started: Instant,
    pub metrics: Arc<EnvironmentMetrics>,
    pub method: Method,
    pub status: StatusCode,
    /// Present when the access log is on.
    pub log: Option<(Box<AccessEntry>, LogSink)>,
}

impl Settle for Exchange {
    /// The response body is done: record the request's metrics and its access log line.
    fn settle(self, sent: u64) {
        let elapsed = self.started.elapsed();
        self.metrics.request_done(&self.method, self.status, elapsed);
        self.metrics.bytes(0, sent);
        if let Some((entry, sink)) = self.log {
            // A staged (report-only) denial is what the operator is watching for: always notable.
            let staged_denial = matches!(entry.decision, Some(Decision::WouldDeny(_)));
            if staged_denial
                || entry
                    .policy
                    .keeps(entry.status, elapsed, || sequence_of(&entry.request_id))
            {
                sink.write(entry.line(sent, elapsed));
            } else {
                self.metrics.access_log_skipped();
            }
        }
    }
}

/// A response body recording its exchange when it ends.
pub type ObservedBody<B> = CountingBody<B, Exchange>;

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    log: &'static str,
    request_id: &'a str,
    trace_id: &'a str,
    environment: Option<&'a str>,
    client: String,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    protocol: &'static str,
    tls_version: &'a str,
    sni: Option<&'a str>,
    client_certificate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cas: Option<CaVerdicts<'a>>,
    status: u16,
    bytes_sent: u64,
    duration_ms: f64,
    upstream: Option<String>,
    upstream_duration_ms: Option<f64>,
    decision: Option<&'static str>,
    decision_reason: Option<&'static str>,
}

/// `{"<CA id>": "verified", ...}`: a certificate's verdicts by CA.
struct CaVerdicts<'a>(&'a [(u64, CertificateStatus)]);

impl Serialize for CaVerdicts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            (self.0.iter()).map(|&(id, status)| (crate::access::profile::ClientCa::id_text(id), status.as_str())),
        )
    }
}

pub fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl AccessEntry {
    fn line(&self, sent: u64, elapsed: Duration) -> String {
        match self.format {
            AccessFormat::Json => self.json(sent, elapsed),
            AccessFormat::Common => self.common(sent),
        }
    }

    fn json(&self, sent: u64, elapsed: Duration) -> String {
        let text = |value: &HeaderValue| std::str::from_utf8(value.as_bytes()).unwrap_or("-").to_owned();
        let request_id = text(&self.request_id);
        let trace_id = self.trace_id.map(super::trace::TraceId::hex);
        let tls_version = text(&self.tls_version);
        let host = self.host.as_ref().map(text);
        let sni = self.sni.as_ref().map(text);
        let line = JsonLine {
            time: rfc3339_now(),
            log: "access",
            request_id: &request_id,
            trace_id: trace_id.as_deref().unwrap_or(&request_id),
            environment: self.environment.as_deref(),
            client: text(&self.client),
            method: self.method.as_str(),
            host: host.as_deref(),
            path: self.uri.path(),
            protocol: protocol_name(self.version),
            tls_version: &tls_version,
            sni: sni.as_deref(),
            client_certificate: self.client_certificate.as_deref(),
            client_cas: self.client_cas.as_deref().map(CaVerdicts),
            status: self.status.as_u16(),
            bytes_sent: sent,
            duration_ms: millis(elapsed),
            upstream: self.upstream.map(|(addr, _)| addr.to_string()),
            upstream_duration_ms: self.upstream.map(|(_, duration)| millis(duration)),
            decision: self.decision.map(Decision::outcome),
            decision_reason: self.decision.map(Decision::reason),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// `client - - [time] "METHOD path protocol" status bytes`, built piece by piece: this runs
    /// once per request, and the general formatter costs several times as much.
    fn common(&self, sent: u64) -> String {
        let path = self.uri.path();
        let mut line = String::with_capacity(96 + path.len());
        line.push_str(std::str::from_utf8(self.client.as_bytes()).unwrap_or("-"));
        line.push_str(" - - [");
        push_common_log_time(&mut line);
        line.push_str("] \"");
        line.push_str(self.method.as_str());
        line.push(' ');
        line.push_str(path);
        line.push(' ');
        line.push_str(protocol_name(self.version));
        line.push_str("\" ");
        line.push_str(self.status.as_str());
        line.push(' ');
        line.push_str(itoa::Buffer::new().format(sent));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notable_policy_keeps_errors_slow_requests_and_an_exact_sample() {
        let policy = LogPolicy::notable(Duration::from_secs(1), 0.25);
        let fast = Duration::from_millis(5);
        assert!(policy.keeps(StatusCode::NOT_FOUND, fast, || 1));
        assert!(policy.keeps(StatusCode::FORBIDDEN, fast, || 1));
        assert!(policy.keeps(StatusCode::BAD_GATEWAY, fast, || 1));
        assert!(policy.keeps(StatusCode::OK, Duration::from_secs(2), || 1));
        let kept = (1000..1100)
            .filter(|n| policy.keeps(StatusCode::OK, fast, || *n))
            .count();
        assert_eq!(kept, 25);
        let none = LogPolicy::notable(Duration::from_secs(1), 0.0);
        assert!(!(0..1000).any(|n| none.keeps(StatusCode::OK, fast, || n)));
        assert!((0..10).all(|n| LogPolicy::EVERY.keeps(StatusCode::OK, fast, || n)));
        assert_eq!(
            sequence_of(&HeaderValue::from_static("a1b2c3d4e5f607180000000000000010")),
            16
        );
    }
}
