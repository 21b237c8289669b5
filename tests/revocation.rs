//! Certificate revocation lists: a profile's `client_crls` are validated like every other file,
//! applied per request (so a CRL update refuses the next request of a revoked certificate on
//! connections opened before it, over HTTP/1.1 and HTTP/2), reported when stale, and named by
//! `gatehouse explain`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pki::{Ca, ClientIdentity, ClientSpec};
use common::upstream::Upstream;
use common::{Fixture, Running, admin_get, admin_post, environment_toml, get, send_h1, send_h2};
use http::StatusCode;

const PROFILES: &str = "[logging]\naccess_log = \"off\"\naudit_log = \"audit.log\"\n\
     [profiles.partner]\nclient_ca = \"partner-ca.pem\"\nclient_crls = [\"partner.crl.pem\"]\n";

const RULES: &str = "[access]\n\"/\" = \"allow-all\"\n\"/partner/\" = \"partner\"\n";

struct Setup {
    fixture: Fixture,
    ca: Ca,
    app: Upstream,
    running: Running,
}

/// A partner profile whose CA has published a CRL revoking `revoked`, due again in
/// `next_update_days`.
async fn setup(revoked: &[u64], next_update_days: i64) -> Setup {
    let ca = Ca::new("Partner CA");
    let crl = ca.crl(revoked, 1, next_update_days);
    setup_with(ca, &crl).await
}

/// A partner profile trusting `ca`, with `crl` as its revocation list.
async fn setup_with(ca: Ca, crl: &str) -> Setup {
    let fixture = Fixture::new();
    fixture.write("partner-ca.pem", &ca.pem);
    fixture.write("partner.crl.pem", crl);
    let app = Upstream::start("shop").await;
    fixture.main_config(PROFILES);
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], RULES),
    );
    let running = fixture.start().await;
    Setup {
        fixture,
        ca,
        app,
        running,
    }
}

fn client(ca: &Ca) -> ClientIdentity {
    ca.issue_client(ClientSpec::default())
}

async fn metric(running: &Running, name: &str) -> Option<f64> {
    let text = admin_get(running, "/metrics").await.text();
    common::samples(&text).get(name).copied()
}

const REVOKED_DECISIONS: &str =
    "gatehouse_access_decisions_total{environment=\"shop\",outcome=\"deny\",reason=\"certificate_revoked\"}";

