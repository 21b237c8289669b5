//! Client certificates: asked for, never required by the handshake, checked per request against
//! the CA of the profile that applies, and passed to the app as `SSL-Client-*`.

mod common;

use common::pki::{Ca, ClientIdentity, ClientSpec};
use common::upstream::Upstream;
use common::{Fixture, Running, environment_toml, get, send_h1};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use rcgen::DnType;

const PROFILES: &str = r#"
[profiles.partner]
client_ca = "partner-ca.pem"

[profiles.office-or-partner]
ranges = ["192.0.2.0/24"]
client_ca = "partner-ca.pem"

[profiles.local-and-partner]
ranges = ["127.0.0.0/8"]
client_ca = "partner-ca.pem"
require = "all"

[profiles.office-and-partner]
ranges = ["192.0.2.0/24"]
client_ca = "partner-ca.pem"
require = "all"
"#;

const RULES: &str = r#"
[access]
"/" = "allow-all"
"/partner/" = "partner"
"/any/" = "office-or-partner"
"/all/" = "local-and-partner"
"/strict/" = "office-and-partner"
"#;

struct Setup {
    fixture: Fixture,
    partner_ca: Ca,
    other_ca: Ca,
    app: Upstream,
    running: Running,
}

async fn setup() -> Setup {
    let fixture = Fixture::new();
    let partner_ca = Ca::new("Partner CA");
    let other_ca = Ca::new("Other CA");
    fixture.write("partner-ca.pem", &partner_ca.pem);
    let app = Upstream::start("shop").await;
    fixture.main_config(PROFILES);
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], RULES),
    );
    let running = fixture.start().await;
    Setup {
        fixture,
        partner_ca,
        other_ca,
        app,
        running,
    }
}

async fn status_as(running: &Running, identity: Option<&ClientIdentity>, path: &str) -> StatusCode {
    let mut sender = running.h1_as("shop.apps.test", identity).await;
    send_h1(&mut sender, get("shop.apps.test", path)).await.status
}

fn partner_client(ca: &Ca) -> ClientIdentity {
    ca.issue_client(ClientSpec {
        subject: &[
            (DnType::CommonName, "partner client"),
            (DnType::OrganizationName, "Acme, Inc."),
            (DnType::CountryName, "NL"),
        ],
        ..ClientSpec::default()
    })
}

