//! Upstream resilience: an instance that dies, fails its health checks or keeps failing is
//! routed around; requests are retried only where that is safe; balancing; the maintenance page;
//! per-environment timeouts.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::upstream::Upstream;
use common::{Fixture, Running, WAIT, environment_toml, get, scrape_until, send_h1};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HOST: &str = "shop.apps.test";

async fn start(upstreams: &[SocketAddr], extra: &str) -> (Fixture, Running) {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &[HOST], upstreams, extra));
    let running = fixture.start().await;
    (fixture, running)
}

/// An address where nothing listens: connections are refused.
async fn refused_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// An app instance that reads what it is sent and then closes the connection without a word.
async fn silent_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                // Read until the client pauses, then hang up.
                while let Ok(Ok(read)) =
                    tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await
                {
                    if read == 0 {
                        break;
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn served_by(answer: &common::Answer) -> String {
    answer.header("x-upstream").unwrap_or("gatehouse").to_owned()
}

#[tokio::test]
async fn killing_an_instance_costs_no_idempotent_request() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (_fixture, running) = start(&[a.addr, b.addr], "").await;
    let running = Arc::new(running);
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (running, done) = (running.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut sender = running.h1(HOST).await;
            let mut statuses = Vec::new();
            for _ in 0..100 {
                let answer = send_h1(&mut sender, get(HOST, "/")).await;
                statuses.push((answer.status, served_by(&answer)));
                done.fetch_add(1, Ordering::SeqCst);
            }
            statuses
        }));
    }
    let started = tokio::time::Instant::now();
    while done.load(Ordering::SeqCst) < 100 && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    a.kill();
    let served_a_before = a.requests();
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(client.await.unwrap());
    }
    let failed: Vec<_> = statuses
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
        .collect();
    assert!(failed.is_empty(), "requests failed after one instance died: {failed:?}");
    assert!(served_a_before > 0, "both instances served before the kill");
    // Everything after the kill went to the survivor.
    let last: Vec<_> = statuses.iter().rev().take(20).collect();
    assert!(last.iter().all(|(_, by)| by == "b"), "{last:?}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_instance_and_the_dead_one_ejected() {
    let dead = refused_addr().await;
    let alive = Upstream::start("alive").await;
    let (_fixture, running) = start(&[dead, alive.addr], "").await;
    for _ in 0..12 {
        let answer = running.get(HOST, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(served_by(&answer), "alive");
    }
    let dead_label = format!("gatehouse_upstream_instance_healthy{{environment=\"shop\",instance=\"{dead}\"}}");
    let (text, parsed) = scrape_until(&running, |s| s.get(&dead_label) == Some(&0.0)).await;
    assert_eq!(parsed.get(&dead_label), Some(&0.0), "{text}");
    assert_eq!(
        parsed.get("gatehouse_upstream_ejections_total{environment=\"shop\"}"),
        Some(&1.0),
        "{text}"
    );
    // Five failed connections before the ejection, each retried once.
    assert_eq!(
        parsed.get("gatehouse_upstream_retries_total{environment=\"shop\"}"),
        Some(&5.0),
        "{text}"
    );
    let alive_label = format!(
        "gatehouse_upstream_instance_healthy{{environment=\"shop\",instance=\"{}\"}}",
        alive.addr
    );
    assert_eq!(parsed.get(&alive_label), Some(&1.0), "{text}");
}

#[tokio::test]
async fn a_request_whose_body_was_sent_is_never_replayed_but_a_get_is() {
    let silent = silent_instance().await;
    let app = Upstream::start("app").await;
    // Round robin starts with the first instance; passive ejection stays out of the way.
    let (_fixture, running) = start(&[silent, app.addr], "[outlier_detection]\nconsecutive_failures = 0\n").await;

    // Turn 1: the GET goes to the silent instance, loses its connection before any answer, and
    // is replayed on the app.
    let answer = running.get(HOST, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(served_by(&answer), "app");
    assert_eq!(app.requests(), 1);

    // Turn 3 (the retry took turn 2): the POST goes to the silent instance, which read its body;
    // it must not reach the app a second time.
    let mut sender = running.h1(HOST).await;
    let post = Request::post("/upload")
        .header("host", HOST)
        .body(
            Full::new(Bytes::from_static(b"pay 100 euros"))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let answer = send_h1(&mut sender, post).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(app.requests(), 1, "the POST was replayed on the app");
}

#[tokio::test]
async fn health_checks_take_an_instance_out_and_bring_it_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let extra = "[health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n\
                 healthy_threshold = 2\nunhealthy_threshold = 2\n\
                 [outlier_detection]\nslow_start = \"off\"\n";
    let (_fixture, running) = start(&[a.addr, b.addr], extra).await;
    let a_state = format!(
        "gatehouse_upstream_instance_healthy{{environment=\"shop\",instance=\"{}\"}}",
        a.addr
    );

    a.set_healthy(false);
    let (text, parsed) = scrape_until(&running, |s| s.get(&a_state) == Some(&0.0)).await;
    assert_eq!(parsed.get(&a_state), Some(&0.0), "a was not marked down:\n{text}");
    assert!(
        parsed
            .get("gatehouse_upstream_health_checks_total{environment=\"shop\",result=\"failure\"}")
            .is_some_and(|count| *count >= 2.0),
        "{text}"
    );
    for _ in 0..10 {
        let answer = running.get(HOST, "/").await;
        assert_eq!((answer.status, served_by(&answer)), (StatusCode::OK, "b".to_owned()));
    }
    // The admin listener shows each instance's state.
    let report: serde_json::Value =
        serde_json::from_str(&common::admin_get(&running, "/upstreams").await.text()).unwrap();
    let instances = &report[0]["instances"];
    assert_eq!(report[0]["environment"], "shop");
    assert_eq!(instances[0]["address"], a.addr.to_string());
    assert_eq!(instances[0]["health_check_passing"], false);
    assert_eq!(instances[0]["available"], false);
    assert_eq!(instances[1]["available"], true);

    a.set_healthy(true);
    let (text, parsed) = scrape_until(&running, |s| s.get(&a_state) == Some(&1.0)).await;
    assert_eq!(parsed.get(&a_state), Some(&1.0), "a did not come back:\n{text}");
    let mut by_a = 0;
    for _ in 0..10 {
        let answer = running.get(HOST, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        by_a += usize::from(served_by(&answer) == "a");
    }
    assert_eq!(by_a, 5, "round robin over both again");
}

#[tokio::test]
async fn all_instances_down_gives_503_with_the_maintenance_page() {
    let app = Upstream::start("app").await;
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.write("maintenance.html", "<h1>Back soon</h1>\n");
    let extra = "maintenance_page = \"../maintenance.html\"\nmaintenance_retry_after = \"2m\"\n\
                 [health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_threshold = 1\n";
    fixture.environment("shop", &environment_toml("shop", &[HOST], &[app.addr], extra));
    let running = fixture.start().await;
    assert_eq!(running.get(HOST, "/").await.status, StatusCode::OK);

    app.set_healthy(false);
    let started = tokio::time::Instant::now();
    let answer = loop {
        let answer = running.get(HOST, "/").await;
        if answer.status != StatusCode::OK || started.elapsed() > WAIT {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.text(), "<h1>Back soon</h1>\n");
    assert_eq!(answer.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(answer.header("retry-after"), Some("120"));
    // The environment's headers apply to the maintenance page too.
    assert!(answer.header("strict-transport-security").is_some());
}

#[tokio::test]
async fn least_outstanding_sends_new_requests_to_the_idle_instance() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (_fixture, running) = start(&[a.addr, b.addr], "load_balancing = \"least_outstanding\"\n").await;
    // A download that stays open keeps one instance busy.
    let mut busy_sender = running.h1(HOST).await;
    let busy = busy_sender
        .send_request(get(HOST, &format!("/gated-download/{}", 4 << 20)))
        .await
        .unwrap();
    assert_eq!(busy.status(), StatusCode::OK);
    let busy_instance = busy.headers()["x-upstream"].to_str().unwrap().to_owned();
    let idle_instance = if busy_instance == "a" { "b" } else { "a" };
    for _ in 0..10 {
        let answer = running.get(HOST, "/").await;
        assert_eq!(
            (answer.status, served_by(&answer)),
            (StatusCode::OK, idle_instance.to_owned())
        );
    }
    // Once the download is over, both instances share the load again.
    let releaser = if busy_instance == "a" { &a } else { &b };
    releaser.release_download();
    let body = tokio::time::timeout(WAIT, busy.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body.to_bytes().len(), 4 << 20);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(served_by(&running.get(HOST, "/").await));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn round_robin_ignores_outstanding_requests() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (_fixture, running) = start(&[a.addr, b.addr], "").await;
    let mut busy_sender = running.h1(HOST).await;
    let busy = busy_sender
        .send_request(get(HOST, &format!("/gated-download/{}", 2 << 20)))
        .await
        .unwrap();
    let busy_instance = busy.headers()["x-upstream"].to_str().unwrap().to_owned();
    let mut by_busy = 0;
    for _ in 0..10 {
        by_busy += usize::from(served_by(&running.get(HOST, "/").await) == busy_instance);
    }
    assert_eq!(by_busy, 5);
    drop(busy);
}

#[tokio::test]
async fn a_slow_response_head_gives_504() {
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[app.addr], "[timeouts]\nresponse = \"300ms\"\n").await;
    let answer = running.get(HOST, "/slow").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    // A timeout is not retried: the app may still be working on the request.
    assert_eq!(app.requests(), 1);
}

/// With two instances a retry has somewhere to go: a timeout must still not be sent again.
#[tokio::test]
async fn a_timeout_is_never_retried_on_another_instance() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (_fixture, running) = start(
        &[a.addr, b.addr],
        "retries = 1\n[timeouts]\nresponse = \"300ms\"\n[outlier_detection]\nconsecutive_failures = 0\n",
    )
    .await;
    for _ in 0..2 {
        let answer = running.get(HOST, "/slow").await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    }
    // Each of the two requests reached exactly one instance, once.
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 1),
        "a timed-out request was sent again"
    );
    let (text, parsed) = scrape_until(&running, |_| true).await;
    assert_eq!(
        parsed.get("gatehouse_upstream_retries_total{environment=\"shop\"}"),
        None,
        "{text}"
    );
}

