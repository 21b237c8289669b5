//! Configuration files: any bytes parsed as the main file must give a value or an error, never a
//! panic; and any bytes as an environment file, beside a fixed main file, go through the whole
//! loader and compiler (`snapshot::load`: parsing, every validation, certificates, profiles,
//! headers, upstream names) to a snapshot or to errors, never a panic or an endless read.
//!
//! The main file is not fuzzed through the compiler: it names the name servers, and a fuzzed one
//! could send lookups off this machine. Here they go to a name server on loopback that answers
//! every query at once with "no such name", so that an input naming a host costs no waiting.
#![no_main]

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::OnceLock;

use gatehouse::config::schema::MainFile;
use libfuzzer_sys::fuzz_target;

/// A name server on loopback that answers every query with NXDOMAIN; its address.
fn refusing_name_server() -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("name server socket");
    let addr = socket.local_addr().expect("name server address");
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1500];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer) {
            if length < 12 {
                continue;
            }
            let mut reply = buffer[..length].to_vec();
            // QR (a response), RD and RA kept; RCODE 3: no such name; no answer records.
            reply[2] |= 0x80;
            reply[3] = (reply[3] & 0xf0) | 0x83;
            reply[6..12].fill(0);
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr.to_string()
}

/// The configuration folder: a fixed main file, and `env/` for the fuzzed environment file.
fn folder() -> &'static PathBuf {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gatehouse-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("env")).expect("config folder");
        let main = format!(
            "environments = \"env/*.toml\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nadmin = \"off\"\n\
             [tls]\ndevelopment_certificate = true\n[logging]\naccess_log = \"off\"\naudit_log = \"off\"\n\
             [upstream]\nnameservers = [\"{}\"]\n\
             [profiles.office]\nranges = [\"192.0.2.0/24\"]\n[profiles.partner]\nranges = [\"198.51.100.0/24\"]\n",
            refusing_name_server()
        );
        std::fs::write(dir.join("gatehouse.toml"), main).expect("main file");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = toml::from_str::<MainFile>(text);
    let dir = folder();
    if std::fs::write(dir.join("env/fuzzed.toml"), text).is_ok() {
        let _ = gatehouse::snapshot::load(&dir.join("gatehouse.toml"));
    }
});
