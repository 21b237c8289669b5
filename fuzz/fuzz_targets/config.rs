//! Configuration files: any bytes parsed as the main file and as an environment file must give
//! a value or an error, never a panic; and a parsed environment's domains and names go through the
//! same validators the compiler uses.
#![no_main]

use gatehouse::config::schema::{EnvironmentFile, MainFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = toml::from_str::<MainFile>(text);
    if let Ok(environment) = toml::from_str::<EnvironmentFile>(text) {
        for domain in environment.domains.get_ref() {
            let mut buffer = [0u8; gatehouse::route::MAX_HOST_LEN];
            let _ = gatehouse::route::normalize_host(domain.get_ref().as_bytes(), &mut buffer);
        }
    }
});
