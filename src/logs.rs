//! Access and audit logs: one line per event, written by a background task so that the request
//! path never waits on I/O. Lines go through a bounded queue; when it is full, the line is dropped
//! and counted (`gatehouse_log_lines_dropped_total`), never the request.
//!
//! A file target is reopened on SIGUSR1, for logrotate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
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

async fn open(target: &Target) -> Option<Box<dyn AsyncWrite + Send + Unpin>> {
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

async fn write_lines(target: Target, mut receiver: mpsc::Receiver<String>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut reopen = match target {
        Target::File(_) => signal(SignalKind::user_defined1()).ok(),
        _ => None,
    };
    let mut output = open(&target)
        .await
        .map(|writer| BufWriter::with_capacity(BUFFER, writer));
    // Lines are written in batches and flushed at least every FLUSH_EVERY: a flush per line
    // would cost a system call (and, for files, a hand-off to tokio's blocking pool) per request.
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    loop {
        tokio::select! {
            line = receiver.recv() => {
                let Some(line) = line else { break };
                if let Some(writer) = output.as_mut() {
                    let written = async {
                        writer.write_all(line.as_bytes()).await?;
                        writer.write_all(b"\n").await
                    };
                    if let Err(err) = written.await {
                        tracing::error!(error = %err, "cannot write log line");
                    }
                    dirty = true;
                }
            }
            _ = flush_tick.tick(), if dirty => {
                if let Some(writer) = output.as_mut()
                    && let Err(err) = writer.flush().await
                {
                    tracing::error!(error = %err, "cannot write log lines");
                }
                dirty = false;
            }
            Some(()) = async { match reopen.as_mut() { Some(signal) => signal.recv().await, None => std::future::pending().await } } => {
                if let Some(writer) = output.as_mut() {
                    let _ = writer.flush().await;
                }
                output = open(&target).await.map(|writer| BufWriter::with_capacity(BUFFER, writer));
                dirty = false;
                tracing::info!("log file reopened");
            }
        }
    }
    if let Some(writer) = output.as_mut() {
        let _ = writer.flush().await;
    }
}

/// RFC 3339 time with milliseconds, UTC.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The common log format's time: `10/Oct/2000:13:55:36 +0000`.
pub fn common_log_time() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let now = time::OffsetDateTime::now_utc();
    let month = MONTHS
        .get(usize::from(u8::from(now.month())) - 1)
        .copied()
        .unwrap_or("Jan");
    format!(
        "{:02}/{month}/{}:{:02}:{:02}:{:02} +0000",
        now.day(),
        now.year(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