/// POST and PATCH are not idempotent: even without a body, one that was written and lost its
/// connection is answered 502, never sent to another instance (a GET in its place is).
#[tokio::test]
async fn post_and_patch_without_a_body_are_never_replayed() {
    let silent = silent_instance().await;
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[silent, app.addr], "[outlier_detection]\nconsecutive_failures = 0\n").await;
    let send = |method: http::Method| {
        let running = &running;
        async move {
            let mut sender = running.h1(HOST).await;
            let request = Request::builder()
                .method(method)
                .uri("/orders")
                .header("host", HOST)
                .body(http_body_util::Empty::new().map_err(|never| match never {}).boxed())
                .unwrap();
            send_h1(&mut sender, request).await.status
        }
    };
    // Round robin: turn 0 the silent instance, turn 1 the app, turn 2 the silent one again.
    assert_eq!(send(http::Method::POST).await, StatusCode::BAD_GATEWAY);
    assert_eq!(send(http::Method::GET).await, StatusCode::OK);
    assert_eq!(send(http::Method::PATCH).await, StatusCode::BAD_GATEWAY);
    assert_eq!(app.requests(), 1, "a POST or PATCH was replayed on the app");
}

#[tokio::test]
async fn the_total_time_limit_gives_504() {
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[app.addr], "[timeouts]\nresponse = \"30s\"\ntotal = \"400ms\"\n").await;
    let started = tokio::time::Instant::now();
    let answer = running.get(HOST, "/slow").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_response_body_that_stalls_is_cut_off_after_the_idle_timeout() {
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[app.addr], "[timeouts]\nidle = \"300ms\"\n").await;
    let mut sender = running.h1(HOST).await;
    let response = sender.send_request(get(HOST, "/stall-body")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = tokio::time::timeout(WAIT, response.into_body().collect()).await;
    let body = collected.expect("the stalled body was never cut off");
    assert!(body.is_err(), "a stalled body must end in an error, not look complete");
}

