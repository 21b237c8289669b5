//! Bodies that count the bytes passing through them: the client's request body on its way to
//! the app (counted, and held to the environment's `max_request_body`), and the response body on
//! its way to the client (whose end records the request's metrics and access log line, in
//! [`crate::proxy::observe`]). Below both `proxy` and `upstream`, and generic over the inner body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

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
}

/// A request body that went over its environment's `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than this site accepts")]
pub struct BodyTooLarge;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body: count what the client sent, and hold it to the environment's limit.
#[derive(Debug)]
pub struct ReceivedBytes {
    pub metrics: Arc<EnvironmentMetrics>,
    pub limit: u64,
    /// Set when the body went over `limit`, for the request path to answer 413.
    pub exceeded: Option<Arc<AtomicBool>>,
}

impl Settle for ReceivedBytes {
    fn settle(self, received: u64) {
        self.metrics.bytes(received, 0);
    }

    fn limit(&self) -> u64 {
        self.limit
    }

    fn exceeded(&self) {
        if let Some(flag) = &self.exceeded {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// A body that counts the data bytes passing through and settles the count when dropped.
#[derive(Debug)]
pub struct CountingBody<B, S: Settle> {
    inner: B,
    bytes: u64,
    settle: Option<S>,
}

/// A request body counting what the client sent.
pub type CountedBody<B> = CountingBody<B, ReceivedBytes>;

impl<B, S: Settle> CountingBody<B, S> {
    pub fn new(inner: B, settle: S) -> Self {
        Self {
            inner,
            bytes: 0,
            settle: Some(settle),
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
            Poll::Pending => return Poll::Pending,
            Poll::Ready(polled) => polled,
        };
        let Some(Ok(frame)) = polled else {
            return Poll::Ready(polled.map(|result| result.map_err(Into::into)));
        };
        if let Some(data) = frame.data_ref() {
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
    use std::sync::atomic::AtomicU64;

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
