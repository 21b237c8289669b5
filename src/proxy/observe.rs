//! Observing a request from arrival to the end of its response body: metrics and the access log
//! line are recorded when the response body is dropped, that is when it has been sent in full or
//! the client went away, so durations and byte counts are the real ones.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Method, StatusCode, Uri, Version};
use serde::Serialize;

use crate::access::profile::Decision;
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
    pub client_certificate: Option<String>,
    pub status: StatusCode,
    pub upstream: Option<(SocketAddr, Duration)>,
    pub decision: Option<Decision>,
    pub format: AccessFormat,
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
            sink.write(entry.line(sent, elapsed));
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
    client_certificate: Option<&'a str>,
    status: u16,
    bytes_sent: u64,
    duration_ms: f64,
    upstream: Option<String>,
    upstream_duration_ms: Option<f64>,
    decision: Option<&'static str>,
    decision_reason: Option<&'static str>,
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
            client_certificate: self.client_certificate.as_deref(),
            status: self.status.as_u16(),
            bytes_sent: sent,
            duration_ms: millis(elapsed),
            upstream: self.upstream.map(|(addr, _)| addr.to_string()),
            upstream_duration_ms: self.upstream.map(|(_, duration)| millis(duration)),
            decision: self.decision.map(|d| if d.is_allowed() { "allow" } else { "deny" }),
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
