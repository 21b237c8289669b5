//! Upstream host names: resolved at load through the configured name servers, re-resolved
//! periodically, so that an instance that moves to a new address is followed. A tiny DNS server
//! on loopback plays the platform's name server.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::upstream::Upstream;
use common::{Fixture, WAIT};
use http::StatusCode;
use tokio::net::{TcpListener, UdpSocket};

const HOST: &str = "shop.apps.test";

/// A name server that answers every A query with one address (TTL 0), no AAAA records, and
/// NXDOMAIN for names that start with `missing`.
struct NameServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Ipv4Addr>>,
    task: tokio::task::JoinHandle<()>,
}

impl NameServer {
    async fn start(answer: Ipv4Addr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let current = answer.clone();
        let task = tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            loop {
                let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let address = *current.lock().unwrap();
                if let Some(reply) = reply(&buffer[..length], address) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        Self { addr, answer, task }
    }

    fn move_to(&self, address: Ipv4Addr) {
        *self.answer.lock().unwrap() = address;
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer to one DNS query (RFC 1035 4.1), or `None` for what is not a query.
fn reply(query: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    let mut name = Vec::new();
    loop {
        let length = usize::from(*query.get(end)?);
        end += 1;
        if length == 0 {
            break;
        }
        name.push(String::from_utf8_lossy(query.get(end..end + length)?).into_owned());
        end += length;
    }
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    end += 4;
    let missing = name.first().is_some_and(|label| label.starts_with("missing"));
    let answers = u16::from(qtype == 1 && !missing);
    let mut reply = Vec::with_capacity(end + 16);
    reply.extend_from_slice(&query[0..2]);
    // QR, RD, RA; RCODE 3 (NXDOMAIN) for missing names.
    reply.extend_from_slice(&[0x81, if missing { 0x83 } else { 0x80 }]);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..end]);
    if answers == 1 {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}

fn main_extra(name_server: &NameServer) -> String {
    format!(
        "[upstream]\nnameservers = [\"{}\"]\nresolve_interval = \"100ms\"\n",
        name_server.addr
    )
}

fn environment(upstream: &str) -> String {
    format!("name = \"shop\"\ndomains = [\"{HOST}\"]\nupstreams = [\"{upstream}\"]\n")
}

// Loading resolves names synchronously (as gatehouse does before it serves), so the test's own
// name server needs a second runtime thread to answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_moves_is_followed() {
    // The same port on two loopback addresses: the "old" and the "new" home of the instance.
    let old_home = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = old_home.local_addr().unwrap().port();
    let new_home = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
    let old = Upstream::serve_on(old_home, "old", None);
    let new = Upstream::serve_on(new_home, "new", None);

    let name_server = NameServer::start(Ipv4Addr::new(127, 0, 0, 1)).await;
    let fixture = Fixture::new();
    fixture.main_config(&main_extra(&name_server));
    fixture.environment("shop", &environment(&format!("app.shop.internal:{port}")));
    let running = fixture.start().await;
    let answer = running.get(HOST, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream"), Some("old"));

    name_server.move_to(Ipv4Addr::new(127, 0, 0, 2));
    let started = tokio::time::Instant::now();
    let mut served_by = String::new();
    while started.elapsed() < WAIT {
        let answer = running.get(HOST, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        served_by = answer.header("x-upstream").unwrap_or_default().to_owned();
        if served_by == "new" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_by, "new", "gatehouse kept sending to the old address");
    let requests_to_old = old.requests();
    for _ in 0..5 {
        assert_eq!(running.get(HOST, "/").await.header("x-upstream"), Some("new"));
    }
    assert_eq!(old.requests(), requests_to_old);
    assert!(new.requests() >= 6);
    // The config view shows what the name stands for now.
    let config = common::admin_get(&running, "/config").await.text();
    assert!(config.contains(&format!("app.shop.internal:{port}")), "{config}");
}

#[test]
fn a_name_that_does_not_resolve_is_a_config_error_naming_its_line() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let name_server = runtime.block_on(NameServer::start(Ipv4Addr::LOCALHOST));
    let fixture = Fixture::new();
    fixture.main_config(&main_extra(&name_server));
    fixture.environment("shop", &environment("missing-app.internal:8080"));
    let errors = gatehouse::snapshot::load(&fixture.path("gatehouse.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        errors.contains("shop.toml:3: key `upstreams`: cannot resolve missing-app.internal"),
        "{errors}"
    );
}

#[test]
fn a_name_server_that_is_not_an_address_is_a_config_error() {
    let fixture = Fixture::new();
    fixture.main_config("[upstream]\nnameservers = [\"dns.internal\"]\n");
    fixture.environment("shop", &environment("127.0.0.1:8080"));
    let errors = gatehouse::snapshot::load(&fixture.path("gatehouse.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        errors.contains("key `upstream.nameservers`: expected an address as ip:port"),
        "{errors}"
    );
}
