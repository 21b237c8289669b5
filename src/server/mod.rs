//! The running proxy: listeners, TLS handshakes, HTTP connections, the admin listener.
//!
//! [`Proxy::start`] binds every listener of a snapshot and serves until dropped or shut down.
//! The snapshot lives in an `ArcSwap`: [`Proxy::install`] and [`Proxy::reload`] replace it, and
//! every new handshake and request reads the new one while in-flight work finishes on the old.

mod admin;
pub mod admin_client;
mod drain;
mod http;
mod listener;
mod proxy_protocol;
mod redirect;
mod tls;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::ConfigErrors;
use crate::logs::LogSink;
use crate::metrics::Metrics;
use crate::proxy::forward::RequestIds;
use crate::proxy::upstream::{self, UpstreamClient};
use crate::snapshot::Snapshot;

/// State shared by every connection and request.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub upstream: UpstreamClient,
    pub request_ids: RequestIds,
    pub metrics: Arc<Metrics>,
    pub access_log: LogSink,
    pub audit_log: LogSink,
    /// Configuration loaded and every listener bound, and not shutting down.
    pub ready: AtomicBool,
    /// Generation of the snapshot in force: 1 at start, +1 per installed snapshot.
    pub generation: AtomicU64,
    /// Set once the proxy stops: every connection finishes gracefully.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Client connections being served (after the TLS handshake), for the drain to wait on.
    pub open_connections: AtomicUsize,
}

impl Shared {
    /// Make `snapshot` the configuration for every request and handshake from now on.
    pub fn install(&self, mut snapshot: Snapshot) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.adopt(&mut snapshot, generation);
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Load, validate and compile the configuration at `main_file` off the request path, and
    /// install it only if all of it is valid. Counted, and written to the audit log either way.
    pub fn reload(&self, main_file: &Path, trigger: ReloadTrigger) -> Result<(), ConfigErrors> {
        let old = self.snapshot.load_full();
        match crate::snapshot::load(main_file) {
            Ok(snapshot) => {
                let changes = Changes::between(&old, &snapshot);
                let new_sha256 = snapshot.sha256.clone();
                self.install(snapshot);
                self.metrics.reload_succeeded();
                tracing::info!(trigger = trigger.as_str(), sha256 = %new_sha256, "configuration reloaded");
                self.audit_reload(trigger, &old.sha256, Some(&new_sha256), Some(changes), None);
                Ok(())
            }
            Err(errors) => {
                self.metrics.reload_failed();
                for error in &errors.0 {
                    tracing::error!(
                        trigger = trigger.as_str(),
                        "reload refused, the running configuration stays: {error}"
                    );
                }
                self.audit_reload(trigger, &old.sha256, None, None, Some(errors.to_string()));
                Err(errors)
            }
        }
    }

    fn audit_reload(
        &self,
        trigger: ReloadTrigger,
        old: &str,
        new: Option<&str>,
        changes: Option<Changes>,
        error: Option<String>,
    ) {
        if !self.audit_log.enabled() {
            return;
        }
        let line = ReloadLine {
            time: crate::logs::rfc3339_now(),
            log: "audit",
            event: "config_reload",
            trigger: trigger.as_str(),
            result: if error.is_none() { "success" } else { "failure" },
            old_sha256: old,
            new_sha256: new,
            changes,
            error,
        };
        self.audit_log.write(serde_json::to_string(&line).unwrap_or_default());
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What asked for a reload, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Signal,
    FileChange,
    Admin,
    Api,
}

impl ReloadTrigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::FileChange => "file_change",
            Self::Admin => "admin",
            Self::Api => "api",
        }
    }
}

