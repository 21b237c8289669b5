//! gatehouse as a child process (the binary the tests were built with), for tests of what only
//! a process shows: signals, systemd notifications, exit codes, several instances side by side.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::Fixture;

pub struct Gatehouse {
    pub child: Child,
    pub https: std::net::SocketAddr,
    pub stderr: mpsc::Receiver<String>,
}

impl Gatehouse {
    /// Start the binary and wait for it to report its https address.
    pub fn start(fixture: &Fixture, notify_socket: Option<&std::path::Path>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        command
            .args(["run", "--config"])
            .arg(fixture.path("gatehouse.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(socket) = notify_socket {
            command.env("NOTIFY_SOCKET", socket);
        }
        let mut child = command.spawn().unwrap();
        let (lines, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let https = loop {
            let line = stderr
                .recv_timeout(super::WAIT)
                .expect("gatehouse did not report its https listener");
            if let Some(addr) = line.split("listening for https addr=").nth(1) {
                break addr.trim().parse().unwrap();
            }
        };
        Self { child, https, stderr }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for a stderr line containing `text`.
    pub fn wait_for_log(&self, text: &str) -> String {
        loop {
            let line = self
                .stderr
                .recv_timeout(super::WAIT)
                .unwrap_or_else(|_| panic!("no log line with {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < super::WAIT, "gatehouse did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
