//! Reloading when a configuration file changes: the main file, environment files (also new
//! ones), certificates, keys, CA bundles and pages. The folders holding them are watched (not the
//! files: editors and Kubernetes replace files by rename or symlink swap), and changes are
//! debounced so that an editor's save is one reload. A half-written file fails validation and is
//! refused like any other broken file; the complete file that follows reloads.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::server::{ReloadTrigger, Shared};

/// Start watching. The watcher lives as long as the returned task.
pub fn spawn(shared: Arc<Shared>, main_file: PathBuf) -> notify::Result<tokio::task::JoinHandle<()>> {
    let (events, mut receiver) = mpsc::channel::<PathBuf>(1024);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
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
            let debounce = shared.snapshot.load().settings.watch_debounce;
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
    let snapshot = shared.snapshot.load();
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

/// A change to a file the configuration reads, a new or removed environment file, or a
/// Kubernetes-style `..data` symlink swap.
fn relevant(shared: &Shared, path: &Path) -> bool {
    let snapshot = shared.snapshot.load();
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
