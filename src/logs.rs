//! Access and audit logs: one line per event, written by a background task so that the request
//! path never waits on I/O. Lines go through a bounded queue; when it is full, the line is dropped
//! and counted (`gatehouse_log_lines_dropped_total{reason="queue_full"}`), never the request.
//! Lines that the writer cannot get into the log (the file cannot be opened, a write fails) are
//! counted too (`reason="write_failed"`), so that a full disk shows in the metrics.
//!
//! A file target is reopened on SIGUSR1, for logrotate.
//!
//! The queue is bounded twice: in lines, and in bytes (a line can carry an 8 KiB path), so that a
//! writer that falls behind holds at most `QUEUE_BYTES` per log. The process log (stderr, through
//! `tracing`) is written synchronously, so what the request path says there goes through a
//! [`Throttle`]: a flood of denials costs a few lines a second, not a write per request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::metrics::{LogDrop, Metrics};

/// Lines waiting to be written, per sink.
const QUEUE: usize = 65_536;
/// Bytes of lines waiting to be written, per sink: about 55,000 access log lines of usual length,
/// but never the 0.5 GiB that 65,536 lines with 8 KiB paths would take.
const QUEUE_BYTES: usize = 16 * 1024 * 1024;

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
    /// Bytes of the lines in the queue (added when queued, taken off when the writer takes them).
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl LogSink {
    /// Start the writer for `target`. Must run inside a tokio runtime.
    pub fn start(target: Target, metrics: Arc<Metrics>) -> Self {
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        if target == Target::Off {
            return Self {
                sender: None,
                queued_bytes,
                metrics,
            };
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(target, receiver, queued_bytes.clone(), metrics.clone()));
        Self {
            sender: Some(sender),
            queued_bytes,
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queue a line (without its newline). Never waits.
    pub fn write(&self, line: String) {
        let Some(sender) = &self.sender else { return };
        let length = line.len();
        let before = self.queued_bytes.fetch_add(length, Ordering::Relaxed);
        if before + length > QUEUE_BYTES || sender.try_send(line).is_err() {
            self.queued_bytes.fetch_sub(length, Ordering::Relaxed);
            self.metrics.log_lines_dropped(LogDrop::QueueFull, 1);
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

async fn write_lines(
    target: Target,
    mut receiver: mpsc::Receiver<String>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut reopen = match target {
        Target::File(_) => signal(SignalKind::user_defined1()).ok(),
        _ => None,
    };
    let mut output = open(&target).await;
    // Lines are gathered here and written in batches, flushed at least every FLUSH_EVERY: a write
    // per line would cost a system call (and, for files, a hand-off to tokio's blocking pool) per
    // request.
    let mut pending = Pending::default();
    let mut lines: Vec<String> = Vec::with_capacity(LINES_PER_WAKE);
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            taken = receiver.recv_many(&mut lines, LINES_PER_WAKE) => {
                if taken == 0 {
                    break;
                }
                let taken_bytes: usize = lines.iter().map(String::len).sum();
                queued_bytes.fetch_sub(taken_bytes, Ordering::Relaxed);
                pending.gather(&mut lines);
                if pending.bytes.len() >= BUFFER {
                    write_out(output.as_mut(), &mut pending, &metrics).await;
                }
            }
            _ = flush_tick.tick(), if pending.lines > 0 => {
                write_out(output.as_mut(), &mut pending, &metrics).await;
            }
            Some(()) = async { match reopen.as_mut() { Some(signal) => signal.recv().await, None => std::future::pending().await } } => {
                write_out(output.as_mut(), &mut pending, &metrics).await;
                output = open(&target).await;
                tracing::info!("log file reopened");
            }
        }
    }
    write_out(output.as_mut(), &mut pending, &metrics).await;
}

/// Lets a diagnostic through at most `per_second` times a second and counts the rest, for what
/// the request path writes to the process log (which is written synchronously): the first lines
/// of a flood say what is happening, the next one that gets through says how many were held
/// back. One per call site, lock-free; the budget is approximate under races, never unbounded.
#[derive(Debug)]
pub struct Throttle {
    per_second: u32,
    second: AtomicU64,
    used: AtomicU32,
    held_back: AtomicU64,
}

impl Throttle {
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            used: AtomicU32::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one let through)` when a line may be written now.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.admit_at(now)
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        let current = self.second.load(Ordering::Relaxed);
        if current != second
            && self
                .second
                .compare_exchange(current, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Lines gathered for the next write, and how many there are (to count them if it fails).
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            bytes: Vec::with_capacity(BUFFER),
            lines: 0,
        }
    }
}

impl Pending {
    /// Move `lines` in, one per text line.
    fn gather(&mut self, lines: &mut Vec<String>) {
        for line in lines.drain(..) {
            self.bytes.extend_from_slice(line.as_bytes());
            self.bytes.push(b'\n');
            self.lines += 1;
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.lines = 0;
    }
}

/// Write what is pending and flush it, so that it is in the file (or pipe) when this returns.
/// When the write fails, or there is no output (the file could not be opened), the batch's lines
/// are counted as dropped: all of them, though part of the batch may have reached the log before
/// the error.
async fn write_out(output: Option<&mut Output>, pending: &mut Pending, metrics: &Metrics) {
    if pending.lines == 0 {
        return;
    }
    // Without an output, opening the file failed and said so once; its lines are only counted.
    if let Some(writer) = output {
        let written = async {
            writer.write_all(&pending.bytes).await?;
            writer.flush().await
        };
        if let Err(err) = written.await {
            tracing::error!(error = %err, lines = pending.lines, "cannot write log lines; they are dropped");
            metrics.log_lines_dropped(LogDrop::WriteFailed, pending.lines);
        }
    } else {
        metrics.log_lines_dropped(LogDrop::WriteFailed, pending.lines);
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

/// Audit events, each written as one JSON line: `time`, `log` ("audit"), `event`, then the
/// event's own fields.
pub trait AuditEvent: serde::Serialize {
    /// The `event` field's value.
    const NAME: &'static str;
}

#[derive(serde::Serialize)]
struct AuditLine<'a, E> {
    time: String,
    log: &'static str,
    event: &'static str,
    #[serde(flatten)]
    fields: &'a E,
}

impl LogSink {
    /// Queue `event` as an audit line (when this log is on).
    pub fn audit<E: AuditEvent>(&self, event: &E) {
        if !self.enabled() {
            return;
        }
        let line = AuditLine {
            time: rfc3339_now(),
            log: "audit",
            event: E::NAME,
            fields: event,
        };
        self.write(serde_json::to_string(&line).unwrap_or_default());
    }
}

/// A request that an access profile refused.
#[derive(Debug, serde::Serialize)]
pub struct AccessDenied<'a> {
    pub request_id: &'a str,
    pub environment: &'a str,
    pub client: String,
    pub host: &'a str,
    pub path: &'a str,
    pub rule: &'a str,
    pub reason: &'static str,
}

impl AuditEvent for AccessDenied<'_> {
    const NAME: &'static str = "access_denied";
}

/// A request that a report-only profile would have refused, let through: the same fields under
/// their own event name, so that a SIEM rule on `access_denied` does not fire on staged rules.
#[derive(Debug, serde::Serialize)]
pub struct AccessWouldDeny<'a> {
    #[serde(flatten)]
    pub denial: AccessDenied<'a>,
}

impl AuditEvent for AccessWouldDeny<'_> {
    const NAME: &'static str = "access_would_deny";
}

/// A configuration reload, installed or refused.
#[derive(Debug, serde::Serialize)]
pub struct ConfigReload<'a> {
    pub trigger: &'static str,
    pub result: &'static str,
    pub old_sha256: &'a str,
    pub new_sha256: Option<&'a str>,
    #[serde(flatten)]
    pub changes: Option<EnvironmentChanges>,
    pub error: Option<String>,
}

impl AuditEvent for ConfigReload<'_> {
    const NAME: &'static str = "config_reload";
}

/// Environments added, removed and changed by a reload, by name.
#[derive(Debug, serde::Serialize)]
pub struct EnvironmentChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed queue holding `lines`, as the writer finds it when gatehouse stops.
    fn queued(lines: &[String]) -> mpsc::Receiver<String> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        for line in lines {
            sender.try_send(line.clone()).expect("the queue has room");
        }
        receiver
    }

    /// The value of `gatehouse_log_lines_dropped_total` for `reason`.
    fn dropped(metrics: &Metrics, reason: &str) -> String {
        let series = format!("gatehouse_log_lines_dropped_total{{reason=\"{reason}\"}} ");
        let text = metrics.render();
        let value = text.lines().find_map(|line| line.strip_prefix(series.as_str()));
        value.unwrap_or("absent").to_owned()
    }

    #[tokio::test]
    async fn every_line_reaches_the_file_in_order_across_batches() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("access.log");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        // More lines than one wake takes and more bytes than one write, queued before the
        // writer runs, then the queue closes: the writer must write them all and end.
        let padding = "x".repeat(BUFFER / LINES_PER_WAKE);
        let expected: Vec<String> = (0..4 * LINES_PER_WAKE + 3)
            .map(|number| format!("line {number} {padding}"))
            .collect();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        write_lines(
            Target::File(path.clone()),
            queued(&expected),
            queued_bytes,
            metrics.clone(),
        )
        .await;
        let text = std::fs::read_to_string(&path).expect("the log file");
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
        assert!(text.ends_with('\n'));
        assert_eq!(dropped(&metrics, "write_failed"), "0");
        assert_eq!(dropped(&metrics, "queue_full"), "0");
    }

    #[tokio::test]
    async fn lines_that_cannot_be_written_are_counted_as_dropped() {
        let lines: Vec<String> = (0..5).map(|number| format!("line {number}")).collect();
        // A full disk: /dev/full opens, and every write to it fails with "no space left".
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        write_lines(
            Target::File("/dev/full".into()),
            queued(&lines),
            Arc::default(),
            metrics.clone(),
        )
        .await;
        assert_eq!(dropped(&metrics, "write_failed"), "5");
        // A file that cannot be opened (its directory is missing): every line is dropped.
        let directory = tempfile::tempdir().expect("temporary directory");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let missing = directory.path().join("missing").join("access.log");
        write_lines(Target::File(missing), queued(&lines), Arc::default(), metrics.clone()).await;
        assert_eq!(dropped(&metrics, "write_failed"), "5");
        assert_eq!(dropped(&metrics, "queue_full"), "0");
    }

    #[test]
    fn a_full_queue_drops_the_line_and_counts_it() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (sender, _receiver) = mpsc::channel(1);
        let sink = LogSink {
            sender: Some(sender),
            queued_bytes: Arc::default(),
            metrics: metrics.clone(),
        };
        sink.write("fits".to_owned());
        sink.write("does not fit".to_owned());
        assert_eq!(dropped(&metrics, "queue_full"), "1");
        assert_eq!(dropped(&metrics, "write_failed"), "0");
    }

    /// Long lines fill the queue's bytes long before its line count: past `QUEUE_BYTES` they are
    /// dropped and counted, and the room comes back as the writer takes lines.
    #[tokio::test(flavor = "current_thread")]
    async fn the_queue_is_bounded_in_bytes_and_its_room_comes_back() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("access.log");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let sink = LogSink::start(Target::File(path.clone()), metrics.clone());
        // Queued before the writer task first runs (this runtime has one thread).
        let line = "x".repeat(1024 * 1024);
        for _ in 0..20 {
            sink.write(line.clone());
        }
        assert_eq!(dropped(&metrics, "queue_full"), "4", "16 MiB queued, the rest dropped");
        // The writer takes them: room for more.
        let started = tokio::time::Instant::now();
        while sink.queued_bytes.load(Ordering::Relaxed) != 0 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.write("after".to_owned());
        assert_eq!(dropped(&metrics, "queue_full"), "4");
        drop(sink);
        let started = tokio::time::Instant::now();
        let mut written = 0;
        while written != 17 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            written = std::fs::read_to_string(&path).map_or(0, |text| text.lines().count());
        }
        assert_eq!(written, 17);
    }

    #[test]
    fn a_throttle_lets_its_budget_through_each_second_and_says_how_many_it_held_back() {
        let throttle = Throttle::new(3);
        let first: Vec<Option<u64>> = (0..5).map(|_| throttle.admit_at(100)).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // The next second: the first line says two were held back.
        assert_eq!(throttle.admit_at(101), Some(2));
        assert_eq!(throttle.admit_at(101), Some(0));
        assert_eq!(throttle.admit_at(101), Some(0));
        assert_eq!(throttle.admit_at(101), None);
        assert_eq!(throttle.admit_at(102), Some(1));
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
