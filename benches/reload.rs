//! Loading and swapping a configuration of 10,000 environments: how long a reload takes, and
//! whether memory comes back once old snapshots are released (resident memory after repeated
//! reload cycles must not keep growing).
//!
//! Run: cargo bench --bench reload

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse::snapshot::{self, Snapshot};

/// Counts the bytes the process has allocated and not freed: unlike resident memory, which the
/// allocator keeps for reuse, this shows exactly whether a released snapshot gave its memory back.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn live_kib() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed) / 1024
}

const ENVIRONMENTS: usize = 10_000;
const CYCLES: usize = 6;

fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn write_config(dir: &Path) {
    let names = vec!["*.apps.bench".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).expect("certificate");
    std::fs::write(dir.join("platform.pem"), generated.cert.pem()).expect("write");
    std::fs::write(dir.join("platform.key"), generated.signing_key.serialize_pem()).expect("write");
    let mut main = String::from(
        "environments = \"env/*.toml\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nadmin = \"off\"\n\
         [tls]\ncertificate = \"platform.pem\"\nkey = \"platform.key\"\n\
         [reload]\nwatch_files = false\n",
    );
    for profile in 0..10 {
        main.push_str(&format!("[profiles.office-{profile}]\nranges = ["));
        let ranges: Vec<String> = (0..10).map(|n| format!("\"10.{profile}.{n}.0/24\"")).collect();
        main.push_str(&ranges.join(", "));
        main.push_str("]\n");
    }
    std::fs::write(dir.join("gatehouse.toml"), main).expect("write");
    std::fs::create_dir_all(dir.join("env")).expect("mkdir");
    for index in 0..ENVIRONMENTS {
        let text = format!(
            "name = \"env-{index}\"\ndomains = [\"env-{index}.apps.bench\"]\n\
             upstreams = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\
             [access]\n\"/\" = \"office-{}\"\n\"/api/\" = \"allow-all\"\n\
             [response_headers]\nX-Frame-Options = \"DENY\"\n",
            10_000 + index % 5000,
            15_000 + index % 5000,
            index % 10
        );
        std::fs::write(dir.join("env").join(format!("env-{index:05}.toml")), text).expect("write");
    }
}

fn load(path: &Path) -> (Snapshot, Duration) {
    let started = Instant::now();
    let snapshot = snapshot::load(path).unwrap_or_else(|errors| panic!("{errors}"));
    (snapshot, started.elapsed())
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path());
    let main_file = dir.path().join("gatehouse.toml");
    let (baseline, baseline_live) = (resident_kib(), live_kib());
    let (first, _) = load(&main_file);
    let current = arc_swap::ArcSwap::from_pointee(first);
    let (loaded, loaded_live) = (resident_kib(), live_kib());
    println!("{ENVIRONMENTS} environments");
    println!("heap in use: {baseline_live} KiB before, {loaded_live} KiB with one snapshot");
    println!("resident:    {baseline} KiB before, {loaded} KiB with one snapshot");
    let mut times = Vec::new();
    for cycle in 1..=CYCLES {
        let (next, took) = load(&main_file);
        let old = current.swap(std::sync::Arc::new(next));
        drop(old);
        times.push(took);
        println!(
            "reload {cycle}: {:>6.1} ms; after releasing the old snapshot: heap in use {} KiB, resident {} KiB",
            took.as_secs_f64() * 1000.0,
            live_kib(),
            resident_kib()
        );
    }
    times.sort();
    println!("median reload: {:.1} ms", times[times.len() / 2].as_secs_f64() * 1000.0);
}
