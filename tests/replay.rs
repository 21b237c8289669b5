//! `gatehouse replay`: a JSON access log written by a real run, re-decided under a changed
//! configuration. Replay must list exactly the requests the change refuses (403, 404, 421) or
//! lets through, count what it cannot judge, and say so in its exit status.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::{Ca, ClientIdentity, ClientSpec};
use common::upstream::Upstream;
use common::{Fixture, Running, WAIT, environment_toml, get, send_h1};
use rcgen::DnType;

/// Send `path` for `host` on a connection whose SNI is `sni`, as the client `client` (through
/// the trusted forwarder that loopback is in these tests); the status.
async fn send(running: &Running, sni: &str, host: &str, path: &str, client: &str) -> u16 {
    let mut sender = running.h1(sni).await;
    let mut request = get(host, path);
    request.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
    send_h1(&mut sender, request).await.status.as_u16()
}

/// Wait until the access log holds `count` lines; its text.
async fn access_log(fixture: &Fixture, count: usize) -> String {
    let started = tokio::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(fixture.path("access.log")).unwrap_or_default();
        if text.lines().count() >= count || started.elapsed() > WAIT {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `gatehouse replay --json`: the exit code and the report.
fn replay(config: &Path, log: &Path) -> (Option<i32>, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["replay", "--json", "--config"])
        .arg(config)
        .arg("--access-log")
        .arg(log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("{err}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code(), report)
}

/// The groups of changed requests as `(before, after, environment, host, rule, reason,
/// requests)`, sorted.
fn changes(report: &serde_json::Value) -> Vec<(String, String, String, String, String, String, u64)> {
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    let mut changes: Vec<_> = (report["groups"].as_array().unwrap().iter())
        .map(|group| {
            (
                text(&group["before"]),
                text(&group["after"]),
                text(&group["environment"]),
                text(&group["host"]),
                text(&group["rule"]),
                text(&group["reason"]),
                group["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    changes.sort();
    changes
}

fn change(
    before: &str,
    after: &str,
    environment: &str,
    host: &str,
    rule: &str,
    reason: &str,
    requests: u64,
) -> (String, String, String, String, String, String, u64) {
    let owned = |text: &str| text.to_owned();
    (
        owned(before),
        owned(after),
        owned(environment),
        owned(host),
        owned(rule),
        owned(reason),
        requests,
    )
}

/// Write a main file `file` from the fixture's (kept as `base.toml` the first time), reading
/// environments from `environments`, trusting loopback's `X-Forwarded-For`, with `profiles`.
fn main_file(fixture: &Fixture, file: &str, environments: &str, profiles: &str) {
    if !fixture.path("base.toml").exists() {
        std::fs::copy(fixture.path("gatehouse.toml"), fixture.path("base.toml")).unwrap();
    }
    let text = std::fs::read_to_string(fixture.path("base.toml")).unwrap();
    let text = text
        .replace("env/*.toml", environments)
        .replace("[tls]", "trusted_forwarders = [\"127.0.0.0/8\"]\n[tls]");
    fixture.write(file, &format!("{text}{profiles}"));
}

#[tokio::test]
async fn replay_lists_exactly_the_requests_a_tightened_configuration_refuses() {
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    let profiles = "[profiles.office]\nranges = [\"192.0.2.0/24\"]\n";
    fixture.main_config("[logging]\naccess_log = \"access.log\"\naudit_log = \"off\"\n");
    main_file(&fixture, "gatehouse.toml", "env/*.toml", profiles);
    let admin_only = "[access]\n\"/admin/\" = \"office\"\n";
    let shop = environment_toml("shop", &["shop.apps.test"], &[app.addr], admin_only);
    let blog = environment_toml("blog", &["blog.apps.test"], &[app.addr], "");
    let docs = environment_toml("docs", &["docs.apps.test"], &[app.addr], "");
    fixture.environment("shop", &shop);
    fixture.environment("blog", &blog);
    fixture.environment("docs", &docs);
    let running = fixture.start().await;

    let office = "192.0.2.7";
    let requests = [
        // (SNI, host, path, client, status)
        ("shop.apps.test", "shop.apps.test", "/admin/users", office, 200),
        ("shop.apps.test", "shop.apps.test", "/admin/users", "203.0.113.5", 403),
        ("shop.apps.test", "shop.apps.test", "/reports/q1", "203.0.113.5", 200),
        ("shop.apps.test", "shop.apps.test", "/reports/q2", "203.0.113.6", 200),
        ("shop.apps.test", "shop.apps.test", "/reports/q3", office, 200),
        // Another spelling of the same path: the new rule must catch it too.
        (
            "shop.apps.test",
            "shop.apps.test",
            "/Reports/../reports/q4",
            "203.0.113.6",
            200,
        ),
        ("shop.apps.test", "shop.apps.test", "/catalogue", "203.0.113.5", 200),
        ("blog.apps.test", "blog.apps.test", "/", "203.0.113.5", 200),
        // One connection for two names of the platform certificate (as HTTP/2 clients coalesce).
        ("shop.apps.test", "blog.apps.test", "/post", "203.0.113.8", 200),
        ("docs.apps.test", "docs.apps.test", "/guide", "203.0.113.9", 200),
        ("nothing.apps.test", "nothing.apps.test", "/", "203.0.113.9", 404),
    ];
    for (sni, host, path, client, status) in requests {
        assert_eq!(
            send(&running, sni, host, path, client).await,
            status,
            "{host}{path} from {client}"
        );
    }
    let recorded = access_log(&fixture, requests.len()).await;
    let line_of = |path: &str| {
        (recorded.lines())
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|line| line["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {recorded}"))
    };
    assert_eq!(
        line_of("/post")["sni"],
        "shop.apps.test",
        "the access log records the SNI"
    );
    assert_eq!(line_of("/post")["host"], "blog.apps.test");
    // Beside the real lines: a malformed one, one of another log, and a 429 (no decision made).
    let log = fixture.path("replayed.log");
    let throttled = line_of("/catalogue")
        .to_string()
        .replace("\"status\":200", "\"status\":429");
    let throttled = throttled.replace("\"decision\":\"allow\"", "\"decision\":null");
    std::fs::write(
        &log,
        format!(
            "{recorded}{{\"client\": \"203.0.113.5\", \"path\": \n\
             {{\"log\":\"audit\",\"event\":\"config_reloaded\"}}\n{throttled}\n"
        ),
    )
    .unwrap();

    // The same configuration: every request is judged as it was.
    let (code, report) = replay(&fixture.path("gatehouse.toml"), &log);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["changed"], 0, "{report:#}");
    assert_eq!(report["unchanged"], requests.len() as u64, "{report:#}");
    assert_eq!(report["unjudged"]["malformed"]["lines"], 1, "{report:#}");
    assert_eq!(report["unjudged"]["not_an_access_line"]["lines"], 1, "{report:#}");
    assert_eq!(report["unjudged"]["no_decision_recorded"]["lines"], 1, "{report:#}");

    // Tightened: `/reports/` for the office only, docs removed, blog on its own certificate.
    std::fs::create_dir(fixture.path("next")).unwrap();
    main_file(&fixture, "next.toml", "next/*.toml", profiles);
    let reports_too = "[access]\n\"/admin/\" = \"office\"\n\"/reports/\" = \"office\"\n";
    let shop_next = environment_toml("shop", &["shop.apps.test"], &[app.addr], reports_too);
    fixture.write("next/shop.toml", &shop_next);
    fixture.issue("blog", &["blog.apps.test"], common::pki::KeyKind::Ecdsa);
    let own_certificate = "[[certificates]]\ncertificate = \"../blog.pem\"\nkey = \"../blog.key\"\n";
    let blog_next = environment_toml("blog", &["blog.apps.test"], &[app.addr], own_certificate);
    fixture.write("next/blog.toml", &blog_next);
    let (code, report) = replay(&fixture.path("next.toml"), &log);
    assert_eq!(code, Some(3), "newly denied requests: exit status 3\n{report:#}");
    let misdirected = "the host is served under another TLS policy than the SNI's";
    assert_eq!(
        changes(&report),
        [
            change(
                "allowed",
                "denied",
                "shop",
                "shop.apps.test",
                "\"/reports/\"",
                "not_in_range",
                3
            ),
            // Refused before an environment: the one the request had is named.
            change(
                "allowed",
                "misdirected",
                "blog",
                "blog.apps.test",
                "(none)",
                misdirected,
                1
            ),
            change(
                "allowed",
                "not_found",
                "docs",
                "docs.apps.test",
                "(none)",
                "no environment serves the host",
                1
            ),
        ],
        "{report:#}"
    );
    let denied = &report["groups"][0];
    let mut samples: Vec<&str> = (denied["samples"].as_array().unwrap().iter())
        .map(|sample| sample.as_str().unwrap())
        .collect();
    samples.sort();
    assert_eq!(
        samples,
        [
            "203.0.113.5 shop.apps.test/reports/q1",
            "203.0.113.6 shop.apps.test/reports/q2"
        ],
        "one sample per client"
    );
    assert_eq!(report["unchanged"], requests.len() as u64 - 5);
    assert_eq!(
        report["unjudged"]["malformed"]["lines"], 1,
        "malformed lines are not fatal"
    );

    // Loosened: no rule at all: the one denial would now reach the app (exit 0: nothing refused).
    fixture.write(
        "next/shop.toml",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""),
    );
    fixture.write("next/blog.toml", &blog);
    fixture.write("next/docs.toml", &docs);
    let (code, report) = replay(&fixture.path("next.toml"), &log);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        changes(&report),
        [change(
            "denied",
            "allowed",
            "shop",
            "shop.apps.test",
            "(none)",
            "open",
            1
        )]
    );

    // The text report names the change for people.
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["replay", "--config"])
        .arg(fixture.path("next.toml"))
        .arg("--access-log")
        .arg(&log)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("denied (403) -> allowed:"), "{text}");
    assert!(text.contains("e.g. 203.0.113.5 shop.apps.test/admin/users"), "{text}");
}

fn client_of(ca: &Ca, name: &str) -> ClientIdentity {
    ca.issue_client(ClientSpec {
        subject: &[(DnType::CommonName, name)],
        ..ClientSpec::default()
    })
}

#[tokio::test]
async fn certificate_decisions_are_replayed_by_the_ca_each_certificate_passed() {
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    let (partners, suppliers, auditors) = (Ca::new("Partner CA"), Ca::new("Supplier CA"), Ca::new("Auditor CA"));
    fixture.write("partners.pem", &partners.pem);
    fixture.write("suppliers.pem", &suppliers.pem);
    fixture.write("auditors.pem", &auditors.pem);
    let profiles =
        |a: &str, b: &str| format!("[profiles.a]\nclient_ca = \"{a}.pem\"\n[profiles.b]\nclient_ca = \"{b}.pem\"\n");
    fixture.main_config("[logging]\naccess_log = \"access.log\"\naudit_log = \"off\"\n");
    main_file(
        &fixture,
        "gatehouse.toml",
        "env/*.toml",
        &profiles("partners", "suppliers"),
    );
    let rules = "[access]\n\"/a/\" = \"a\"\n\"/b/\" = \"b\"\n";
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], rules),
    );
    let running = fixture.start().await;

    let partner = client_of(&partners, "partner");
    let mut statuses = Vec::new();
    for identity in [Some(&partner), None] {
        for path in ["/a/x", "/b/x"] {
            let mut sender = running.h1_as("shop.apps.test", identity).await;
            statuses.push(send_h1(&mut sender, get("shop.apps.test", path)).await.status.as_u16());
        }
    }
    assert_eq!(statuses, [200, 403, 403, 403]);
    let recorded = access_log(&fixture, 4).await;
    let first: serde_json::Value = serde_json::from_str(recorded.lines().next().unwrap()).unwrap();
    let verdicts = first["client_cas"].as_object().unwrap();
    assert_eq!(verdicts.len(), 2, "a verdict for each CA of the policy: {first}");
    let log = fixture.path("access.log");

    // The CAs swapped between the rules: the partner certificate now passes only at /b/.
    std::fs::create_dir(fixture.path("next")).unwrap();
    main_file(&fixture, "next.toml", "env/*.toml", &profiles("suppliers", "partners"));
    let (code, report) = replay(&fixture.path("next.toml"), &log);
    assert_eq!(code, Some(3), "{report:#}");
    assert_eq!(
        changes(&report),
        [
            change(
                "allowed",
                "denied",
                "shop",
                "shop.apps.test",
                "\"/a/\"",
                "certificate_rejected",
                1
            ),
            change(
                "denied",
                "allowed",
                "shop",
                "shop.apps.test",
                "\"/b/\"",
                "certificate",
                1
            ),
        ],
        "{report:#}"
    );
    // Without a certificate the client is refused either way.
    assert_eq!(report["unchanged"], 2, "{report:#}");

    // A CA the recorded connections never checked against: those certificates cannot be judged.
    main_file(&fixture, "next.toml", "env/*.toml", &profiles("auditors", "partners"));
    let (code, report) = replay(&fixture.path("next.toml"), &log);
    assert_eq!(report["unjudged"]["certificate_not_checked"]["lines"], 1, "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");
}