#[tokio::test]
async fn without_an_idle_timeout_a_slow_body_is_left_alone() {
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[app.addr], "[timeouts]\nidle = \"off\"\n").await;
    let mut sender = running.h1(HOST).await;
    let response = sender.send_request(get(HOST, "/stall-body")).await.unwrap();
    let collected = tokio::time::timeout(Duration::from_secs(1), response.into_body().collect()).await;
    assert!(collected.is_err(), "the body ended although no idle timeout applies");
}

#[tokio::test]
async fn a_reload_that_leaves_the_upstreams_alone_keeps_health_states() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let checks = "[health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_threshold = 1\n\
                  healthy_threshold = 1000\n";
    let (fixture, running) = start(&[a.addr, b.addr], checks).await;
    let a_state = format!(
        "gatehouse_upstream_instance_healthy{{environment=\"shop\",instance=\"{}\"}}",
        a.addr
    );
    a.set_healthy(false);
    let (text, parsed) = scrape_until(&running, |s| s.get(&a_state) == Some(&0.0)).await;
    assert_eq!(parsed.get(&a_state), Some(&0.0), "{text}");
    // a answers its checks again, but needs 1000 of them to be trusted: only a group that
    // forgot its verdict would send it requests now.
    a.set_healthy(true);
    let only_headers = format!("[response_headers]\nx-frame-options = \"DENY\"\n{checks}");
    fixture.environment(
        "shop",
        &environment_toml("shop", &[HOST], &[a.addr, b.addr], &only_headers),
    );
    running
        .proxy()
        .reload(&fixture.path("gatehouse.toml"), gatehouse::server::ReloadTrigger::Api)
        .unwrap();
    for _ in 0..6 {
        let answer = running.get(HOST, "/").await;
        assert_eq!(
            answer.header("x-frame-options"),
            Some("DENY"),
            "the reload did not apply"
        );
        assert_eq!(served_by(&answer), "b", "the reload forgot that a is down");
    }
}

