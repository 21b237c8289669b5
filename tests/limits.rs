//! Request and connection limits: oversized heads (431), too many header fields (431), long
//! URIs (414), connections over the total or per-client limit closed at accept, while other
//! requests keep being served.

mod common;

use common::upstream::Upstream;
use common::{Connect, Fixture, Running, environment_toml};

const CONNECT: Connect<'static> = Connect {
    server_name: "shop.apps.test",
    send_sni: true,
    alpn: &[b"http/1.1"],
};

async fn start(limits: &str) -> (Fixture, Upstream, Running) {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config(&format!("[limits]\n{limits}"));
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    (fixture, app, running)
}

#[tokio::test]
async fn oversized_heads_and_too_many_fields_get_431_and_long_uris_414() {
    let (_fixture, app, running) =
        start("max_request_header_bytes = 16384\nmax_request_headers = 50\nmax_uri_bytes = 2048\n").await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: shop.apps.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(running.raw_status("shop.apps.test", big_header.as_bytes()).await, 431);
    let many: String = (0..60).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let many_fields = format!("GET / HTTP/1.1\r\nHost: shop.apps.test\r\n{many}\r\n");
    assert_eq!(running.raw_status("shop.apps.test", many_fields.as_bytes()).await, 431);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n", "a".repeat(3000));
    assert_eq!(running.raw_status("shop.apps.test", long_uri.as_bytes()).await, 414);
    assert_eq!(app.requests(), 0);
    // Within the limits, requests are served.
    let fine = format!(
        "GET /{} HTTP/1.1\r\nHost: shop.apps.test\r\nX-Ok: {}\r\n\r\n",
        "a".repeat(1000),
        "b".repeat(1000)
    );
    assert_eq!(running.raw_status("shop.apps.test", fine.as_bytes()).await, 200);
}

#[tokio::test]
async fn connections_over_the_per_client_limit_are_closed_at_accept() {
    let (_fixture, _app, running) = start("max_connections_per_client = 2\n").await;
    let first = running.try_tls_after(b"", CONNECT).await.unwrap();
    let second = running.try_tls_after(b"", CONNECT).await.unwrap();
    assert!(
        running.try_tls_after(b"", CONNECT).await.is_err(),
        "a third connection from the same client was served"
    );
    drop(first);
    // The place is given back once the connection is gone.
    let started = tokio::time::Instant::now();
    loop {
        if running.try_tls_after(b"", CONNECT).await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "the closed connection's place was not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(second);
}

/// The per-client connection limit counts an IPv6 client by its /64 (here named by the load
/// balancer's PROXY header): two addresses of one /64 share the limit; another /64 does not.
#[tokio::test]
async fn the_per_client_connection_limit_counts_an_ipv6_client_by_its_64() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("[limits]\nmax_connections_per_client = 2\n");
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write("gatehouse.toml", &main.replace("[tls]", "proxy_protocol = true\n[tls]"));
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let proxied = |source: &str| format!("PROXY TCP6 {source} 2001:db8::443 40000 443\r\n");
    let first = running
        .try_tls_after(proxied("2001:db8:1:2::1").as_bytes(), CONNECT)
        .await
        .unwrap();
    let second = running
        .try_tls_after(proxied("2001:db8:1:2::2").as_bytes(), CONNECT)
        .await
        .unwrap();
    assert!(
        running
            .try_tls_after(proxied("2001:db8:1:2::3").as_bytes(), CONNECT)
            .await
            .is_err(),
        "a third address of the same /64 got a third connection"
    );
    let other = running
        .try_tls_after(proxied("2001:db8:1:3::1").as_bytes(), CONNECT)
        .await;
    assert!(other.is_ok(), "another /64 was refused");
    drop((first, second));
}

#[tokio::test]
async fn connections_over_the_total_limit_are_closed_at_accept() {
    let (_fixture, _app, running) = start("max_connections = 1\n").await;
    let mut first = running.h1("shop.apps.test").await;
    assert!(
        running.try_tls_after(b"", CONNECT).await.is_err(),
        "a second connection was served"
    );
    // The connection that was admitted keeps working.
    let answer = common::send_h1(&mut first, common::get("shop.apps.test", "/")).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn request_bodies_over_the_environment_limit_get_413() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "max_request_body = \"1KiB\"\n",
        ),
    );
    let running = fixture.start().await;
    let declared = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.apps.test\r\nContent-Length: 2000\r\n\r\n{}",
        "a".repeat(2000)
    );
    assert_eq!(running.raw_status("shop.apps.test", declared.as_bytes()).await, 413);
    assert_eq!(app.requests(), 0, "a body declared too large reached the app");

    let streamed = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.apps.test\r\nTransfer-Encoding: chunked\r\n\r\nfa0\r\n{}\r\n0\r\n\r\n",
        "b".repeat(4000)
    );
    assert_eq!(running.raw_status("shop.apps.test", streamed.as_bytes()).await, 413);

    let small = format!(
        "POST /upload HTTP/1.1\r\nHost: shop.apps.test\r\nContent-Length: 500\r\n\r\n{}",
        "c".repeat(500)
    );
    assert_eq!(running.raw_status("shop.apps.test", small.as_bytes()).await, 200);
}

