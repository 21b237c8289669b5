//! Lingering: what a client still sends after gatehouse answered early (413, 431, 403, 429 on a
//! request with a body) is read and dropped, within bounds, so that the answer reaches it.
//!
//! Closing a connection (or resetting a stream) while the client is still sending loses the
//! answer: the kernel answers the unread bytes with a TCP reset, and the client's stack then
//! drops the response it had not read yet; many HTTP/2 clients stop at a stream reset in the same
//! way. nginx calls the cure lingering close. gatehouse lingers at two levels:
//! - a refused request's body is read and dropped ([`discard_body`]); when it ends in time, an
//!   HTTP/1.1 connection stays usable and an HTTP/2 stream ends without a reset;
//! - an HTTP/1.1 connection that ends while the client may still be sending (hyper refused a
//!   head, or a request body was left unread) sends its TLS close_notify and FIN, then reads and
//!   drops until the client closes ([`close_stream`]).
//!
//! Both stop at the [`BOUNDS`]: 4 MiB read, 5 s in all, or 2 s without a byte, whichever comes
//! first; only then is the stream reset (HTTP/2 with `NO_ERROR` once the response is complete,
//! RFC 9113 section 8.1) or the connection closed.

use std::time::Duration;

use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How long lingering goes on, per refused request or per closing connection.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes read and dropped at most.
    pub max_bytes: u64,
    /// Time spent at most.
    pub max_time: Duration,
    /// Time without a byte from the client after which lingering stops.
    pub max_idle: Duration,
}

/// What gatehouse allows: about what a client uploads in a second on a fast link, and nginx's
/// `lingering_timeout` (5 s) as the whole.
pub const BOUNDS: Bounds = Bounds {
    max_bytes: 4 * 1024 * 1024,
    max_time: Duration::from_secs(5),
    max_idle: Duration::from_secs(2),
};

/// Read and drop `body` within `bounds`. Call it on its own task, beside the answer: the
/// response goes out while the body drains.
pub async fn discard_body<B: Body + Unpin>(mut body: B, bounds: Bounds) {
    let deadline = Instant::now() + bounds.max_time;
    let mut dropped: u64 = 0;
    while dropped <= bounds.max_bytes {
        let wait = bounds.max_idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    dropped += bytes::Buf::remaining(data) as u64;
                }
            }
            // The end of the body, an error, or a client that went quiet.
            Ok(None | Some(Err(_))) | Err(_) => return,
        }
    }
}

/// Close `stream` the lingering way: send the end of the stream (TLS close_notify and FIN), then
/// read and drop within `bounds` until the client closes its side.
pub async fn close_stream<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, bounds: Bounds) {
    let deadline = Instant::now() + bounds.max_time;
    if tokio::time::timeout(bounds.max_idle, stream.shutdown()).await.is_err() {
        return;
    }
    // Allocated only here, at the end of a connection that needs it.
    let mut sink = vec![0u8; 16 * 1024];
    let mut dropped: u64 = 0;
    while dropped <= bounds.max_bytes {
        let wait = bounds.max_idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, stream.read(&mut sink)).await {
            Ok(Ok(read)) if read > 0 => dropped += read as u64,
            // The client closed, an error, or a client that went quiet.
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;

    use super::*;

    /// Small bounds, so that each is reached in a test within a second.
    const SMALL: Bounds = Bounds {
        max_bytes: 64 * 1024,
        max_time: Duration::from_millis(600),
        max_idle: Duration::from_millis(200),
    };

    type Chunk = Result<Frame<Bytes>, std::io::Error>;

    /// A body fed through a channel, and the count of bytes taken from it.
    fn channel_body() -> (
        mpsc::Sender<Chunk>,
        StreamBody<impl futures_util::Stream<Item = Chunk> + Unpin>,
        Arc<AtomicU64>,
    ) {
        let (sender, mut receiver) = mpsc::channel::<Chunk>(1);
        let taken = Arc::new(AtomicU64::new(0));
        let counter = taken.clone();
        let stream = Box::pin(futures_util::stream::poll_fn(move |cx| {
            let next = receiver.poll_recv(cx);
            if let std::task::Poll::Ready(Some(Ok(frame))) = &next
                && let Some(data) = frame.data_ref()
            {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            next
        }));
        (sender, StreamBody::new(stream), taken)
    }

    fn chunk(size: usize) -> Chunk {
        Ok(Frame::data(Bytes::from(vec![0u8; size])))
    }

    #[tokio::test]
    async fn a_body_within_the_bounds_is_read_to_its_end() {
        let (sender, body, taken) = channel_body();
        let draining = tokio::spawn(discard_body(body, SMALL));
        for _ in 0..3 {
            sender.send(chunk(1000)).await.ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(sender);
        draining.await.ok();
        assert_eq!(taken.load(Ordering::Relaxed), 3000);
    }

    #[tokio::test]
    async fn discarding_stops_past_the_byte_bound() {
        let (sender, body, taken) = channel_body();
        let draining = tokio::spawn(discard_body(body, SMALL));
        let feeding = tokio::spawn(async move { while sender.send(chunk(4096)).await.is_ok() {} });
        draining.await.ok();
        feeding.await.ok();
        let total = taken.load(Ordering::Relaxed);
        assert!(
            total > SMALL.max_bytes && total <= SMALL.max_bytes + 2 * 4096,
            "{total}"
        );
    }

    #[tokio::test]
    async fn discarding_stops_at_the_time_bound_and_when_the_client_goes_quiet() {
        // A byte every 100 ms never trips the idle bound; the time bound ends it.
        let (sender, body, _taken) = channel_body();
        let started = Instant::now();
        let draining = tokio::spawn(discard_body(body, SMALL));
        let feeding = tokio::spawn(async move {
            while sender.send(chunk(1)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        draining.await.ok();
        let elapsed = started.elapsed();
        assert!(elapsed >= SMALL.max_time && elapsed < SMALL.max_time * 3, "{elapsed:?}");
        feeding.abort();

        // Silence: given up after the idle bound.
        let (_sender, body, _taken) = channel_body();
        let started = Instant::now();
        discard_body(body, SMALL).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= SMALL.max_idle && elapsed < SMALL.max_time, "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_closing_stream_ends_its_side_first_then_reads_what_the_peer_still_sends() {
        let (mut ours, mut theirs) = tokio::io::duplex(8 * 1024);
        let peer = tokio::spawn(async move {
            // More than the pipe holds: this completes only if the closing side keeps reading.
            theirs.write_all(&[1u8; 40_000]).await?;
            let mut after_close = Vec::new();
            theirs.read_to_end(&mut after_close).await?;
            Ok::<usize, std::io::Error>(after_close.len())
        });
        close_stream(&mut ours, SMALL).await;
        let after_close = tokio::time::timeout(Duration::from_secs(5), peer).await;
        assert!(
            matches!(after_close, Ok(Ok(Ok(0)))),
            "the peer could not finish writing, or read something after the close: {after_close:?}"
        );
    }
}