/// An address that accepts no more connections: its accept queue is full, so new connection
/// attempts hang (the kernel drops their SYNs) until the client gives up.
async fn black_hole() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue; connections beyond it do not complete.
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    (listener, fillers)
}

#[tokio::test]
async fn a_connect_timeout_moves_on_to_another_instance() {
    let (hole, _fillers) = black_hole().await;
    let app = Upstream::start("app").await;
    let extra = "[timeouts]\nconnect = \"300ms\"\n[outlier_detection]\nconsecutive_failures = 0\n";
    let (_fixture, running) = start(&[hole.local_addr().unwrap(), app.addr], extra).await;
    // The first request goes to the black hole, waits out the connect timeout, and is retried.
    let answer = running.get(HOST, "/").await;
    assert_eq!((answer.status, served_by(&answer)), (StatusCode::OK, "app".to_owned()));
    let retries = "gatehouse_upstream_retries_total{environment=\"shop\"}";
    let (text, parsed) = scrape_until(&running, |s| s.contains_key(retries)).await;
    assert_eq!(parsed.get(retries), Some(&1.0), "{text}");
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_pool_idle_timeout() {
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[app.addr], "[pool]\nidle_timeout = \"1s\"\n").await;
    for _ in 0..3 {
        assert_eq!(running.get(HOST, "/").await.status, StatusCode::OK);
    }
    let gauge = "gatehouse_upstream_connections";
    let (text, parsed) = scrape_until(&running, |s| s.get(gauge) == Some(&1.0)).await;
    assert_eq!(
        parsed.get(gauge),
        Some(&1.0),
        "one pooled connection carried them all:\n{text}"
    );
    let opened = "gatehouse_upstream_connections_opened_total";
    assert_eq!(parsed.get(opened), Some(&1.0), "{text}");
    let (text, parsed) = scrape_until(&running, |s| s.get(gauge) == Some(&0.0)).await;
    assert_eq!(
        parsed.get(gauge),
        Some(&0.0),
        "the idle connection was never closed:\n{text}"
    );
    // The next request needs a new connection: the second one ever opened.
    assert_eq!(running.get(HOST, "/").await.status, StatusCode::OK);
    let opened = "gatehouse_upstream_connections_opened_total";
    let (text, parsed) = scrape_until(&running, |s| s.get(opened) == Some(&2.0)).await;
    assert_eq!(parsed.get(opened), Some(&2.0), "{text}");
}

