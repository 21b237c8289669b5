//! The running proxy: listeners, TLS handshakes, HTTP connections, the admin listener.
//!
//! [`Proxy::start`] binds every listener of a snapshot and serves until dropped or shut down.
//! The snapshot, paired with its live state ([`crate::live::Installed`]), lives in an `ArcSwap`:
//! [`Proxy::install`] and [`Proxy::reload`] replace the pair, and every new handshake and request
//! reads the new one while in-flight work finishes on the old.

mod admin;
pub mod admin_client;
mod drain;
mod gate;
mod http;
mod http1;
mod listener;
mod listeners;
pub mod proxy_protocol;
mod redirect;
pub mod status_page;
mod tls;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ConfigErrors};
use crate::live::{Installed, LiveState};
use crate::logs::{ConfigReload, EnvironmentChanges, LogSink};
use crate::metrics::Metrics;
use crate::proxy::RequestPath;
use crate::proxy::request_id::RequestIds;
use crate::snapshot::LoadCache;
use crate::snapshot::Snapshot;
use listeners::ListenerSet;

/// State shared by every connection and request.
pub struct Shared {
    /// What the request path reads: the configuration in force with its live state (swapped
    /// as a whole), request ids, the access and audit logs.
    pub requests: Arc<RequestPath>,
    /// Every environment's metrics, limiters, instances, health and pools, across reloads.
    pub live: LiveState,
    pub metrics: Arc<Metrics>,
    /// Configuration loaded and every listener bound, and not shutting down.
    pub ready: AtomicBool,
    /// Taken out of rotation by `POST /drain` (back with `POST /undrain`): `/readyz` says 503
    /// while everything is still served, so that a load balancer stops sending new clients.
    pub out_of_rotation: AtomicBool,
    /// Generation of the snapshot in force: 1 at start, +1 per installed snapshot.
    pub generation: AtomicU64,
    /// Set once the proxy stops: every connection finishes gracefully.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Client connections being served (after the TLS handshake), for the drain to wait on.
    pub open_connections: AtomicUsize,
    /// The public listeners; changed by reloads, never touched per request.
    listeners: Mutex<ListenerSet>,
    /// Connection limits, checked once per connection.
    pub gate: gate::ConnectionGate,
    /// Held for the whole of a reload or install: SIGHUP, the file watcher and `POST /reload`
    /// may fire together, and one that read the files earlier must not install after one that
    /// read them later. In turn, the reload that starts last reads the newest files and
    /// installs last. It holds what the last load parsed from certificate and key files, for
    /// the next reload to reuse while those files are unchanged.
    installing: Mutex<LoadCache>,
    /// The status page's memory: the last reloads and samples of the request counters.
    pub status: status_page::StatusHistory,
}

impl Shared {
    /// Make `snapshot` the configuration for every request and handshake from now on.
    pub fn install(&self, snapshot: Snapshot) {
        let _one_at_a_time = self.one_at_a_time();
        self.install_now(snapshot);
    }