#[tokio::test]
async fn clients_without_a_certificate_reach_open_paths_only() {
    let setup = setup().await;
    let running = &setup.running;
    assert_eq!(status_as(running, None, "/").await, StatusCode::OK);
    for path in ["/partner/", "/any/", "/all/", "/strict/"] {
        assert_eq!(status_as(running, None, path).await, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(setup.app.requests(), 1);
}

#[tokio::test]
async fn certificate_from_the_profile_ca_is_accepted_by_require_any_and_all() {
    let setup = setup().await;
    let client = partner_client(&setup.partner_ca);
    let running = &setup.running;
    assert_eq!(status_as(running, Some(&client), "/partner/").await, StatusCode::OK);
    assert_eq!(status_as(running, Some(&client), "/any/").await, StatusCode::OK);
    // require = "all": the certificate and the address range (127.0.0.0/8) both hold.
    assert_eq!(status_as(running, Some(&client), "/all/").await, StatusCode::OK);
    // require = "all" with a range the client is not in: the certificate alone is not enough.
    assert_eq!(
        status_as(running, Some(&client), "/strict/").await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn certificates_from_another_ca_expired_or_without_client_auth_are_refused() {
    let setup = setup().await;
    let running = &setup.running;
    let other = setup.other_ca.issue_client(ClientSpec::default());
    let expired = setup.partner_ca.issue_client(ClientSpec {
        valid_from: -30,
        valid_until: -1,
        ..ClientSpec::default()
    });
    let server_only = setup.partner_ca.issue_client(ClientSpec {
        client_auth: false,
        ..ClientSpec::default()
    });
    for (label, identity) in [
        ("other CA", &other),
        ("expired", &expired),
        ("no clientAuth", &server_only),
    ] {
        assert_eq!(
            status_as(running, Some(identity), "/partner/").await,
            StatusCode::FORBIDDEN,
            "{label}"
        );
        assert_eq!(
            status_as(running, Some(identity), "/all/").await,
            StatusCode::FORBIDDEN,
            "{label}"
        );
        // Open paths still work for them, and the app is not told of an unverified certificate.
        let mut sender = running.h1_as("shop.apps.test", Some(identity)).await;
        let answer = send_h1(&mut sender, get("shop.apps.test", "/")).await;
        assert_eq!(answer.status, StatusCode::OK, "{label}");
        assert!(answer.upstream_saw("ssl-client-verify").is_empty(), "{label}");
    }
}

#[tokio::test]
async fn the_app_receives_the_verified_certificate_details() {
    let setup = setup().await;
    let client = partner_client(&setup.partner_ca);
    let mut sender = setup.running.h1_as("shop.apps.test", Some(&client)).await;
    let answer = send_h1(&mut sender, get("shop.apps.test", "/partner/")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("ssl-client-verify"), ["SUCCESS"]);
    assert_eq!(answer.upstream_saw("ssl-protocol"), ["TLSv1.3"]);
    assert_eq!(answer.upstream_saw("ssl-cipher").len(), 1);
    assert!(
        answer.upstream_saw("ssl-cipher")[0].starts_with("TLS_AES_"),
        "{:?}",
        answer.upstream_saw("ssl-cipher")
    );

    // Compare with what openssl itself says about the certificate.
    let pem = setup.fixture.path("client.pem");
    std::fs::write(&pem, &client.pem).unwrap();
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .arg("x509")
            .arg("-in")
            .arg(&pem)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let subject = openssl(&["-noout", "-subject", "-nameopt", "RFC2253"]);
    let issuer = openssl(&["-noout", "-issuer", "-nameopt", "RFC2253"]);
    let serial = openssl(&["-noout", "-serial"]);
    let fingerprint = openssl(&["-noout", "-fingerprint", "-sha1"]);
    // RFC 2253 lists the most specific RDN last in the certificate first: C, O, CN.
    assert_eq!(subject, "subject=C=NL,O=Acme\\, Inc.,CN=partner client");
    assert_eq!(
        answer.upstream_saw("ssl-client-s-dn"),
        [subject.trim_start_matches("subject=")]
    );
    assert_eq!(
        answer.upstream_saw("ssl-client-i-dn"),
        [issuer.trim_start_matches("issuer=")]
    );
    assert_eq!(
        answer.upstream_saw("ssl-client-serial"),
        [serial.trim_start_matches("serial=")]
    );
    let expected_fingerprint = fingerprint
        .split('=')
        .nth(1)
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(answer.upstream_saw("ssl-client-fingerprint"), [expected_fingerprint]);
}

#[tokio::test]
async fn spoofed_ssl_headers_are_removed_on_every_path() {
    let setup = setup().await;
    let mut sender = setup.running.h1_as("shop.apps.test", None).await;
    for path in ["/", "/api/anything"] {
        let request = Request::get(path)
            .header("host", "shop.apps.test")
            .header("ssl-client-verify", "SUCCESS")
            .header("ssl-client-s-dn", "CN=admin")
            .header("ssl-client-i-dn", "CN=Partner CA")
            .header("ssl-client-serial", "01")
            .header("ssl-client-fingerprint", "00")
            .header("ssl-client-made-up", "x")
            .header("ssl-protocol", "TLSv1.0")
            .header("ssl-cipher", "NULL")
            .body(Empty::new().boxed())
            .unwrap();
        let answer = send_h1(&mut sender, request).await;
        assert_eq!(answer.status, StatusCode::OK);
        let text = answer.text();
        assert!(!text.contains("ssl-client-"), "spoofed header reached the app:\n{text}");
        assert_eq!(answer.upstream_saw("ssl-protocol"), ["TLSv1.3"]);
        assert_ne!(answer.upstream_saw("ssl-cipher"), ["NULL"]);
    }
}

#[tokio::test]
async fn a_ca_swapped_in_by_a_new_snapshot_applies_to_the_next_request_on_an_open_connection() {
    let setup = setup().await;
    let client = partner_client(&setup.partner_ca);
    let mut sender = setup.running.h1_as("shop.apps.test", Some(&client)).await;
    assert_eq!(
        send_h1(&mut sender, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::OK
    );
    // The partner CA file now holds another CA. The host's TLS terms changed (other CA), so the
    // open connection may not carry it any more: 421 makes the client reconnect under the new
    // terms, where the same certificate is refused.
    setup.fixture.write("partner-ca.pem", &setup.other_ca.pem);
    let snapshot = gatehouse::snapshot::load(&setup.fixture.path("gatehouse.toml")).unwrap();
    setup.running.proxy().install(snapshot);
    assert_eq!(
        send_h1(&mut sender, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::MISDIRECTED_REQUEST
    );
    assert_eq!(
        status_as(&setup.running, Some(&client), "/partner/").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(setup.app.requests(), 1);
}

/// Two profiles on one host that trust two different CAs: a certificate from one CA opens only
/// the paths of the profile that trusts that CA, in both directions, and on one connection
/// (the connection's verdicts are kept per CA, never as one "verified" flag).
#[tokio::test]
async fn each_profile_trusts_only_its_own_ca_on_one_host() {
    let fixture = Fixture::new();
    let ca_a = Ca::new("Partner A CA");
    let ca_b = Ca::new("Partner B CA");
    fixture.write("ca-a.pem", &ca_a.pem);
    fixture.write("ca-b.pem", &ca_b.pem);
    let app = Upstream::start("shop").await;
    fixture.main_config(
        "[profiles.partner-a]\nclient_ca = \"ca-a.pem\"\n[profiles.partner-b]\nclient_ca = \"ca-b.pem\"\n",
    );
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "[access]\n\"/\" = \"deny-all\"\n\"/a/\" = \"partner-a\"\n\"/b/\" = \"partner-b\"\n",
        ),
    );
    let running = fixture.start().await;
    let client_a = partner_client(&ca_a);
    let client_b = partner_client(&ca_b);
    for (client, name, own, other) in [(&client_a, "A", "/a/", "/b/"), (&client_b, "B", "/b/", "/a/")] {
        let mut sender = running.h1_as("shop.apps.test", Some(client)).await;
        for _ in 0..2 {
            let answer = send_h1(&mut sender, get("shop.apps.test", other)).await;
            assert_eq!(
                answer.status,
                StatusCode::FORBIDDEN,
                "CA {name}'s certificate on {other}"
            );
            let answer = send_h1(&mut sender, get("shop.apps.test", own)).await;
            assert_eq!(answer.status, StatusCode::OK, "CA {name}'s certificate on {own}");
        }
    }
    assert_eq!(app.requests(), 4, "only the allowed requests reached the app");
}

/// A certificate's validity is judged per request, not frozen at the handshake: one that expires
/// while its keep-alive connection stays open is refused from then on, on that connection, and
/// no longer reported to the app as verified.
#[tokio::test]
async fn a_certificate_that_expires_during_a_connection_is_refused_from_then_on() {
    let setup = setup().await;
    let expiring = setup.partner_ca.issue_client(ClientSpec {
        expires_in_seconds: Some(2),
        ..ClientSpec::default()
    });
    let mut sender = setup.running.h1_as("shop.apps.test", Some(&expiring)).await;
    let answer = send_h1(&mut sender, get("shop.apps.test", "/partner/")).await;
    assert_eq!(answer.status, StatusCode::OK, "before it expired");
    assert_eq!(answer.upstream_saw("ssl-client-verify"), ["SUCCESS"]);

    // Past its notAfter (whole seconds, and webpki's "after"), on the same connection.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let answer = send_h1(&mut sender, get("shop.apps.test", "/partner/")).await;
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "an expired certificate still passed"
    );
    let open = send_h1(&mut sender, get("shop.apps.test", "/")).await;
    assert_eq!(open.status, StatusCode::OK);
    assert!(
        open.upstream_saw("ssl-client-verify").is_empty(),
        "an expired certificate was still reported as verified: {:?}",
        open.upstream_saw("ssl-client-verify")
    );
}
