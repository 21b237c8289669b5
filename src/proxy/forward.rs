//! Forwarding a routed request to one of its environment's app instances.
//!
//! The request is rewritten for the app (hop-by-hop headers out; `Host` kept; gatehouse's own
//! `X-Forwarded-*`, `X-Real-IP` and `X-Request-Id` in, whatever the client sent under those
//! names), handed to the environment's upstream group (which picks an instance, pools
//! connections and retries where safe), and the response streams back, held to the
//! environment's idle and total timeouts. Bodies are never buffered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::client_address::ClientAddress;
use super::observe::Details;
use super::upgrade;
use super::{ConnectionInfo, RequestContext};
use crate::body::{CountedBody, ReceivedBytes};
use crate::live::Served;
use crate::metrics::UpstreamError;
use crate::pages::{ResponseBody, page};
use crate::upstream::exchange::{self, Answered, Failed, Failure, Outgoing, Policy};
use crate::upstream::{Deadlines, UpstreamBody};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const SSL_PROTOCOL: HeaderName = HeaderName::from_static("ssl-protocol");
pub const SSL_CIPHER: HeaderName = HeaderName::from_static("ssl-cipher");
pub const SSL_CLIENT_S_DN: HeaderName = HeaderName::from_static("ssl-client-s-dn");
pub const SSL_CLIENT_I_DN: HeaderName = HeaderName::from_static("ssl-client-i-dn");
pub const SSL_CLIENT_SERIAL: HeaderName = HeaderName::from_static("ssl-client-serial");
pub const SSL_CLIENT_FINGERPRINT: HeaderName = HeaderName::from_static("ssl-client-fingerprint");
pub const SSL_CLIENT_VERIFY: HeaderName = HeaderName::from_static("ssl-client-verify");
/// Every header with this prefix is gatehouse's to set, whatever its suffix.
const SSL_CLIENT_PREFIX: &str = "ssl-client-";

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the
/// proxy-authentication pair, which is meant for a proxy and never for the app. `Trailer` is
/// end-to-end: HTTP/1.1 peers only send the trailer fields it declares.
///
/// A `match` on the (always lower-case) name compiles to a switch on its length and at most a
/// comparison or two: this runs for every field of every request and response.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Headers only gatehouse may tell the app; a client's own values are dropped, never trusted:
/// the `X-Forwarded-*` family, `X-Real-IP`, `X-Request-Id`, `Forwarded`, `SSL-Protocol`,
/// `SSL-Cipher`, and any `SSL-Client-*` whatever its suffix (the app must be able to trust every
/// header of that family to come from gatehouse).
fn is_set_by_gatehouse(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-real-ip"
            | "x-request-id"
            | "forwarded"
            | "ssl-protocol"
            | "ssl-cipher"
    ) || name.starts_with(SSL_CLIENT_PREFIX)
}

/// A routed request, rewritten for the app and ready to send.
///
/// Preparing is synchronous and sending is the only wait, so that the request's future (moved
/// into its box, and into each level's state, once per request) holds only what lives across
/// that wait: the outgoing request, not the client's request beside its parts.
pub struct Prepared {
    outgoing: Outgoing,
    policy: Policy,
    /// For a WebSocket (or other) upgrade: where the client's connection will be handed.
    downstream_upgrade: Option<tokio::sync::oneshot::Receiver<upgrade::UpgradedClient>>,
    total_deadline: Option<tokio::time::Instant>,
    /// Set when a body of unknown length outgrew the environment's limit while it streamed.
    exceeded: Option<Arc<AtomicBool>>,
}

