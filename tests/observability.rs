//! Observability: exact metrics after a known sequence, valid exposition (promtool), readiness,
//! access log fields, audit log, and no secrets in /config.

mod common;

use std::time::Duration;

use common::pki::{Ca, ClientSpec};
use common::upstream::Upstream;
use common::{Fixture, WAIT, admin_get, environment_toml, get, scrape_until, send_h1};
use http::StatusCode;

const PROFILES: &str = "[profiles.office]\nranges = [\"192.0.2.0/24\"]\n";

#[tokio::test]
async fn metrics_count_a_known_sequence_exactly() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    fixture.main_config(PROFILES);
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "[access]\n\"/office/\" = \"office\"\n",
        ),
    );
    fixture.environment("dead", &environment_toml("dead", &["dead.apps.test"], &[dead], ""));
    let running = fixture.start().await;

    let mut shop = running.h1("shop.apps.test").await;
    for path in ["/", "/download/1000"] {
        assert_eq!(
            send_h1(&mut shop, get("shop.apps.test", path)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        send_h1(&mut shop, get("shop.apps.test", "/office/")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(running.get("dead.apps.test", "/").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        send_h1(&mut shop, get("nowhere.example", "/")).await.status,
        StatusCode::NOT_FOUND
    );

    // Plain HTTP sent to the TLS port: a failed handshake.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(running.https).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
    }

    // One good reload, then a broken file that is refused.
    let main = fixture.path("gatehouse.toml");
    running
        .proxy()
        .reload(&main, gatehouse::server::ReloadTrigger::Api)
        .unwrap();
    fixture.environment(
        "broken",
        "name = \"broken\"\ndomains = [\"x.apps.test\"]\nupstreams = [\"not an address\"]\n",
    );
    assert!(
        running
            .proxy()
            .reload(&main, gatehouse::server::ReloadTrigger::Api)
            .is_err()
    );

    let expected = [
        (
            "gatehouse_http_requests_total{environment=\"shop\",method=\"GET\",status=\"2xx\"}",
            2.0,
        ),
        (
            "gatehouse_http_requests_total{environment=\"shop\",method=\"GET\",status=\"4xx\"}",
            1.0,
        ),
        (
            "gatehouse_http_requests_total{environment=\"dead\",method=\"GET\",status=\"5xx\"}",
            1.0,
        ),
        (
            "gatehouse_http_requests_total{environment=\"_unrouted\",method=\"GET\",status=\"4xx\"}",
            1.0,
        ),
        (
            "gatehouse_access_decisions_total{environment=\"shop\",outcome=\"allow\",reason=\"open\"}",
            2.0,
        ),
        (
            "gatehouse_access_decisions_total{environment=\"shop\",outcome=\"deny\",reason=\"not_in_range\"}",
            1.0,
        ),
        (
            "gatehouse_upstream_errors_total{environment=\"dead\",kind=\"connect\"}",
            1.0,
        ),
        ("gatehouse_http_response_body_bytes_total{environment=\"shop\"}", -1.0),
        (
            "gatehouse_upstream_response_duration_seconds_count{environment=\"shop\"}",
            2.0,
        ),
        (
            "gatehouse_http_request_duration_seconds_count{environment=\"shop\"}",
            3.0,
        ),
        (
            "gatehouse_tls_handshakes_total{policy=\"platform\",result=\"success\",version=\"TLSv1.3\"}",
            2.0,
        ),
        (
            "gatehouse_tls_handshakes_total{policy=\"unknown\",result=\"failure\",version=\"unknown\"}",
            1.0,
        ),
        ("gatehouse_tls_handshake_failures_total{reason=\"not_tls\"}", 1.0),
        ("gatehouse_config_reloads_total{result=\"success\"}", 1.0),
        ("gatehouse_config_reloads_total{result=\"failure\"}", 1.0),
        ("gatehouse_config_generation", 2.0),
        ("gatehouse_upstream_connections", -1.0),
        ("gatehouse_downstream_connections{protocol=\"http1\"}", -1.0),
    ];
    let (text, parsed) = scrape_until(&running, |s| {
        expected
            .iter()
            .all(|(key, value)| *value < 0.0 || s.get(*key) == Some(value))
    })
    .await;
    for (key, value) in expected {
        let found = parsed.get(key).copied();
        match value < 0.0 {
            true => assert!(found.is_some(), "{key} missing in\n{text}"),
            false => assert_eq!(found, Some(value), "{key} in\n{text}"),
        }
    }
    // The body bytes sent to the shop's clients include the 1000-byte download.
    assert!(parsed["gatehouse_http_response_body_bytes_total{environment=\"shop\"}"] >= 1000.0);
    // Certificate expiry per environment and domain, for alerting 14 days ahead.
    let expiry =
        parsed["gatehouse_certificate_expiry_timestamp_seconds{domain=\"shop.apps.test\",environment=\"shop\"}"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 300.0 * 86400.0 && expiry < now + 366.0 * 86400.0,
        "{expiry}"
    );
    assert!(
        parsed.contains_key("process_resident_memory_bytes"),
        "process metrics missing"
    );
    // The shop's keep-alive connection stays in the pool.
    assert!(parsed["gatehouse_upstream_connections"] >= 1.0, "{text}");
    // Each configured instance has its health state, labelled by its (configured) address...
    let shop_instance = text
        .lines()
        .find(|line| line.starts_with("gatehouse_upstream_instance_healthy{environment=\"shop\""))
        .unwrap_or_else(|| panic!("no instance state for shop in\n{text}"));
    assert!(shop_instance.ends_with(" 1"), "{shop_instance}");
    // ...and nothing is labelled by path or client address (the per-instance series carry the
    // instances' own addresses, which are on loopback here too).
    let other_lines: String = text
        .lines()
        .filter(|line| !line.starts_with("gatehouse_upstream_instance_"))
        .collect();
    assert!(
        !other_lines.contains("office/") && !other_lines.contains("127.0.0.1"),
        "{text}"
    );
}

#[tokio::test]
async fn exposition_passes_promtool() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    assert_eq!(running.get("shop.apps.test", "/").await.status, StatusCode::OK);
    let (text, _) = scrape_until(&running, |s| {
        s.keys().any(|k| k.starts_with("gatehouse_http_requests_total"))
    })
    .await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool: {report}\n{text}");
}

#[tokio::test]
async fn readyz_reports_ready_then_503_when_stopping_while_healthz_stays_ok() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    assert_eq!(admin_get(&running, "/readyz").await.status, StatusCode::OK);
    assert_eq!(admin_get(&running, "/healthz").await.status, StatusCode::OK);
    running.proxy().stop_accepting();
    assert_eq!(
        admin_get(&running, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(admin_get(&running, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn config_endpoint_shows_what_is_in_force_and_no_secret() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.issue("www.shop.example", &["www.shop.example"], common::pki::KeyKind::Ecdsa);
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test", "www.shop.example"],
            &[app.addr],
            "[[certificates]]\ncertificate = \"../www.shop.example.pem\"\nkey = \"../www.shop.example.key\"\n",
        ),
    );
    let running = fixture.start().await;
    let answer = admin_get(&running, "/config").await;
    assert_eq!(answer.status, StatusCode::OK);
    let config: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(config["generation"], 1);
    assert_eq!(config["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(config["environments"][0]["name"], "shop");
    assert_eq!(config["environments"][0]["domains"][1], "www.shop.example");
    assert!(
        config["environments"][0]["certificates"][0]["days_left"]
            .as_i64()
            .unwrap()
            >= 364
    );
    let text = answer.text();
    for secret in ["PRIVATE KEY", ".key", "BEGIN"] {
        assert!(!text.contains(secret), "/config shows {secret:?}:\n{text}");
    }
}

#[tokio::test]
async fn access_log_line_of_an_mtls_request_has_every_field_and_denials_are_audited() {
    let fixture = Fixture::new();
    let partner = Ca::new("Partner CA");
    fixture.write("partner-ca.pem", &partner.pem);
    let app = Upstream::start("shop").await;
    fixture.main_config(
        "[logging]\naccess_log = \"access.log\"\naudit_log = \"audit.log\"\n\
         [profiles.partner]\nclient_ca = \"partner-ca.pem\"\n[profiles.office]\nranges = [\"192.0.2.0/24\"]\n",
    );
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "[access]\n\"/partner/\" = \"partner\"\n\"/office/\" = \"office\"\n",
        ),
    );
    let running = fixture.start().await;
    let client = partner.issue_client(ClientSpec {
        subject: &[(rcgen::DnType::CommonName, "partner app")],
        ..ClientSpec::default()
    });
    let mut sender = running.h1_as("shop.apps.test", Some(&client)).await;
    assert_eq!(
        send_h1(&mut sender, get("shop.apps.test", "/partner/report?secret=1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send_h1(&mut sender, get("shop.apps.test", "/office/")).await.status,
        StatusCode::FORBIDDEN
    );

    let read_lines = |file: &str, count: usize| {
        let path = fixture.path(file);
        async move {
            let started = tokio::time::Instant::now();
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
                if lines.len() >= count || started.elapsed() > WAIT {
                    return lines;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let access = read_lines("access.log", 2).await;
    assert_eq!(access.len(), 2, "{access:?}");
    let line = &access[0];
    assert_eq!(line["log"], "access");
    assert_eq!(line["environment"], "shop");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "shop.apps.test");
    assert_eq!(line["path"], "/partner/report", "the query string is not logged");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["tls_version"], "TLSv1.3");
    assert_eq!(line["client_certificate"], "CN=partner app");
    assert_eq!(line["status"], 200);
    assert!(line["bytes_sent"].as_u64().unwrap() > 0);
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["upstream_duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(line["upstream"], app.addr.to_string());
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["decision_reason"], "certificate");
    assert_eq!(line["request_id"].as_str().unwrap().len(), 32);
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(access[1]["status"], 403);
    assert_eq!(access[1]["decision"], "deny");

    running
        .proxy()
        .reload(&fixture.path("gatehouse.toml"), gatehouse::server::ReloadTrigger::Api)
        .unwrap();
    let audit = read_lines("audit.log", 2).await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["event"], "access_denied");
    assert_eq!(audit[0]["reason"], "not_in_range");
    assert_eq!(audit[0]["path"], "/office/");
    assert_eq!(audit[0]["rule"], "/office/");
    assert_eq!(audit[1]["event"], "config_reload");
    assert_eq!(audit[1]["result"], "success");
    assert_eq!(audit[1]["trigger"], "api");
    assert_eq!(audit[1]["old_sha256"], audit[1]["new_sha256"]);
}

async fn lines_of(path: std::path::PathBuf, count: usize) -> Vec<String> {
    let started = tokio::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count || started.elapsed() > WAIT {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn common_log_format_and_reopening_the_file_on_sigusr1() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture
        .main_config("[logging]\naccess_log = \"access.log\"\naccess_log_format = \"common\"\naudit_log = \"off\"\n");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    assert_eq!(running.get("shop.apps.test", "/first").await.status, StatusCode::OK);
    let lines = lines_of(fixture.path("access.log"), 1).await;
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
    assert!(
        lines[0].contains(" +0000] \"GET /first HTTP/1.1\" 200 "),
        "{}",
        lines[0]
    );

    // logrotate moves the file away, then signals: new lines go to a new file at the old path.
    std::fs::rename(fixture.path("access.log"), fixture.path("access.log.1")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = tokio::time::Instant::now();
    while !fixture.path("access.log").exists() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.get("shop.apps.test", "/second").await.status, StatusCode::OK);
    let lines = lines_of(fixture.path("access.log"), 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("GET /second"), "{}", lines[0]);
    assert_eq!(lines_of(fixture.path("access.log.1"), 1).await.len(), 1);
}

#[tokio::test]
async fn access_log_lines_that_cannot_be_written_are_counted() {
    // A full disk: /dev/full opens, and every write to it fails. Requests are still served, and
    // the lost lines show in the metrics, apart from those dropped by a writer falling behind.
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("[logging]\naccess_log = \"/dev/full\"\naudit_log = \"off\"\n");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    for _ in 0..3 {
        assert_eq!(running.get("shop.apps.test", "/").await.status, StatusCode::OK);
    }
    let failed = "gatehouse_log_lines_dropped_total{reason=\"write_failed\"}";
    let (text, samples) = scrape_until(&running, |samples| samples.get(failed) == Some(&3.0)).await;
    assert_eq!(samples.get(failed), Some(&3.0), "{text}");
    assert_eq!(
        samples.get("gatehouse_log_lines_dropped_total{reason=\"queue_full\"}"),
        Some(&0.0),
        "{text}"
    );
}

#[test]
fn shipped_alert_rules_are_valid() {
    let output = std::process::Command::new("promtool")
        .args([
            "check",
            "rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/alerts.yml"),
        ])
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// The shipped alert rules fire when they should and not otherwise (promtool's rule unit tests
/// in tests/alerts/rules_test.yml: configuration drift across a fleet, a stale client CRL).
#[test]
fn shipped_alert_rules_fire_when_they_should() {
    let output = std::process::Command::new("promtool")
        .args([
            "test",
            "rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alerts/rules_test.yml"),
        ])
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every metric the shipped Grafana dashboard (conf/grafana-dashboard.json) queries is one that
/// `/metrics` exposes, once the traffic that makes its series exists has passed: a dashboard panel
/// naming a metric that does not exist (renamed, misspelt) fails here instead of staying empty.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_that_gatehouse_exposes() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find("gatehouse_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[start + name.len()..];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_owned();
                queried.insert(family);
            }
        }
    }
    assert!(queried.len() >= 15, "the dashboard queries only {queried:?}");

    // A gatehouse with shared ticket keys, an environment with a live and a dead instance (retries,
    // an ejection) and a denied path; then traffic through all of it.
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    fixture.write("tickets.key", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n");
    std::fs::set_permissions(
        fixture.path("tickets.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fixture.main_config("");
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write(
        "gatehouse.toml",
        &main.replace("[tls]\n", "[tls]\nticket_keys = \"tickets.key\"\n"),
    );
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr, dead],
            "retries = 1\n[access]\n\"/private/\" = \"deny-all\"\n",
        ),
    );
    // And an environment whose only instance is dead: its requests fail (502).
    fixture.environment(
        "broken",
        &environment_toml("broken", &["broken.apps.test"], &[dead], ""),
    );
    let running = fixture.start().await;
    for _ in 0..20 {
        running.get("shop.apps.test", "/").await;
    }
    assert_eq!(
        running.get("shop.apps.test", "/private/").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        running.get("broken.apps.test", "/").await.status,
        StatusCode::BAD_GATEWAY
    );

    let text = common::admin_get(&running, "/metrics").await.text();
    let exposed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let missing: Vec<&String> = queried.iter().filter(|name| !exposed.contains(name.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not expose: {missing:?}\n{text}"
    );
}

/// `[access_log] requests = "notable"`: errors and denials always get a line, and of the other
/// requests exactly the `sample` share; the rest are counted as skipped.
#[tokio::test]
async fn an_environment_can_log_only_notable_requests_and_a_sample_of_the_rest() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("[logging]\naccess_log = \"access.log\"\naudit_log = \"off\"\n");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "[access_log]\nrequests = \"notable\"\nslow = \"30s\"\nsample = 0.1\n[access]\n\"/private/\" = \"deny-all\"\n",
        ),
    );
    let running = fixture.start().await;
    let mut sender = running.h1("shop.apps.test").await;
    for _ in 0..100 {
        assert_eq!(
            send_h1(&mut sender, get("shop.apps.test", "/")).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..5 {
        assert_eq!(
            send_h1(&mut sender, get("shop.apps.test", "/private/x")).await.status,
            StatusCode::FORBIDDEN
        );
    }
    let path = fixture.path("access.log");
    // Lines reach the file within 100 ms of their answer.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let statuses: Vec<u64> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| line["status"].as_u64())
        .collect();
    assert_eq!(
        statuses.iter().filter(|status| **status == 403).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        10,
        "{statuses:?}"
    );
    let (text, samples) = scrape_until(&running, |samples| {
        samples.get("gatehouse_access_log_lines_skipped_total{environment=\"shop\"}") == Some(&90.0)
    })
    .await;
    assert_eq!(
        samples.get("gatehouse_access_log_lines_skipped_total{environment=\"shop\"}"),
        Some(&90.0),
        "{text}"
    );
}
