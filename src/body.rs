//! Bodies that count the bytes passing through them: the client's request body on its way to
//! the app (counted, held to the environment's `max_request_body`, and to its
//! `timeouts.request_body` between two bytes), and the response body on
//! its way to the client (whose end records the request's metrics and access log line, in
//! [`crate::proxy::observe`]). Below both `proxy` and `upstream`, and generic over the inner body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::metrics::EnvironmentMetrics;

/// What happens with a body's byte count once the body is dropped (sent in full, or abandoned).
pub trait Settle {
    fn settle(self, bytes: u64);

    /// Bytes the body may carry; more ends it with [`BodyTooLarge`].
    fn limit(&self) -> u64 {
        u64::MAX
    }

    /// Called once when the body went over its limit.
    fn exceeded(&self) {}

    /// How long the body may wait for its sender without a byte; beyond, it ends with
    /// [`BodyStalled`].
    fn idle_limit(&self) -> Option<Duration> {
        None
    }

    /// Called once when the body waited past its idle limit.
    fn stalled(&self) {}
}

/// A request body that went over its environment's `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than this site accepts")]
pub struct BodyTooLarge;

/// A request body whose client sent nothing for the environment's `timeouts.request_body`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body byte within the timeout")]
pub struct BodyStalled;

/// What the request path asks of a request body that could end early (its byte limit, its idle
/// limit), and how it ended: 413 when it outgrew the limit, 408 when its client stalled. One
/// allocation, shared by the body and the request path, which reads it after a failed exchange;
/// kept out of the body itself, which every level of the request's state holds a copy of.
#[derive(Debug)]
pub struct BodyWatch {
    limit: u64,
    idle_limit: Option<Duration>,
    end: AtomicU8,
}

impl BodyWatch {
    const TOO_LARGE: u8 = 1;
    const STALLED: u8 = 2;

    pub fn new(limit: u64, idle_limit: Option<Duration>) -> Self {
        Self {
            limit,
            idle_limit,
            end: AtomicU8::new(0),
        }
    }

    pub fn too_large(&self) -> bool {
        self.end.load(Ordering::SeqCst) == Self::TOO_LARGE
    }

