//! `gatehouse check`: validates everything a start would and says precisely what is wrong.

mod common;

use std::process::Command;

use common::Fixture;
use common::pki::KeyKind;

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

fn check(fixture: &Fixture) -> Outcome {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("check")
        .arg("--config")
        .arg(fixture.path("gatehouse.toml"))
        .output()
        .unwrap();
    Outcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Run check on a config that must be refused, and return its error text.
fn refused(fixture: &Fixture) -> String {
    let outcome = check(fixture);
    assert!(!outcome.success, "accepted:\n{}", outcome.stdout);
    outcome.stderr
}

fn env_path(fixture: &Fixture, file: &str) -> String {
    fixture.path(&format!("env/{file}.toml")).display().to_string()
}

const SHOP: &str = "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstreams = [\"127.0.0.1:9001\"]\n";

#[test]
fn good_config_prints_a_summary() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment("shop", SHOP);
    let outcome = check(&fixture);
    assert!(outcome.success, "{}", outcome.stderr);
    assert!(outcome.stdout.contains("is valid"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("shop ("), "{}", outcome.stdout);
    assert!(
        outcome.stdout.contains("domains:   shop.apps.test"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("upstreams: 127.0.0.1:9001"),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("platform certificate: "), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("expires in 364 days") || outcome.stdout.contains("expires in 365 days"));
    assert!(!outcome.stdout.contains("warning"), "{}", outcome.stdout);
}

#[test]
fn certificate_expiring_within_14_days_is_warned_about() {
    let fixture = Fixture::new();
    fixture
        .ca
        .issue(fixture.dir.path(), "soon", &["www.soon.example"], KeyKind::Ecdsa, 10);
    fixture.main_config("");
    fixture.environment(
        "soon",
        "name = \"soon\"\ndomains = [\"www.soon.example\"]\nupstreams = [\"127.0.0.1:9001\"]\n\
         [[certificates]]\ncertificate = \"../soon.pem\"\nkey = \"../soon.key\"\n",
    );
    let outcome = check(&fixture);
    assert!(outcome.success, "{}", outcome.stderr);
    assert!(outcome.stdout.contains("warning: certificate"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("soon.pem"), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("expires in 9 days") || outcome.stdout.contains("expires in 10 days"));
}

#[test]
fn domain_claimed_by_two_environments_names_both() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment("a", SHOP);
    fixture.environment("b", &SHOP.replace("\"shop\"", "\"other\""));
    let errors = refused(&fixture);
    let expected = format!(
        "{}:2: key `domains`: domain \"shop.apps.test\" is already claimed by environment \"shop\" ({}:2)",
        env_path(&fixture, "b"),
        env_path(&fixture, "a")
    );
    assert!(errors.contains(&expected), "{errors}");
}

#[test]
fn key_that_does_not_match_its_certificate_is_refused() {
    let fixture = Fixture::new();
    fixture.issue("one", &["www.one.example"], KeyKind::Ecdsa);
    fixture.issue("two", &["www.one.example"], KeyKind::Ecdsa);
    fixture.main_config("");
    fixture.environment(
        "one",
        "name = \"one\"\ndomains = [\"www.one.example\"]\nupstreams = [\"127.0.0.1:9001\"]\n\
         [[certificates]]\ncertificate = \"../one.pem\"\nkey = \"../two.key\"\n",
    );
    let errors = refused(&fixture);
    assert!(
        errors.contains(&format!(
            "{}:5: key `certificates.certificate`",
            env_path(&fixture, "one")
        )),
        "{errors}"
    );
    assert!(errors.contains("does not belong to the certificate"), "{errors}");
}

#[test]
fn certificate_that_covers_no_domain_of_its_environment_is_refused() {
    let fixture = Fixture::new();
    fixture.issue("other", &["www.other.example"], KeyKind::Rsa);
    fixture.main_config("");
    fixture.environment(
        "shop",
        "name = \"shop\"\ndomains = [\"www.shop.example\"]\nupstreams = [\"127.0.0.1:9001\"]\n\
         [[certificates]]\ncertificate = \"../other.pem\"\nkey = \"../other.key\"\n",
    );
    let errors = refused(&fixture);
    assert!(
        errors.contains(&format!(
            "{}:5: key `certificates.certificate`",
            env_path(&fixture, "shop")
        )),
        "{errors}"
    );
    assert!(
        errors.contains("does not cover any domain of this environment"),
        "{errors}"
    );
}

#[test]
fn unreadable_certificate_file_is_named() {
    let fixture = Fixture::new();
    fixture.write("gatehouse.toml", "environments = \"env/*.toml\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\n[tls]\ncertificate = \"missing.pem\"\nkey = \"platform.key\"\n");
    fixture.environment("shop", SHOP);
    let errors = refused(&fixture);
    assert!(
        errors.contains("gatehouse.toml:5: key `tls.certificate`: cannot read certificate file"),
        "{errors}"
    );
    assert!(errors.contains("missing.pem"), "{errors}");
}

#[test]
fn bad_addresses_are_refused() {
    let fixture = Fixture::new();
    fixture.write("gatehouse.toml", "environments = \"env/*.toml\"\n[listen]\nhttps = [\"127.0.0.1\"]\n[tls]\ncertificate = \"platform.pem\"\nkey = \"platform.key\"\n");
    fixture.environment(
        "shop",
        "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstreams = [\"app-1\"]\n",
    );
    let errors = refused(&fixture);
    assert!(
        errors.contains("gatehouse.toml:3: key `listen.https`: expected an address as ip:port"),
        "{errors}"
    );
    assert!(
        errors.contains(&format!(
            "{}:3: key `upstreams`: expected an instance as ip:port or host:port",
            env_path(&fixture, "shop")
        )),
        "{errors}"
    );
}

#[test]
fn environment_without_upstreams_is_refused() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "shop",
        "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstreams = []\n",
    );
    let errors = refused(&fixture);
    assert!(
        errors.contains(&format!(
            "{}:3: key `upstreams`: expected at least one app instance",
            env_path(&fixture, "shop")
        )),
        "{errors}"
    );
}

