use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a request allocates and frees many small buffers
/// (headers, TLS records, log lines), which mimalloc's per-thread free lists serve faster and
/// with less fragmentation (see `benches/RESULTS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gatehouse::cli::main()
}
