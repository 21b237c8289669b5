//! The PROXY protocol reader: any first bytes of a connection give a client address or an
//! error, never a panic, and never read past the header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let mut input = data;
    let _ = runtime.block_on(gatehouse::server::proxy_protocol::read_client_address(&mut input, peer));
});
