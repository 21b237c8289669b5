//! HTTP/2 abuse: the rapid-reset pattern (CVE-2023-44487: open a stream, reset it at once,
//! repeat) neither grows memory nor stops gatehouse serving others.

mod common;

use std::time::Duration;

use common::upstream::Upstream;
use common::{Connect, Fixture, environment_toml};
use http::Request;

fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<u64>().ok())
        .unwrap_or(0)
        * 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_does_not_grow_memory_and_others_are_served() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    assert_eq!(running.get("shop.apps.test", "/").await.status, 200);
    let before = resident_kib();

    let tls = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"h2"],
        })
        .await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = Some(client);
    let mut resets = 0u32;
    let flood = async {
        while resets < 20_000 {
            let Some(ready) = client.take() else { break };
            let Ok(mut ready) = ready.ready().await else { break };
            let request = Request::get("https://shop.apps.test/slow").body(()).unwrap();
            let Ok((_response, mut stream)) = ready.send_request(request, true) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            resets += 1;
            client = Some(ready);
        }
    };
    tokio::time::timeout(common::WAIT, flood).await.ok();
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let growth = resident_kib().saturating_sub(before);
    eprintln!(
        "{resets} rapid resets, {} requests reached the app, resident memory grew by {growth} KiB",
        app.requests()
    );
    assert!(
        growth < 64 * 1024,
        "resident memory grew by {growth} KiB during {resets} rapid resets"
    );
    // The server cut the flood off (GOAWAY) long before the client gave up.
    assert!(resets < 20_000, "the server let a flood of {resets} reset streams run");
    // Other clients are served throughout and afterwards.
    assert_eq!(running.get("shop.apps.test", "/").await.status, 200);
    // The flood's requests were cancelled, not all carried to the app.
    assert!(
        app.requests() < u64::from(resets) + 2,
        "{} requests reached the app for {resets} resets",
        app.requests()
    );
    connection.abort();
}