#[test]
fn the_groups_of_changed_requests_are_bounded_however_many_hosts_a_log_names() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &["127.0.0.1:9".parse().unwrap()], ""),
    );
    let snapshot =
        gatehouse::snapshot::load(&fixture.path("gatehouse.toml")).unwrap_or_else(|errors| panic!("{errors}"));
    // A log of a wildcard environment that the new configuration no longer has: every line is
    // newly 404, each for another host.
    let hosts = gatehouse::replay::MAX_GROUPS + 5_000;
    let mut log = String::new();
    for n in 0..hosts {
        log.push_str(&format!(
            "{{\"log\":\"access\",\"environment\":\"wild\",\"client\":\"203.0.113.{}\",\"host\":\"tenant-{n}.apps.test\",\"path\":\"/\",\"status\":200,\"decision\":\"allow\"}}\n",
            n % 250
        ));
    }
    let mut replay = gatehouse::replay::Replay::new(&snapshot);
    replay.read(&mut log.as_bytes()).unwrap();
    let report = replay.finish();
    assert_eq!(report.changed, hosts as u64);
    assert_eq!(
        report.groups.len(),
        gatehouse::replay::MAX_GROUPS + 1,
        "one (other) group beyond the bound"
    );
    let other = (report.groups.iter())
        .find(|(key, _)| key.host == "(other)")
        .map(|(_, group)| group.requests);
    assert_eq!(other, Some(5_000));
    assert_eq!(report.newly_refused(), hosts as u64);
}
