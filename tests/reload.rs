//! Reloads never lose a request: under load, 50 reloads alternate two configurations, every
//! request succeeds and every answer carries the headers of exactly one configuration. Broken
//! files are refused and the old configuration keeps serving; rotated certificates are seen by
//! the next handshake.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::pki::KeyKind;
use common::upstream::Upstream;
use common::{Connect, Fixture, environment_toml, get, send_h1, send_h2};
use gatehouse::server::ReloadTrigger;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};

fn headers(flavour: &str, frame: &str) -> String {
    format!(
        "[response_headers]\nX-Frame-Options = \"{frame}\"\n[custom_response_headers]\nX-Config = \"{flavour}\"\nX-Config-Twin = \"{flavour}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_no_request_and_never_mix_configurations() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    let config = |flavour: &str, frame: &str| {
        environment_toml("shop", &["shop.apps.test"], &[app.addr], &headers(flavour, frame))
    };
    fixture.environment("shop", &config("a", "DENY"));
    let running = Arc::new(fixture.start().await);
    let stop = Arc::new(AtomicBool::new(false));

    // Two HTTP/1.1 keep-alive clients and one HTTP/2 client with concurrent streams.
    let mut workers = Vec::new();
    for worker in 0..3 {
        let running = running.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let check = |answer: common::Answer, seen: &mut Vec<(String, String)>| {
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
                let flavour = answer.header("x-config").unwrap().to_owned();
                let twin = answer.header("x-config-twin").unwrap();
                let frame = answer.header("x-frame-options").unwrap().to_owned();
                assert_eq!(flavour, twin, "headers of two configurations in one answer");
                let expected_frame = if flavour == "a" { "DENY" } else { "SAMEORIGIN" };
                assert_eq!(frame, expected_frame, "headers of two configurations in one answer");
                seen.push((flavour, frame));
            };
            if worker < 2 {
                let mut sender = running.h1("shop.apps.test").await;
                while !stop.load(Ordering::SeqCst) && seen.len() < 5000 {
                    check(send_h1(&mut sender, get("shop.apps.test", "/")).await, &mut seen);
                }
            } else {
                let sender = running.h2("shop.apps.test").await;
                while !stop.load(Ordering::SeqCst) && seen.len() < 5000 {
                    let mut batch = Vec::new();
                    for _ in 0..8 {
                        let mut sender = sender.clone();
                        let request = Request::get("https://shop.apps.test/")
                            .body(Empty::new().boxed())
                            .unwrap();
                        batch.push(tokio::spawn(async move { send_h2(&mut sender, request).await }));
                    }
                    for answer in batch {
                        check(answer.await.unwrap(), &mut seen);
                    }
                }
            }
            seen
        }));
    }

    let main = fixture.path("gatehouse.toml");
    for round in 0..50 {
        let (flavour, frame) = if round % 2 == 0 {
            ("b", "SAMEORIGIN")
        } else {
            ("a", "DENY")
        };
        fixture.environment("shop", &config(flavour, frame));
        running.proxy().reload(&main, ReloadTrigger::Api).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    let mut flavours = std::collections::HashSet::new();
    for worker in workers {
        let seen = worker.await.unwrap();
        total += seen.len();
        flavours.extend(seen.into_iter().map(|(flavour, _)| flavour));
    }
    eprintln!("requests during the reloads: {total}");
    assert!(total >= 500, "only {total} requests ran during the reloads");
    assert_eq!(flavours.len(), 2, "both configurations served: {flavours:?}");
    assert_eq!(running.proxy().snapshot().summary.environments.len(), 1);
}

