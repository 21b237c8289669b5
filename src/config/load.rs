//! Reading the files: the main file, then every environment file its glob names.
//!
//! Paths inside a file are relative to that file's folder. The source text is kept so that
//! validation can turn a byte span into a line number.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use super::error::{ConfigError, ConfigErrors};
use super::schema::{EnvironmentFile, MainFile};
use crate::files::FileStamp;

/// A parsed file together with where it came from.
#[derive(Debug)]
pub struct SourceFile<T> {
    pub path: PathBuf,
    text: String,
    pub value: T,
}

impl<T> SourceFile<T> {
    /// The 1-based line that a byte offset of this file falls on.
    pub fn line_of(&self, span: &Range<usize>) -> usize {
        line_of(&self.text, span.start)
    }

    /// An error located at `span` in this file.
    pub fn error_at(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.path, Some(self.line_of(span)), Some(key), message)
    }

    /// SHA-256 (hex) of the file's text.
    pub fn sha256(&self) -> String {
        digest(std::iter::once((&self.path, &self.text)))
    }

    /// A path written in this file, resolved against the file's folder.
    pub fn resolve(&self, written: &str) -> PathBuf {
        folder_of(&self.path).join(written)
    }
}

/// Everything read from disk for one load, before validation.
#[derive(Debug)]
pub struct LoadedConfig {
    pub main: SourceFile<MainFile>,
    /// Shared with [`ParsedFiles`], which hands an unchanged file to the next load as it is.
    pub environments: Vec<Arc<SourceFile<EnvironmentFile>>>,
    /// SHA-256 (hex) over the configuration files' names and contents.
    pub sha256: String,
}

impl LoadedConfig {
    /// The files the main file names (platform certificate and key, ticket keys, client CAs,
    /// CRLs), as written relative to it.
    pub fn main_input_files(&self) -> Vec<PathBuf> {
        let main = &self.main;
        let tls = &main.value.tls;
        let mut files = Vec::new();
        files.extend(
            tls.certificate
                .iter()
                .chain(tls.key.iter())
                .chain(tls.ticket_keys.iter())
                .map(|p| main.resolve(p.get_ref())),
        );
        for profile in main.value.profiles.values() {
            let profile = profile.get_ref();
            files.extend(
                (profile.client_ca.iter())
                    .chain(&profile.client_crls)
                    .map(|p| main.resolve(p.get_ref())),
            );
        }
        files
    }

    /// Every file the configuration reads (configuration, certificates, keys, CA bundles, pages),
    /// as absolute paths: what a file watcher must watch.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.main.path.clone()];
        files.extend(self.main_input_files());
        for environment in &self.environments {
            files.push(environment.path.clone());
            for entry in &environment.value.certificates {
                files.push(environment.resolve(entry.certificate.get_ref()));
                files.push(environment.resolve(entry.key.get_ref()));
            }
            let file = &environment.value;
            let upstream_tls = file.upstream_tls.as_deref();
            files.extend(
                (file.forbidden_page.iter())
                    .chain(&file.maintenance_page)
                    .chain(upstream_tls.map(|tls| &tls.ca))
                    .chain(upstream_tls.and_then(|tls| tls.certificate.as_ref()))
                    .chain(upstream_tls.and_then(|tls| tls.key.as_ref()))
                    .map(|p| environment.resolve(p.get_ref())),
            );
        }
        files
            .into_iter()
            .map(|path| std::path::absolute(&path).unwrap_or(path))
            .collect()
    }

    /// The folder the environment glob looks in (where new environment files appear).
    pub fn environment_dir(&self) -> PathBuf {
        let dir = folder_of(&self.main.path);
        let pattern = self.main.value.environments.get_ref();
        let glob_dir = Path::new(pattern).parent().unwrap_or_else(|| Path::new(""));
        let joined = dir.join(glob_dir);
        std::path::absolute(&joined).unwrap_or(joined)
    }
}

/// Read and parse the main file alone.
pub fn load_main(main_path: &Path) -> Result<SourceFile<MainFile>, ConfigErrors> {
    parse_file(main_path).map_err(ConfigErrors::one)
}

/// Environment files parsed by the previous load, by path, with the stamp their file had: a
/// reload hands an unchanged file on as it is instead of reading and parsing it again (with
/// thousands of environments, most of a reload's reading). See [`FileStamp`] for what
/// "unchanged" means; a file changed within the last seconds is read again regardless.
#[derive(Debug, Default)]
pub struct ParsedFiles {
    files: HashMap<PathBuf, (FileStamp, Arc<SourceFile<EnvironmentFile>>)>,
}