/// Rewrite `request` for the app: its answer when it cannot go (400, 413).
#[expect(
    clippy::result_large_err,
    reason = "the request on its way out is as large as the answer that replaces it; boxing either adds an allocation"
)]
pub fn prepare(
    context: &RequestContext<'_>,
    host: HeaderValue,
    request: Request<Incoming>,
) -> Result<Prepared, Response<ResponseBody>> {
    let RequestContext {
        connection,
        environment,
        client,
        request_id,
        ..
    } = *context;
    let upgrade_protocol = upgrade::requested_protocol(&request);
    // Upgraded connections live as long as their users want; every other exchange has its limit.
    let total_deadline = environment
        .config
        .total_timeout
        .filter(|_| upgrade_protocol.is_none())
        .map(|total| tokio::time::Instant::now() + total);

    let (mut parts, body) = request.into_parts();
    let Ok(uri) = origin_form(&parts.uri) else {
        return Err(page(StatusCode::BAD_REQUEST));
    };
    let from_http2 = parts.version == Version::HTTP_2;
    rewrite_request_headers(&mut parts.headers, from_http2);
    set_forwarding_headers(&mut parts.headers, connection, client, host.clone(), request_id.clone());
    let upgrade = upgrade_protocol.is_some();
    if let Some(protocol) = upgrade_protocol {
        upgrade::keep_upgrade_headers(&mut parts.headers, protocol);
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;

    let limit = environment.config.max_request_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(page(StatusCode::PAYLOAD_TOO_LARGE));
    }
    // Only a body of unknown length can grow past the limit while it streams.
    let exceeded =
        (declared.is_none() && !http_body::Body::is_end_stream(&body)).then(|| Arc::new(AtomicBool::new(false)));
    let received = ReceivedBytes {
        metrics: environment.live.metrics.clone(),
        limit,
        exceeded: exceeded.clone(),
    };
    Ok(Prepared {
        outgoing: Outgoing {
            request: Request::from_parts(parts, Either::Left(CountedBody::new(body, received))),
            host,
            upgrade,
        },
        policy: Policy {
            retries: environment.config.retries,
            response_timeout: environment.config.response_timeout,
        },
        downstream_upgrade: upgrade.then(|| connection.upgrade.wait_for_client()),
        total_deadline,
        exceeded,
    })
}

/// Send an admitted request to an instance of its environment and stream the answer back; an
/// answer that replaced the request at admission (`Err`) passes straight through.
///
/// A function returning an `async move` block, not an `async fn`, so that the admission is held
/// once in the request's state (see [`exchange::send`]). It takes the admission whole, not its
/// parts, so that the caller's state does not keep a second copy of it across the wait: a value
/// matched apart in the caller (or passed as separate parts) keeps its place in the caller's
/// state for as long as the wait lasts.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its arguments twice in the request's state, which is moved per request"
)]
pub fn forward<'a>(
    admitted: Result<(Served<'a>, Prepared), Response<ResponseBody>>,
    details: &'a mut Details,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'a {
    async move {
        // Taken apart field by field: what the exchange consumes is moved into it before the
        // wait, and only the small rest is kept across it.
        let (
            environment,
            Prepared {
                outgoing,
                policy,
                downstream_upgrade,
                total_deadline,
                exceeded,
            },
        ) = match admitted {
            Ok(admitted) => admitted,
            Err(answer) => return answer,
        };
        let sending = exchange::send(&environment.live.upstream, outgoing, policy);
        let outcome = match total_deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, sending).await.unwrap_or_else(|_| {
                Err(Failed {
                    failure: Failure::Timeout(environment.config.total_timeout.unwrap_or_default()),
                    instance: None,
                    waited: Duration::ZERO,
                })
            }),
            None => sending.await,
        };
        let answered = match outcome {
            Ok(answered) => answered,
            Err(failed) => {
                details.upstream = failed.instance.map(|addr| (addr, failed.waited));
                let too_large = exceeded.as_ref().is_some_and(|flag| flag.load(Ordering::SeqCst));
                return failure_page(environment, &failed, too_large);
            }
        };
        let Answered {
            response,
            lease,
            waited,
        } = answered;
        details.upstream = Some((lease.instance().addr, waited));
        environment.live.metrics.upstream_answered(waited);

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match downstream_upgrade {
                Some(downstream) => upgrade::tunnel(downstream, response),
                // The app switched protocols without being asked: nothing sane can follow.
                None => page(StatusCode::BAD_GATEWAY),
            };
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let deadlines = Deadlines {
            idle: environment.config.idle_timeout,
            total: total_deadline,
        };
        Response::from_parts(parts, Either::Left(UpstreamBody::new(body, deadlines, lease)))
    }
}

