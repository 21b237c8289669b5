//! Reading the files a configuration names (TOML files, certificates, keys, CA bundles, pages):
//! regular files only, after following symlinks (so a Kubernetes `..data` swap works), and at
//! most a given size. A path to a device (`/dev/zero`), a FIFO or an unexpectedly huge file is an
//! error with a reason, never an endless read that would take a reload's memory, or the process.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// What the file system says about a file without reading it: enough to tell that it is the
/// same file with the same content as when it was read before, so that a reload can reuse what
/// it parsed from it. A replaced file (rename, Kubernetes' `..data` swap) has a new inode; an
/// edit in place changes the change time, which no tool can set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    regular: bool,
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
}

/// How long after its last change a file's stamp is trusted. Timestamps advance in ticks (a few
/// milliseconds on Linux): a file written twice within one tick, the second time after gatehouse
/// read it, would keep its stamp. A file changed this recently is read again next time.
pub const STAMP_SETTLES_AFTER: Duration = Duration::from_secs(2);

impl FileStamp {
    /// The stamp of the file at `path` (after following symlinks).
    pub fn of(path: &Path) -> io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        Ok(Self {
            regular: metadata.is_file(),
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified_ns: i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec()),
            changed_ns: i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec()),
        })
    }

    /// Whether it is a regular file (not a folder, device or FIFO).
    pub fn is_file(&self) -> bool {
        self.regular
    }

    /// Whether the file last changed long enough before `now` for this stamp to identify its
    /// content (see [`STAMP_SETTLES_AFTER`]).
    pub fn settled(&self, now: SystemTime) -> bool {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| i128::try_from(since.as_nanos()).unwrap_or(i128::MAX));
        let last_change = self.modified_ns.max(self.changed_ns);
        now_ns.saturating_sub(last_change) >= i128::try_from(STAMP_SETTLES_AFTER.as_nanos()).unwrap_or(i128::MAX)
    }
}

/// The stamps of many files at once (`None` for a file that cannot be stamped), in order. With
/// thousands of files, most of a reload's time is these system calls (about 1.5 µs each, mostly
/// the kernel walking the path): they are spread over up to four threads.
pub fn stamps_of(paths: &[&Path]) -> Vec<Option<FileStamp>> {
    const PER_THREAD_AT_LEAST: usize = 2_000;
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(4)
        .min(paths.len() / PER_THREAD_AT_LEAST)
        .max(1);
    let stamp_all =
        |chunk: &[&Path]| -> Vec<Option<FileStamp>> { chunk.iter().map(|path| FileStamp::of(path).ok()).collect() };
    if threads == 1 {
        return stamp_all(paths);
    }
    let chunk_size = paths.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk_size)
            .map(|chunk| scope.spawn(move || stamp_all(chunk)))
            .collect();
        workers
            .into_iter()
            .zip(paths.chunks(chunk_size))
            // A worker that panicked (it cannot: no code here panics) counts as "changed".
            .flat_map(|(worker, chunk)| worker.join().unwrap_or_else(|_| vec![None; chunk.len()]))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_changes_with_an_edit_in_place_and_with_a_replacement() {
        let directory = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let path = directory.path().join("file");
        std::fs::write(&path, "first").unwrap_or_else(|err| panic!("{err}"));
        let first = FileStamp::of(&path).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(FileStamp::of(&path).ok(), Some(first), "nothing changed");
        assert!(!first.settled(SystemTime::now()), "just written");
        assert!(first.settled(SystemTime::now() + STAMP_SETTLES_AFTER));

        // The same size, written in place with the modification time put back: the change time
        // still moves.
        std::thread::sleep(Duration::from_millis(20));
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|err| panic!("{err}"));
        std::fs::write(&path, "other").unwrap_or_else(|err| panic!("{err}"));
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("{err}"));
        file.set_modified(modified).unwrap_or_else(|err| panic!("{err}"));
        assert_ne!(FileStamp::of(&path).ok(), Some(first), "an edit in place");

        let replacement = directory.path().join("replacement");
        std::fs::write(&replacement, "other").unwrap_or_else(|err| panic!("{err}"));
        let before = FileStamp::of(&path).unwrap_or_else(|err| panic!("{err}"));
        std::fs::rename(&replacement, &path).unwrap_or_else(|err| panic!("{err}"));
        assert_ne!(FileStamp::of(&path).ok(), Some(before), "a replacement");
    }

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
