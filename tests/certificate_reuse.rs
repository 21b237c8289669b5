//! A reload parses only what changed: environments whose files are unchanged, and certificate /
//! key pairs whose files are unchanged, are taken over from the previous load, while everything
//! that spans environments is checked again and a change (a renewed certificate in place or by
//! rename, an edited environment, a broken key) is seen exactly as by a full load.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pki::KeyKind;
use common::process::Gatehouse;
use common::upstream::Upstream;
use common::{Connect, Fixture, Running, environment_toml};
use gatehouse::server::ReloadTrigger;
use gatehouse::snapshot::{LoadCache, Snapshot};

/// Files younger than this are read again by every load (their stamp may not yet tell a later
/// write apart): the tests wait it out where they expect reuse.
fn let_files_settle() {
    std::thread::sleep(gatehouse::files::STAMP_SETTLES_AFTER + Duration::from_millis(100));
}

fn custom_certificate(stem: &str) -> String {
    format!("[[certificates]]\ncertificate = \"../{stem}.pem\"\nkey = \"../{stem}.key\"\n")
}

async fn start_reusing(fixture: &Fixture) -> Running {
    let mut cache = LoadCache::default();
    let main = fixture.path("gatehouse.toml");
    let snapshot = gatehouse::snapshot::load_reusing(&main, &mut cache).unwrap_or_else(|errors| panic!("{errors}"));
    let proxy = gatehouse::server::Proxy::start_reusing(snapshot, cache).await.unwrap();
    Running::around(proxy, fixture.ca.der.clone())
}

fn reload(running: &Running, fixture: &Fixture) -> std::sync::Arc<Snapshot> {
    let main = fixture.path("gatehouse.toml");
    let shared = running.proxy().shared();
    shared
        .reload(&main, ReloadTrigger::Api)
        .unwrap_or_else(|errors| panic!("{errors}"));
    running.proxy().snapshot()
}

/// A reload that must be refused: its errors.
fn refused(running: &Running, fixture: &Fixture) -> String {
    let main = fixture.path("gatehouse.toml");
    let shared = running.proxy().shared();
    shared.reload(&main, ReloadTrigger::Api).unwrap_err().to_string()
}