#[tokio::test]
async fn a_pool_of_zero_idle_connections_closes_each_after_its_request() {
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[app.addr], "[pool]\nmax_idle_per_instance = 0\n").await;
    for _ in 0..3 {
        assert_eq!(running.get(HOST, "/").await.status, StatusCode::OK);
    }
    let gauge = "gatehouse_upstream_connections";
    let (text, parsed) = scrape_until(&running, |s| s.get(gauge) == Some(&0.0)).await;
    assert_eq!(parsed.get(gauge), Some(&0.0), "{text}");
    let opened = "gatehouse_upstream_connections_opened_total";
    assert_eq!(parsed.get(opened), Some(&3.0), "one connection per request:\n{text}");
}

fn ejections(parsed: &std::collections::HashMap<String, f64>) -> f64 {
    parsed
        .get("gatehouse_upstream_ejections_total{environment=\"shop\"}")
        .copied()
        .unwrap_or_default()
}

/// Most environments have one instance. A path that answers 500, a burst of 503s and a burst of
/// timeouts must not take it out: every other path keeps being served.
#[tokio::test]
async fn the_only_instance_is_never_ejected_whatever_it_answers() {
    let app = Upstream::start("app").await;
    let (_fixture, running) = start(&[app.addr], "[timeouts]\nresponse = \"200ms\"\n").await;
    for (path, status) in [
        ("/status/500", StatusCode::INTERNAL_SERVER_ERROR),
        ("/status/503", StatusCode::SERVICE_UNAVAILABLE),
        ("/slow", StatusCode::GATEWAY_TIMEOUT),
    ] {
        for _ in 0..8 {
            assert_eq!(running.get(HOST, path).await.status, status, "{path}");
        }
        let answer = running.get(HOST, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "after 8 x {path}: {}", answer.text());
    }
    let (text, parsed) = scrape_until(&running, |_| true).await;
    assert_eq!(ejections(&parsed), 0.0, "{text}");
}

/// Every instance failing, with ejections allowed for all of them: passive detection takes
/// them out one by one but leaves the last available one serving.
#[tokio::test]
async fn when_every_instance_fails_the_last_available_one_stays_in() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (_fixture, running) = start(
        &[a.addr, b.addr],
        "[outlier_detection]\nconsecutive_failures = 2\nmax_ejected_percent = 100\n",
    )
    .await;
    for _ in 0..12 {
        assert_eq!(
            running.get(HOST, "/status/503").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let (text, parsed) = scrape_until(&running, |_| true).await;
    assert_eq!(ejections(&parsed), 1.0, "exactly one of the two taken out: {text}");
    for _ in 0..4 {
        let answer = running.get(HOST, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    // A 500 from one path says nothing about the instance: counted as an answer, not a failure.
    for _ in 0..6 {
        assert_eq!(
            running.get(HOST, "/status/500").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    let (text, parsed) = scrape_until(&running, |_| true).await;
    assert_eq!(ejections(&parsed), 1.0, "{text}");
}
