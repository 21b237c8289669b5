//! The per-request decisions with 10 and with 10,000 environments (each with its own profile of
//! 10 address ranges: 100,000 ranges in all): domain lookup, path-rule match with the IP-range
//! decision, the client-certificate decision, response header application, metrics recording,
//! and loading the snapshot. Every per-request cost should stay flat as environments grow.
//!
//! Run: cargo bench --bench request_path

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gatehouse::access::{self, profile::CertificateStatus};
use gatehouse::metrics::Metrics;
use gatehouse::snapshot::{self, Snapshot};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

const SIZES: [usize; 2] = [10, 10_000];

fn write_config(dir: &Path, environments: usize) {
    let generated = rcgen::generate_simple_self_signed(vec!["*.apps.bench".to_owned(), "*.eu.bench".to_owned()])
        .expect("certificate");
    std::fs::write(dir.join("platform.pem"), generated.cert.pem()).expect("write");
    std::fs::write(dir.join("platform.key"), generated.signing_key.serialize_pem()).expect("write");
    let ca = rcgen::generate_simple_self_signed(vec!["bench client CA".to_owned()]).expect("ca");
    std::fs::write(dir.join("client-ca.pem"), ca.cert.pem()).expect("write");
    let mut main = String::from(
        "environments = \"env/*.toml\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nadmin = \"off\"\n\
         [tls]\ncertificate = \"platform.pem\"\nkey = \"platform.key\"\n\
         [reload]\nwatch_files = false\n\
         [profiles.partners]\nclient_ca = \"client-ca.pem\"\n",
    );
    for index in 0..environments {
        // Ten /24s per environment, spread over 10.0.0.0/8 and 172.16.0.0/12.
        let ranges: Vec<String> = (0..10)
            .map(|n| {
                let block = index * 10 + n;
                format!("\"10.{}.{}.0/24\"", block / 256 % 256, block % 256)
            })
            .collect();
        main.push_str(&format!(
            "[profiles.office-{index}]\nranges = [{}]\n",
            ranges.join(", ")
        ));
    }
    std::fs::write(dir.join("gatehouse.toml"), main).expect("write");
    std::fs::create_dir_all(dir.join("env")).expect("mkdir");
    for index in 0..environments {
        let text = format!(
            "name = \"env-{index}\"\ndomains = [\"env-{index}.apps.bench\", \"env-{index}.eu.bench\"]\n\
             upstreams = [\"127.0.0.1:{}\"]\n\
             [access]\n\"/\" = \"office-{index}\"\n\"/api/\" = \"allow-all\"\n\"/partners/\" = \"partners\"\n\
             \"/rest-doc/\" = \"deny-all\"\n\
             [response_headers]\nStrict-Transport-Security = \"max-age=63072000\"\nX-Frame-Options = \"DENY\"\n\
             X-Content-Type-Options = \"nosniff\"\nReferrer-Policy = \"no-referrer\"\n",
            10_000 + index % 5000,
        );
        std::fs::write(dir.join("env").join(format!("env-{index:05}.toml")), text).expect("write");
    }
}

struct Loaded {
    _dir: tempfile::TempDir,
    main_file: std::path::PathBuf,
    snapshot: Snapshot,
    /// The registry a running proxy records into.
    metrics: Metrics,
    /// The last environment: the one a linear scan would reach last.
    last: usize,
    inside: IpAddr,
}

fn loaded(environments: usize) -> Loaded {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), environments);
    let main_file = dir.path().join("gatehouse.toml");
    let snapshot = snapshot::load(&main_file).unwrap_or_else(|errors| panic!("{errors}"));
    let metrics = Metrics::new().expect("metrics");
    let last = snapshot
        .environments
        .iter()
        .position(|env| *env.name == format!("env-{}", environments - 1))
        .expect("last environment");
    let block = (environments - 1) * 10 + 9;
    let inside = format!("10.{}.{}.77", block / 256 % 256, block % 256)
        .parse()
        .expect("ip");
    Loaded {
        _dir: dir,
        main_file,
        snapshot,
        metrics,
        last,
        inside,
    }
}

fn per_request(c: &mut Criterion) {
    let setups: Vec<(usize, Loaded)> = SIZES.iter().map(|&n| (n, loaded(n))).collect();
    let mut group = c.benchmark_group("request_path");
    for (environments, setup) in &setups {
        let snapshot = &setup.snapshot;
        let environment = &snapshot.environments[setup.last];
        let host = format!("env-{}.eu.bench", environments - 1);
        group.bench_with_input(BenchmarkId::new("domain_lookup", environments), &host, |b, host| {
            b.iter(|| snapshot.route(black_box(host.as_bytes())))
        });
        let outside: IpAddr = "192.0.2.1".parse().expect("ip");
        for (label, path, client) in [
            ("access_allow_in_range", "/orders/42", setup.inside),
            ("access_deny_not_in_range", "/orders/42", outside),
            ("access_deny_all_escaped_path", "/api/%2e%2e/rest-doc/x", setup.inside),
        ] {
            group.bench_with_input(BenchmarkId::new(label, environments), &path, |b, path| {
                b.iter(|| {
                    access::evaluate(
                        &snapshot.profiles,
                        &environment.rules,
                        black_box(path),
                        black_box(client),
                        |_| CertificateStatus::Absent,
                    )
                    .map(|evaluation| evaluation.decision)
                })
            });
        }
        group.bench_function(BenchmarkId::new("client_certificate_decision", environments), |b| {
            b.iter(|| {
                access::evaluate(
                    &snapshot.profiles,
                    &environment.rules,
                    black_box("/partners/feed"),
                    black_box(outside),
                    |_| CertificateStatus::Verified,
                )
                .map(|evaluation| evaluation.decision)
            })
        });
        let mut app_headers = HeaderMap::new();
        app_headers.insert("content-type", HeaderValue::from_static("text/html"));
        app_headers.insert("content-length", HeaderValue::from_static("1234"));
        app_headers.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        group.bench_function(BenchmarkId::new("response_headers", environments), |b| {
            b.iter_batched_ref(
                || app_headers.clone(),
                |headers| environment.headers.apply(black_box(headers)),
                criterion::BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("metrics_recording", environments), |b| {
            // The series a running proxy's live state holds for the environment.
            let metrics = setup.metrics.environment(&environment.name);
            b.iter(|| {
                metrics.request_done(&Method::GET, StatusCode::OK, std::time::Duration::from_micros(250));
                metrics.upstream_answered(std::time::Duration::from_micros(200));
                metrics.bytes(0, 1234);
            })
        });
    }
    group.finish();

    let mut loading = c.benchmark_group("snapshot_load");
    loading.sample_size(10);
    for (environments, setup) in &setups {
        loading.bench_with_input(
            BenchmarkId::from_parameter(environments),
            &setup.main_file,
            |b, main_file| b.iter(|| snapshot::load(main_file).map(|snapshot| snapshot.environments.len())),
        );
    }
    loading.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