#[tokio::test]
async fn broken_files_are_refused_and_the_running_configuration_keeps_serving() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    let good = environment_toml("shop", &["shop.apps.test"], &[app.addr], "");
    fixture.environment("shop", &good);
    let running = fixture.start().await;
    let main = fixture.path("gatehouse.toml");
    let other = fixture.issue("other", &["www.other.example"], KeyKind::Ecdsa);
    let mismatched_key = format!("{good}[[certificates]]\ncertificate = \"../other.pem\"\nkey = \"../platform.key\"\n");
    let bad_certificate = format!("{good}[[certificates]]\ncertificate = \"../garbage.pem\"\nkey = \"../other.key\"\n");
    fixture.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let half_written = &good[..good.len() / 2];
    for broken in [
        half_written.to_owned(),
        "name = [".to_owned(),
        mismatched_key,
        bad_certificate,
    ] {
        fixture.environment("shop", &broken);
        let errors = running.proxy().reload(&main, ReloadTrigger::Api).unwrap_err();
        assert!(!errors.0.is_empty());
        let answer = running.get("shop.apps.test", "/").await;
        assert_eq!(answer.status, StatusCode::OK, "after refusing:\n{broken}");
    }
    assert_eq!(
        running.proxy().snapshot().summary.environments[0].domains,
        ["shop.apps.test"]
    );
    drop(other);
}

#[tokio::test]
async fn a_rotated_certificate_is_seen_by_the_next_handshake() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let connect = || Connect {
        server_name: "shop.apps.test",
        send_sni: true,
        alpn: &[b"http/1.1"],
    };
    let before = running.tls(connect()).await;
    let first = before.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(first, fixture.platform.der);
    let mut open_connection = common::h1_over(before).await;

    // The platform certificate files are replaced (as a certificate manager would), then reloaded.
    let rotated = fixture.ca.issue(
        fixture.dir.path(),
        "platform",
        &common::PLATFORM_NAMES,
        KeyKind::Rsa,
        90,
    );
    running
        .proxy()
        .reload(&fixture.path("gatehouse.toml"), ReloadTrigger::Api)
        .unwrap();
    let after = running.tls(connect()).await;
    assert_eq!(after.get_ref().1.peer_certificates().unwrap()[0], rotated.der);
    assert_ne!(rotated.der, first);
    // A renewed certificate is the same TLS terms: the connection opened before keeps working.
    let answer = send_h1(&mut open_connection, get("shop.apps.test", "/")).await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// Poll the in-process proxy until `host` is answered by `upstream` (bounded by `WAIT`).
async fn wait_for_upstream(running: &common::Running, host: &str, upstream: &str) -> bool {
    let started = tokio::time::Instant::now();
    while started.elapsed() < common::WAIT {
        if running.get(host, "/").await.header("x-upstream") == Some(upstream) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_changed_or_new_file_is_reloaded_and_a_half_written_one_never_takes_effect() {
    let fixture = Fixture::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    fixture.main_config("[reload]\nwatch_debounce = \"100ms\"\n");
    let good = environment_toml("shop", &["shop.apps.test"], &[green.addr], "");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[blue.addr], ""));
    let running = fixture.start().await;
    let _watcher = gatehouse::watch::spawn(running.proxy().shared(), fixture.path("gatehouse.toml")).unwrap();

    // Half a file, left long enough for the watcher to try it: refused, blue keeps serving.
    fixture.environment("shop", &good[..good.len() - 12]);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        running.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("blue")
    );
    // The rest of the file arrives: green.
    fixture.environment("shop", &good);
    assert!(
        wait_for_upstream(&running, "shop.apps.test", "green").await,
        "the change was not reloaded"
    );

    // A new environment file is picked up too.
    fixture.environment("new", &environment_toml("new", &["new.apps.test"], &[blue.addr], ""));
    assert!(
        wait_for_upstream(&running, "new.apps.test", "blue").await,
        "the new file was not reloaded"
    );
    assert_eq!(running.proxy().snapshot().summary.environments.len(), 2);
}