/// The answer when no instance answered: 503 (with the maintenance page) when none was
/// available, 504 on a timeout, 413 for a body that outgrew its limit, else 502.
fn failure_page(environment: Served<'_>, failed: &Failed, too_large: bool) -> Response<ResponseBody> {
    let (config, metrics) = (environment.config, &environment.live.metrics);
    let instance = failed.instance.map(|addr| addr.to_string()).unwrap_or_default();
    tracing::warn!(environment = %config.name, instance, error = %failed.failure, "upstream request failed");
    let (status, kind) = match &failed.failure {
        Failure::NoInstance => (StatusCode::SERVICE_UNAVAILABLE, UpstreamError::NoInstance),
        Failure::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, UpstreamError::Timeout),
        Failure::Connect(_) => (StatusCode::BAD_GATEWAY, UpstreamError::Connect),
        Failure::Broken(_) if too_large => return page(StatusCode::PAYLOAD_TOO_LARGE),
        Failure::Broken(_) => (StatusCode::BAD_GATEWAY, UpstreamError::Other),
    };
    metrics.upstream_failed(kind);
    if status != StatusCode::SERVICE_UNAVAILABLE {
        return page(status);
    }
    let mut response = match &config.maintenance_page {
        Some(custom) => custom.respond(status),
        None => page(status),
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, config.maintenance_retry_after.clone());
    response
}

/// The request's path and query, as an HTTP/1.1 request line carries it.
fn origin_form(original: &Uri) -> Result<Uri, http::Error> {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder().path_and_query(path).build()
}

/// Remove what must not travel from the client to the app, and translate HTTP/2-only forms.
pub fn rewrite_request_headers(headers: &mut HeaderMap, from_http2: bool) {
    let client_accepts_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|value| has_token(value, "trailers"));
    remove_connection_named(headers);
    remove_fields(headers, |name| is_hop_by_hop(name) || is_set_by_gatehouse(name));
    if client_accepts_trailers {
        // gatehouse passes trailers through, so the client's willingness holds end to end.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if from_http2 {
        merge_cookies(headers);
    }
}

/// The fields [`set_forwarding_headers`] inserts, without a client certificate.
const FORWARDING_FIELDS: usize = 8;

fn set_forwarding_headers(
    headers: &mut HeaderMap,
    connection: &ConnectionInfo,
    client: &ClientAddress,
    host: HeaderValue,
    request_id: HeaderValue,
) {
    let peer_is_client = client.ip == connection.client.ip().to_canonical();
    let real_ip = match peer_is_client {
        true => connection.client_ip.clone(),
        false => HeaderValue::try_from(client.ip.to_string()).unwrap_or_else(|_| connection.client_ip.clone()),
    };
    let forwarded_for = client
        .forwarded_for
        .clone()
        .unwrap_or_else(|| connection.client_ip.clone());
    // Room for the fields below at once: the map hyper parsed is sized for the client's fields,
    // and growing it field by field would rehash it more than once.
    headers.reserve(FORWARDING_FIELDS);
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_REAL_IP, real_ip);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    headers.insert(X_FORWARDED_HOST, host.clone());
    headers.insert(X_REQUEST_ID, request_id);
    headers.insert(header::HOST, host);
    headers.insert(SSL_PROTOCOL, connection.tls_protocol.clone());
    headers.insert(SSL_CIPHER, connection.tls_cipher.clone());
    if let Some(identity) = connection.verified_identity() {
        headers.insert(SSL_CLIENT_S_DN, identity.subject_dn.clone());
        headers.insert(SSL_CLIENT_I_DN, identity.issuer_dn.clone());
        headers.insert(SSL_CLIENT_SERIAL, identity.serial.clone());
        headers.insert(SSL_CLIENT_FINGERPRINT, identity.fingerprint.clone());
        headers.insert(SSL_CLIENT_VERIFY, HeaderValue::from_static("SUCCESS"));
    }
}

/// Remove every field whose name is `doomed`, in one pass over the fields the message carries
/// (a handful, and usually none to remove): cheaper than a hashed lookup per name to remove.
fn remove_fields(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let mut removed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if doomed(name.as_str()) {
            removed.push(name.clone());
        }
    }
    for name in removed {
        headers.remove(name);
    }
}

