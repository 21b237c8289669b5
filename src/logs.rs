//! Access and audit logs: one line per event, written by a background task so that the request
//! path never waits on I/O. Lines go through a bounded queue; when it is full, the line is dropped
//! and counted (`gatehouse_log_lines_dropped_total`), never the request.
//!
//! A file target is reopened on SIGUSR1, for logrotate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Lines waiting to be written, per sink.
const QUEUE: usize = 65_536;

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Target {
    /// `"stdout"`, `"stderr"`, `"off"`, or a file path (relative paths against `base`).
    pub fn parse(written: &str, base: &std::path::Path) -> Self {
        match written {
            "off" => Self::Off,
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            path => Self::File(base.join(path)),
        }
    }
}

/// The line format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// One JSON object per line.
    Json,
    /// The common log format: `client - - [time] "METHOD path PROTOCOL" status bytes`.
    Common,
}

/// The sending end of a log.
#[derive(Debug, Clone)]
pub struct LogSink {
    sender: Option<mpsc::Sender<String>>,
    metrics: Arc<Metrics>,
}

impl LogSink {
    /// Start the writer for `target`. Must run inside a tokio runtime.
    pub fn start(target: Target, metrics: Arc<Metrics>) -> Self {
        if target == Target::Off {
            return Self { sender: None, metrics };
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(target, receiver));
        Self {
            sender: Some(sender),
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queue a line (without its newline). Never waits.
    pub fn write(&self, line: String) {
        if let Some(sender) = &self.sender
            && sender.try_send(line).is_err()
        {
            self.metrics.log_line_dropped();
        }
    }
}

async fn open(target: &Target) -> Option<Output> {
    match target {
        Target::Off => None,
        Target::Stdout => Some(Box::new(tokio::io::stdout())),
        Target::Stderr => Some(Box::new(tokio::io::stderr())),
        Target::File(path) => {
            let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await;
            match file {
                Ok(file) => Some(Box::new(file)),
                Err(err) => {
                    tracing::error!(path = %path.display(), error = %err, "cannot open log file; lines are dropped until SIGUSR1 reopens it");
                    None
                }
            }
        }
    }
}

/// Bytes of log lines gathered before a write.
const BUFFER: usize = 64 * 1024;
/// Lines reach the log within this time.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Lines taken from the queue per wake of the writer. Every wake costs a task poll; on a busy
/// proxy many lines arrive between two wakes, and they are moved together.
const LINES_PER_WAKE: usize = 256;

type Output = Box<dyn AsyncWrite + Send + Unpin>;

async fn write_lines(target: Target, mut receiver: mpsc::Receiver<String>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut reopen = match target {
        Target::File(_) => signal(SignalKind::user_defined1()).ok(),
        _ => None,
    };
    let mut output = open(&target).await;
    // Lines are gathered here and written in batches, flushed at least every FLUSH_EVERY: a write
    // per line would cost a system call (and, for files, a hand-off to tokio's blocking pool) per
    // request.
    let mut pending: Vec<u8> = Vec::with_capacity(BUFFER);
    let mut lines: Vec<String> = Vec::with_capacity(LINES_PER_WAKE);
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            taken = receiver.recv_many(&mut lines, LINES_PER_WAKE) => {
                if taken == 0 {
                    break;
                }
                gather(&mut pending, &mut lines, output.is_some());
                if pending.len() >= BUFFER {
                    write_out(output.as_mut(), &mut pending).await;
                }
            }
            _ = flush_tick.tick(), if !pending.is_empty() => {
                write_out(output.as_mut(), &mut pending).await;
            }
            Some(()) = async { match reopen.as_mut() { Some(signal) => signal.recv().await, None => std::future::pending().await } } => {
                write_out(output.as_mut(), &mut pending).await;
                output = open(&target).await;
                tracing::info!("log file reopened");
            }
        }
    }
    write_out(output.as_mut(), &mut pending).await;
}

/// Move `lines` into `pending`, one per text line; without an output (the file could not be
/// opened) they are dropped.
fn gather(pending: &mut Vec<u8>, lines: &mut Vec<String>, has_output: bool) {
    if has_output {
        for line in lines.iter() {
            pending.extend_from_slice(line.as_bytes());
            pending.push(b'\n');
        }
    }
    lines.clear();
}

/// Write what is pending and flush it, so that it is in the file (or pipe) when this returns.
async fn write_out(output: Option<&mut Output>, pending: &mut Vec<u8>) {
    if let Some(writer) = output
        && !pending.is_empty()
    {
        let written = async {
            writer.write_all(pending).await?;
            writer.flush().await
        };
        if let Err(err) = written.await {
            tracing::error!(error = %err, "cannot write log lines");
        }
    }
    pending.clear();
}

/// The time texts of one second. Formatting a date costs about as much as the rest of an access
/// log line, and a busy proxy writes thousands of lines a second, so each thread keeps the text of
/// the current second and formats a new one only when the second changes (as nginx caches its
/// time strings).
struct SecondText {
    second: u64,
    /// `10/Oct/2000:13:55:36 +0000`
    common: String,
    /// `2000-10-10T13:55:36`, the RFC 3339 text up to the fraction.
    rfc3339: String,
}

