//! Configuration mounted the way Kubernetes mounts a ConfigMap or Secret: every file is a
//! symlink through `..data` to a timestamped folder, and an update writes a new folder and swaps
//! `..data` to it in one rename. gatehouse reloads such an update, and refuses a broken one while
//! the running configuration keeps serving.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::upstream::Upstream;
use common::{Fixture, environment_toml};

/// Write `files` (path in the mount, contents) as the mount's next version and swap `..data`
/// to it atomically, as the kubelet does; the first call makes the top-level symlinks.
fn publish(mount: &Path, version: u32, files: &[(&str, String)]) {
    let folder = mount.join(format!("..2026_12_06_v{version}"));
    for (name, contents) in files {
        let path = folder.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    let staged = mount.join("..data_tmp");
    symlink(folder.file_name().unwrap(), &staged).unwrap();
    std::fs::rename(&staged, mount.join("..data")).unwrap();
    for (name, _) in files {
        let top = name.split('/').next().unwrap();
        let link = mount.join(top);
        if link.symlink_metadata().is_err() {
            symlink(Path::new("..data").join(top), &link).unwrap();
        }
    }
    if version > 1 {
        std::fs::remove_dir_all(mount.join(format!("..2026_12_06_v{}", version - 1))).unwrap();
    }
}

async fn reloads(running: &common::Running, result: &str) -> f64 {
    let text = common::admin_get(running, "/metrics").await.text();
    common::samples(&text)
        .get(&format!("gatehouse_config_reloads_total{{result=\"{result}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_configmap_update_swapped_in_through_data_is_reloaded_and_a_broken_one_refused() {
    let fixture = Fixture::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    // The main file as the fixture writes it, moved into the mount with its certificate.
    fixture.main_config("[reload]\nwatch_debounce = \"100ms\"\n");
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml"))
        .unwrap()
        .replace("env/*.toml", "environments/*.toml");
    let certificate = std::fs::read_to_string(fixture.path("platform.pem")).unwrap();
    let key = std::fs::read_to_string(fixture.path("platform.key")).unwrap();
    let mount = fixture.path("mount");
    std::fs::create_dir(&mount).unwrap();
    let version = |upstream: std::net::SocketAddr| {
        vec![
            ("gatehouse.toml", main.clone()),
            ("platform.pem", certificate.clone()),
            ("platform.key", key.clone()),
            (
                "environments/shop.toml",
                environment_toml("shop", &["shop.apps.test"], &[upstream], ""),
            ),
        ]
    };
    publish(&mount, 1, &version(blue.addr));

    let snapshot = gatehouse::snapshot::load(&mount.join("gatehouse.toml")).unwrap();
    let proxy = gatehouse::server::Proxy::start(snapshot).await.unwrap();
    let running = common::Running::around(proxy, fixture.ca.der.clone());
    let _watcher = gatehouse::watch::spawn(running.proxy().shared(), mount.join("gatehouse.toml")).unwrap();
    assert_eq!(
        running.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("blue")
    );

    // An update: the environment now names the green instance.
    publish(&mount, 2, &version(green.addr));
    let started = tokio::time::Instant::now();
    while reloads(&running, "success").await < 1.0 {
        assert!(started.elapsed() < common::WAIT, "the ..data swap was not reloaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        running.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("green")
    );

    // A broken update is refused, and the running configuration keeps serving.
    let mut broken = version(blue.addr);
    broken[3].1 = "name = \"shop\"\ndomains = [\"shop.apps.test\"\n".to_owned();
    publish(&mount, 3, &broken);
    let started = tokio::time::Instant::now();
    while reloads(&running, "failure").await < 1.0 {
        assert!(started.elapsed() < common::WAIT, "the broken update was not tried");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        running.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("green")
    );

    // And the next good update, in the folders the broken one left, is taken again.
    publish(&mount, 4, &version(blue.addr));
    let started = tokio::time::Instant::now();
    while reloads(&running, "success").await < 2.0 {
        assert!(
            started.elapsed() < common::WAIT,
            "the update after the broken one was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        running.get("shop.apps.test", "/").await.header("x-upstream"),
        Some("blue")
    );
}

/// The configuration in deploy/kubernetes/configmap.yaml is valid: `gatehouse check` accepts it,
/// with stand-ins for the mounted Secrets (certificate, key, ticket keys) in a folder of its own,
/// and a loopback name server answering for the cluster's service names.
#[tokio::test]
async fn the_shipped_kubernetes_configuration_passes_check() {
    let cluster_dns = common::dns::NameServer::start(std::net::Ipv4Addr::LOCALHOST).await;
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/configmap.yaml")).unwrap();
    let fixture = Fixture::new();
    // The platform certificate Secret: a stand-in for the ConfigMap's example domains.
    let platform = fixture.issue(
        "k8s-platform",
        &["shop.example.com", "*.shop.example.com"],
        common::pki::KeyKind::Ecdsa,
    );
    let tickets = fixture.path("tickets.key");
    std::fs::write(&tickets, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    std::fs::set_permissions(&tickets, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The ConfigMap's files: each `  name: |` under `data:`, its lines indented by four spaces.
    let config = fixture.path("config");
    std::fs::create_dir(&config).unwrap();
    let mut files = 0;
    let mut current: Option<(String, String)> = None;
    let mut flush = |current: &mut Option<(String, String)>| {
        if let Some((name, text)) = current.take() {
            let text = text
                .replace("/etc/gatehouse/tls/tls.crt", &platform.cert_path.display().to_string())
                .replace("/etc/gatehouse/tls/tls.key", &platform.key_path.display().to_string())
                .replace("/etc/gatehouse/tickets/tickets.key", &tickets.display().to_string());
            let text = match name.as_str() {
                "gatehouse.toml" => format!("{text}\n[upstream]\nnameservers = [\"{}\"]\n", cluster_dns.addr),
                _ => text,
            };
            std::fs::write(config.join(name), text).unwrap();
            files += 1;
        }
    };
    for line in manifest.lines().skip_while(|line| *line != "data:").skip(1) {
        if let Some(name) = line.strip_prefix("  ").and_then(|rest| rest.strip_suffix(": |")) {
            flush(&mut current);
            current = Some((name.to_owned(), String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line.strip_prefix("    ").unwrap_or(""));
            text.push('\n');
        }
    }
    flush(&mut current);
    assert!(files >= 2, "no files found in the ConfigMap");
    let main_file = config.join("gatehouse.toml");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["check", "--config"])
            .arg(main_file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