/// Remove the fields the `Connection` header names (other than `Host`): they are hop-by-hop too.
fn remove_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Remove hop-by-hop headers, including every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_connection_named(headers);
    remove_fields(headers, is_hop_by_hop);
}

/// HTTP/2 lets clients send each cookie as its own header field; HTTP/1.1 apps expect one
/// `Cookie` header with the pairs joined by "; " (RFC 9113 8.2.3).
fn merge_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .any(|item| item.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(token))
    })
}

/// Request ids: a random per-process prefix and a counter, as 32 hex digits. Unique across the
/// fleet's processes without coordination, and cheap (no syscall per request).
#[derive(Debug)]
pub struct RequestIds {
    /// The prefix's 16 hex digits, written once.
    prefix: [u8; 16],
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // Without randomness the ids stay unique within the process, which is what matters most.
        let _ = getrandom::fill(&mut seed);
        Self {
            prefix: hex_digits(u64::from_ne_bytes(seed)),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> HeaderValue {
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(&self.prefix);
        id[16..].copy_from_slice(&hex_digits(count));
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// `value` as 16 lower-case hex digits, most significant first.
fn hex_digits(value: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (index, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[((value >> (60 - 4 * index)) & 0xf) as usize];
    }
    digits
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

    #[test]
    fn connection_named_headers_are_removed_but_host_is_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret, host"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::HOST, HeaderValue::from_static("a.example"));
        headers.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        remove_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(KEEP_ALIVE).is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert_eq!(
            headers.get(header::HOST).map(HeaderValue::as_bytes),
            Some(&b"a.example"[..])
        );
    }

    #[test]
    fn every_header_gatehouse_sets_is_removed_from_what_the_client_sent() {
        let ours = [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_REAL_IP,
            X_REQUEST_ID,
            FORWARDED,
            SSL_PROTOCOL,
            SSL_CIPHER,
            SSL_CLIENT_S_DN,
            SSL_CLIENT_I_DN,
            SSL_CLIENT_SERIAL,
            SSL_CLIENT_FINGERPRINT,
            SSL_CLIENT_VERIFY,
            HeaderName::from_static("ssl-client-anything"),
        ];
        let hop = [
            header::CONNECTION,
            KEEP_ALIVE,
            PROXY_CONNECTION,
            header::TE,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::PROXY_AUTHORIZATION,
            header::PROXY_AUTHENTICATE,
        ];
        let kept = [
            "x-forwarded",
            "x-forwarded-fo",
            "ssl-client",
            "user-agent",
            "trailer",
            "host",
            "cookie",
        ];
        let mut headers = HeaderMap::new();
        for name in ours.iter().chain(&hop) {
            headers.append(name.clone(), HeaderValue::from_static("from the client"));
        }
        for name in kept {
            headers.append(name, HeaderValue::from_static("kept"));
        }
        rewrite_request_headers(&mut headers, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        let mut expected = kept.to_vec();
        expected.sort_unstable();
        assert_eq!(left, expected);
    }

    #[test]
    fn request_ids_are_distinct_hex() {
        let ids = RequestIds::new();
        let first = ids.next();
        let second = ids.next();
        assert_ne!(first, second);
        assert_eq!(first.len(), 32);
        assert!(first.as_bytes().iter().all(u8::is_ascii_hexdigit));
        // One process's ids share the prefix and count up in the last 16 digits.
        assert_eq!(first.as_bytes()[..16], second.as_bytes()[..16]);
        assert_eq!(&first.as_bytes()[16..], b"0000000000000000");
        assert_eq!(&second.as_bytes()[16..], b"0000000000000001");
        assert_eq!(&hex_digits(0x0123_4567_89ab_cdef), b"0123456789abcdef");
    }

    #[test]
    fn tokens_are_matched_case_insensitively() {
        assert!(has_token(&HeaderValue::from_static("gzip, Trailers"), "trailers"));
        assert!(!has_token(&HeaderValue::from_static("trailersx"), "trailers"));
    }
}
