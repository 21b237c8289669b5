//! Response header policies: modes, the HSTS default, gatehouse's own pages, and validation.

mod common;

use std::process::Command;

use common::upstream::Upstream;
use common::{Fixture, environment_toml};
use http::StatusCode;

const POLICY: &str = r#"
forbidden_page = "../sorry.txt"

[response_headers]
X-Frame-Options = "DENY"
Referrer-Policy = { value = "no-referrer", mode = "if_missing" }
X-Content-Type-Options = { value = "nosniff", mode = "if_missing" }
Content-Security-Policy = "default-src 'self'; img-src https: data:"

[custom_response_headers]
X-Team = "checkout"
Keep-Alive-Stats = { mode = "remove" }
X-Upstream = { mode = "remove" }

[access]
"/private/" = "deny-all"
"#;

#[tokio::test]
async fn headers_are_set_added_and_removed_on_app_answers() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.write("sorry.txt", "no\n");
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], POLICY),
    );
    let running = fixture.start().await;
    let answer = running.get("shop.apps.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        answer.header("content-security-policy"),
        Some("default-src 'self'; img-src https: data:")
    );
    assert_eq!(answer.header("x-team"), Some("checkout"));
    // The app's own `x-upstream` is removed; HSTS is on by default.
    assert_eq!(answer.header("x-upstream"), None);
    assert_eq!(answer.header("strict-transport-security"), Some("max-age=31536000"));
}

#[tokio::test]
async fn headers_apply_to_gatehouse_own_pages() {
    let fixture = Fixture::new();
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    fixture.write("sorry.txt", "no\n");
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[dead], POLICY));
    let running = fixture.start().await;
    for (path, status) in [("/private/x", StatusCode::FORBIDDEN), ("/", StatusCode::BAD_GATEWAY)] {
        let answer = running.get("shop.apps.test", path).await;
        assert_eq!(answer.status, status);
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(answer.header("x-team"), Some("checkout"), "{path}");
        assert_eq!(
            answer.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn answers_for_unknown_hosts_carry_the_platform_defaults() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], POLICY_WITHOUT_PAGE),
    );
    let running = fixture.start().await;
    let mut sender = running.h1("shop.apps.test").await;
    let answer = common::send_h1(&mut sender, common::get("nowhere.example", "/")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.header("strict-transport-security"), Some("max-age=31536000"));
    // No environment's own headers leak onto an answer that belongs to none.
    assert_eq!(answer.header("x-team"), None);
}

const POLICY_WITHOUT_PAGE: &str = "[custom_response_headers]\nX-Team = \"checkout\"\n";

#[tokio::test]
async fn hsts_can_be_changed_or_turned_off() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("");
    fixture.environment(
        "long",
        &environment_toml(
            "long",
            &["long.apps.test"],
            &[app.addr],
            "[response_headers]\nStrict-Transport-Security = \"max-age=63072000; includeSubDomains; preload\"\n",
        ),
    );
    fixture.environment(
        "off",
        &environment_toml(
            "off",
            &["off.apps.test"],
            &[app.addr],
            "[response_headers]\nStrict-Transport-Security = false\n",
        ),
    );
    let running = fixture.start().await;
    let answer = running.get("long.apps.test", "/").await;
    assert_eq!(
        answer.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains; preload")
    );
    let answer = running.get("off.apps.test", "/").await;
    assert_eq!(answer.header("strict-transport-security"), None);
}

fn check_errors(fixture: &Fixture) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(fixture.path("gatehouse.toml"))
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "accepted: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn invalid_header_values_are_config_errors_with_line_and_allowed_forms() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "shop",
        "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstreams = [\"127.0.0.1:9\"]\n\
         [response_headers]\n\
         X-Frame-Options = \"DENYY\"\n\
         Strict-Transport-Security = \"max-age=1y\"\n\
         X-Team = \"x\"\n\
         Referrer-Policy = { value = \"origin\", mode = \"sometimes\" }\n\
         [custom_response_headers]\n\
         X-Content-Type-Options = \"nosniff\"\n\
         Content-Length = \"5\"\n\
         \"Bad Name\" = \"1\"\n",
    );
    let errors = check_errors(&fixture);
    let file = fixture.path("env/shop.toml").display().to_string();
    for expected in [
        format!(
            "{file}:5: key `response_headers.X-Frame-Options`: invalid value \"DENYY\" for X-Frame-Options: expected DENY or SAMEORIGIN"
        ),
        format!("{file}:6: key `response_headers.Strict-Transport-Security`: invalid value \"max-age=1y\""),
        format!("{file}:7: key `response_headers.X-Team`: X-Team is not one of the validated security headers"),
        format!("{file}:8: key `response_headers.Referrer-Policy`: unknown mode \"sometimes\""),
        format!(
            "{file}:10: key `custom_response_headers.X-Content-Type-Options`: X-Content-Type-Options is a validated security header"
        ),
        format!("{file}:11: key `custom_response_headers.Content-Length`: Content-Length frames the message"),
        format!("{file}:12: key `custom_response_headers.Bad Name`: \"Bad Name\" is not a valid HTTP header name"),
    ] {
        assert!(errors.contains(&expected), "missing {expected:?} in\n{errors}");
    }
}