#[tokio::test]
async fn listeners_are_added_and_closed_by_a_reload_and_a_busy_port_fails_only_the_reload() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let main_path = fixture.path("gatehouse.toml");
    let original = std::fs::read_to_string(&main_path).unwrap();
    let first = running.proxy().https_addrs()[0];
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let with_https = |list: &str| original.replace("https = [\"127.0.0.1:0\"]", &format!("https = [{list}]"));
    let served_at = |addr: std::net::SocketAddr| {
        let roots = fixture.ca.der.clone();
        async move {
            common::Running::client_only(addr, roots)
                .get("shop.apps.test", "/")
                .await
                .status
        }
    };

    // Added: a second port is bound by the reload.
    let added = free_port();
    fixture.write(
        "gatehouse.toml",
        &with_https(&format!("\"127.0.0.1:0\", \"127.0.0.1:{added}\"")),
    );
    running.proxy().reload(&main_path, ReloadTrigger::Api).unwrap();
    let added_addr: std::net::SocketAddr = format!("127.0.0.1:{added}").parse().unwrap();
    assert_eq!(running.proxy().https_addrs().len(), 2);
    assert_eq!(served_at(added_addr).await, StatusCode::OK);

    // A port that cannot be bound fails the reload; everything keeps serving as it was.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    fixture.write(
        "gatehouse.toml",
        &with_https(&format!(
            "\"127.0.0.1:0\", \"127.0.0.1:{added}\", \"127.0.0.1:{busy_port}\""
        )),
    );
    let errors = running.proxy().reload(&main_path, ReloadTrigger::Api).unwrap_err();
    assert!(
        errors
            .to_string()
            .contains(&format!("cannot listen on 127.0.0.1:{busy_port}")),
        "{errors}"
    );
    assert_eq!(running.proxy().https_addrs().len(), 2);
    assert_eq!(served_at(first).await, StatusCode::OK);

    // Removed: the first listener closes, the added one stays.
    fixture.write("gatehouse.toml", &with_https(&format!("\"127.0.0.1:{added}\"")));
    running.proxy().reload(&main_path, ReloadTrigger::Api).unwrap();
    assert_eq!(running.proxy().https_addrs(), [added_addr]);
    let started = tokio::time::Instant::now();
    while tokio::net::TcpStream::connect(first).await.is_ok() {
        assert!(started.elapsed() < common::WAIT, "the removed listener still accepts");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(served_at(added_addr).await, StatusCode::OK);
    drop(busy);
}

/// Successful reloads so far, from `/metrics`.
async fn successful_reloads(running: &common::Running) -> f64 {
    let text = common::admin_get(running, "/metrics").await.text();
    common::samples(&text)
        .get("gatehouse_config_reloads_total{result=\"success\"}")
        .copied()
        .unwrap_or_default()
}

/// One trigger is one reload. A reload opens and reads every file it names, and the watcher
/// once took those reads for changes: after the first reload it reloaded again every debounce
/// period, forever (and never before the first).
#[tokio::test]
async fn one_trigger_is_exactly_one_reload_over_many_debounce_periods() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("[reload]\nwatch_debounce = \"100ms\"\n");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    let main = fixture.path("gatehouse.toml");
    let _watcher = gatehouse::watch::spawn(running.proxy().shared(), main.clone()).unwrap();
    let ten_debounce_periods = std::time::Duration::from_millis(1000);

    tokio::time::sleep(ten_debounce_periods).await;
    assert_eq!(successful_reloads(&running).await, 0.0, "reloaded with nothing changed");

    // A reload asked for through the API (as SIGHUP and POST /reload do).
    running.proxy().reload(&main, ReloadTrigger::Api).unwrap();
    tokio::time::sleep(ten_debounce_periods).await;
    assert_eq!(
        successful_reloads(&running).await,
        1.0,
        "one requested reload became several"
    );

    // One changed file.
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test", "www.apps.test"], &[app.addr], ""),
    );
    let (_, seen) = common::scrape_until(&running, |samples| {
        samples.get("gatehouse_config_reloads_total{result=\"success\"}") >= Some(&2.0)
    })
    .await;
    assert_eq!(seen["gatehouse_config_reloads_total{result=\"success\"}"], 2.0);
    tokio::time::sleep(ten_debounce_periods).await;
    assert_eq!(
        successful_reloads(&running).await,
        2.0,
        "one file change became several reloads"
    );
    assert_eq!(
        running.proxy().snapshot().summary.environments[0].domains,
        ["shop.apps.test", "www.apps.test"]
    );
}