impl ParsedFiles {
    /// The file at `path`, or `None` when it is not a regular file (a folder the glob matched).
    /// `stamp` was taken before: a change while reading gives a stamp that differs next time.
    fn parse(
        &mut self,
        path: &Path,
        stamp: Option<FileStamp>,
        started: SystemTime,
    ) -> Result<Option<Arc<SourceFile<EnvironmentFile>>>, ConfigError> {
        // No stamp: gone since the glob listed it, or unreadable; reading it says why.
        if stamp.is_some_and(|stamp| !stamp.is_file()) {
            return Ok(None);
        }
        if let Some(stamp) = stamp
            && let Some((earlier, file)) = self.files.get(path)
            && *earlier == stamp
        {
            return Ok(Some(file.clone()));
        }
        let file = Arc::new(parse_file::<EnvironmentFile>(path)?);
        match stamp.filter(|stamp| stamp.settled(started)) {
            Some(stamp) => self.files.insert(path.to_path_buf(), (stamp, file.clone())),
            None => self.files.remove(path),
        };
        Ok(Some(file))
    }
}

/// Read and parse the main file and all environment files. Syntax and type errors of every file
/// are collected before returning.
pub fn load(main_path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    load_reusing(main_path, &mut ParsedFiles::default())
}

/// [`load`], taking unchanged environment files from `parsed` (and leaving this load's there).
pub fn load_reusing(main_path: &Path, parsed: &mut ParsedFiles) -> Result<LoadedConfig, ConfigErrors> {
    let started = SystemTime::now();
    let main: SourceFile<MainFile> = parse_file(main_path).map_err(ConfigErrors::one)?;
    let mut errors = Vec::new();
    let mut environments = Vec::new();
    let paths = environment_paths(&main)?;
    let present: std::collections::HashSet<&PathBuf> = paths.iter().collect();
    parsed.files.retain(|path, _| present.contains(path));
    let stamps = crate::files::stamps_of(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    for (path, stamp) in paths.iter().zip(stamps) {
        match parsed.parse(path, stamp, started) {
            Ok(Some(file)) => environments.push(file),
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    if environments.is_empty() && errors.is_empty() {
        let written = &main.value.environments;
        let message = format!("{:?} matches no environment file, only folders", written.get_ref());
        return Err(ConfigErrors::one(main.error_at(
            &written.span(),
            "environments",
            message,
        )));
    }
    if errors.is_empty() {
        let sha256 =
            digest(std::iter::once((&main.path, &main.text)).chain(environments.iter().map(|f| (&f.path, &f.text))));
        Ok(LoadedConfig {
            main,
            environments,
            sha256,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn digest<'a>(files: impl Iterator<Item = (&'a PathBuf, &'a String)>) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (path, text) in files {
        context.update(path.to_string_lossy().as_bytes());
        context.update(&[0]);
        context.update(text.as_bytes());
        context.update(&[0]);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The folder `file` is in: `.` for a bare file name (`gatehouse.toml`), whose parent is the
/// empty path (which a glob would read as the root).
fn folder_of(file: &Path) -> &Path {
    match file.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}

fn environment_paths(main: &SourceFile<MainFile>) -> Result<Vec<PathBuf>, ConfigErrors> {
    let written = &main.value.environments;
    let dir = folder_of(&main.path);
    let escaped_dir = glob::Pattern::escape(&dir.to_string_lossy());
    let pattern = format!("{escaped_dir}/{}", written.get_ref());
    let located = |message: String| ConfigErrors::one(main.error_at(&written.span(), "environments", message));
    let entries = glob::glob(&pattern)
        .map_err(|err| located(format!("expected a file glob such as \"environments/*.toml\": {err}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|err| located(format!("cannot read {}: {}", err.path().display(), err.error())))?;
        // Folders that the glob matches are skipped when the files are read.
        paths.push(path);
    }
    if paths.is_empty() {
        return Err(located(format!("{pattern:?} matches no environment file")));
    }
    paths.sort();
    Ok(paths)
}

fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<SourceFile<T>, ConfigError> {
    let bytes = crate::files::read_bounded(path, crate::files::MAX_CONFIG_FILE)
        .map_err(|err| ConfigError::new(path, None, None, format!("cannot read the file: {err}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::new(path, None, None, "cannot read the file: expected UTF-8 text"))?;
    match toml::from_str::<T>(&text) {
        Ok(value) => Ok(SourceFile {
            path: path.to_path_buf(),
            text,
            value,
        }),
        Err(err) => {
            let line = err.span().map(|span| line_of(&text, span.start));
            let key = line.and_then(|line| key_on_line(&text, line));
            Err(ConfigError::new(path, line, key, err.message().trim_end()))
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The key assigned on a line (`key = value`), which toml's errors do not name themselves.
fn key_on_line(text: &str, line: usize) -> Option<&str> {
    let (key, _) = text.lines().nth(line - 1)?.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with(['[', '#', '"'])).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn offsets_map_to_one_based_lines() {
        let text = "a = 1\nb = 2\n\nc = 3";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, 13), 4);
        assert_eq!(line_of(text, 999), 4);
    }

    #[test]
    fn finds_the_key_assigned_on_a_line() {
        let text = "name = \"x\"\n[tls]\n  key = 5 # no";
        assert_eq!(super::key_on_line(text, 1), Some("name"));
        assert_eq!(super::key_on_line(text, 2), None);
        assert_eq!(super::key_on_line(text, 3), Some("key"));
    }
}