async fn presented(running: &Running, name: &str) -> Vec<u8> {
    let tls = running
        .tls(Connect {
            server_name: name,
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

/// Three environments, each with a custom certificate of its own (one RSA).
async fn three_customers(fixture: &Fixture, app: &Upstream) -> Vec<common::pki::Leaf> {
    fixture.main_config("");
    let mut leaves = Vec::new();
    for (name, kind) in [
        ("alpha", KeyKind::Ecdsa),
        ("beta", KeyKind::Rsa),
        ("gamma", KeyKind::Ecdsa),
    ] {
        let domain = format!("www.{name}.example");
        leaves.push(fixture.issue(name, &[&domain], kind));
        let domains = [format!("{name}.apps.test"), domain];
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        fixture.environment(
            name,
            &environment_toml(name, &domains, &[app.addr], &custom_certificate(name)),
        );
    }
    leaves
}

#[tokio::test]
async fn a_reload_after_one_changed_file_reuses_the_rest_and_sees_every_change() {
    let fixture = Fixture::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let leaves = three_customers(&fixture, &blue).await;
    let_files_settle();
    let running = start_reusing(&fixture).await;

    // One environment file changes: the other two environments and every certificate (the
    // platform's and three custom ones) are taken over; the change is served.
    fixture.environment(
        "beta",
        &environment_toml(
            "beta",
            &["beta.apps.test", "www.beta.example"],
            &[green.addr],
            &custom_certificate("beta"),
        ),
    );
    let snapshot = reload(&running, &fixture);
    assert_eq!(snapshot.summary.environments_reused, 2);
    assert_eq!(snapshot.summary.certificate_loads.parsed, 0);
    assert_eq!(snapshot.summary.certificate_loads.reused, 4);
    assert_eq!(
        running.get("beta.apps.test", "/").await.header("x-upstream"),
        Some("green")
    );
    assert_eq!(
        running.get("alpha.apps.test", "/").await.header("x-upstream"),
        Some("blue")
    );

    // A renewal written in place over the same files: parsed again and served.
    let renewed = fixture.issue("alpha", &["www.alpha.example"], KeyKind::Ecdsa);
    let snapshot = reload(&running, &fixture);
    assert_eq!(snapshot.summary.certificate_loads.parsed, 1);
    assert_eq!(presented(&running, "www.alpha.example").await, renewed.der.as_ref());

    // A renewal swapped in by rename (how certbot, cert-manager and Kubernetes replace files).
    let staged = fixture.dir.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    let gamma = fixture
        .ca
        .issue(&staged, "gamma", &["www.gamma.example"], KeyKind::Ecdsa, 365);
    for suffix in ["pem", "key"] {
        std::fs::rename(
            staged.join(format!("gamma.{suffix}")),
            fixture.path(&format!("gamma.{suffix}")),
        )
        .unwrap();
    }
    reload(&running, &fixture);
    assert_eq!(presented(&running, "www.gamma.example").await, gamma.der.as_ref());

    // A broken key is refused like at start, naming the file; the running certificate stays.
    fixture.write(
        "alpha.key",
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    let errors = refused(&running, &fixture);
    assert!(errors.contains("alpha.key"), "{errors}");
    assert_eq!(presented(&running, "www.alpha.example").await, renewed.der.as_ref());
    assert_eq!(presented(&running, "www.beta.example").await, leaves[1].der.as_ref());
}

#[tokio::test]
async fn a_new_file_that_claims_the_domain_of_an_unchanged_environment_is_refused() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    three_customers(&fixture, &app).await;
    let_files_settle();
    let running = start_reusing(&fixture).await;

    // Before the unchanged environment in file order, and after it: both are caught, though the
    // environment that owns the domain is taken over from the previous load.
    for file in ["0-first", "zz-last"] {
        fixture.environment(file, &environment_toml(file, &["www.beta.example"], &[app.addr], ""));
        let errors = refused(&running, &fixture);
        assert!(
            errors.contains("\"www.beta.example\" is already claimed"),
            "{file}: {errors}"
        );
        std::fs::remove_file(fixture.path(&format!("env/{file}.toml"))).unwrap();
    }
    // The same name twice, too.
    fixture.environment(
        "zz-copy",
        &environment_toml("alpha", &["copy.apps.test"], &[app.addr], ""),
    );
    let errors = refused(&running, &fixture);
    assert!(errors.contains("environment \"alpha\" is already defined"), "{errors}");
    std::fs::remove_file(fixture.path("env/zz-copy.toml")).unwrap();

    // Removed files leave, and what stays is still served.
    std::fs::remove_file(fixture.path("env/gamma.toml")).unwrap();
    let snapshot = reload(&running, &fixture);
    assert_eq!(snapshot.environments.len(), 2);
    assert_eq!(running.get("gamma.apps.test", "/").await.status, 404);
    assert_eq!(running.get("beta.apps.test", "/").await.status, 200);
}

#[tokio::test]
async fn a_change_to_the_main_file_compiles_every_environment_again() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    let profile = |range: &str| format!("[profiles.office]\nranges = [\"{range}\"]\n");
    fixture.main_config(&profile("192.0.2.0/24"));
    for name in ["alpha", "beta"] {
        let domain = format!("{name}.apps.test");
        fixture.environment(
            name,
            &environment_toml(name, &[&domain], &[app.addr], "[access]\n\"/\" = \"office\"\n"),
        );
    }
    let_files_settle();
    let running = start_reusing(&fixture).await;
    assert_eq!(running.get("alpha.apps.test", "/").await.status, 403);

    fixture.main_config(&profile("127.0.0.0/8"));
    let snapshot = reload(&running, &fixture);
    assert_eq!(snapshot.summary.environments_reused, 0);
    assert_eq!(running.get("alpha.apps.test", "/").await.status, 200);
    assert_eq!(running.get("beta.apps.test", "/").await.status, 200);
}

/// The running process: the start's parse is what the first reload reuses, and `gatehouse
/// reload` leaves the loading to the running process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatehouse_reload_after_one_changed_file_parses_only_that_file() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    three_customers(&fixture, &app).await;
    // `gatehouse reload` finds the running process at the admin address the main file names.
    let admin_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    let main = main.replace(
        "admin = \"127.0.0.1:0\"",
        &format!("admin = \"127.0.0.1:{admin_port}\""),
    );
    fixture.write("gatehouse.toml", &format!("{main}[reload]\nwatch_files = false\n"));
    let_files_settle();
    let gatehouse = Gatehouse::start(&fixture, None);
    fixture.environment(
        "gamma",
        &environment_toml(
            "gamma",
            &["gamma.apps.test", "www.gamma.example"],
            &[app.addr],
            &custom_certificate("gamma"),
        ),
    );
    let reload = |config: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["reload", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };
    let main = fixture.path("gatehouse.toml");
    let output = tokio::task::spawn_blocking(move || reload(&main)).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = gatehouse.wait_for_log("configuration reloaded");
    assert!(line.contains("certificates_parsed=0"), "{line}");
    assert!(line.contains("certificates_reused=4"), "{line}");
    assert!(line.contains("environments_reused=2"), "{line}");
    gatehouse.signal("TERM");
    assert!(gatehouse.wait_exit().success());
}