    fn one_at_a_time(&self) -> MutexGuard<'_, LoadCache> {
        self.installing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Install, the caller holding `installing`.
    fn install_now(&self, snapshot: Snapshot) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let installed = self.live.reconcile(Arc::new(snapshot), generation);
        self.requests.installed.store(Arc::new(installed));
    }

    /// The configuration in force with its live state.
    pub fn installed(&self) -> arc_swap::Guard<Arc<Installed>> {
        self.requests.installed.load()
    }

    /// The configuration in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.installed().snapshot.clone()
    }

    /// Load, validate and compile the configuration at `main_file` off the request path, and
    /// install it only if all of it is valid. Counted, and written to the audit log either way.
    /// Overlapping reloads run one after the other, each reading the files when its turn comes.
    pub fn reload(self: &Arc<Self>, main_file: &Path, trigger: ReloadTrigger) -> Result<(), ConfigErrors> {
        let outcome = self.reload_now(main_file, trigger);
        crate::memory::return_freed();
        outcome
    }

    fn reload_now(self: &Arc<Self>, main_file: &Path, trigger: ReloadTrigger) -> Result<(), ConfigErrors> {
        let mut cache = self.one_at_a_time();
        let old = self.snapshot();
        match crate::snapshot::load_reusing(main_file, &mut cache) {
            Ok(snapshot) => {
                let mut listeners = self.listeners();
                let prepared = match listeners.prepare(&snapshot.settings) {
                    Ok(prepared) => prepared,
                    Err(err) => {
                        let error = ConfigError::new(main_file, None, Some("listen"), err.to_string());
                        drop(listeners);
                        return self.refuse(main_file, trigger, &old, ConfigErrors::one(error));
                    }
                };
                let settings = snapshot.settings.clone();
                let changes = environment_changes(&old, &snapshot);
                let new_sha256 = snapshot.sha256.clone();
                let loads = snapshot.summary.certificate_loads;
                let environments_reused = snapshot.summary.environments_reused;
                self.install_now(snapshot);
                listeners.commit(prepared, &settings, self);
                self.metrics.reload_succeeded();
                tracing::info!(
                    trigger = trigger.as_str(),
                    sha256 = %new_sha256,
                    certificates_parsed = loads.parsed,
                    certificates_reused = loads.reused,
                    environments_reused,
                    "configuration reloaded"
                );
                self.audit_reload(trigger, &old.sha256, Some(&new_sha256), Some(changes), None);
                Ok(())
            }
            Err(errors) => self.refuse(main_file, trigger, &old, errors),
        }
    }

    /// A reload that cannot be installed: counted, logged, audited; the running one stays.
    fn refuse(
        &self,
        main_file: &Path,
        trigger: ReloadTrigger,
        old: &Snapshot,
        errors: ConfigErrors,
    ) -> Result<(), ConfigErrors> {
        self.metrics.reload_failed();
        for error in &errors.0 {
            tracing::error!(trigger = trigger.as_str(), main_file = %main_file.display(), "reload refused, the running configuration stays: {error}");
        }
        self.audit_reload(trigger, &old.sha256, None, None, Some(errors.to_string()));
        Err(errors)
    }

    fn listeners(&self) -> MutexGuard<'_, ListenerSet> {
        self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn audit_reload(
        &self,
        trigger: ReloadTrigger,
        old: &str,
        new: Option<&str>,
        changes: Option<EnvironmentChanges>,
        error: Option<String>,
    ) {
        self.status.reloaded(status_page::ReloadRecord {
            at: crate::snapshot::summary::unix_now(),
            trigger: trigger.as_str(),
            outcome: match &error {
                None => Ok(new.unwrap_or(old).to_owned()),
                Some(error) => Err(error.clone()),
            },
        });
        self.requests.audit_log.audit(&ConfigReload {
            trigger: trigger.as_str(),
            result: if error.is_none() { "success" } else { "failure" },
            old_sha256: old,
            new_sha256: new,
            changes,
            error,
        });
    }
}

