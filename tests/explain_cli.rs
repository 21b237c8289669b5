//! `gatehouse explain`: the decision for a hypothetical request, with the reason, without
//! running anything.

mod common;

use std::process::Command;

use common::Fixture;
use common::pki::{Ca, ClientSpec};

struct Explained {
    code: Option<i32>,
    text: String,
}

fn explain(fixture: &Fixture, args: &[&str]) -> Explained {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("explain")
        .arg("--config")
        .arg(fixture.path("gatehouse.toml"))
        .args(args)
        .output()
        .unwrap();
    Explained {
        code: output.status.code(),
        text: String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
    }
}

fn fixture() -> (Fixture, Ca) {
    let fixture = Fixture::new();
    let partner = Ca::new("Partner CA");
    fixture.write("partner-ca.pem", &partner.pem);
    fixture.main_config(
        "[profiles.office]\nranges = [\"192.0.2.0/24\"]\ndeny = [\"192.0.2.66\"]\n\
         [profiles.partner]\nclient_ca = \"partner-ca.pem\"\n",
    );
    fixture.environment(
        "shop",
        "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstreams = [\"127.0.0.1:9\"]\n\
         [access]\n\"/\" = \"office\"\n\"/api/\" = \"allow-all\"\n\"/rest-doc/\" = \"deny-all\"\n\"/partner/\" = \"partner\"\n",
    );
    (fixture, partner)
}

#[test]
fn explains_an_allowed_request_by_range() {
    let (fixture, _) = fixture();
    let out = explain(
        &fixture,
        &[
            "--host",
            "shop.apps.test",
            "--path",
            "/orders",
            "--client",
            "192.0.2.10",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.text);
    assert!(out.text.contains("environment  shop ("), "{}", out.text);
    assert!(
        out.text.contains("rule         \"/\" -> profile \"office\""),
        "{}",
        out.text
    );
    assert!(out.text.contains("decision     ALLOW (range)"), "{}", out.text);
}

#[test]
fn explains_denials_with_their_reason() {
    let (fixture, _) = fixture();
    let out = explain(
        &fixture,
        &[
            "--host",
            "shop.apps.test",
            "--path",
            "/orders",
            "--client",
            "192.0.2.66",
        ],
    );
    assert_eq!(out.code, Some(3), "{}", out.text);
    assert!(out.text.contains("DENY 403 (deny_range)"), "{}", out.text);
    let out = explain(
        &fixture,
        &[
            "--host",
            "shop.apps.test",
            "--path",
            "/api/../rest-doc/x",
            "--client",
            "192.0.2.10",
        ],
    );
    assert_eq!(out.code, Some(3), "{}", out.text);
    assert!(out.text.contains("as the app sees it: /rest-doc/x"), "{}", out.text);
    assert!(
        out.text.contains("rule         \"/rest-doc/\" -> profile \"deny-all\""),
        "{}",
        out.text
    );
    assert!(out.text.contains("DENY 403 (deny_all)"), "{}", out.text);
    let out = explain(
        &fixture,
        &[
            "--host",
            "shop.apps.test",
            "--path",
            "/partner/",
            "--client",
            "203.0.113.1",
        ],
    );
    assert!(out.text.contains("DENY 403 (no_certificate)"), "{}", out.text);
}

#[test]
fn explains_client_certificates() {
    let (fixture, partner) = fixture();
    let good = partner.issue_client(ClientSpec {
        subject: &[(rcgen::DnType::CommonName, "partner app")],
        ..ClientSpec::default()
    });
    fixture.write("good.pem", &good.pem);
    let out = explain(
        &fixture,
        &[
            "--host",
            "shop.apps.test",
            "--path",
            "/partner/x",
            "--client",
            "203.0.113.1",
            "--certificate",
        ]
        .into_iter()
        .chain([fixture.path("good.pem").to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(out.code, Some(0), "{}", out.text);
    assert!(out.text.contains("certificate  CN=partner app"), "{}", out.text);
    assert!(out.text.contains("ALLOW (certificate)"), "{}", out.text);
    assert!(out.text.contains("a client certificate is asked for"), "{}", out.text);

    let expired = partner.issue_client(ClientSpec {
        valid_from: -10,
        valid_until: -1,
        ..ClientSpec::default()
    });
    fixture.write("expired.pem", &expired.pem);
    let path = fixture.path("expired.pem");
    let out = explain(
        &fixture,
        &[
            "--host",
            "shop.apps.test",
            "--path",
            "/partner/",
            "--client",
            "203.0.113.1",
            "--certificate",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(3), "{}", out.text);
    assert!(out.text.contains("DENY 403 (certificate_rejected)"), "{}", out.text);
}

#[test]
fn explains_requests_that_never_reach_a_decision() {
    let (fixture, _) = fixture();
    let out = explain(&fixture, &["--host", "nowhere.example", "--client", "192.0.2.10"]);
    assert_eq!(out.code, Some(4), "{}", out.text);
    assert!(out.text.contains("404 Not Found"), "{}", out.text);
    let out = explain(
        &fixture,
        &["--host", "shop.apps.test", "--path", "/a%2fb", "--client", "192.0.2.10"],
    );
    assert_eq!(out.code, Some(4), "{}", out.text);
    assert!(out.text.contains("400 Bad Request"), "{}", out.text);
}
