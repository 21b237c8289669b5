//! Memory bounds: a client that reads slowly, or an app that reads slowly, cannot make gatehouse
//! buffer without limit. Bodies are pushed through with backpressure end to end, so resident
//! memory stays flat while hundreds of megabytes wait on the other side.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::upstream::Upstream;
use common::{Connect, Fixture, environment_toml};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// The tests of this file measure the process's memory, so they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_client_that_does_not_read_does_not_make_gatehouse_buffer_the_download() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let before = common::resident_kib();
    let mut tls = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    // 512 MiB offered by the app; the client reads one buffer and then nothing.
    tls.write_all(b"GET /download/536870912 HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 16384];
    let _ = tls.read(&mut first).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let growth = common::resident_kib().saturating_sub(before);
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "resident memory grew by {growth} KiB while the client did not read"
    );
    drop(tls);
}

#[tokio::test]
async fn an_app_that_reads_slowly_does_not_make_gatehouse_buffer_the_upload() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "max_request_body = \"1GiB\"\n",
        ),
    );
    let running = fixture.start().await;
    let before = common::resident_kib();
    // The client offers 512 MiB as fast as it is taken; the app reads about 1 MiB per second.
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let frames = futures_util::stream::iter(
        (0..8192).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let request = http::Request::post("/slow-reader")
        .header("host", "shop.apps.test")
        .body(StreamBody::new(frames).boxed())
        .unwrap();
    let mut sender = running.h1("shop.apps.test").await;
    let upload = tokio::spawn(async move { sender.send_request(request).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let growth = common::resident_kib().saturating_sub(before);
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "resident memory grew by {growth} KiB while the app read slowly"
    );
    upload.abort();
}
