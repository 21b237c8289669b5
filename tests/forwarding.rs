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

// Keep-alive connections are parked between requests: once idle, hyper's connection (and its
// buffers) is released and only the TLS stream waits for the client's next bytes. None of that
// may be visible to a client: the tests below pause longer than a connection takes to be
// parked (20 ms) at every point where a byte could be lost or misread.
const PAUSE: Duration = Duration::from_millis(120);

/// Read from `tls` until `marker` has been seen `times` times in what arrived.
async fn read_until(tls: &mut (impl AsyncReadExt + Unpin), seen: &mut Vec<u8>, marker: &str, times: usize) {
    let count = |seen: &[u8]| String::from_utf8_lossy(seen).matches(marker).count();
    let mut buffer = [0u8; 8192];
    while count(seen) < times {
        let read = tokio::time::timeout(common::WAIT, tls.read(&mut buffer))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(read > 0, "connection closed; got {}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buffer[..read]);
    }
}

async fn raw_tls(running: &Running) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    running
        .tls(common::Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await
}

#[tokio::test]
async fn keep_alive_requests_after_pauses_are_answered_on_the_same_connection() {
    let (_fixture, _apps, running) = start(1).await;
    let mut sender = running.h1("shop.apps.test").await;
    for round in 0..3 {
        let path = format!("/round-{round}");
        let answer = send_h1(&mut sender, get("shop.apps.test", &path)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.text().contains(&format!("GET {path}\n")), "{}", answer.text());
        tokio::time::sleep(PAUSE).await;
    }
    // A request with a body keeps hyper's connection to its end; the next one still works.
    let upload = Request::post("/upload")
        .header("host", "shop.apps.test")
        .body(http_body_util::Full::new(Bytes::from_static(b"twelve bytes")).boxed())
        .unwrap();
    assert_eq!(send_h1(&mut sender, upload).await.status, StatusCode::OK);
    tokio::time::sleep(PAUSE).await;
    let answer = send_h1(&mut sender, get("shop.apps.test", "/after-upload")).await;
    assert!(answer.text().contains("GET /after-upload\n"), "{}", answer.text());
}

#[tokio::test]
async fn pipelined_and_split_requests_survive_parking_in_order() {
    let (_fixture, _apps, running) = start(1).await;
    let mut tls = raw_tls(&running).await;
    let mut seen = Vec::new();
    // Two requests in one write: answered in order.
    tls.write_all(
        b"GET /one HTTP/1.1\r\nhost: shop.apps.test\r\n\r\nGET /two HTTP/1.1\r\nhost: shop.apps.test\r\n\r\n",
    )
    .await
    .unwrap();
    read_until(&mut tls, &mut seen, "HTTP/1.1 200", 2).await;
    read_until(&mut tls, &mut seen, "GET /two\n", 1).await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        text.find("GET /one\n").unwrap() < text.find("GET /two\n").unwrap(),
        "{text}"
    );
    // Idle (parked), then a request head that arrives in three parts with pauses between:
    // the bytes read ahead while parked start the next hyper connection's request.
    for part in [&b"GET /thr"[..], b"ee HTTP/1.1\r\nhost: shop.apps", b".test\r\n\r\n"] {
        tokio::time::sleep(PAUSE).await;
        tls.write_all(part).await.unwrap();
    }
    read_until(&mut tls, &mut seen, "GET /three\n", 1).await;
    assert_eq!(String::from_utf8_lossy(&seen).matches("HTTP/1.1 200").count(), 3);
}

#[tokio::test]
async fn websocket_upgrade_on_a_parked_connection_keeps_the_bytes_sent_with_the_request() {
    let (_fixture, _apps, running) = start(1).await;
    let mut tls = raw_tls(&running).await;
    let mut seen = Vec::new();
    tls.write_all(b"GET /first HTTP/1.1\r\nhost: shop.apps.test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tls, &mut seen, "GET /first\n", 1).await;
    tokio::time::sleep(PAUSE).await;
    // The upgrade request and the first bytes for the app in one write: the bytes after the
    // request head were read ahead by hyper and must reach the app through the tunnel.
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nhost: shop.apps.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\nearly bytes",
    )
    .await
    .unwrap();
    read_until(&mut tls, &mut seen, "HTTP/1.1 101", 1).await;
    read_until(&mut tls, &mut seen, "early bytes", 1).await;
    tls.write_all(b"later bytes").await.unwrap();
    read_until(&mut tls, &mut seen, "later bytes", 1).await;
}
