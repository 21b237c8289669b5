//! Forwarding: what the app receives, what the client receives, and that bodies stream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::upstream::{FNV_START, Upstream, fnv1a, pattern, pattern_stream};
use common::{Fixture, Running, environment_toml, get, send_h1, send_h2};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEN_MIB: u64 = 10 * 1024 * 1024;

async fn start(instances: usize) -> (Fixture, Vec<Upstream>, Running) {
    let fixture = Fixture::new();
    let mut apps = Vec::new();
    for index in 0..instances {
        apps.push(Upstream::start(&format!("instance-{index}")).await);
    }
    let addrs: Vec<_> = apps.iter().map(|app| app.addr).collect();
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &addrs, ""));
    let running = fixture.start().await;
    (fixture, apps, running)
}

#[tokio::test]
async fn forwarded_headers_are_set_and_client_values_replaced() {
    let (_fixture, _apps, running) = start(1).await;
    let mut sender = running.h1("shop.apps.test").await;
    let request = Request::get("/who?x=1")
        .header("host", "shop.apps.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "evil.example")
        .header("x-request-id", "chosen-by-client")
        .header("forwarded", "for=203.0.113.9")
        .body(Empty::new().boxed())
        .unwrap();
    let answer = send_h1(&mut sender, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.text().contains("GET /who?x=1\n"), "{}", answer.text());
    assert_eq!(answer.upstream_saw("host"), ["shop.apps.test"]);
    assert_eq!(answer.upstream_saw("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(answer.upstream_saw("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(answer.upstream_saw("x-forwarded-proto"), ["https"]);
    assert_eq!(answer.upstream_saw("x-forwarded-host"), ["shop.apps.test"]);
    assert!(answer.upstream_saw("forwarded").is_empty());
    let ids = answer.upstream_saw("x-request-id");
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].len(), 32);
    assert!(ids[0].bytes().all(|b| b.is_ascii_hexdigit()), "{ids:?}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (_fixture, _apps, running) = start(1).await;
    let mut sender = running.h1("shop.apps.test").await;
    let request = Request::get("/")
        .header("host", "shop.apps.test")
        .header("connection", "keep-alive, x-client-private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=10")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "gzip")
        .header("upgrade", "h2c")
        .header("x-ordinary", "kept")
        .body(Empty::new().boxed())
        .unwrap();
    let answer = send_h1(&mut sender, request).await;
    for removed in [
        "x-client-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "connection",
    ] {
        assert!(
            answer.upstream_saw(removed).is_empty(),
            "{removed} reached the app:\n{}",
            answer.text()
        );
    }
    assert_eq!(answer.upstream_saw("x-ordinary"), ["kept"]);
    // The app answered with `Connection: x-app-private`, `X-App-Private` and `Keep-Alive`.
    assert_eq!(answer.header("x-upstream"), Some("instance-0"));
    assert_eq!(answer.header("x-app-private"), None);
    assert_eq!(answer.header("keep-alive"), None);
}

#[tokio::test]
async fn requests_are_spread_round_robin_over_instances() {
    let (_fixture, _apps, running) = start(2).await;
    let mut sender = running.h1("shop.apps.test").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let answer = send_h1(&mut sender, get("shop.apps.test", "/")).await;
        seen.push(answer.header("x-upstream").unwrap().to_owned());
    }
    assert_eq!(seen.iter().filter(|name| *name == "instance-0").count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|name| *name == "instance-1").count(), 2, "{seen:?}");
    assert_ne!(seen[0], seen[1]);
}

