//! The cost of recording a request's metrics on the request path, compared with looking the
//! series up by label values on every request (what the prometheus crate's `with_label_values`
//! does, under a read lock all requests share).
//!
//! Run: cargo bench --bench metrics

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::access::profile::{AllowReason, Decision};
use gatehouse::metrics::Metrics;
use http::{Method, StatusCode};
use prometheus::{IntCounterVec, Opts};

fn recording(c: &mut Criterion) {
    let Ok(metrics) = Metrics::new() else { return };
    let environment = metrics.environment("shop-production");
    let mut group = c.benchmark_group("metrics_per_request");
    group.bench_function("gatehouse_resolved_series", |b| {
        b.iter(|| {
            environment.decided(black_box(Decision::Allow(AllowReason::Range)));
            environment.upstream_answered(black_box(Duration::from_micros(800)));
            environment.request_done(
                black_box(&Method::GET),
                black_box(StatusCode::OK),
                Duration::from_millis(1),
            );
            environment.bytes(black_box(0), black_box(5120));
        })
    });
    let Ok(by_label) = IntCounterVec::new(
        Opts::new("requests_total", "requests"),
        &["environment", "method", "status"],
    ) else {
        return;
    };
    group.bench_function("label_lookup_per_request_one_counter", |b| {
        b.iter(|| {
            by_label
                .with_label_values(&[black_box("shop-production"), "GET", "2xx"])
                .inc()
        })
    });
    group.finish();
}

criterion_group!(benches, recording);
criterion_main!(benches);
