//! Request ids: what gatehouse tells the app (`X-Request-Id`) and writes in its logs, one per
//! request.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

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
}