/// Wait until the server closes `stream` (EOF or reset), at most `WAIT`; true if it did.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let started = tokio::time::Instant::now();
    while started.elapsed() < common::WAIT {
        match tokio::time::timeout(common::WAIT, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test]
async fn slowloris_and_stalled_handshakes_are_closed_while_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let (_fixture, _app, running) =
        start("request_header_timeout = \"300ms\"\ntls_handshake_timeout = \"300ms\"\n").await;

    // A client that never finishes its request head.
    let mut slow = running.try_tls_after(b"", CONNECT).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: shop.apps.test\r\nX-Slow: ")
        .await
        .unwrap();
    // A client that opens TCP and never says hello.
    let mut silent = tokio::net::TcpStream::connect(running.https).await.unwrap();
    let started = tokio::time::Instant::now();

    // Meanwhile a normal client is served.
    assert_eq!(running.get("shop.apps.test", "/").await.status, 200);

    assert!(
        closed_by_server(&mut slow).await,
        "the slowloris connection stayed open"
    );
    assert!(closed_by_server(&mut silent).await, "the silent connection stayed open");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let (_fixture, _app, running) = start("request_header_timeout = \"300ms\"\n").await;
    let tls = running.try_tls_after(b"", CONNECT).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    use tokio::io::AsyncWriteExt;
    writer
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n")
        .await
        .unwrap();
    // The answer arrives, then nothing more is sent: the server closes the idle connection.
    assert!(
        closed_by_server(&mut reader).await,
        "the idle keep-alive connection stayed open"
    );
}

/// gatehouse waits for a connection's first bytes before it starts hyper on it (no buffers for
/// a client that says nothing); that wait has the same bound as a request head.
#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let (_fixture, _app, running) = start("request_header_timeout = \"300ms\"\n").await;
    let mut silent = running.try_tls_after(b"", CONNECT).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        closed_by_server(&mut silent).await,
        "a TLS connection without a request stayed open"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The same listener still serves a client that does send its request.
    assert_eq!(running.get("shop.apps.test", "/").await.status, 200);
}

#[tokio::test]
async fn a_connection_finishes_after_its_share_of_requests() {
    let (_fixture, _app, running) = start("max_requests_per_connection = 3\n").await;
    let mut h1 = running.h1("shop.apps.test").await;
    for served in 1..=3 {
        let answer = common::send_h1(&mut h1, common::get("shop.apps.test", "/")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("connection"),
            (served == 3).then_some("close"),
            "request {served}"
        );
    }
    let mut h2 = running.h2("shop.apps.test").await;
    for _ in 0..3 {
        let request = http::Request::get("https://shop.apps.test/")
            .body(http_body_util::BodyExt::boxed(http_body_util::Empty::new()))
            .unwrap();
        assert_eq!(common::send_h2(&mut h2, request).await.status, 200);
    }
    // Both connections are finished by the server: HTTP/1.1 closes, HTTP/2 goes away.
    let started = tokio::time::Instant::now();
    while !(h1.is_closed() && h2.is_closed()) {
        assert!(
            started.elapsed() < common::WAIT,
            "a connection outlived its share of requests"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// gatehouse with one rate-limited environment (`rate_limit` is the table's body) behind a
/// trusted forwarder: client addresses come from X-Forwarded-For, so that one test can be many
/// clients.
async fn start_rate_limited(rate_limit: &str) -> (Fixture, Upstream, Running) {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write(
        "gatehouse.toml",
        &main.replace("[tls]", "trusted_forwarders = [\"127.0.0.0/8\"]\n[tls]"),
    );
    let rate_limit = format!("[rate_limit]\n{rate_limit}");
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], &rate_limit),
    );
    let running = fixture.start().await;
    (fixture, app, running)
}

/// A request for `/` from `client`, as a trusted forwarder names it.
fn from(client: &str) -> http::Request<common::ClientBody> {
    http::Request::get("/")
        .header("host", "shop.apps.test")
        .header("x-forwarded-for", client)
        .body(http_body_util::BodyExt::boxed(http_body_util::Empty::new()))
        .unwrap()
}

