//! W3C trace context (`traceparent`, `tracestate`): a client's trace is continued only when it
//! comes through a trusted forwarder (`listen.trusted_forwarders`); otherwise, and whenever the
//! value is malformed, gatehouse starts a new trace, so that no client can choose the trace its
//! requests are recorded under, and nothing unparsable reaches the app.
//!
//! A new trace's id is the request id (`X-Request-Id`, 32 hex digits: a random per-process prefix
//! and a counter, unique across a fleet), so the access log, the app's traces and the request id
//! name a request the same way at no cost per request. Its parent id is the request id's random
//! prefix (gatehouse records no spans of its own), and it is marked sampled (`01`), leaving the
//! sampling decision to the app's tracer, as Envoy does by default.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `tracestate` longer than this is dropped (W3C: at least 512 bytes must be propagated).
const MAX_TRACESTATE: usize = 512;

/// Whether `name` (lower case) is a trace context field: removed from an untrusted client's
/// request with the other fields gatehouse sets, in one pass over the fields.
pub fn is_trace_context(name: &str) -> bool {
    matches!(name, "traceparent" | "tracestate")
}

/// Set the request's trace context for the app: the client's when `trusted` and valid, a new one
/// from `request_id` otherwise. Returns the trace id of a continued trace (`None` for a new one,
/// whose trace id is the request id). An untrusted client's fields are already gone
/// ([`is_trace_context`]).
pub fn propagate(headers: &mut HeaderMap, trusted: bool, request_id: &HeaderValue) -> Option<TraceId> {
    if !trusted {
        headers.insert(TRACEPARENT, new_traceparent(request_id));
        return None;
    }
    let continued = continued_trace(headers);
    match continued {
        Some(trace_id) => {
            let state_ok = {
                let mut states = headers.get_all(&TRACESTATE).iter();
                match (states.next(), states.next()) {
                    (None, _) => true,
                    (Some(state), None) => valid_tracestate(state),
                    (Some(_), Some(_)) => false,
                }
            };
            if !state_ok {
                headers.remove(&TRACESTATE);
            }
            Some(trace_id)
        }
        None => {
            if headers.contains_key(&TRACESTATE) {
                headers.remove(&TRACESTATE);
            }
            headers.insert(TRACEPARENT, new_traceparent(request_id));
            None
        }
    }
}

/// The trace id of the request's one valid `traceparent`, if it has exactly one.
fn continued_trace(headers: &HeaderMap) -> Option<TraceId> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    parse_traceparent(value.as_bytes())
}

/// The trace id of a `traceparent` (`version-traceid-parentid-flags`, lower-case hex), if it is
/// valid: version `00` is exactly 55 characters; a later version (not `ff`) may carry more after
/// a `-`; neither id may be all zeros.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceId> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let version = &value[..2];
    if !lower_hex(version) || version == b"ff" || (version == b"00" && value.len() != 55) {
        return None;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let hex = lower_hex(trace_id) && lower_hex(parent_id) && lower_hex(flags);
    let zero = |digits: &[u8]| digits.iter().all(|&digit| digit == b'0');
    if !dashes || !hex || zero(trace_id) || zero(parent_id) {
        return None;
    }
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(trace_id.chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Some(TraceId(id))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

/// A trace id, its 16 bytes (kept small: it travels in the request's state to the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// As `traceparent` writes it: 32 lower-case hex digits.
    pub fn hex(self) -> String {
        let mut text = String::with_capacity(32);
        for byte in self.0 {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        text
    }
}

fn lower_hex(digits: &[u8]) -> bool {
    digits.iter().all(|digit| matches!(digit, b'0'..=b'9' | b'a'..=b'f'))
}

/// A `tracestate` worth passing on: at most 512 bytes of visible ASCII (spaces and tabs allowed
/// around list members).
fn valid_tracestate(value: &HeaderValue) -> bool {
    value.len() <= MAX_TRACESTATE
        && value
            .as_bytes()
            .iter()
            .all(|&byte| byte == b' ' || byte == b'\t' || (0x21..0x7f).contains(&byte))
}

/// `00-<request id>-<its first 16 digits>-01`. Request ids are gatehouse's own 32 lower-case hex
/// digits ([`super::request_id`]), so they need no checking beyond the parent id not being all
/// zeros (a random prefix that came out zero, or an id of another length, takes a fixed one).
fn new_traceparent(request_id: &HeaderValue) -> HeaderValue {
    const FALLBACK: &[u8; 32] = b"00000000000000000000000000000001";
    let id: &[u8] = match request_id.as_bytes() {
        id if id.len() == 32 && &id[..16] != b"0000000000000000" => id,
        _ => FALLBACK,
    };
    let parent = if id == FALLBACK { &id[16..] } else { &id[..16] };
    let mut value = [0u8; 55];
    value[..3].copy_from_slice(b"00-");
    value[3..35].copy_from_slice(id);
    value[35] = b'-';
    value[36..52].copy_from_slice(parent);
    value[52..55].copy_from_slice(b"-01");
    HeaderValue::from_bytes(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_parse_and_malformed_ones_do_not() {
        assert_eq!(
            parse_traceparent(VALID.as_bytes()).map(TraceId::hex),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned())
        );
        // A later version may carry more after a dash.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // 00 is exactly 55
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // version ff
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",       // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",       // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",       // zero parent id
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // separator
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",        // short
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",       // not hex
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_trusted_valid_context_is_kept_and_anything_else_replaced() {
        let request_id = HeaderValue::from_static("a1b2c3d4e5f60718293a4b5c6d7e8f90");
        let expected_new = "00-a1b2c3d4e5f60718293a4b5c6d7e8f90-a1b2c3d4e5f60718-01";
        let headers = |traceparent: Option<&'static str>, tracestate: Option<&'static str>| {
            let mut map = HeaderMap::new();
            if let Some(value) = traceparent {
                map.insert(TRACEPARENT, HeaderValue::from_static(value));
            }
            if let Some(value) = tracestate {
                map.insert(TRACESTATE, HeaderValue::from_static(value));
            }
            map
        };
        // Trusted and valid: kept, with its tracestate.
        let mut map = headers(Some(VALID), Some("vendor=abc"));
        assert!(propagate(&mut map, true, &request_id).is_some());
        assert_eq!(map[TRACEPARENT], VALID);
        assert_eq!(map[TRACESTATE], "vendor=abc");
        // Untrusted: a new trace (the rewrite has removed the client's fields already; a
        // leftover traceparent is replaced all the same).
        assert!(is_trace_context("traceparent") && is_trace_context("tracestate"));
        let mut map = headers(Some(VALID), None);
        assert_eq!(propagate(&mut map, false, &request_id), None);
        assert_eq!(map[TRACEPARENT], expected_new);
        // Trusted but malformed: replaced.
        let mut map = headers(Some("00-zz-00f067aa0ba902b7-01"), Some("vendor=abc"));
        assert_eq!(propagate(&mut map, true, &request_id), None);
        assert_eq!(map[TRACEPARENT], expected_new);
        assert!(map.get(TRACESTATE).is_none());
        // None at all: a new trace.
        let mut map = headers(None, None);
        assert_eq!(propagate(&mut map, true, &request_id), None);
        assert_eq!(map[TRACEPARENT], expected_new);
        // Two traceparent fields: doubtful, replaced.
        let mut map = headers(Some(VALID), None);
        map.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(propagate(&mut map, true, &request_id), None);
        assert_eq!(map.get_all(TRACEPARENT).iter().count(), 1);
    }
}
