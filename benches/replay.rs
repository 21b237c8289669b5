//! `gatehouse replay`: access log lines judged per second on one core, under a configuration of
//! 1,000 environments with path rules, for a log shaped like the JSON lines gatehouse writes
//! (every field present, ~510 bytes a line), read from a file as the command reads it. The target is 500,000 lines a second.
//!
//! Run: cargo bench --bench replay

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use gatehouse::replay::Replay;

const ENVIRONMENTS: usize = 1_000;
const LINES: usize = 1_000_000;
const RUNS: usize = 3;

fn write_config(dir: &Path) {
    let generated = rcgen::generate_simple_self_signed(vec!["*.apps.bench".to_owned()]).expect("certificate");
    std::fs::write(dir.join("platform.pem"), generated.cert.pem()).expect("write");
    std::fs::write(dir.join("platform.key"), generated.signing_key.serialize_pem()).expect("write");
    let mut main = String::from(
        "environments = \"env/*.toml\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nadmin = \"off\"\n\
         [tls]\ncertificate = \"platform.pem\"\nkey = \"platform.key\"\n\
         [reload]\nwatch_files = false\n",
    );
    for profile in 0..10 {
        let ranges: Vec<String> = (0..10).map(|n| format!("\"10.{profile}.{n}.0/24\"")).collect();
        let _ = writeln!(main, "[profiles.office-{profile}]\nranges = [{}]", ranges.join(", "));
    }
    std::fs::write(dir.join("gatehouse.toml"), main).expect("write");
    std::fs::create_dir_all(dir.join("env")).expect("mkdir");
    for index in 0..ENVIRONMENTS {
        // The change being previewed: `/reports/` closed to the offices.
        let text = format!(
            "name = \"env-{index}\"\ndomains = [\"env-{index}.apps.bench\"]\nupstreams = [\"127.0.0.1:{}\"]\n\
             [access]\n\"/admin/\" = \"office-{}\"\n\"/reports/\" = \"office-{}\"\n\"/api/public/\" = \"allow-all\"\n",
            10_000 + index,
            index % 10,
            index % 10
        );
        std::fs::write(dir.join("env").join(format!("env-{index:05}.toml")), text).expect("write");
    }
}

const PATHS: [&str; 6] = [
    "/",
    "/api/items/12345",
    "/api/public/status",
    "/admin/users",
    "/reports/2026/q3",
    "/static/app.3f2a.js",
];

/// A log as the running configuration (without the `/reports/` rule) wrote it.
fn log_lines() -> Vec<u8> {
    let mut log = String::with_capacity(LINES * 440);
    for n in 0..LINES {
        let environment = n * 7919 % ENVIRONMENTS;
        let office = (n / PATHS.len()).is_multiple_of(3);
        let client = match office {
            true => format!("10.{}.{}.{}", environment % 10, n % 10, n % 250 + 1),
            false => format!("203.0.{}.{}", n % 200, n % 250 + 1),
        };
        let path = PATHS[n % PATHS.len()];
        let denied = path.starts_with("/admin/") && !office;
        let (status, decision, reason) = match denied {
            true => (403, "deny", "not_in_range"),
            false => (200, "allow", if path.starts_with("/admin/") { "range" } else { "open" }),
        };
        let _ = writeln!(
            log,
            "{{\"time\":\"2026-12-06T12:00:00.{:03}Z\",\"log\":\"access\",\"request_id\":\"a1b2c3d4e5f60718{n:016x}\",\
             \"trace_id\":\"a1b2c3d4e5f60718{n:016x}\",\"environment\":\"env-{environment}\",\"client\":\"{client}\",\
             \"method\":\"GET\",\"host\":\"env-{environment}.apps.bench\",\"path\":\"{path}\",\"protocol\":\"HTTP/1.1\",\
             \"tls_version\":\"TLSv1.3\",\"sni\":\"env-{environment}.apps.bench\",\"client_certificate\":null,\
             \"status\":{status},\"bytes_sent\":1532,\"duration_ms\":1.234,\"upstream\":\"127.0.0.1:{}\",\
             \"upstream_duration_ms\":1.101,\"decision\":\"{decision}\",\"decision_reason\":\"{reason}\"}}",
            n % 1000,
            10_000 + environment
        );
    }
    log.into_bytes()
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path());
    let snapshot =
        gatehouse::snapshot::load(&dir.path().join("gatehouse.toml")).unwrap_or_else(|errors| panic!("{errors}"));
    let log = log_lines();
    // Read from a file as the command does (after a first read, from the page cache).
    let log_file = dir.path().join("access.log");
    std::fs::write(&log_file, &log).expect("write");
    println!(
        "{LINES} lines, {:.0} bytes a line, {ENVIRONMENTS} environments",
        log.len() as f64 / LINES as f64
    );
    let mut best = f64::MAX;
    for run in 1..=RUNS {
        let mut replay = Replay::new(&snapshot);
        let started = Instant::now();
        let file = std::fs::File::open(&log_file).expect("open");
        replay
            .read(&mut std::io::BufReader::with_capacity(1 << 20, file))
            .expect("read");
        let seconds = started.elapsed().as_secs_f64();
        let report = replay.finish();
        assert_eq!(report.lines, LINES as u64);
        best = best.min(seconds);
        println!(
            "run {run}: {seconds:.3} s, {:.0} lines/s, {:.0} MB/s; {} unchanged, {} changed in {} groups, {} not judged",
            LINES as f64 / seconds,
            log.len() as f64 / seconds / 1e6,
            report.unchanged,
            report.changed,
            report.groups.len(),
            report.unjudged_lines()
        );
    }
    println!("best: {:.0} lines/s on one core", LINES as f64 / best);
}
