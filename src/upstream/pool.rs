//! Keep-alive connections to one instance: idle HTTP/1.1 connections (most recently used
//! first), and at most one shared HTTP/2 connection.
//!
//! The lock is held only to push or pop a handle, never across I/O.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use super::RequestBody;
use super::instance::Instance;

/// A connection ready to carry a request.
pub enum Sender {
    Http1(http1::SendRequest<RequestBody>),
    Http2(http2::SendRequest<RequestBody>),
}

/// An HTTP/1.1 connection whose exchange is under way: it goes back to its instance's pool once
/// it can carry another request (the app's response read to its end), or is closed.
pub struct PoolReturn {
    sender: http1::SendRequest<RequestBody>,
    max_idle: usize,
}

impl PoolReturn {
    pub fn new(sender: http1::SendRequest<RequestBody>, max_idle: usize) -> Self {
        Self { sender, max_idle }
    }

    /// Back to `instance`'s pool now if the connection is ready, which it usually is once the
    /// response body has been read; otherwise a small task waits for it to become ready (or to
    /// close). No task per request on the common path.
    pub fn hand_back(mut self, instance: &Arc<Instance>) {
        match self.sender.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => instance.pool.put_back(self.sender, self.max_idle),
            Poll::Ready(Err(_closed)) => {}
            Poll::Pending => {
                // Outside a runtime (the process is ending) the connection is simply dropped.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let instance = instance.clone();
                    runtime.spawn(async move {
                        if self.sender.ready().await.is_ok() {
                            instance.pool.put_back(self.sender, self.max_idle);
                        }
                    });
                }
            }
        }
    }
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    http2: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &lock(&self.idle).len()).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// A live pooled connection, if there is one: the shared HTTP/2 connection (unless the
    /// request needs HTTP/1.1), else the most recently used idle HTTP/1.1 connection.
    pub fn checkout(&self, http1_only: bool, idle_timeout: Duration) -> Option<Sender> {
        if !http1_only {
            let mut shared = lock(&self.http2);
            match shared.as_ref() {
                Some(sender) if !sender.is_closed() => return Some(Sender::Http2(sender.clone())),
                Some(_) => *shared = None,
                None => {}
            }
        }
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() && now.duration_since(entry.since) < idle_timeout {
                return Some(Sender::Http1(entry.sender));
            }
        }
        None
    }

    /// Keep an HTTP/1.1 connection that finished its exchange, unless the pool is full.
    pub fn put_back(&self, sender: http1::SendRequest<RequestBody>, max_idle: usize) {
        if !sender.is_ready() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Share a new HTTP/2 connection for the instance's next requests.
    pub fn share_http2(&self, sender: http2::SendRequest<RequestBody>) {
        *lock(&self.http2) = Some(sender);
    }

    /// Close idle connections older than `idle_timeout` (dropping the handle ends the
    /// connection), and forget closed ones.
    pub fn reap(&self, idle_timeout: Duration) {
        let now = Instant::now();
        lock(&self.idle).retain(|entry| !entry.sender.is_closed() && now.duration_since(entry.since) < idle_timeout);
        let mut shared = lock(&self.http2);
        if shared.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *shared = None;
        }
    }

    /// Close every idle connection (the instance was found unhealthy).
    pub fn clear(&self) {
        lock(&self.idle).clear();
        *lock(&self.http2) = None;
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }
}