/// The app must see the first bytes of a 10 MiB upload before the client has sent the rest:
/// a proxy that buffered the body would never let this test past its wait.
#[tokio::test]
async fn ten_mib_upload_streams_through() {
    let (_fixture, apps, running) = start(1).await;
    let (frames, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let request = Request::post("/upload")
        .header("host", "shop.apps.test")
        .body(body.boxed())
        .unwrap();
    let mut sender = running.h1("shop.apps.test").await;
    let response = tokio::spawn(async move { send_h1(&mut sender, request).await });

    let chunk = 64 * 1024;
    let mut hash = FNV_START;
    let mut offset = 0u64;
    while offset < TEN_MIB {
        let bytes: Vec<u8> = (offset..offset + chunk).map(pattern).collect();
        hash = fnv1a(hash, &bytes);
        frames.send(Ok(Frame::data(Bytes::from(bytes)))).await.unwrap();
        offset += chunk;
        if offset == 1024 * 1024 {
            let started = tokio::time::Instant::now();
            while apps[0].upload_bytes_seen() == 0 {
                assert!(started.elapsed() < common::WAIT, "the app saw nothing of the first MiB");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(frames);
    let answer = tokio::time::timeout(common::WAIT, response).await.unwrap().unwrap();
    assert_eq!(answer.text(), format!("received {TEN_MIB} {hash:x}"));
}

/// The client must receive the first MiB of a 10 MiB download while the app holds back the rest.
#[tokio::test]
async fn ten_mib_download_streams_through() {
    let (_fixture, apps, running) = start(1).await;
    let mut sender = running.h1("shop.apps.test").await;
    let response = tokio::time::timeout(
        common::WAIT,
        sender.send_request(get("shop.apps.test", &format!("/gated-download/{TEN_MIB}"))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    let mut hash = FNV_START;
    let mut released = false;
    while let Some(frame) = tokio::time::timeout(common::WAIT, body.frame()).await.unwrap() {
        if let Some(data) = frame.unwrap().data_ref() {
            received += data.len() as u64;
            hash = fnv1a(hash, data);
        }
        if received >= 1024 * 1024 && !released {
            apps[0].release_download();
            released = true;
        }
    }
    assert!(released);
    assert_eq!(received, TEN_MIB);
    let expected = (0..TEN_MIB).map(pattern).collect::<Vec<u8>>();
    assert_eq!(hash, fnv1a(FNV_START, &expected));
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let (_fixture, _apps, running) = start(1).await;
    let mut sender = running.h1("shop.apps.test").await;
    let request = Request::get("/ws")
        .header("host", "shop.apps.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(Empty::new().boxed())
        .unwrap();
    let response = tokio::time::timeout(common::WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.headers().get("sec-websocket-accept").unwrap(),
        "accept-for-dGhlIHNhbXBsZSBub25jZQ=="
    );
    assert_eq!(response.headers().get("upgrade").unwrap(), "websocket");
    let upgraded = tokio::time::timeout(common::WAIT, hyper::upgrade::on(response))
        .await
        .unwrap()
        .unwrap();
    let mut io = TokioIo::new(upgraded);
    // A masked WebSocket text frame "hello", then a second message: both come back verbatim.
    let frame = [0x81, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1];
    for message in [&frame[..], b"second message"] {
        io.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(common::WAIT, io.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn http2_client_reaches_http11_app_with_cookies_te_and_trailers_translated() {
    let (_fixture, _apps, running) = start(1).await;
    let mut sender = running.h2("shop.apps.test").await;
    let request = Request::get("https://shop.apps.test/h2")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("te", "trailers")
        .body(Empty::new().boxed())
        .unwrap();
    let answer = send_h2(&mut sender, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("cookie"), ["a=1; b=2"]);
    assert_eq!(answer.upstream_saw("te"), ["trailers"]);
    assert_eq!(answer.upstream_saw("host"), ["shop.apps.test"]);

    let trailers_request = Request::get("https://shop.apps.test/trailers")
        .header("te", "trailers")
        .body(Empty::new().boxed())
        .unwrap();
    let answer = send_h2(&mut sender, trailers_request).await;
    assert_eq!(answer.text(), "part one, part two");
    let trailers = answer.trailers.expect("the app's trailers reach the HTTP/2 client");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");

    let upload = Request::post("https://shop.apps.test/upload")
        .body(StreamBody::new(pattern_stream(300_000)).boxed())
        .unwrap();
    let answer = send_h2(&mut sender, upload).await;
    let expected = fnv1a(FNV_START, &(0..300_000).map(pattern).collect::<Vec<u8>>());
    assert_eq!(answer.text(), format!("received 300000 {expected:x}"));
}
