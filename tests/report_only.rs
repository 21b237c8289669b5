//! Report-only profiles: a restriction staged on live traffic. What it would refuse reaches the
//! app, and is counted (`outcome="would_deny"`), audited (`access_would_deny`), logged and
//! explained, while the same restriction enforced in another environment answers 403.

mod common;

use std::process::Command;
use std::time::Duration;

use common::upstream::Upstream;
use common::{Fixture, WAIT, environment_toml};

/// Two profiles with the same ranges, one staged, one enforced; an environment for each, and
/// access and audit logs in files.
fn staged_and_enforced(fixture: &Fixture, app: &Upstream) {
    fixture.main_config(
        "[logging]\naccess_log = \"access.log\"\naudit_log = \"audit.log\"\n\
         [profiles.staged]\nranges = [\"192.0.2.0/24\"]\nreport_only = true\n\
         [profiles.enforced]\nranges = [\"192.0.2.0/24\"]\n",
    );
    for name in ["staged", "enforced"] {
        let domain = format!("{name}.apps.test");
        let access = format!("[access]\n\"/admin/\" = \"{name}\"\n");
        fixture.environment(name, &environment_toml(name, &[&domain], &[app.addr], &access));
    }
}

async fn json_lines(fixture: &Fixture, file: &str, count: usize) -> Vec<serde_json::Value> {
    let started = tokio::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(fixture.path(file)).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= count || started.elapsed() > WAIT {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_staged_profile_lets_its_denials_through_and_reports_them() {
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    staged_and_enforced(&fixture, &app);
    let running = fixture.start().await;

    // From 127.0.0.1, outside both profiles' ranges.
    let staged = running.get("staged.apps.test", "/admin/users").await;
    assert_eq!(staged.status, 200, "the staged denial reaches the app");
    assert_eq!(staged.header("x-upstream"), Some("app"));
    let enforced = running.get("enforced.apps.test", "/admin/users").await;
    assert_eq!(enforced.status, 403);
    assert_eq!(
        enforced.header("x-upstream"),
        None,
        "an enforced denial never reaches the app"
    );

    let metrics = common::samples(&common::admin_get(&running, "/metrics").await.text());
    let decisions = |environment: &str, outcome: &str| {
        let key = format!(
            "gatehouse_access_decisions_total{{environment=\"{environment}\",outcome=\"{outcome}\",reason=\"not_in_range\"}}"
        );
        metrics.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(decisions("staged", "would_deny"), 1.0);
    assert_eq!(decisions("staged", "deny"), 0.0);
    assert_eq!(decisions("enforced", "deny"), 1.0);
    assert_eq!(decisions("enforced", "would_deny"), 0.0);

    let audit = json_lines(&fixture, "audit.log", 2).await;
    let event_of = |environment: &str| {
        audit
            .iter()
            .find(|line| line["environment"] == environment)
            .unwrap_or_else(|| panic!("no audit line for {environment}: {audit:?}"))
    };
    assert_eq!(event_of("staged")["event"], "access_would_deny");
    assert_eq!(event_of("staged")["reason"], "not_in_range");
    assert_eq!(event_of("staged")["rule"], "/admin/");
    assert_eq!(event_of("enforced")["event"], "access_denied");

    let access = json_lines(&fixture, "access.log", 2).await;
    let staged_line = access.iter().find(|line| line["host"] == "staged.apps.test");
    let staged_line = staged_line.unwrap_or_else(|| panic!("{access:?}"));
    assert_eq!(staged_line["status"], 200);
    assert_eq!(staged_line["decision"], "would_deny");
    assert_eq!(staged_line["decision_reason"], "not_in_range");
}

#[test]
fn explain_and_check_say_a_staged_profile_would_deny_and_does_not() {
    let fixture = Fixture::new();
    fixture.main_config("[profiles.staged]\nranges = [\"192.0.2.0/24\"]\nreport_only = true\n");
    fixture.environment(
        "staged",
        "name = \"staged\"\ndomains = [\"staged.apps.test\"]\nupstreams = [\"127.0.0.1:9\"]\n\
         [access]\n\"/admin/\" = \"staged\"\n",
    );
    let explain = |client: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["explain", "--config"])
            .arg(fixture.path("gatehouse.toml"))
            .args(["--host", "staged.apps.test", "--path", "/admin/x", "--client", client])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, text) = explain("203.0.113.9");
    assert_eq!(code, Some(0), "allowed: {text}");
    assert!(text.contains("report-only (not enforced)"), "{text}");
    assert!(
        text.contains("REPORT-ONLY: the profile would deny (not_in_range)"),
        "{text}"
    );
    let (code, text) = explain("192.0.2.7");
    assert_eq!(code, Some(0));
    assert!(text.contains("ALLOW (range)"), "{text}");

    // `check` names the staged profile, so that it is not forgotten.
    let check = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(fixture.path("gatehouse.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("profile \"staged\" is report-only"), "{text}");
}
