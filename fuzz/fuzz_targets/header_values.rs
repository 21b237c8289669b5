//! Response header validators: any value is accepted or refused, never a panic.
#![no_main]

use gatehouse::headers::validate::KNOWN_HEADERS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    for header in KNOWN_HEADERS {
        let _ = (header.validate)(value);
    }
});
