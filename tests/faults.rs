//! Fault injection: upstreams that close, reset, send garbage or oversized heads; clients that
//! vanish mid-upload or mid-download; a ClientHello split byte by byte. Each time gatehouse answers
//! correctly or closes that one connection, keeps serving the others, and its file descriptors
//! return to their baseline.

mod common;

use std::time::Duration;

use common::upstream::Upstream;
use common::{Connect, Fixture, Running, environment_toml, get, send_h1};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw upstream that reads a request head and then does `misbehave` with the socket.
async fn raw_upstream(misbehave: &'static [u8], then_close: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream.write_all(misbehave).await;
                if then_close {
                    // Reset instead of a clean close when asked for nothing at all.
                    if misbehave.is_empty() {
                        let _ = stream.set_zero_linger();
                    }
                    drop(stream);
                } else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

/// The tests of this file count the process's file descriptors, so they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|dir| dir.count()).unwrap_or(0)
}

/// Wait until the process's open file descriptors are back to `baseline` (a little slack for
/// the test runtime's own), at most `WAIT`.
async fn fds_return_to(baseline: usize) {
    let started = tokio::time::Instant::now();
    loop {
        let open = open_fds();
        if open <= baseline + 2 {
            return;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "{open} file descriptors open, baseline {baseline}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_with(upstreams: &[(&str, std::net::SocketAddr)], healthy: &Upstream) -> (Fixture, Running) {
    let fixture = Fixture::new();
    fixture.main_config("");
    for (name, addr) in upstreams {
        fixture.environment(
            name,
            &environment_toml(
                name,
                &[&format!("{name}.apps.test")],
                &[*addr],
                // Ejecting the broken instances (and answering 503) is tested elsewhere.
                "[timeouts]\nresponse = \"2s\"\n[outlier_detection]\nconsecutive_failures = 0\n",
            ),
        );
    }
    fixture.environment("ok", &environment_toml("ok", &["ok.apps.test"], &[healthy.addr], ""));
    let running = fixture.start().await;
    (fixture, running)
}

#[tokio::test]
async fn misbehaving_upstreams_give_502_and_others_are_served() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let healthy = Upstream::start("ok").await;
    let oversized: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\nX-Huge: {}\r\n\r\n", "h".repeat(512 * 1024))
            .into_bytes()
            .into_boxed_slice(),
    );
    let upstreams = [
        ("closes", raw_upstream(b"", true).await),
        (
            "garbage",
            raw_upstream(b"\x00\x01garbage that is no HTTP\r\n\r\n", true).await,
        ),
        ("oversized", raw_upstream(oversized, true).await),
    ];
    let (_fixture, running) = start_with(&upstreams, &healthy).await;
    // Warm up once, then take the baseline.
    assert_eq!(running.get("ok.apps.test", "/").await.status, StatusCode::OK);
    let baseline = open_fds();
    for round in 0..3 {
        for (name, _) in &upstreams {
            let answer = running.get(&format!("{name}.apps.test"), "/").await;
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{name}, round {round}");
        }
        assert_eq!(running.get("ok.apps.test", "/").await.status, StatusCode::OK);
    }
    fds_return_to(baseline).await;
}

#[tokio::test]
async fn upstream_closing_mid_response_ends_that_response_only() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let healthy = Upstream::start("ok").await;
    let truncated = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nonly the beginning",
        true,
    )
    .await;
    let (_fixture, running) = start_with(&[("truncated", truncated)], &healthy).await;
    let mut sender = running.h1("truncated.apps.test").await;
    let response = tokio::time::timeout(common::WAIT, sender.send_request(get("truncated.apps.test", "/")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The body cannot complete: the client sees an error or a short body, never a hang.
    let body = tokio::time::timeout(common::WAIT, http_body_util::BodyExt::collect(response.into_body()))
        .await
        .unwrap();
    assert!(body.is_err() || body.unwrap().to_bytes().len() < 100_000);
    assert_eq!(running.get("ok.apps.test", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn clients_vanishing_mid_upload_and_mid_download_leave_nothing_behind() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let healthy = Upstream::start("ok").await;
    let (_fixture, running) = start_with(&[], &healthy).await;
    assert_eq!(running.get("ok.apps.test", "/").await.status, StatusCode::OK);
    let baseline = open_fds();
    for _ in 0..5 {
        // Mid-download: read a little of a large body, then drop the connection.
        let mut tls = running
            .tls(Connect {
                server_name: "ok.apps.test",
                send_sni: true,
                alpn: &[b"http/1.1"],
            })
            .await;
        tls.write_all(b"GET /download/50000000 HTTP/1.1\r\nHost: ok.apps.test\r\n\r\n")
            .await
            .unwrap();
        let mut some = [0u8; 65536];
        let _ = tls.read(&mut some).await.unwrap();
        drop(tls);
        // Mid-upload: announce a large body, send part of it, drop the connection.
        let mut tls = running
            .tls(Connect {
                server_name: "ok.apps.test",
                send_sni: true,
                alpn: &[b"http/1.1"],
            })
            .await;
        tls.write_all(b"POST /upload HTTP/1.1\r\nHost: ok.apps.test\r\nContent-Length: 50000000\r\n\r\n")
            .await
            .unwrap();
        tls.write_all(&[b'x'; 100_000]).await.unwrap();
        drop(tls);
    }
    assert_eq!(running.get("ok.apps.test", "/").await.status, StatusCode::OK);
    fds_return_to(baseline).await;
}

#[tokio::test]
async fn a_client_hello_split_byte_by_byte_still_completes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let healthy = Upstream::start("ok").await;
    let (_fixture, running) = start_with(&[], &healthy).await;
    // A TCP proxy in the test writes the client's bytes to gatehouse one at a time.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let target = running.https;
    tokio::spawn(async move {
        let Ok((client, _)) = relay.accept().await else { return };
        let server = tokio::net::TcpStream::connect(target).await.unwrap();
        server.set_nodelay(true).unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let mut sent = 0usize;
            while let Ok(1) = client_read.read(&mut byte).await {
                if server_write.write_all(&byte).await.is_err() {
                    return;
                }
                sent += 1;
                // The first few hundred bytes (the ClientHello) trickle; the rest flows.
                if sent < 600 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        });
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let via_relay = Running::client_only(relay_addr, running.roots.clone());
    let mut sender = via_relay.h1("ok.apps.test").await;
    assert_eq!(
        send_h1(&mut sender, get("ok.apps.test", "/")).await.status,
        StatusCode::OK
    );
}
