//! The process as systemd runs it: READY/RELOADING/STOPPING notifications, SIGHUP reloads,
//! SIGTERM keeps serving through the grace period with `/readyz` at 503, then lets the request
//! in flight finish and exits 0.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::process::Gatehouse;
use common::upstream::Upstream;
use common::{Fixture, environment_toml, get, send_h1};
use http::StatusCode;

/// Clients for the child process, using the harness's TLS helpers.
fn running(fixture: &Fixture, https: std::net::SocketAddr) -> common::Running {
    common::Running::client_only(https, fixture.ca.der.clone())
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let fixture = Fixture::new();
    let app = Upstream::start("slow").await;
    // No grace period: this test is about the drain after it.
    fixture.main_config("[limits]\nshutdown_grace = \"off\"\n");
    fixture.environment("slow", &environment_toml("slow", &["slow.apps.test"], &[app.addr], ""));
    let gatehouse = Gatehouse::start(&fixture, None);
    let client = running(&fixture, gatehouse.https);
    let mut sender = client.h1("slow.apps.test").await;
    let in_flight = tokio::spawn(async move { send_h1(&mut sender, get("slow.apps.test", "/slow")).await });
    let started = tokio::time::Instant::now();
    while app.requests() == 0 {
        assert!(
            started.elapsed() < common::WAIT,
            "the slow request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gatehouse.signal("TERM");
    gatehouse.wait_for_log("listeners closed; draining");
    // New connections are refused while the old request finishes.
    assert!(tokio::net::TcpStream::connect(gatehouse.https).await.is_err());
    let answer = tokio::time::timeout(common::WAIT, in_flight).await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "slow answer");
    let status = tokio::task::spawn_blocking(move || gatehouse.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn systemd_is_told_ready_reloading_and_stopping_and_sighup_reloads() {
    let fixture = Fixture::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    fixture.main_config("[limits]\nshutdown_grace = \"off\"\n");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[blue.addr], ""));
    let socket_path = fixture.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(common::WAIT)).unwrap();
    let receive = || {
        let mut buffer = [0u8; 512];
        let len = socket.recv(&mut buffer).expect("no notification from gatehouse");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    };
    let gatehouse = Gatehouse::start(&fixture, Some(&socket_path));
    assert_eq!(receive(), "READY=1\n");
    let client = running(&fixture, gatehouse.https);
    assert_eq!(
        client.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("blue")
    );

    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[green.addr], ""),
    );
    gatehouse.signal("HUP");
    let reloading = receive();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    assert_eq!(receive(), "READY=1\n");
    assert_eq!(
        client.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("green")
    );

    // A broken file is refused; the running configuration keeps serving.
    fixture.environment("shop", "name = \"shop\"\ndomains = [\"shop.apps.test\"\n");
    gatehouse.signal("HUP");
    let _ = receive();
    assert_eq!(receive(), "READY=1\n");
    gatehouse.wait_for_log("reload refused");
    assert_eq!(
        client.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("green")
    );

    gatehouse.signal("TERM");
    assert_eq!(receive(), "STOPPING=1\n");
    let status = tokio::task::spawn_blocking(move || gatehouse.wait_exit())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn idle_keep_alive_and_http2_connections_are_closed_at_once_on_sigterm() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    // A long drain time: only closing the idle connections at once lets the process end quickly.
    fixture.main_config("[limits]\nshutdown_drain_timeout = \"1h\"\nshutdown_grace = \"off\"\n");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let gatehouse = Gatehouse::start(&fixture, None);
    let client = running(&fixture, gatehouse.https);
    let mut h1 = client.h1("shop.apps.test").await;
    assert_eq!(
        send_h1(&mut h1, get("shop.apps.test", "/")).await.status,
        StatusCode::OK
    );
    let mut h2 = client.h2("shop.apps.test").await;
    let request = http::Request::get("https://shop.apps.test/")
        .body(http_body_util::BodyExt::boxed(http_body_util::Empty::new()))
        .unwrap();
    assert_eq!(common::send_h2(&mut h2, request).await.status, StatusCode::OK);

    gatehouse.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gatehouse.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Both connections were closed by the server (HTTP/2 with GOAWAY).
    let started = tokio::time::Instant::now();
    while !(h1.is_closed() && h2.is_closed()) {
        assert!(started.elapsed() < common::WAIT, "client connections still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn gatehouse_reload_asks_the_running_instance_through_the_admin_listener() {
    let fixture = Fixture::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let admin_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    fixture.main_config("[reload]\nwatch_files = false\n");
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write(
        "gatehouse.toml",
        &main.replace(
            "admin = \"127.0.0.1:0\"",
            &format!("admin = \"127.0.0.1:{admin_port}\""),
        ),
    );
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[blue.addr], ""));
    let gatehouse = Gatehouse::start(&fixture, None);
    let client = running(&fixture, gatehouse.https);
    assert_eq!(
        client.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("blue")
    );

    let main_path = fixture.path("gatehouse.toml");
    let reload = move || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["reload", "--config"])
            .arg(&main_path)
            .output()
            .unwrap()
    };
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[green.addr], ""),
    );
    let output = tokio::task::spawn_blocking(reload.clone()).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "reloaded: generation 2\n");
    assert_eq!(
        client.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("green")
    );

    fixture.environment("shop", "name = \"shop\"\ndomains = []\nupstreams = []\n");
    let output = tokio::task::spawn_blocking(reload).await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing was reloaded"));
    assert_eq!(
        client.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("green")
    );
    gatehouse.signal("TERM");
}

