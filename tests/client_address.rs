//! The real client address: from a PROXY protocol header (v1, v2) sent by the load balancer,
//! or from `X-Forwarded-For` when the peer is a trusted forwarder; never from an untrusted client.

mod common;

use common::upstream::Upstream;
use common::{Connect, Fixture, Running, environment_toml, get, h1_over, send_h1};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use proxy_header::{ProxiedAddress, ProxyHeader};

const CONNECT: Connect<'static> = Connect {
    server_name: "shop.apps.test",
    send_sni: true,
    alpn: &[b"http/1.1"],
};

const PROFILES: &str = "[profiles.office]\nranges = [\"192.0.2.0/24\"]\n";
const RULES: &str = "[access]\n\"/office/\" = \"office\"\n";

async fn start(listen_extra: &str) -> (Fixture, Upstream, Running) {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config(PROFILES);
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write(
        "gatehouse.toml",
        &main.replace("[tls]", &format!("{listen_extra}\n[tls]")),
    );
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], RULES),
    );
    let running = fixture.start().await;
    (fixture, app, running)
}

fn v2(source: &str) -> Vec<u8> {
    let source: std::net::SocketAddr = source.parse().unwrap();
    let destination = if source.is_ipv4() {
        "10.0.0.1:443"
    } else {
        "[2001:db8::443]:443"
    };
    let header = ProxyHeader::with_address(ProxiedAddress::stream(source, destination.parse().unwrap()));
    let mut bytes = Vec::new();
    header.encode_v2(&mut bytes).unwrap();
    bytes
}

async fn get_after(running: &Running, prefix: &[u8], path: &str) -> common::Answer {
    let tls = running.try_tls_after(prefix, CONNECT).await.unwrap();
    let mut sender = h1_over(tls).await;
    send_h1(&mut sender, get("shop.apps.test", path)).await
}

#[tokio::test]
async fn proxy_protocol_v1_names_the_client() {
    let (_fixture, _app, running) = start("proxy_protocol = true").await;
    let answer = get_after(&running, b"PROXY TCP4 192.0.2.10 10.0.0.1 56324 443\r\n", "/office/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("x-real-ip"), ["192.0.2.10"]);
    assert_eq!(answer.upstream_saw("x-forwarded-for"), ["192.0.2.10"]);
    let answer = get_after(&running, b"PROXY TCP4 198.51.100.7 10.0.0.1 56324 443\r\n", "/office/").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn proxy_protocol_v2_names_the_client_and_ipv4_mapped_addresses_match_ipv4_ranges() {
    let (_fixture, _app, running) = start("proxy_protocol = true").await;
    let answer = get_after(&running, &v2("192.0.2.20:40000"), "/office/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("x-real-ip"), ["192.0.2.20"]);
    let answer = get_after(&running, &v2("[::ffff:192.0.2.30]:40000"), "/office/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("x-real-ip"), ["192.0.2.30"]);
    let answer = get_after(&running, &v2("[2001:db8::1]:40000"), "/office/").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn malformed_or_missing_proxy_header_closes_the_connection() {
    let (_fixture, app, running) = start("proxy_protocol = true").await;
    for prefix in [
        &b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"[..],
        b"PROXY GARBAGE\r\n",
        b"\r\n\r\n\x00\r\nQUIT\nxxxx",
        b"",
    ] {
        let attempt = running.try_tls_after(prefix, CONNECT).await;
        assert!(attempt.is_err(), "a connection with prefix {prefix:?} was served");
    }
    assert_eq!(app.requests(), 0);
    // Well-formed connections are still served.
    let answer = get_after(&running, b"PROXY TCP4 192.0.2.10 10.0.0.1 56324 443\r\n", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
}

async fn get_with_forwarded_for(running: &Running, forwarded_for: &str, path: &str) -> common::Answer {
    let mut sender = running.h1("shop.apps.test").await;
    let request = Request::get(path)
        .header("host", "shop.apps.test")
        .header("x-forwarded-for", forwarded_for)
        .body(Empty::new().boxed())
        .unwrap();
    send_h1(&mut sender, request).await
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_forwarders() {
    let (_fixture, _app, trusted) = start("trusted_forwarders = [\"127.0.0.0/8\"]").await;
    let answer = get_with_forwarded_for(&trusted, "198.51.100.1, 192.0.2.7, 127.0.0.9", "/office/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("x-real-ip"), ["192.0.2.7"]);
    assert_eq!(
        answer.upstream_saw("x-forwarded-for"),
        ["198.51.100.1, 192.0.2.7, 127.0.0.9, 127.0.0.1"]
    );

    let (_fixture, _app, untrusted) = start("").await;
    let answer = get_with_forwarded_for(&untrusted, "192.0.2.7", "/office/").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = get_with_forwarded_for(&untrusted, "192.0.2.7", "/").await;
    assert_eq!(answer.upstream_saw("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(answer.upstream_saw("x-forwarded-for"), ["127.0.0.1"]);
}