impl SecondText {
    const fn empty() -> Self {
        Self {
            second: u64::MAX,
            common: String::new(),
            rfc3339: String::new(),
        }
    }

    fn at(&mut self, second: u64) -> &Self {
        if self.second != second {
            self.common = common_time_of(second);
            self.rfc3339 = rfc3339_seconds_of(second);
            self.second = second;
        }
        self
    }
}

thread_local! {
    static NOW_TEXT: std::cell::RefCell<SecondText> = const { std::cell::RefCell::new(SecondText::empty()) };
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Run `use_text` with the texts of `second` from this thread's cache.
fn with_second_text<R>(second: u64, use_text: impl FnOnce(&SecondText) -> R) -> R {
    NOW_TEXT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cached) => use_text(cached.at(second)),
        // Not reachable (nothing here calls back into it), but never a panic on the request path.
        Err(_) => use_text(SecondText::empty().at(second)),
    })
}

/// RFC 3339 time with milliseconds, UTC: `2000-10-10T13:55:36.123Z`.
pub fn rfc3339_now() -> String {
    let now = since_epoch();
    with_second_text(now.as_secs(), |text| {
        rfc3339_with_millis(&text.rfc3339, now.subsec_millis())
    })
}

fn rfc3339_with_millis(seconds: &str, millis: u32) -> String {
    let mut text = String::with_capacity(seconds.len() + 5);
    text.push_str(seconds);
    text.push('.');
    for digit in [millis / 100 % 10, millis / 10 % 10, millis % 10] {
        text.push(char::from_digit(digit, 10).unwrap_or('0'));
    }
    text.push('Z');
    text
}

/// Append the common log format's time, `10/Oct/2000:13:55:36 +0000`, to `line`.
pub fn push_common_log_time(line: &mut String) {
    with_second_text(since_epoch().as_secs(), |text| line.push_str(&text.common));
}

fn common_time_of(second: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let time = i64::try_from(second)
        .ok()
        .and_then(|second| time::OffsetDateTime::from_unix_timestamp(second).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let month = MONTHS
        .get(usize::from(u8::from(time.month())) - 1)
        .copied()
        .unwrap_or("Jan");
    format!(
        "{:02}/{month}/{}:{:02}:{:02}:{:02} +0000",
        time.day(),
        time.year(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

fn rfc3339_seconds_of(second: u64) -> String {
    // humantime writes `2000-10-10T13:55:36Z` for a whole second; the fraction goes before the `Z`.
    let mut text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second)).to_string();
    text.pop();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_line_reaches_the_file_in_order_across_batches() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("access.log");
        let (sender, receiver) = mpsc::channel(QUEUE);
        // More lines than one wake takes and more bytes than one write, queued before the
        // writer runs, then the queue closes: the writer must write them all and end.
        let count = 4 * LINES_PER_WAKE + 3;
        let padding = "x".repeat(BUFFER / LINES_PER_WAKE);
        for number in 0..count {
            sender
                .try_send(format!("line {number} {padding}"))
                .expect("the queue has room");
        }
        drop(sender);
        write_lines(Target::File(path.clone()), receiver).await;
        let text = std::fs::read_to_string(&path).expect("the log file");
        let expected: Vec<String> = (0..count).map(|number| format!("line {number} {padding}")).collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn lines_without_an_output_are_dropped() {
        let mut pending = Vec::new();
        let mut lines = vec!["a".to_owned(), "b".to_owned()];
        gather(&mut pending, &mut lines, true);
        assert_eq!(pending, b"a\nb\n");
        lines.push("c".to_owned());
        gather(&mut pending, &mut lines, false);
        assert_eq!(pending, b"a\nb\n");
        assert!(lines.is_empty());
    }

    #[test]
    fn time_texts_match_a_direct_formatting_and_change_with_the_second() {
        // 2000-10-10T13:55:36Z, the common log format's own example.
        let second = 971_186_136;
        let mut cache = SecondText::empty();
        assert_eq!(cache.at(second).common, "10/Oct/2000:13:55:36 +0000");
        assert_eq!(cache.at(second).rfc3339, "2000-10-10T13:55:36");
        assert_eq!(
            rfc3339_with_millis(&cache.at(second).rfc3339, 7),
            "2000-10-10T13:55:36.007Z"
        );
        assert_eq!(
            rfc3339_with_millis(&cache.at(second).rfc3339, 123),
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(second * 1000 + 123)).to_string()
        );
        assert_eq!(cache.at(second + 1).common, "10/Oct/2000:13:55:37 +0000");
        assert_eq!(cache.at(second + 86_400 * 30).rfc3339, "2000-11-09T13:55:36");
    }

    #[test]
    fn the_current_time_texts_are_todays() {
        let before = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let now = rfc3339_now();
        let after = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        // The same second as one of the direct readings around it (a second may tick between).
        assert!(
            now.starts_with(&before[..19]) || now.starts_with(&after[..19]),
            "{now} vs {before}/{after}"
        );
        assert_eq!(now.len(), "2000-10-10T13:55:36.123Z".len());
        let mut line = String::new();
        push_common_log_time(&mut line);
        assert!(
            line.ends_with(" +0000") && line.len() == "10/Oct/2000:13:55:36 +0000".len(),
            "{line}"
        );
    }
}
