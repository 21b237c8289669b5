//! Reloading when a configuration file changes: the main file, environment files (also new
//! ones), certificates, keys, CA bundles and pages. The folders holding them are watched (not the
//! files: editors and Kubernetes replace files by rename or symlink swap), and changes are
//! debounced so that an editor's save is one reload. A half-written file fails validation and is
//! refused like any other broken file; the complete file that follows reloads.
//!
//! Only events that can change what a file holds count: a reload opens and reads every file it
//! names, and inotify reports those opens too, so counting them would make every reload schedule
//! the next one, forever.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::server::{ReloadTrigger, Shared};

/// Start watching. The watcher lives as long as the returned task.
pub fn spawn(shared: Arc<Shared>, main_file: PathBuf) -> notify::Result<tokio::task::JoinHandle<()>> {
    let (events, mut receiver) = mpsc::channel::<PathBuf>(1024);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !can_change_content(&event.kind) {
                return;
            }
            for path in event.paths {
                // A full queue already holds a reason to reload: dropping more is harmless.
                let _ = events.try_send(path);
            }
        }
    })?;
    let mut watched: HashSet<PathBuf> = HashSet::new();
    watch_folders(&shared, &mut watcher, &mut watched);
    Ok(tokio::spawn(async move {
        while let Some(path) = receiver.recv().await {
            if !relevant(&shared, &path) {
                continue;
            }
            let debounce = shared.installed().snapshot.settings.watch_debounce;
            // Wait for quiet: every further event restarts the wait.
            loop {
                match tokio::time::timeout(debounce, receiver.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            let reloading = shared.clone();
            let main_file = main_file.clone();
            let _ = tokio::task::spawn_blocking(move || reloading.reload(&main_file, ReloadTrigger::FileChange)).await;
            // A reload may name files in new folders.
            watch_folders(&shared, &mut watcher, &mut watched);
        }
    }))
}

fn watch_folders(shared: &Shared, watcher: &mut notify::RecommendedWatcher, watched: &mut HashSet<PathBuf>) {
    let snapshot = shared.snapshot();
    let folders = snapshot
        .inputs
        .iter()
        .filter_map(|file| file.parent().map(Path::to_path_buf))
        .chain(std::iter::once(snapshot.environment_dir.clone()));
    for folder in folders {
        if watched.contains(&folder) {
            continue;
        }
        match watcher.watch(&folder, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(folder);
            }
            Err(err) => {
                tracing::warn!(folder = %folder.display(), error = %err, "cannot watch for configuration changes")
            }
        }
    }
}

/// Writes, creates, removes, renames and attribute changes (permissions decide whether a file
/// can be read), and events the platform cannot classify or a lost-events rescan (deny on doubt:
/// reload). Never an open or a read: those are what a reload itself does.
fn can_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

/// A change to a file the configuration reads, a new or removed environment file, or a
/// Kubernetes-style `..data` symlink swap.
fn relevant(shared: &Shared, path: &Path) -> bool {
    let snapshot = shared.snapshot();
    if snapshot.inputs.iter().any(|input| input == path) {
        return true;
    }
    let in_environment_dir = path.parent() == Some(snapshot.environment_dir.as_path());
    let is_toml = path.extension().is_some_and(|ext| ext == "toml");
    let swapped = path
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with(".."));
    (in_environment_dir && is_toml) || swapped
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn reads_never_count_as_changes_and_every_kind_of_write_does() {
        let reads = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ];
        for kind in reads {
            assert!(!can_change_content(&kind), "{kind:?}");
        }
        let changes = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Other,
            EventKind::Any,
        ];
        for kind in changes {
            assert!(can_change_content(&kind), "{kind:?}");
        }
    }
}
