//! The running proxy: listeners, TLS handshakes, HTTP connections.
//!
//! [`Proxy::start`] binds every listener of a snapshot and serves until dropped or shut down.
//! The snapshot lives in an `ArcSwap`: [`Proxy::install`] replaces it, and every new handshake
//! and request reads the new one while in-flight work finishes on the old.

mod http;
mod listener;
mod proxy_protocol;
mod redirect;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::proxy::forward::RequestIds;
use crate::proxy::upstream::{self, UpstreamClient};
use crate::snapshot::Snapshot;

/// State shared by every connection and request.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub upstream: UpstreamClient,
    pub request_ids: RequestIds,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// A running gatehouse.
pub struct Proxy {
    shared: Arc<Shared>,
    https_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Bind the snapshot's listeners and start serving. Must run inside a tokio runtime.
    pub async fn start(snapshot: Snapshot) -> Result<Self, StartError> {
        let https = listener::bind_all(&snapshot.settings.https).await?;
        let http = listener::bind_all(&snapshot.settings.http).await?;
        let shared = Arc::new(Shared {
            upstream: upstream::client(&snapshot.settings),
            snapshot: ArcSwap::from_pointee(snapshot),
            request_ids: RequestIds::new(),
        });
        let https_addrs = listener::local_addrs(&https);
        let http_addrs = listener::local_addrs(&http);
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
        for addr in &https_addrs {
            tracing::info!(%addr, "listening for https");
        }
        for addr in &http_addrs {
            tracing::info!(%addr, "listening for http (redirects to https)");
        }
        Ok(Self {
            shared,
            https_addrs,
            http_addrs,
            accept_tasks,
        })
    }

    /// The bound https addresses (with real ports when the config asked for port 0).
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// Make `snapshot` the configuration for every request and handshake from now on.
    pub fn install(&self, snapshot: Snapshot) {
        self.shared.snapshot.store(Arc::new(snapshot));
    }

    /// The configuration currently in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Stop accepting connections. Connections already open are served to their end.
    pub fn stop_accepting(&self) {
        for task in &self.accept_tasks {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}