#[tokio::test]
async fn a_crl_update_refuses_the_next_request_of_a_revoked_certificate_on_open_connections() {
    let setup = setup(&[], 7).await;
    let doomed = client(&setup.ca);
    let other = client(&setup.ca);
    let mut doomed_h1 = setup.running.h1_as("shop.apps.test", Some(&doomed)).await;
    let mut doomed_h2 = setup.running.h2_as("shop.apps.test", Some(&doomed)).await;
    let mut other_h1 = setup.running.h1_as("shop.apps.test", Some(&other)).await;
    for sender in [&mut doomed_h1, &mut other_h1] {
        let answer = send_h1(sender, get("shop.apps.test", "/partner/")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.upstream_saw("ssl-client-verify"), ["SUCCESS"]);
    }
    assert_eq!(
        send_h2(&mut doomed_h2, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::OK
    );

    // The CA revokes one certificate; the new CRL is installed by a reload.
    setup
        .fixture
        .write("partner.crl.pem", &setup.ca.crl(&[doomed.serial], 0, 7));
    assert_eq!(admin_post(&setup.running, "/reload").await.status, StatusCode::OK);

    // The same connections, opened before the CRL: the revoked certificate is refused at once.
    assert_eq!(
        send_h1(&mut doomed_h1, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send_h2(&mut doomed_h2, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::FORBIDDEN
    );
    // On an open path it is served, but no longer reported to the app as verified.
    let open = send_h1(&mut doomed_h1, get("shop.apps.test", "/")).await;
    assert_eq!(open.status, StatusCode::OK);
    assert!(
        open.upstream_saw("ssl-client-verify").is_empty(),
        "a revoked certificate was reported verified"
    );
    // Another certificate of the same CA still passes, on its old connection and on a new one.
    let answer = send_h1(&mut other_h1, get("shop.apps.test", "/partner/")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("ssl-client-verify"), ["SUCCESS"]);
    let mut fresh = setup.running.h1_as("shop.apps.test", Some(&other)).await;
    assert_eq!(
        send_h1(&mut fresh, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::OK
    );
    // And a new connection with the revoked certificate is refused too.
    let mut again = setup.running.h1_as("shop.apps.test", Some(&doomed)).await;
    assert_eq!(
        send_h1(&mut again, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::FORBIDDEN
    );

    // The reason, in the metrics and the audit log.
    assert_eq!(metric(&setup.running, REVOKED_DECISIONS).await, Some(3.0));
    let audit_path = setup.fixture.path("audit.log");
    let mut audit = String::new();
    for _ in 0..100 {
        audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
        if audit.matches("certificate_revoked").count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        audit.matches("\"reason\":\"certificate_revoked\"").count(),
        3,
        "{audit}"
    );
    assert_eq!(setup.app.requests(), 6, "a revoked request reached the app");
}

#[tokio::test]
async fn a_stale_crl_is_still_applied_and_reported() {
    // Its nextUpdate passed a day ago: the CA has most likely published a newer one.
    let ca = Ca::new("Partner CA");
    let doomed = client(&ca);
    let other = client(&ca);
    let crl = ca.crl(&[doomed.serial], 8, -1);
    let Setup {
        fixture,
        running,
        app: _app,
        ..
    } = setup_with(ca, &crl).await;

    // Applied: the listed certificate is refused, the others pass.
    let status = |identity: &ClientIdentity| {
        let running = &running;
        let identity = identity.clone();
        async move {
            let mut sender = running.h1_as("shop.apps.test", Some(&identity)).await;
            send_h1(&mut sender, get("shop.apps.test", "/partner/")).await.status
        }
    };
    assert_eq!(status(&doomed).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&other).await, StatusCode::OK);

    // Reported: a warning from `gatehouse check`, and its nextUpdate as a metric (in the past).
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(fixture.path("gatehouse.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("partner.crl.pem") && text.contains("past its nextUpdate"),
        "no warning for the stale CRL:\n{text}"
    );
    let file = fixture.path("partner.crl.pem").display().to_string();
    let name = format!("gatehouse_client_crl_next_update_timestamp_seconds{{file=\"{file}\",profile=\"partner\"}}");
    let next_update = metric(&running, &name).await.unwrap_or_else(|| panic!("no {name}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        next_update < now - 3600.0 && next_update > now - 3.0 * 86400.0,
        "{next_update} vs {now}"
    );
}

#[tokio::test]
async fn crls_are_validated_like_every_other_file() {
    let setup = setup(&[], 7).await;
    let doomed = client(&setup.ca);
    let mut sender = setup.running.h1_as("shop.apps.test", Some(&doomed)).await;
    let another_ca = Ca::new("Another CA");
    for (contents, expected) in [
        // Signed by a CA the profile does not trust.
        (
            another_ca.crl(&[doomed.serial], 0, 7),
            "not a certificate of the profile's client_ca bundle",
        ),
        // Not a CRL.
        (
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_owned(),
            "not a CRL",
        ),
        // A certificate where the CRL should be.
        (setup.ca.pem.clone(), "holds no CRL"),
    ] {
        setup.fixture.write("partner.crl.pem", &contents);
        let answer = admin_post(&setup.running, "/reload").await;
        assert_ne!(answer.status, StatusCode::OK, "accepted: {expected}");
        let text = answer.text();
        assert!(
            text.contains("partner.crl.pem")
                && text.contains("profiles.partner.client_crls")
                && text.contains(expected),
            "expected the file, key and {expected:?} in:\n{text}"
        );
        // The running configuration stays, and serves.
        assert_eq!(
            send_h1(&mut sender, get("shop.apps.test", "/partner/")).await.status,
            StatusCode::OK
        );
    }
    // A DER file is accepted, and applies.
    let pem = setup.ca.crl(&[doomed.serial], 0, 7);
    let der = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .contents;
    std::fs::write(setup.fixture.path("partner.crl.pem"), der).unwrap();
    assert_eq!(admin_post(&setup.running, "/reload").await.status, StatusCode::OK);
    assert_eq!(
        send_h1(&mut sender, get("shop.apps.test", "/partner/")).await.status,
        StatusCode::FORBIDDEN
    );
    // A CRL without the CA it belongs to is refused.
    setup
        .fixture
        .main_config("[profiles.partner]\nranges = [\"192.0.2.0/24\"]\nclient_crls = [\"partner.crl.pem\"]\n");
    let text = admin_post(&setup.running, "/reload").await.text();
    assert!(text.contains("need the `client_ca`"), "{text}");
}

#[tokio::test]
async fn explain_names_the_revocation() {
    let setup = setup(&[], 7).await;
    let doomed = client(&setup.ca);
    setup
        .fixture
        .write("partner.crl.pem", &setup.ca.crl(&[doomed.serial], 0, 7));
    setup.fixture.write("doomed.pem", &doomed.pem);
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["explain", "--config"])
        .arg(setup.fixture.path("gatehouse.toml"))
        .args([
            "--host",
            "shop.apps.test",
            "--path",
            "/partner/x",
            "--client",
            "203.0.113.9",
            "--certificate",
        ])
        .arg(setup.fixture.path("doomed.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("DENY 403 (certificate_revoked)"), "{text}");
    assert!(
        text.contains("revocation") && text.contains("partner.crl.pem"),
        "{text}"
    );
}