/// The process runs without transparent huge pages (see `src/main.rs`): with them, every idle
/// connection's few buffers pin 2 MiB pages and resident memory per connection grows by half.
#[tokio::test]
async fn the_process_runs_without_transparent_huge_pages() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    if !status.contains("THP_enabled:") {
        // Kernels before 5.0 do not report the flag; nothing to check there.
        eprintln!("this kernel does not report THP_enabled; not checked");
        return;
    }
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    fixture.main_config("");
    fixture.environment("app", &environment_toml("app", &["app.apps.test"], &[app.addr], ""));
    let gatehouse = Gatehouse::start(&fixture, None);
    let status = std::fs::read_to_string(format!("/proc/{}/status", gatehouse.child.id())).unwrap();
    let flag = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(flag, Some("0"), "gatehouse runs with transparent huge pages allowed");
}

/// Resident memory of process `pid`, in KiB.
fn resident_kib_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4
}

/// Open `count` keep-alive connections, one request each, and keep them in `senders`.
async fn open_with_one_request(
    clients: &common::Running,
    count: usize,
    senders: &mut Vec<hyper::client::conn::http1::SendRequest<common::ClientBody>>,
) {
    for _ in 0..count {
        let mut sender = clients.h1("app.apps.test").await;
        let answer = send_h1(&mut sender, get("app.apps.test", "/")).await;
        assert_eq!(answer.status, StatusCode::OK);
        senders.push(sender);
    }
}

/// An idle keep-alive connection costs its TLS stream, not hyper's: once a connection has been
/// idle briefly, hyper's connection with its 8 KiB read buffer and 8 KiB header write buffer is
/// released until the client sends again (`src/server/http1.rs`). Kept, they made a connection
/// that had served one request cost about 23 KiB instead of about 14.
#[tokio::test]
async fn idle_keep_alive_connections_release_hypers_buffers() {
    const CONNECTIONS: usize = 400;
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    fixture.main_config("[limits]\nmax_connections_per_client = 1000\n");
    fixture.environment("app", &environment_toml("app", &["app.apps.test"], &[app.addr], ""));
    let gatehouse = Gatehouse::start(&fixture, None);
    let clients = running(&fixture, gatehouse.https);
    let pid = gatehouse.child.id();
    // Warm up the allocator, the upstream pool and the request path, as a running proxy is.
    let mut senders = Vec::new();
    open_with_one_request(&clients, 20, &mut senders).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = resident_kib_of(pid);
    open_with_one_request(&clients, CONNECTIONS, &mut senders).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection = (resident_kib_of(pid).saturating_sub(before)) as f64 / CONNECTIONS as f64;
    println!("resident memory per idle keep-alive connection after a request: {per_connection:.1} KiB");
    assert!(
        per_connection < 18.0,
        "an idle keep-alive connection costs {per_connection:.1} KiB: hyper's buffers are kept"
    );
    // Every connection still works after being parked.
    for sender in senders.iter_mut().step_by(40) {
        assert_eq!(send_h1(sender, get("app.apps.test", "/")).await.status, StatusCode::OK);
    }
}