#[test]
fn unknown_keys_and_syntax_errors_are_located() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "typo",
        "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstream = [\"127.0.0.1:9001\"]\n",
    );
    fixture.environment("syntax", "name = \"x\"\ndomains = [\"x.apps.test\"\n");
    fixture.environment(
        "type",
        "name = \"y\"\ndomains = \"y.apps.test\"\nupstreams = [\"127.0.0.1:9001\"]\n",
    );
    let errors = refused(&fixture);
    assert!(
        errors.contains(&format!(
            "{}:3: key `upstream`: unknown field `upstream`",
            env_path(&fixture, "typo")
        )),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{}:2", env_path(&fixture, "syntax"))),
        "{errors}"
    );
    assert!(
        errors.contains(&format!(
            "{}:2: key `domains`: invalid type",
            env_path(&fixture, "type")
        )),
        "{errors}"
    );
}

#[test]
fn domain_not_covered_by_the_platform_certificate_is_refused() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "shop",
        "name = \"shop\"\ndomains = [\"shop.example\"]\nupstreams = [\"127.0.0.1:9001\"]\n",
    );
    let errors = refused(&fixture);
    assert!(
        errors.contains(&format!(
            "{}:2: key `domains`: no certificate covers domain \"shop.example\"",
            env_path(&fixture, "shop")
        )),
        "{errors}"
    );
}

#[test]
fn version_is_printed() {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("gatehouse {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn shipped_configuration_is_valid() {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gatehouse.toml"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `--config gatehouse.toml`, a bare file name in the current folder (as an operator types it in
/// the configuration's folder): every path in it is relative to that folder. (The environment
/// glob was once taken from the root, `/env/*.toml`, and matched nothing.)
#[test]
fn a_bare_main_file_name_resolves_its_paths_in_the_current_folder() {
    let fixture = Fixture::new();
    fixture.main_config("");
    fixture.environment(
        "shop",
        "name = \"shop\"\ndomains = [\"shop.apps.test\"]\nupstreams = [\"127.0.0.1:9\"]\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config", "gatehouse.toml"])
        .current_dir(fixture.dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