#[tokio::test]
async fn a_flood_from_one_address_is_limited_while_another_address_is_served() {
    let (_fixture, app, running) = start_rate_limited("requests_per_second = 1\nburst = 3\n").await;
    let mut sender = running.h1("shop.apps.test").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(common::send_h1(&mut sender, from("192.0.2.1")).await);
    }
    let limited: Vec<_> = statuses.iter().filter(|answer| answer.status == 429).collect();
    assert!(
        statuses[..3].iter().all(|answer| answer.status == 200),
        "the burst was not allowed"
    );
    assert!(
        limited.len() >= 2,
        "the flood was not limited: {:?}",
        statuses.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let retry_after: u64 = limited[0].header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    // Another address has its own bucket.
    assert_eq!(common::send_h1(&mut sender, from("192.0.2.2")).await.status, 200);
    assert_eq!(app.requests() as usize, statuses.len() - limited.len() + 1);
}

/// One IPv6 host holds a whole /64: the addresses of one /64 are one client for the rate limit,
/// while another /64 is another client; and a flood of distinct prefixes, many more than the
/// environment tracks, never makes a client under its limit get 429.
#[tokio::test]
async fn rate_limits_count_ipv6_clients_by_their_64_and_a_prefix_flood_refuses_no_one_under_the_limit() {
    let (_fixture, _app, running) =
        start_rate_limited("requests_per_second = 1\nburst = 5\ntracked_clients = 64\n").await;
    let mut sender = running.h1("shop.apps.test").await;
    // 200 addresses of one /64: one client, whose burst of 5 is all it gets.
    let mut passed = 0;
    for n in 0..200 {
        let answer = common::send_h1(&mut sender, from(&format!("2001:db8:1:2::{n:x}"))).await;
        passed += usize::from(answer.status == 200);
    }
    assert_eq!(passed, 5, "distinct addresses of one /64 walked around the rate limit");
    assert_eq!(common::send_h1(&mut sender, from("2001:db8:1:3::1")).await.status, 200);

    // 2,000 distinct /64s (the environment tracks 64 clients) between the requests of a client
    // that stays within its burst: it is never refused, and neither is any of the flood's
    // prefixes (each makes one request).
    let mut refused = 0;
    for n in 0..2000u32 {
        let answer = common::send_h1(
            &mut sender,
            from(&format!("2001:db8:{:x}:{:x}::1", 100 + n / 1000, n % 1000)),
        )
        .await;
        refused += usize::from(answer.status == 429);
        if n % 500 == 0 {
            let normal = common::send_h1(&mut sender, from("198.51.100.7")).await;
            assert_eq!(
                normal.status, 200,
                "a client under its limit was refused during the flood"
            );
        }
    }
    assert_eq!(refused, 0, "a full table turned clients away");
}

/// A client that stops sending its request body for `timeouts.request_body` gets 408, the app's
/// request is aborted (it never gets the rest), the stall is counted, and it counts against no
/// instance (the client's doing, not the app's).
#[tokio::test]
async fn a_request_body_that_stalls_gets_408_and_the_app_request_is_aborted() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[a.addr, b.addr],
            "[timeouts]\nrequest_body = \"300ms\"\n[outlier_detection]\nconsecutive_failures = 1\n",
        ),
    );
    let running = fixture.start().await;
    // 100 of the 1,000 bytes it announces, then nothing.
    let mut request = b"POST /upload HTTP/1.1\r\nHost: shop.apps.test\r\nContent-Length: 1000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'x'; 100]);
    assert_eq!(running.raw_status("shop.apps.test", &request).await, 408);
    assert!(
        a.upload_bytes_seen() + b.upload_bytes_seen() <= 100,
        "the app got more than was sent"
    );

    let (text, parsed) = common::scrape_until(&running, |samples| {
        samples.contains_key("gatehouse_request_body_timeouts_total{environment=\"shop\"}")
    })
    .await;
    assert_eq!(
        parsed.get("gatehouse_request_body_timeouts_total{environment=\"shop\"}"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(
        parsed.get("gatehouse_upstream_ejections_total{environment=\"shop\"}"),
        None,
        "{text}"
    );
    // Both instances still take requests.
    let mut served = std::collections::HashSet::new();
    for _ in 0..4 {
        let answer = running.get("shop.apps.test", "/").await;
        assert_eq!(answer.status, 200);
        served.insert(answer.header("x-upstream").unwrap_or_default().to_owned());
    }
    assert_eq!(
        served.len(),
        2,
        "an instance was taken out for a client's stall: {served:?}"
    );
}

/// A body that keeps coming, however slowly, is never cut off: the limit is between two bytes.
#[tokio::test]
async fn a_slow_but_steady_request_body_is_not_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start("app").await;
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "[timeouts]\nrequest_body = \"300ms\"\n",
        ),
    );
    let running = fixture.start().await;
    let mut tls = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    tls.write_all(b"POST /upload HTTP/1.1\r\nHost: shop.apps.test\r\nContent-Length: 10\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Ten bytes, one every 150 ms: 1.5 s in all, five times the limit.
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        tls.write_all(b"x").await.unwrap();
    }
    let mut response = Vec::new();
    tokio::time::timeout(common::WAIT, tls.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("received 10 "), "{text}");
}
