//! Upstream host names: resolved at load through the configured name servers, re-resolved
//! periodically, so that an instance that moves to a new address is followed. A tiny DNS server
//! on loopback plays the platform's name server.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::dns::NameServer;
use common::upstream::Upstream;
use common::{Fixture, WAIT};
use http::StatusCode;
use tokio::net::TcpListener;

const HOST: &str = "shop.apps.test";

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