/// The process log is written synchronously, so a flood of denials must not become a stderr
/// line per request: a few lines a second get through, and a later one says how many were held
/// back. (Every denial is still in the audit log and the metrics.)
#[tokio::test]
async fn a_flood_of_denials_writes_a_few_stderr_lines_not_one_per_request() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "[access]\n\"/\" = \"deny-all\"\n",
        ),
    );
    let gatehouse = Gatehouse::start(&fixture, None);
    let client = running(&fixture, gatehouse.https);
    let mut sender = client.h1("shop.apps.test").await;
    let started = std::time::Instant::now();
    for _ in 0..300 {
        let answer = send_h1(&mut sender, get("shop.apps.test", "/")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // One more denial in a later second reports what was held back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = send_h1(&mut sender, get("shop.apps.test", "/")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let held_back_line = gatehouse.wait_for_log("request denied");
    let mut denied_lines = 1;
    let mut held_back: u64 = held_back_number(&held_back_line);
    while let Ok(line) = gatehouse.stderr.recv_timeout(Duration::from_millis(500)) {
        if line.contains("request denied") {
            denied_lines += 1;
            held_back += held_back_number(&line);
        }
    }
    // 10 a second over the seconds the flood touched (its elapsed time, plus one for a start
    // within a second), and the later denial's own line.
    assert!(
        denied_lines <= 10 * (seconds + 1) + 1,
        "{denied_lines} stderr lines for 301 denials in {seconds} s"
    );
    assert!(held_back > 0, "no line said how many were held back");
    assert_eq!(
        denied_lines + held_back,
        301,
        "every denial is either written or counted as held back"
    );
    assert_eq!(app.requests(), 0);
}

fn held_back_number(line: &str) -> u64 {
    line.split("held_back=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

/// A free loopback port for the child's admin listener, written into its main file.
fn with_admin_port(fixture: &Fixture) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write(
        "gatehouse.toml",
        &main.replace("admin = \"127.0.0.1:0\"", &format!("admin = \"127.0.0.1:{port}\"")),
    );
    port
}

/// The status of `GET path` on the admin listener at `port`.
async fn admin_status(port: u16, path: &str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut sender = common::h1_over(tcp).await;
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(http_body_util::BodyExt::boxed(http_body_util::Empty::new()))
        .unwrap();
    send_h1(&mut sender, request).await.status.as_u16()
}

/// On SIGTERM the load balancer gets its time: `/readyz` says 503 at once, while every listener
/// keeps accepting and serving new connections (a balancer still sends some until it has seen
/// the 503); a second SIGTERM ends the grace period, the listeners close, and the process exits 0.
#[tokio::test]
async fn sigterm_keeps_serving_new_connections_through_the_grace_period_with_readyz_503() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("[limits]\nshutdown_grace = \"1h\"\n");
    let admin = with_admin_port(&fixture);
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let gatehouse = Gatehouse::start(&fixture, None);
    let client = std::sync::Arc::new(running(&fixture, gatehouse.https));
    // Ready once every listener is bound (the https line is logged a moment before).
    let started = tokio::time::Instant::now();
    while admin_status(admin, "/readyz").await != 200 {
        assert!(started.elapsed() < common::WAIT, "/readyz never said 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Continuous load: a new connection per request, as new clients arrive through a balancer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (served, failed) = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let load = {
        let (client, stop, served, failed) = (client.clone(), stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // A refused connection or failed handshake panics this task, which fails the test.
                let answer = client.get("shop.apps.test", "/").await.status;
                let counter = if answer == StatusCode::OK { &served } else { &failed };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    while served.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    gatehouse.signal("TERM");
    let started = tokio::time::Instant::now();
    while admin_status(admin, "/readyz").await != 503 {
        assert!(started.elapsed() < common::WAIT, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Within the grace period: new connections are accepted and served, none fails.
    let at_503 = served.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        served.load(std::sync::atomic::Ordering::SeqCst) >= at_503 + 20,
        "new connections were not served during the grace period"
    );
    assert_eq!(
        failed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "requests failed during the grace period"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();

    // A second SIGTERM ends the grace period: the listeners close and the process exits 0.
    gatehouse.signal("TERM");
    gatehouse.wait_for_log("listeners closed; draining");
    assert!(tokio::net::TcpStream::connect(gatehouse.https).await.is_err());
    let status = tokio::task::spawn_blocking(move || gatehouse.wait_exit())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `POST /drain` takes a running instance out of rotation for maintenance: `/readyz` says 503
/// while requests, on open and on new connections, are served; `POST /undrain` brings it back.
#[tokio::test]
async fn post_drain_takes_the_instance_out_of_rotation_and_undrain_brings_it_back() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let mut open = running.h1("shop.apps.test").await;
    assert_eq!(common::admin_get(&running, "/readyz").await.status, StatusCode::OK);

    assert_eq!(common::admin_post(&running, "/drain").await.status, StatusCode::OK);
    let readyz = common::admin_get(&running, "/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(readyz.text().contains("undrain"), "{}", readyz.text());
    assert_eq!(
        send_h1(&mut open, get("shop.apps.test", "/")).await.status,
        StatusCode::OK
    );
    assert_eq!(running.get("shop.apps.test", "/").await.status, StatusCode::OK);

    assert_eq!(common::admin_post(&running, "/undrain").await.status, StatusCode::OK);
    assert_eq!(common::admin_get(&running, "/readyz").await.status, StatusCode::OK);
}
