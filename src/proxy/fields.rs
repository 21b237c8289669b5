//! The header fields gatehouse reads and sets: the names of the fields it tells the app, which
//! fields are hop-by-hop (never forwarded) and which only gatehouse may set (a client's own values
//! are dropped), and how they are removed.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
pub fn is_hop_by_hop(name: &str) -> bool {
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
pub fn is_set_by_gatehouse(name: &str) -> bool {
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

/// Remove every field whose name is `doomed`, in one pass over the fields the message carries
/// (a handful, and usually none to remove): cheaper than a hashed lookup per name to remove.
pub fn remove_fields(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
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
pub fn remove_connection_named(headers: &mut HeaderMap) {
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

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .any(|item| item.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(token))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

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
    fn tokens_are_matched_case_insensitively() {
        assert!(has_token(&HeaderValue::from_static("gzip, Trailers"), "trailers"));
        assert!(!has_token(&HeaderValue::from_static("trailersx"), "trailers"));
    }
}
