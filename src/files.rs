//! Reading the files a configuration names (TOML files, certificates, keys, CA bundles, pages):
//! regular files only, after following symlinks (so a Kubernetes `..data` swap works), and at
//! most a given size. A path to a device (`/dev/zero`), a FIFO or an unexpectedly huge file is an
//! error with a reason, never an endless read that would take a reload's memory, or the process.

use std::io::{self, Read};
use std::path::Path;

/// TOML files (the main file, environment files).
pub const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;
/// Certificates, keys and CA bundles (a bundle of every public root is about 250 KiB).
pub const MAX_PEM_FILE: u64 = 4 * 1024 * 1024;

/// The bytes of the regular file at `path`, if it holds at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // Checked before opening: opening a FIFO for reading waits for a writer.
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO, socket or directory)",
        ));
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len().min(limit)).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_directories_and_oversized_files_are_refused_without_reading_them() {
        let directory = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        for path in [Path::new("/dev/zero"), Path::new("/dev/urandom"), directory.path()] {
            let error = read_bounded(path, 1024).err().map(|err| err.to_string());
            assert!(
                error.as_deref().is_some_and(|text| text.contains("not a regular file")),
                "{path:?}: {error:?}"
            );
        }
        let fifo = directory.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|status| status.success()) {
            assert!(read_bounded(&fifo, 1024).is_err(), "a FIFO was opened");
        }
        let file = directory.path().join("file");
        std::fs::write(&file, vec![b'x'; 2000]).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(read_bounded(&file, 2000).map(|bytes| bytes.len()).ok(), Some(2000));
        let error = read_bounded(&file, 1999).err().map(|err| err.to_string());
        assert_eq!(error.as_deref(), Some("larger than 1999 bytes"));
    }
}