/// Close idle pooled connections to the apps for every environment, from one task (see
/// [`crate::upstream::reap_idle`]), while the proxy lives.
fn spawn_idle_reaper(shared: &Arc<Shared>) {
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(crate::upstream::REAP_TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            crate::upstream::reap_idle(&shared.live.upstream_groups());
        }
    });
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
    admin_addr: Option<SocketAddr>,
    /// The admin listener outlives `stop_accepting`, so that `/readyz` can say 503 while draining.
    admin_tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Bind the snapshot's listeners and start serving. Must run inside a tokio runtime.
    pub async fn start(snapshot: Snapshot) -> Result<Self, StartError> {
        Self::start_reusing(snapshot, LoadCache::default()).await
    }

    /// [`Proxy::start`], with the certificate cache of the load that made `snapshot`, so that
    /// the first reload reuses what the start parsed.
    pub async fn start_reusing(snapshot: Snapshot, cache: LoadCache) -> Result<Self, StartError> {
        let prepared = ListenerSet::default().prepare(&snapshot.settings)?;
        let admin = snapshot.settings.admin.map(listeners::bind).transpose()?;
        let metrics = Arc::new(Metrics::new()?);
        let live = LiveState::new(metrics.clone());
        let settings = snapshot.settings.clone();
        let installed = live.reconcile(Arc::new(snapshot), 1);
        let requests = Arc::new(RequestPath {
            access_log: LogSink::start(settings.access_log.clone(), metrics.clone()),
            audit_log: LogSink::start(settings.audit_log.clone(), metrics.clone()),
            installed: ArcSwap::from_pointee(installed),
            request_ids: RequestIds::new(),
        });
        let shared = Arc::new(Shared {
            requests,
            live,
            metrics,
            ready: AtomicBool::new(false),
            out_of_rotation: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            draining: tokio::sync::watch::Sender::new(false),
            open_connections: AtomicUsize::new(0),
            listeners: Mutex::new(ListenerSet::default()),
            gate: gate::ConnectionGate::default(),
            installing: Mutex::new(cache),
            status: status_page::StatusHistory::default(),
        });
        status_page::spawn_sampler(&shared);
        spawn_idle_reaper(&shared);
        shared.listeners().commit(prepared, &settings, &shared);
        let admin_addr = admin.as_ref().and_then(|socket| socket.local_addr().ok());
        let admin_tasks = admin
            .into_iter()
            .map(|socket| tokio::spawn(listener::accept_loop(socket, shared.clone(), admin::serve)))
            .collect();
        if let Some(addr) = admin_addr {
            tracing::info!(%addr, "admin listener: /metrics /healthz /readyz /config /upstreams, POST /reload /drain /undrain");
        }
        shared.ready.store(true, Ordering::SeqCst);
        Ok(Self {
            shared,
            admin_addr,
            admin_tasks,
        })
    }

    /// The bound https addresses (with real ports when the config asked for port 0).
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.shared.listeners().https()
    }

    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.shared.listeners().http()
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
        self.shared.snapshot()
    }

    /// Report not ready (`/readyz` 503) while still accepting and serving: the first step of a
    /// shutdown, so that a load balancer takes the instance out before its listeners close.
    pub fn leave_rotation(&self) {
        self.shared.ready.store(false, Ordering::SeqCst);
    }

    /// Stop gracefully: stop accepting, report not ready, ask every open connection to finish
    /// (idle keep-alive connections close at once, HTTP/2 ones get GOAWAY), and wait for them up
    /// to the drain time. Returns the number of connections still open when it gave up.
    pub async fn shutdown(&self) -> usize {
        self.stop_accepting();
        let drain_timeout = self.shared.installed().snapshot.settings.shutdown_drain_timeout;
        let deadline = tokio::time::Instant::now() + drain_timeout;
        // The listening sockets close when their (aborted) accept tasks end.
        while !self.shared.listeners().all_closed() && tokio::time::Instant::now() < deadline {
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
        self.shared.listeners().stop();
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

/// Environments added, removed and changed between two configurations, for the audit log.
fn environment_changes(old: &Snapshot, new: &Snapshot) -> EnvironmentChanges {
    let index = |snapshot: &Snapshot| -> BTreeMap<String, String> {
        snapshot
            .summary
            .environments
            .iter()
            .map(|env| (env.name.clone(), env.sha256.clone()))
            .collect()
    };
    let (old, new) = (index(old), index(new));
    EnvironmentChanges {
        added: new.keys().filter(|name| !old.contains_key(*name)).cloned().collect(),
        removed: old.keys().filter(|name| !new.contains_key(*name)).cloned().collect(),
        changed: new
            .iter()
            .filter(|(name, hash)| old.get(*name).is_some_and(|old_hash| old_hash != *hash))
            .map(|(name, _)| name.clone())
            .collect(),
    }
}
