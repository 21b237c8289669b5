//! The public listeners (https and plain http) as a set that a reload can change: addresses the
//! new configuration adds are bound before it is installed (a port that cannot be bound fails
//! the reload, not the process), addresses it drops are closed after. Connections already
//! accepted on a closed listener are served to their end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use super::{Shared, StartError, listener, redirect, tls};
use crate::snapshot::Settings;

/// Pending connections the kernel queues per listener.
const BACKLOG: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Https,
    Http,
}

struct Bound {
    local: SocketAddr,
    task: JoinHandle<()>,
}

/// Listeners bound for a configuration that is not installed yet.
pub struct Prepared(Vec<(Kind, SocketAddr, TcpListener)>);

#[derive(Default)]
pub struct ListenerSet {
    /// Keyed by kind and configured address (which may have port 0).
    bound: BTreeMap<(Kind, SocketAddr), Bound>,
    stopped: bool,
}

/// Bind one address, with `SO_REUSEADDR` so that a restart is not refused by connections of the
/// previous process lingering in TIME_WAIT. Needs a tokio runtime context.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    })();
    bound.map_err(|source| StartError::Bind { addr, source })
}

fn wanted(settings: &Settings) -> impl Iterator<Item = (Kind, SocketAddr)> + '_ {
    let https = settings.https.iter().map(|addr| (Kind::Https, *addr));
    https.chain(settings.http.iter().map(|addr| (Kind::Http, *addr)))
}

impl ListenerSet {
    /// Bind every listener `settings` lists that is not bound yet. Nothing changes on error.
    pub fn prepare(&self, settings: &Settings) -> Result<Prepared, StartError> {
        let mut fresh = Vec::new();
        for (kind, addr) in wanted(settings) {
            if !self.stopped && !self.bound.contains_key(&(kind, addr)) {
                fresh.push((kind, addr, bind(addr)?));
            }
        }
        Ok(Prepared(fresh))
    }

    /// Start serving the prepared listeners and close those `settings` no longer lists.
    pub fn commit(&mut self, prepared: Prepared, settings: &Settings, shared: &Arc<Shared>) {
        for (kind, addr, socket) in prepared.0 {
            let local = socket.local_addr().unwrap_or(addr);
            let task = match kind {
                Kind::Https => tokio::spawn(listener::accept_loop(socket, shared.clone(), tls::serve)),
                Kind::Http => tokio::spawn(listener::accept_loop(socket, shared.clone(), redirect::serve)),
            };
            match kind {
                Kind::Https => tracing::info!(addr = %local, "listening for https"),
                Kind::Http => tracing::info!(addr = %local, "listening for http (redirects to https)"),
            }
            self.bound.insert((kind, addr), Bound { local, task });
        }
        let keep: Vec<(Kind, SocketAddr)> = wanted(settings).collect();
        self.bound.retain(|key, bound| {
            let kept = keep.contains(key);
            if !kept {
                tracing::info!(addr = %bound.local, "listener closed by the new configuration");
                bound.task.abort();
            }
            kept
        });
    }

    fn local(&self, kind: Kind) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, bound)| bound.local)
            .collect()
    }

    pub fn https(&self) -> Vec<SocketAddr> {
        self.local(Kind::Https)
    }

    pub fn http(&self) -> Vec<SocketAddr> {
        self.local(Kind::Http)
    }

    /// Close every listener, for good.
    pub fn stop(&mut self) {
        self.stopped = true;
        for bound in self.bound.values() {
            bound.task.abort();
        }
    }

    /// Whether every listener's socket has been closed.
    pub fn all_closed(&self) -> bool {
        self.bound.values().all(|bound| bound.task.is_finished())
    }
}
