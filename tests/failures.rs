//! Failures are answers: 502 when the app cannot be reached, 504 when it is silent too long,
//! 400 for a malformed request. Each with a short page, and the proxy keeps serving.

mod common;

use common::upstream::Upstream;
use common::{Connect, Fixture, environment_toml, get, send_h1};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An address on which nothing listens: bound once, then released.
async fn refused_addr() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn refused_upstream_gives_502_page() {
    let fixture = Fixture::new();
    let dead = refused_addr().await;
    fixture.main_config("");
    fixture.environment("dead", &environment_toml("dead", &["dead.apps.test"], &[dead], ""));
    let running = fixture.start().await;
    let answer = running.get("dead.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.text().starts_with("502 Bad Gateway"), "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[tokio::test]
async fn silent_upstream_gives_504_page_and_others_are_still_served() {
    let fixture = Fixture::new();
    let app = Upstream::start("slow").await;
    fixture.main_config("");
    fixture.environment(
        "slow",
        &environment_toml(
            "slow",
            &["slow.apps.test"],
            &[app.addr],
            "[timeouts]\nresponse = \"300ms\"\n",
        ),
    );
    let running = fixture.start().await;
    let mut sender = running.h1("slow.apps.test").await;
    let answer = send_h1(&mut sender, get("slow.apps.test", "/slow")).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(answer.text().starts_with("504 Gateway Timeout"), "{}", answer.text());
    // The same connection goes on serving.
    let answer = send_h1(&mut sender, get("slow.apps.test", "/fast")).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_request_gives_400_and_the_proxy_keeps_serving() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: shop.apps.test\r\nBad Header\r\n\r\n"[..],
        b"\x00\x01\x02 nonsense\r\n\r\n",
    ] {
        let mut tls = running
            .tls(Connect {
                server_name: "shop.apps.test",
                send_sni: true,
                alpn: &[b"http/1.1"],
            })
            .await;
        tls.write_all(garbage).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(common::WAIT, tls.read_to_end(&mut response))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
    // Host names that are no host names are refused too.
    let mut sender = running.h1("shop.apps.test").await;
    let answer = send_h1(&mut sender, get("shop apps test", "/")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().starts_with("400 Bad Request"), "{}", answer.text());
    let answer = running.get("shop.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn garbage_instead_of_a_tls_handshake_closes_only_that_connection() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let mut tcp = tokio::net::TcpStream::connect(running.https).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, tcp.read_to_end(&mut buffer))
        .await
        .unwrap();
    let answer = running.get("shop.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
}
