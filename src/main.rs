//! The `gatehouse` binary: the allocator and the process settings, then the library's CLI.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a request allocates and frees many small buffers
/// (headers, TLS records, log lines), which mimalloc's per-thread free lists serve faster and
/// with less fragmentation (see `benches/RESULTS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages: a proxy's memory is thousands of small per-connection buffers
    // that come and go. In 2 MiB pages each fresh page is zeroed whole on first touch (CPU on the
    // handshake path) and stays resident while any few bytes of it are in use. Measured with
    // 2,000 idle TLS connections: 27 instead of 38 KiB each after a request, and ~5-10% more
    // handshakes per CPU-second (benches/RESULTS.md). The flag covers the whole process and
    // later faults; failing to set it (an old kernel) changes nothing else.
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("note: transparent huge pages stay on for this process: {err}");
    }
    // What a configuration load frees goes back to the system at its end (see src/memory.rs).
    gatehouse::memory::set_return_freed(|| {
        // SAFETY: mi_collect takes no pointer and may be called from any thread at any time.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    gatehouse::cli::main()
}