/// A running gatehouse.
pub struct Proxy {
    shared: Arc<Shared>,
    https_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// The admin listener outlives `stop_accepting`, so that `/readyz` can say 503 while draining.
    admin_tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Bind the snapshot's listeners and start serving. Must run inside a tokio runtime.
    pub async fn start(mut snapshot: Snapshot) -> Result<Self, StartError> {
        let https = listener::bind_all(&snapshot.settings.https).await?;
        let http = listener::bind_all(&snapshot.settings.http).await?;
        let admin = listener::bind_all(snapshot.settings.admin.as_slice()).await?;
        let metrics = Arc::new(Metrics::new()?);
        metrics.adopt(&mut snapshot, 1);
        let shared = Arc::new(Shared {
            upstream: upstream::client(&snapshot.settings, metrics.upstream_connections()),
            access_log: LogSink::start(snapshot.settings.access_log.clone(), metrics.clone()),
            audit_log: LogSink::start(snapshot.settings.audit_log.clone(), metrics.clone()),
            snapshot: ArcSwap::from_pointee(snapshot),
            request_ids: RequestIds::new(),
            metrics,
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            draining: tokio::sync::watch::Sender::new(false),
            open_connections: AtomicUsize::new(0),
        });
        let https_addrs = listener::local_addrs(&https);
        let http_addrs = listener::local_addrs(&http);
        let admin_addr = listener::local_addrs(&admin).first().copied();
        let mut accept_tasks = Vec::new();
        for socket in https {
            accept_tasks.push(tokio::spawn(listener::accept_loop(socket, shared.clone(), tls::serve)));
        }
        for socket in http {
            accept_tasks.push(tokio::spawn(listener::accept_loop(
                socket,
                shared.clone(),
                redirect::serve,
            )));
        }
        let admin_tasks = admin
            .into_iter()
            .map(|socket| tokio::spawn(listener::accept_loop(socket, shared.clone(), admin::serve)))
            .collect();
        for addr in &https_addrs {
            tracing::info!(%addr, "listening for https");
        }
        for addr in &http_addrs {
            tracing::info!(%addr, "listening for http (redirects to https)");
        }
        if let Some(addr) = admin_addr {
            tracing::info!(%addr, "admin listener: /metrics /healthz /readyz /config");
        }
        shared.ready.store(true, Ordering::SeqCst);
        Ok(Self {
            shared,
            https_addrs,
            http_addrs,
            admin_addr,
            accept_tasks,
            admin_tasks,
        })
    }

    /// The bound https addresses (with real ports when the config asked for port 0).
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Make `snapshot` the configuration for every request and handshake from now on.
    pub fn install(&self, snapshot: Snapshot) {
        self.shared.install(snapshot);
    }

    /// Load, validate and compile the configuration at `main_file` off the request path, and
    /// install it only if all of it is valid. Counted, and written to the audit log either way.
    pub fn reload(&self, main_file: &Path, trigger: ReloadTrigger) -> Result<(), ConfigErrors> {
        self.shared.reload(main_file, trigger)
    }

    /// The state shared with connections, for reload triggers that run on their own tasks.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The configuration currently in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Stop gracefully: stop accepting, report not ready, ask every open connection to finish
    /// (idle keep-alive connections close at once, HTTP/2 ones get GOAWAY), and wait for them up
    /// to the drain time. Returns the number of connections still open when it gave up.
    pub async fn shutdown(&self) -> usize {
        self.stop_accepting();
        let drain_timeout = self.shared.snapshot.load().settings.shutdown_drain_timeout;
        let deadline = tokio::time::Instant::now() + drain_timeout;
        // The listening sockets close when their (aborted) accept tasks end.
        while !self.accept_tasks.iter().all(JoinHandle::is_finished) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shared.draining.send_replace(true);
        tracing::info!(
            connections = self.shared.open_connections.load(Ordering::SeqCst),
            "listeners closed; draining open connections"
        );
        loop {
            let open = self.shared.open_connections.load(Ordering::SeqCst);
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop accepting connections and report not ready. Connections already open are served to
    /// their end.
    pub fn stop_accepting(&self) {
        self.shared.ready.store(false, Ordering::SeqCst);
        for task in &self.accept_tasks {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_accepting();
        for task in &self.admin_tasks {
            task.abort();
        }
    }
}

#[derive(Serialize)]
struct ReloadLine<'a> {
    time: String,
    log: &'static str,
    event: &'static str,
    trigger: &'static str,
    result: &'static str,
    old_sha256: &'a str,
    new_sha256: Option<&'a str>,
    #[serde(flatten)]
    changes: Option<Changes>,
    error: Option<String>,
}

/// Environments added, removed and changed between two configurations.
#[derive(Debug, Serialize)]
struct Changes {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

impl Changes {
    fn between(old: &Snapshot, new: &Snapshot) -> Self {
        let index = |snapshot: &Snapshot| -> BTreeMap<String, String> {
            snapshot
                .summary
                .environments
                .iter()
                .map(|env| (env.name.clone(), env.sha256.clone()))
                .collect()
        };
        let (old, new) = (index(old), index(new));
        Self {
            added: new.keys().filter(|name| !old.contains_key(*name)).cloned().collect(),
            removed: old.keys().filter(|name| !new.contains_key(*name)).cloned().collect(),
            changed: new
                .iter()
                .filter(|(name, hash)| old.get(*name).is_some_and(|old_hash| old_hash != *hash))
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }
}
