//! Handing back to the system the memory that a configuration load freed.
//!
//! A load of thousands of environments allocates tens of MiB that live only while it runs (file
//! texts, parsed TOML, certificates being checked), and a reload frees the previous snapshot.
//! The allocator keeps freed pages of an idle thread for reuse, and the thread that loaded goes
//! idle: without a nudge that memory stays resident. The binary registers its allocator's
//! collection here (the library does not choose the allocator), and every load ends with it.

use std::sync::OnceLock;

static RETURN_FREED: OnceLock<fn()> = OnceLock::new();

/// Register how to return freed memory to the system (once; later calls change nothing).
pub fn set_return_freed(collect: fn()) {
    let _ = RETURN_FREED.set(collect);
}

/// Return the memory this thread freed to the system, if the binary said how.
pub fn return_freed() {
    if let Some(collect) = RETURN_FREED.get() {
        collect();
    }
}
