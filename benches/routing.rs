//! Host routing cost with few and with many environments: a lookup is a handful of hash probes,
//! so 10,000 environments should cost about what 10 do.
//!
//! Run: cargo bench --bench routing

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gatehouse::route::{MAX_HOST_LEN, Route, RouteTable, normalize_host};

/// Each environment gets an exact platform name, a custom domain and a wildcard.
fn table(environments: usize) -> RouteTable {
    let mut table = RouteTable::default();
    for index in 0..environments {
        let route = Route {
            environment: index,
            policy: 0,
        };
        table.insert(&format!("env-{index}.apps.example.com"), route);
        table.insert(&format!("www.customer-{index}.example"), route);
        table.insert(&format!("*.preview-{index}.apps.example.com"), route);
    }
    table
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for environments in [10usize, 10_000] {
        let table = table(environments);
        let last = environments - 1;
        let hosts = [
            format!("env-{last}.apps.example.com"),
            format!("pr-42.preview-{last}.apps.example.com"),
            "unknown.example.org".to_owned(),
        ];
        for (label, host) in ["exact", "wildcard", "miss"].iter().zip(&hosts) {
            group.bench_with_input(BenchmarkId::new(*label, environments), host, |b, host| {
                b.iter(|| {
                    let mut buffer = [0u8; MAX_HOST_LEN];
                    let normalized = normalize_host(black_box(host.as_bytes()), &mut buffer);
                    normalized.and_then(|host| table.lookup(host))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
