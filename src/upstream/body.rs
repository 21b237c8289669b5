//! The app's response body on its way to the client: held to the environment's idle time
//! between chunks and to its total time, and counted as an outstanding request on its instance
//! until it ends (for least-outstanding balancing).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::instance::Instance;
use super::pool::PoolReturn;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The app sent nothing for longer than the environment's idle timeout, or the exchange went
/// past its total time.
#[derive(Debug, thiserror::Error)]
#[error("the application's response stalled past the environment's timeout")]
pub struct BodyTimedOut;

/// Counts a request as in flight on its instance while it lives; when it ends (with the
/// response body), the HTTP/1.1 connection that carried the request goes back to the pool.
pub struct Lease {
    instance: Arc<Instance>,
    connection: Option<PoolReturn>,
}

impl Lease {
    pub fn new(instance: Arc<Instance>) -> Self {
        instance.request_started();
        Self {
            instance,
            connection: None,
        }
    }

    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Return `connection` to the pool when the exchange ends.
    pub fn return_on_end(&mut self, connection: PoolReturn) {
        self.connection = Some(connection);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Lease")
            .field("instance", &self.instance.addr)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.request_ended();
        if let Some(connection) = self.connection.take() {
            connection.hand_back(&self.instance);
        }
    }
}

/// When a response body must have made progress, and when it must have ended.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub idle: Option<Duration>,
    pub total: Option<Instant>,
}

#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    deadlines: Deadlines,
    last_progress: Instant,
    /// Armed the first time the body has to wait, then moved as needed.
    timer: Option<Pin<Box<Sleep>>>,
    _lease: Lease,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, deadlines: Deadlines, lease: Lease) -> Self {
        Self {
            inner,
            deadlines,
            last_progress: Instant::now(),
            timer: None,
            _lease: lease,
        }
    }

    /// The moment the body times out, given its last progress.
    fn due(&self) -> Option<Instant> {
        let idle = self.deadlines.idle.map(|idle| self.last_progress + idle);
        match (idle, self.deadlines.total) {
            (Some(idle), Some(total)) => Some(idle.min(total)),
            (idle, total) => idle.or(total),
        }
    }

    /// Whether the body has timed out; if not, the timer is set to wake at the next deadline.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(due) = self.due() else { return false };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if self.deadlines.idle.is_some() {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending if self.poll_timeout(cx) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
