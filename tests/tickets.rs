//! Session tickets across a fleet: instances that share `tls.ticket_keys` resume each other's
//! sessions (TLS 1.3 and 1.2), a ticket survives one key rotation and falls back to a full
//! handshake after the next, instances with other keys never resume, and bad key files are
//! refused at start and on reload while the running keys stay. Real processes, checked with
//! OpenSSL's client (`openssl s_client -sess_out` / `-sess_in`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use base64::Engine;
use common::process::Gatehouse;
use common::upstream::Upstream;
use common::{Fixture, environment_toml};

/// A ticket key file holding `keys` (each key 32 times its byte), readable by its owner only.
fn write_keys(fixture: &Fixture, name: &str, keys: &[u8]) {
    let text: String = keys
        .iter()
        .map(|byte| format!("{}\n", base64::engine::general_purpose::STANDARD.encode([*byte; 32])))
        .collect();
    fixture.write(name, &text);
    std::fs::set_permissions(fixture.path(name), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A configuration with `tls.ticket_keys = keys_file`, reloaded by SIGHUP only.
fn fixture_with_keys(app: &Upstream, keys: &[u8]) -> Fixture {
    let fixture = Fixture::new();
    write_keys(&fixture, "tickets.key", keys);
    fixture.main_config("[reload]\nwatch_files = false\n");
    let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
    fixture.write(
        "gatehouse.toml",
        &main.replace("[tls]\n", "[tls]\nticket_keys = \"tickets.key\"\n"),
    );
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    std::fs::write(fixture.path("ca.pem"), &fixture.ca.pem).unwrap();
    fixture
}

/// How a connection to `instance` with OpenSSL's client went: whether the session was resumed,
/// and whether the request was answered. `session` is read (`-sess_in`) when it exists, and
/// written (`-sess_out`) when `save` is set.
fn connect(fixture: &Fixture, instance: &Gatehouse, version: &str, session: &str, save: bool) -> (bool, bool) {
    let session_path = fixture.path(session);
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            &instance.https.to_string(),
            "-servername",
            "shop.apps.test",
            version,
        ])
        .arg("-CAfile")
        .arg(fixture.path("ca.pem"))
        .args(["-ign_eof", "-alpn", "http/1.1"]);
    if session_path.exists() {
        command.arg("-sess_in").arg(&session_path);
    }
    if save {
        command.arg("-sess_out").arg(&session_path);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (Debian package openssl) must be installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET / HTTP/1.1\r\nHost: shop.apps.test\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let resumed = text.contains("Reused, TLSv1");
    assert!(resumed || text.contains("New, TLSv1"), "no handshake:\n{text}");
    (resumed, text.contains("HTTP/1.1 200"))
}

// Multi-threaded: the test blocks on OpenSSL's client while the app answers on another thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_ticket_keys_resume_each_others_sessions_and_others_do_not() {
    let app = Upstream::start("shop").await;
    let fleet = fixture_with_keys(&app, &[1, 2]);
    let instances: Vec<Gatehouse> = (0..3).map(|_| Gatehouse::start(&fleet, None)).collect();
    let stranger_fixture = fixture_with_keys(&app, &[9]);
    let stranger = Gatehouse::start(&stranger_fixture, None);

    for (version, session) in [("-tls1_3", "tls13.session"), ("-tls1_2", "tls12.session")] {
        // A full handshake on instance 1 gets a ticket.
        assert_eq!(
            connect(&fleet, &instances[0], version, session, true),
            (false, true),
            "{version}"
        );
        // It resumes on instances 2 and 3, and on 1 itself.
        for (number, instance) in instances.iter().enumerate() {
            assert_eq!(
                connect(&fleet, instance, version, session, false),
                (true, true),
                "{version}: instance {} did not resume instance 1's session",
                number + 1
            );
        }
        // An instance with other keys never does; the client falls back to a full handshake.
        std::fs::copy(fleet.path(session), stranger_fixture.path(session)).unwrap();
        assert_eq!(
            connect(&stranger_fixture, &stranger, version, session, false),
            (false, true),
            "{version}: an instance with other keys resumed the session"
        );
    }
}

// Multi-threaded: the test blocks on OpenSSL's client while the app answers on another thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_survives_one_rotation_and_falls_back_to_a_full_handshake_after_the_next() {
    let app = Upstream::start("shop").await;
    let fixture = fixture_with_keys(&app, &[1]);
    let instance = Gatehouse::start(&fixture, None);
    assert_eq!(connect(&fixture, &instance, "-tls1_3", "s", true), (false, true));

    // Rotation: a new key, and the old one dropped from the file at once.
    write_keys(&fixture, "tickets.key", &[2]);
    instance.signal("HUP");
    instance.wait_for_log("configuration reloaded");
    assert_eq!(
        connect(&fixture, &instance, "-tls1_3", "s", false),
        (true, true),
        "lost at the first rotation"
    );

    // The next rotation retires the first key: a full handshake, and the request is answered.
    write_keys(&fixture, "tickets.key", &[3]);
    instance.signal("HUP");
    instance.wait_for_log("configuration reloaded");
    assert_eq!(connect(&fixture, &instance, "-tls1_3", "s", false), (false, true));
}

// Multi-threaded: the test blocks on OpenSSL's client while the app answers on another thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ticket_key_files_are_refused_at_start_and_on_reload_and_the_running_keys_stay() {
    let app = Upstream::start("shop").await;
    let fixture = fixture_with_keys(&app, &[1]);
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["check", "--config"])
            .arg(fixture.path("gatehouse.toml"))
            .output()
            .unwrap()
    };
    assert!(check().status.success());
    let instance = Gatehouse::start(&fixture, None);
    assert_eq!(connect(&fixture, &instance, "-tls1_3", "s", true), (false, true));

    let cases: [(&str, u32, &str); 3] = [
        ("c2hvcnQ=\n", 0o600, "expected 32 bytes of key"),
        ("this is not base64!\n", 0o600, "expected a key in base64"),
        (
            &std::fs::read_to_string(fixture.path("tickets.key")).unwrap(),
            0o644,
            "open to other users",
        ),
    ];
    for (text, mode, reason) in cases {
        let key_text = text.to_owned();
        fixture.write("tickets.key", &key_text);
        std::fs::set_permissions(fixture.path("tickets.key"), std::fs::Permissions::from_mode(mode)).unwrap();
        // `check` (and so a start) refuses it, naming the file, the key and the reason.
        let output = check();
        let message = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{reason}: accepted");
        assert!(
            message.contains("tickets.key") && message.contains("tls.ticket_keys") && message.contains(reason),
            "{message}"
        );
        // A reload refuses it too, and the running keys stay: the ticket still resumes.
        instance.signal("HUP");
        let line = instance.wait_for_log("reload refused");
        assert!(line.contains(reason), "{line}");
        assert_eq!(
            connect(&fixture, &instance, "-tls1_3", "s", false),
            (true, true),
            "{reason}"
        );
    }
    // Neither the key nor any part of it reached the log.
    let secret = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
    while let Ok(line) = instance.stderr.try_recv() {
        assert!(!line.contains(&secret[..16]), "a key reached the log: {line}");
    }
}