/// Reloads that overlap (SIGHUP, `POST /reload` and the file watcher fired together) install in
/// the order they read the files, so the newest configuration always wins. The first reload
/// here reads the old files and then waits for a slow name server; the newer files name their
/// instance by address and compile at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_reloads_never_install_an_older_configuration_over_a_newer_one() {
    let app = Upstream::start("app").await;
    let slow_dns =
        common::dns::NameServer::start_slow(std::net::Ipv4Addr::LOCALHOST, std::time::Duration::from_millis(1500))
            .await;
    let fixture = Fixture::new();
    fixture.main_config(&format!(
        "[upstream]\nnameservers = [\"{}\"]\n[reload]\nwatch_debounce = \"50ms\"\n",
        slow_dns.addr
    ));
    let old = format!(
        "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstreams = [\"app.internal:{}\"]\n{}",
        app.addr.port(),
        headers("old", "DENY")
    );
    fixture.environment("shop", &old);
    let running = fixture.start().await;
    let main = fixture.path("gatehouse.toml");
    let _watcher = gatehouse::watch::spawn(running.proxy().shared(), main.clone()).unwrap();

    // SIGHUP's reload (as the signal handler runs it) reads the old files, then waits for DNS.
    let shared = running.proxy().shared();
    let signal = tokio::task::spawn_blocking({
        let main = main.clone();
        move || shared.reload(&main, ReloadTrigger::Signal)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The newer files arrive (the watcher fires) and the admin API is asked too.
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], &headers("new", "SAMEORIGIN")),
    );
    let admin = common::admin_post(&running, "/reload").await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.text());
    signal.await.unwrap().unwrap();
    // Let the watcher's reload (if it still comes) finish too.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, seen) = common::scrape_until(&running, |_| true).await;
    assert!(seen["gatehouse_config_reloads_total{result=\"success\"}"] >= 2.0);
    let answer = running.get("shop.apps.test", "/").await;
    assert_eq!(
        answer.header("x-config"),
        Some("new"),
        "an older configuration was installed after the newer one"
    );
}

/// All or nothing, under load: a valid change to one environment made together with a broken
/// second file installs nothing (the running configuration serves every request meanwhile), and
/// the change applies once the broken file is mended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_change_beside_a_broken_file_waits_for_the_mend_and_no_request_fails() {
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    fixture.main_config("");
    let shop = |flavour: &str| environment_toml("shop", &["shop.apps.test"], &[app.addr], &headers(flavour, "DENY"));
    let blog = environment_toml("blog", &["blog.apps.test"], &[app.addr], &headers("blog", "DENY"));
    fixture.environment("shop", &shop("old"));
    fixture.environment("blog", &blog);
    let running = Arc::new(fixture.start().await);
    let main = fixture.path("gatehouse.toml");

    // One keep-alive client per environment, until told to stop (at most 20,000 requests each).
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for host in ["shop.apps.test", "blog.apps.test"] {
        let (running, stop) = (running.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut sender = running.h1(host).await;
            let mut flavours = Vec::new();
            while !stop.load(Ordering::SeqCst) && flavours.len() < 20_000 {
                let answer = send_h1(&mut sender, get(host, "/")).await;
                assert_eq!(answer.status, StatusCode::OK, "{host}: {}", answer.text());
                flavours.push(answer.header("x-config").unwrap_or_default().to_owned());
            }
            flavours
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // shop changes validly, blog's file breaks: refused as a whole, shop keeps its old headers.
    fixture.environment("shop", &shop("new"));
    fixture.environment("blog", "name = \"blog\"\ndomains = [\"blog.apps.test\"\n");
    let errors = running.proxy().reload(&main, ReloadTrigger::Api).unwrap_err();
    assert!(errors.to_string().contains("blog.toml"), "{errors}");
    for _ in 0..20 {
        assert_eq!(running.get("shop.apps.test", "/").await.header("x-config"), Some("old"));
    }
    // blog mended: shop's change applies.
    fixture.environment("blog", &blog);
    running.proxy().reload(&main, ReloadTrigger::Api).unwrap();
    assert_eq!(running.get("shop.apps.test", "/").await.header("x-config"), Some("new"));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);

    let shop_seen = workers.remove(0).await.unwrap();
    let blog_seen = workers.remove(0).await.unwrap();
    assert!(
        shop_seen.len() >= 10 && blog_seen.len() >= 10,
        "too little load: {} / {}",
        shop_seen.len(),
        blog_seen.len()
    );
    assert!(blog_seen.iter().all(|flavour| flavour == "blog"));
    // shop's answers: old until the mend, then new; never back.
    let first_new = shop_seen
        .iter()
        .position(|flavour| flavour == "new")
        .unwrap_or(shop_seen.len());
    assert!(shop_seen[..first_new].iter().all(|flavour| flavour == "old"));
    assert!(shop_seen[first_new..].iter().all(|flavour| flavour == "new"));
}