    pub fn stalled(&self) -> bool {
        self.end.load(Ordering::SeqCst) == Self::STALLED
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body: count what the client sent, and hold it to the environment's limits.
#[derive(Debug)]
pub struct ReceivedBytes {
    pub metrics: Arc<EnvironmentMetrics>,
    /// The limits, for a body that could outgrow `max_request_body` or stall; `None`: neither
    /// (no body, or a declared length already held to the limit, with no idle limit).
    pub watch: Option<Arc<BodyWatch>>,
}

impl Settle for ReceivedBytes {
    fn settle(self, received: u64) {
        self.metrics.bytes(received, 0);
    }

    fn limit(&self) -> u64 {
        self.watch.as_ref().map_or(u64::MAX, |watch| watch.limit)
    }

    fn exceeded(&self) {
        if let Some(watch) = &self.watch {
            watch.end.store(BodyWatch::TOO_LARGE, Ordering::SeqCst);
        }
    }

    fn idle_limit(&self) -> Option<Duration> {
        self.watch.as_ref().and_then(|watch| watch.idle_limit)
    }

    fn stalled(&self) {
        self.metrics.request_body_timed_out();
        if let Some(watch) = &self.watch {
            watch.end.store(BodyWatch::STALLED, Ordering::SeqCst);
        }
    }
}

/// A body that counts the data bytes passing through and settles the count when dropped.
#[derive(Debug)]
pub struct CountingBody<B, S: Settle> {
    inner: B,
    bytes: u64,
    settle: Option<S>,
    /// The idle limit's timer, made the first time the body has to wait (a body that arrives
    /// at once never needs one), and moved on with every byte.
    idle: Option<Pin<Box<Sleep>>>,
}

/// A request body counting what the client sent.
pub type CountedBody<B> = CountingBody<B, ReceivedBytes>;

impl<B, S: Settle> CountingBody<B, S> {
    pub fn new(inner: B, settle: S) -> Self {
        Self {
            inner,
            bytes: 0,
            settle: Some(settle),
            idle: None,
        }
    }
}

impl<B, S> Body for CountingBody<B, S>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    S: Settle + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return self.wait_within_idle_limit(cx),
            Poll::Ready(polled) => polled,
        };
        let Some(Ok(frame)) = polled else {
            return Poll::Ready(polled.map(|result| result.map_err(Into::into)));
        };
        if let Some(data) = frame.data_ref() {
            let this = &mut *self;
            if let (Some(idle), Some(limit)) = (this.idle.as_mut(), this.settle.as_ref().and_then(S::idle_limit)) {
                idle.as_mut().reset(Instant::now() + limit);
            }
            self.bytes += data.len() as u64;
            if let Some(settle) = &self.settle
                && self.bytes > settle.limit()
            {
                settle.exceeded();
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, S: Settle> CountingBody<B, S> {
    /// The inner body has nothing yet: wait, but no longer than the idle limit allows.
    fn wait_within_idle_limit(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(limit) = self.settle.as_ref().and_then(S::idle_limit) else {
            return Poll::Pending;
        };
        let idle = self.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if idle.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if let Some(settle) = &self.settle {
            settle.stalled();
        }
        Poll::Ready(Some(Err(Box::new(BodyStalled))))
    }
}

impl<B, S: Settle> Drop for CountingBody<B, S> {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.settle(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use http_body_util::BodyExt;

    use super::*;

    /// Records what it was settled with, and whether the limit was crossed.
    #[derive(Debug, Default, Clone)]
    struct Recorder {
        settled: Arc<AtomicU64>,
        settle_calls: Arc<AtomicU64>,
        exceeded: Arc<AtomicBool>,
        limit: Option<u64>,
    }

    impl Settle for Recorder {
        fn settle(self, bytes: u64) {
            self.settled.store(bytes, Ordering::SeqCst);
            self.settle_calls.fetch_add(1, Ordering::SeqCst);
        }

        fn limit(&self) -> u64 {
            self.limit.unwrap_or(u64::MAX)
        }

        fn exceeded(&self) {
            self.exceeded.store(true, Ordering::SeqCst);
        }
    }

    /// A body of data frames of the given sizes.
    struct Chunks(std::collections::VecDeque<usize>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|size| Ok(Frame::data(Bytes::from(vec![b'x'; size])))),
            )
        }
    }

    fn chunks(sizes: &[usize]) -> Chunks {
        Chunks(sizes.iter().copied().collect())
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_settles_once_with_every_data_byte() {
        let recorder = Recorder::default();
        let body = CountingBody::new(chunks(&[3, 5, 7]), recorder.clone());
        let collected = body.collect().await.map(|all| all.to_bytes().len());
        assert_eq!(collected.ok(), Some(15));
        assert_eq!(recorder.settled.load(Ordering::SeqCst), 15);
        assert_eq!(recorder.settle_calls.load(Ordering::SeqCst), 1);
        assert!(!recorder.exceeded.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn an_abandoned_body_settles_with_what_passed_so_far() {
        let recorder = Recorder::default();
        let mut body = CountingBody::new(chunks(&[4, 6, 8]), recorder.clone());
        let first = body.frame().await;
        assert!(matches!(first, Some(Ok(_))));
        drop(body);
        assert_eq!(recorder.settled.load(Ordering::SeqCst), 4);
        assert_eq!(recorder.settle_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_past_its_limit_ends_with_an_error_and_says_so() {
        let recorder = Recorder {
            limit: Some(10),
            ..Recorder::default()
        };
        let mut body = CountingBody::new(chunks(&[6, 4, 1, 100]), recorder.clone());
        // Exactly the limit passes.
        assert!(matches!(body.frame().await, Some(Ok(_))));
        assert!(matches!(body.frame().await, Some(Ok(_))));
        assert!(!recorder.exceeded.load(Ordering::SeqCst));
        // One byte more is refused, and the flag the request path reads (413) is set.
        let over = body.frame().await;
        let error = over.and_then(Result::err).map(|err| err.is::<BodyTooLarge>());
        assert_eq!(error, Some(true));
        assert!(recorder.exceeded.load(Ordering::SeqCst));
    }
}
