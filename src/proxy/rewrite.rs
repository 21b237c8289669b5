//! Rewriting a client's request for the app: hop-by-hop fields and every field only gatehouse
//! may set are removed from what the client sent, gatehouse's own `X-Forwarded-*`, `X-Real-IP`,
//! `X-Request-Id`, `SSL-*` and `Host` are set, and HTTP/2-only forms are translated.

use http::header::{self, HeaderMap, HeaderValue};

use super::client_address::ClientAddress;
use super::fields::*;
use crate::access::profile::ClientCa;
use crate::connection::ConnectionInfo;
use std::sync::Arc;

/// Remove what must not travel from the client to the app, and translate HTTP/2-only forms.
/// An untrusted client's trace context goes in the same pass ([`super::trace`]).
pub fn rewrite_request_headers(headers: &mut HeaderMap, from_http2: bool, trusted_forwarder: bool) {
    let client_accepts_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|value| has_token(value, "trailers"));
    remove_connection_named(headers);
    remove_fields(headers, |name| {
        is_hop_by_hop(name) || is_set_by_gatehouse(name) || (!trusted_forwarder && super::trace::is_trace_context(name))
    });
    if client_accepts_trailers {
        // gatehouse passes trailers through, so the client's willingness holds end to end.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if from_http2 {
        merge_cookies(headers);
    }
}

/// The fields [`set_forwarding_headers`] inserts, without a client certificate (`traceparent`
/// among them).
const FORWARDING_FIELDS: usize = 9;

pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    connection: &ConnectionInfo,
    client: &ClientAddress,
    host: HeaderValue,
    request_id: HeaderValue,
    client_cas: &[Arc<ClientCa>],
) -> Option<super::trace::TraceId> {
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
    headers.insert(X_REQUEST_ID, request_id.clone());
    headers.insert(header::HOST, host);
    headers.insert(SSL_PROTOCOL, connection.tls_protocol.clone());
    headers.insert(SSL_CIPHER, connection.tls_cipher.clone());
    if let Some(identity) = connection.verified_identity(client_cas) {
        headers.insert(SSL_CLIENT_S_DN, identity.subject_dn.clone());
        headers.insert(SSL_CLIENT_I_DN, identity.issuer_dn.clone());
        headers.insert(SSL_CLIENT_SERIAL, identity.serial.clone());
        headers.insert(SSL_CLIENT_FINGERPRINT, identity.fingerprint.clone());
        headers.insert(SSL_CLIENT_VERIFY, HeaderValue::from_static("SUCCESS"));
    }
    super::trace::propagate(headers, client.via_trusted_forwarder, &request_id)
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

#[cfg(test)]
mod tests {
    use http::header::HeaderName;

    use super::*;

    const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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
        rewrite_request_headers(&mut headers, false, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        let mut expected = kept.to_vec();
        expected.sort_unstable();
        assert_eq!(left, expected);
    }
}
