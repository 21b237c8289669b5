//! The cost of one rate-limit check, with the environment's table empty, and full and churning
//! (a flood of distinct prefixes, each new one taking a slot): the two must be alike, since a
//! check reads one set of four slots and swaps one word whatever the table holds.
//!
//! Run: cargo bench --bench rate_limit

use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::client_prefix::ClientPrefixes;
use gatehouse::rate_limit::{ClientLimiter, DEFAULT_TRACKED_CLIENTS, Rate};

fn limiter() -> ClientLimiter {
    ClientLimiter::new(Rate {
        per_second: NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MIN),
        burst: NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MIN),
        tracked_clients: DEFAULT_TRACKED_CLIENTS,
    })
}

/// The prefix of the `n`-th /64 of 2001:db8::/32.
fn prefix(n: u64) -> gatehouse::client_prefix::ClientPrefix {
    let address = Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(n) << 64) | 1);
    ClientPrefixes::default().of(IpAddr::V6(address))
}

fn checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_check");
    let empty = limiter();
    let one = prefix(1);
    group.bench_function("one_client_table_empty", |b| {
        b.iter(|| black_box(empty.check(black_box(one))))
    });

    let full = limiter();
    for n in 0..(4 * DEFAULT_TRACKED_CLIENTS as u64) {
        let _ = full.check(prefix(n));
    }
    group.bench_function("one_client_table_full", |b| {
        b.iter(|| black_box(full.check(black_box(one))))
    });
    let mut next = 1u64 << 40;
    group.bench_function("new_prefix_each_check_table_full", |b| {
        b.iter(|| {
            next += 1;
            black_box(full.check(black_box(prefix(next))))
        })
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