/// A configured path that names a device (or FIFO) is an error with file and reason, never an
/// endless read: `/dev/zero` as a page, CA bundle, certificate or key once made `check` run out
/// of memory, and would have taken a reloading process with it.
#[tokio::test]
async fn devices_named_as_configuration_files_are_refused_not_read() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    let good = environment_toml("shop", &["shop.apps.test"], &[app.addr], "");
    fixture.environment("shop", &good);
    let running = fixture.start().await;
    let main = fixture.path("gatehouse.toml");
    let broken_environments = [
        environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "maintenance_page = \"/dev/zero\"\n",
        ),
        environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "forbidden_page = \"/dev/urandom\"\n",
        ),
        format!("{good}[[certificates]]\ncertificate = \"/dev/zero\"\nkey = \"../platform.key\"\n"),
        format!("{good}[[certificates]]\ncertificate = \"../platform.pem\"\nkey = \"/dev/zero\"\n"),
    ];
    for broken in broken_environments {
        fixture.environment("shop", &broken);
        let errors = running
            .proxy()
            .reload(&main, ReloadTrigger::Api)
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("not a regular file") && errors.contains("shop.toml"),
            "{broken}\n{errors}"
        );
        assert_eq!(running.get("shop.apps.test", "/").await.status, StatusCode::OK);
    }
    // A client CA bundle in the main file, and an environment file that is itself a device.
    fixture.environment("shop", &good);
    let original = std::fs::read_to_string(&main).unwrap();
    fixture.write(
        "gatehouse.toml",
        &format!("{original}[profiles.partner]\nclient_ca = \"/dev/zero\"\n"),
    );
    let errors = running
        .proxy()
        .reload(&main, ReloadTrigger::Api)
        .unwrap_err()
        .to_string();
    assert!(errors.contains("not a regular file"), "{errors}");
    fixture.write("gatehouse.toml", &original.replace("env/*.toml", "/dev/zero"));
    let errors = running
        .proxy()
        .reload(&main, ReloadTrigger::Api)
        .unwrap_err()
        .to_string();
    assert!(!errors.is_empty());
    assert_eq!(running.get("shop.apps.test", "/").await.status, StatusCode::OK);
}

/// The watcher follows every file an environment names, in whatever folder: here a maintenance
/// page kept beside the site's other pages, outside the environment folder.
#[tokio::test]
async fn a_changed_maintenance_page_in_its_own_folder_is_reloaded_by_the_watcher() {
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    fixture.main_config("[reload]\nwatch_debounce = \"100ms\"\n");
    std::fs::create_dir_all(fixture.path("pages")).unwrap();
    fixture.write("pages/maintenance.html", "<h1>Back soon</h1>\n");
    let extra = "maintenance_page = \"../pages/maintenance.html\"\n\
                 [health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_threshold = 1\n";
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], extra),
    );
    let running = fixture.start().await;
    let _watcher = gatehouse::watch::spawn(running.proxy().shared(), fixture.path("gatehouse.toml")).unwrap();
    app.set_healthy(false);
    let page_is = |expected: &'static str| {
        let running = &running;
        async move {
            for _ in 0..100 {
                let answer = running.get("shop.apps.test", "/").await;
                if answer.status == StatusCode::SERVICE_UNAVAILABLE && answer.text() == expected {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(
        page_is("<h1>Back soon</h1>\n").await,
        "the maintenance page was not served"
    );

    fixture.write("pages/maintenance.html", "<h1>Back at five</h1>\n");
    assert!(
        page_is("<h1>Back at five</h1>\n").await,
        "the changed maintenance page was not reloaded"
    );
}
