//! The plain-HTTP listener redirects every request for a served host to https.

mod common;

use common::upstream::Upstream;
use common::{Fixture, environment_toml, get, h1_over, send_h1};
use http::StatusCode;
use tokio::net::TcpStream;

async fn plain_get(addr: std::net::SocketAddr, host: &str, path: &str) -> common::Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut sender = h1_over(tcp).await;
    send_h1(&mut sender, get(host, path)).await
}

#[tokio::test]
async fn redirects_to_the_same_host_and_path_on_https() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let http = running.http.unwrap();

    let answer = plain_get(http, "shop.apps.test:8080", "/login?next=%2Fcart").await;
    assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        answer.header("location"),
        Some("https://shop.apps.test/login?next=%2Fcart")
    );
    assert_eq!(answer.header("x-upstream"), None);

    let answer = plain_get(http, "nowhere.example", "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn redirect_names_a_non_default_https_port() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    // The listen table is written by main_config; rewrite it with redirect_port.
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write("gatehouse.toml", &main.replace("[tls]", "redirect_port = 8443\n[tls]"));
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let answer = plain_get(running.http.unwrap(), "shop.apps.test", "/").await;
    assert_eq!(answer.header("location"), Some("https://shop.apps.test:8443/"));
}
