//! Routing: the request's host picks the environment (exact, then longest wildcard); unknown
//! hosts get 404; a host served under other TLS terms than the connection gets 421.

mod common;

use common::pki::KeyKind;
use common::upstream::Upstream;
use common::{Fixture, Running, environment_toml, get, send_h1, send_h2};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Apps {
    shop: Upstream,
    wild: Upstream,
    eu: Upstream,
    custom: Upstream,
}

async fn start() -> (Fixture, Apps, Running) {
    let fixture = Fixture::new();
    let apps = Apps {
        shop: Upstream::start("shop").await,
        wild: Upstream::start("wild").await,
        eu: Upstream::start("eu").await,
        custom: Upstream::start("custom").await,
    };
    fixture.issue("www.shop.example", &["www.shop.example"], KeyKind::Ecdsa);
    fixture.issue("partner", &["*.partner.example"], KeyKind::Ecdsa);
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[apps.shop.addr], ""),
    );
    fixture.environment(
        "wild",
        &environment_toml("wild", &["*.apps.test"], &[apps.wild.addr], ""),
    );
    fixture.environment("eu", &environment_toml("eu", &["*.eu.apps.test"], &[apps.eu.addr], ""));
    let certificates = "[[certificates]]\ncertificate = \"../www.shop.example.pem\"\nkey = \"../www.shop.example.key\"\n\
                        [[certificates]]\ncertificate = \"../partner.pem\"\nkey = \"../partner.key\"\n";
    fixture.environment(
        "custom",
        &environment_toml(
            "custom",
            &["www.shop.example", "*.partner.example"],
            &[apps.custom.addr],
            certificates,
        ),
    );
    let running = fixture.start().await;
    (fixture, apps, running)
}

#[tokio::test]
async fn exact_domain_wins_over_wildcard() {
    let (_fixture, apps, running) = start().await;
    let answer = running.get("shop.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream"), Some(apps.shop.name.as_str()));
    let answer = running.get("other.apps.test", "/").await;
    assert_eq!(answer.header("x-upstream"), Some(apps.wild.name.as_str()));
}

#[tokio::test]
async fn longest_wildcard_wins_at_any_depth() {
    let (_fixture, apps, running) = start().await;
    let mut sender = running.h1("x.eu.apps.test").await;
    let answer = send_h1(&mut sender, get("x.eu.apps.test", "/")).await;
    assert_eq!(answer.header("x-upstream"), Some(apps.eu.name.as_str()));
    let answer = send_h1(&mut sender, get("a.b.eu.apps.test", "/")).await;
    assert_eq!(answer.header("x-upstream"), Some(apps.eu.name.as_str()));
}

#[tokio::test]
async fn host_is_case_insensitive_and_port_is_ignored() {
    let (_fixture, apps, running) = start().await;
    let mut sender = running.h1("shop.apps.test").await;
    let answer = send_h1(&mut sender, get("SHOP.Apps.Test:8443", "/")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream"), Some(apps.shop.name.as_str()));
}

#[tokio::test]
async fn unknown_host_gets_404_page() {
    let (_fixture, _apps, running) = start().await;
    let mut sender = running.h1("shop.apps.test").await;
    let answer = send_h1(&mut sender, get("nowhere.example", "/")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.text().starts_with("404 Not Found"), "{}", answer.text());
    assert_eq!(answer.header("x-upstream"), None);
}

#[tokio::test]
async fn host_of_another_tls_policy_gets_421() {
    let (_fixture, apps, running) = start().await;
    // Connection made under the customer's certificate, request for a platform-certificate host.
    let mut custom = running.h1("www.shop.example").await;
    let answer = send_h1(&mut custom, get("shop.apps.test", "/")).await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(answer.header("x-upstream"), None);
    // ...and for another customer's name in the same environment, under yet another certificate.
    let answer = send_h1(&mut custom, get("x.partner.example", "/")).await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
    // Its own name on the same connection still works.
    let answer = send_h1(&mut custom, get("www.shop.example", "/")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream"), Some(apps.custom.name.as_str()));

    // Connection under the platform certificate, request for the customer's domain.
    let mut platform = running.h1("shop.apps.test").await;
    let answer = send_h1(&mut platform, get("www.shop.example", "/")).await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn http2_connection_reuse_across_platform_hosts_is_allowed_but_not_across_policies() {
    let (_fixture, apps, running) = start().await;
    let mut sender = running.h2("shop.apps.test").await;
    let request = |host: &str| {
        Request::get(format!("https://{host}/"))
            .body(Empty::new().boxed())
            .unwrap()
    };
    let answer = send_h2(&mut sender, request("shop.apps.test")).await;
    assert_eq!(answer.header("x-upstream"), Some(apps.shop.name.as_str()));
    let answer = send_h2(&mut sender, request("x.eu.apps.test")).await;
    assert_eq!(answer.header("x-upstream"), Some(apps.eu.name.as_str()));
    let answer = send_h2(&mut sender, request("www.shop.example")).await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn request_without_host_is_400() {
    let (_fixture, _apps, running) = start().await;
    let mut tls = running
        .tls(common::Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, tls.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.0 400") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
}

#[tokio::test]
async fn conflicting_authority_and_host_is_400() {
    let (_fixture, _apps, running) = start().await;
    let mut sender = running.h2("shop.apps.test").await;
    let request = Request::get("https://shop.apps.test/")
        .header("host", "x.eu.apps.test")
        .body(Empty::new().boxed())
        .unwrap();
    let answer = send_h2(&mut sender, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}
