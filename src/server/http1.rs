//! HTTP/1.1 on a TLS connection, with idle keep-alive connections parked.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB header write buffer and its connection state for
//! as long as its connection lives, and no setting releases them between requests; every idle
//! keep-alive client would cost that (nginx frees its request buffers when a connection goes
//! idle). So a hyper connection serves requests while they come, and once the connection is
//! idle gatehouse asks hyper to stop there, takes the TLS stream back and waits for the client's
//! next bytes holding nothing else. The next request gets a fresh hyper connection, started
//! with whatever hyper had read ahead.
//!
//! Parking must never lose or misread a byte, so hyper is stopped only when it is certainly
//! between messages: every request it took has its response sent in full and flushed, none of
//! them had a body (hyper may give up reading a body nobody consumes, which leaves the stream
//! inside it), and hyper finishes at once when asked. Anything else runs to hyper's own end,
//! exactly as an unparked connection would.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Shared;
use super::drain::{Open, stop_signal, until_stopped};
use super::http::{Service, service};
use super::tls::ClientTls;
use crate::connection::ConnectionInfo;

/// Serve HTTP/1.1 on `tls` until the client leaves, the connection retires or the proxy drains.
pub async fn serve(shared: &Arc<Shared>, connection: &Arc<ConnectionInfo>, tls: ClientTls) {
    let activity = Arc::new(Activity::default());
    let mut client = ClientStream {
        tls,
        read_ahead: Bytes::new(),
        activity: activity.clone(),
    };
    loop {
        if client.read_ahead.is_empty() && !next_request_bytes(shared, connection, &mut client.tls).await {
            return;
        }
        // Boxed: the task's size is that of its largest phase, and what an idle connection
        // keeps is the waiting phase, a few hundred bytes besides the TLS stream.
        client = match Box::pin(serve_requests(shared, connection, client, &activity)).await {
            Some(parked) => parked,
            None => return,
        };
    }
}

/// Wait, holding only the TLS stream, for the first bytes of the client's next request (bytes
/// already decrypted count: they stay in rustls for hyper to read). Bounded by the time a client
/// has for a request head, on a fresh connection and between keep-alive requests alike. False
/// when the client left or sent nothing in time, or the connection is to finish.
async fn next_request_bytes(shared: &Shared, connection: &ConnectionInfo, tls: &mut ClientTls) -> bool {
    let header_timeout = shared.installed().snapshot.settings.request_header_timeout;
    // The drain and retire waits spelled out rather than `drain::stop_signal`: this is the state
    // every idle connection keeps, and the nested future would add 48 bytes to it.
    let mut draining = shared.draining.subscribe();
    tokio::select! {
        biased;
        _ = draining.wait_for(|draining| *draining) => false,
        () = connection.retire.notified() => false,
        read = tokio::time::timeout(header_timeout, tls.fill_buf()) => {
            matches!(read, Ok(Ok(first)) if !first.is_empty())
        }
    }
}

type Connection = http1::Connection<TokioIo<ClientStream>, Service>;

/// How a hyper connection's run ended.
enum Ended {
    /// Idle between messages and stopped there: the stream can carry the next request.
    Parked,
    /// hyper finished on its own (the client closed, `Connection: close`, an upgrade, an error).
    Finished(hyper::Result<()>),
    /// The proxy drains or the connection served its share: finish gracefully, then close.
    Stopping,
}

/// Serve requests on `client` with a fresh hyper connection until it is idle (the stream comes
/// back, parked) or over (`None`).
async fn serve_requests(
    shared: &Arc<Shared>,
    connection: &Arc<ConnectionInfo>,
    client: ClientStream,
    activity: &Arc<Activity>,
) -> Option<ClientStream> {
    activity.restart();
    let _open = Open::count(shared);
    // Boxed: the idle task then holds a pointer, not hyper's state.
    let mut http = Box::new(http1_connection(shared, connection, client, activity));
    let ended = {
        let serving = std::pin::pin!(until_idle(&mut http, activity));
        let stop = std::pin::pin!(stop_signal(shared, Some(&connection.retire)));
        until_stopped(serving, stop).await.unwrap_or(Ended::Stopping)
    };
    let finished = match ended {
        Ended::Parked => return Some(take_back(*http)),
        Ended::Finished(finished) => finished,
        Ended::Stopping => {
            Pin::new(&mut *http).graceful_shutdown();
            poll_fn(|cx| http.poll_without_shutdown(cx)).await
        }
    };
    // The client may still be sending when hyper refused its head (431, 400), or when a request
    // body was left unread (an early answer): then the connection closes the lingering way.
    let linger = activity.took_body() || finished.as_ref().is_err_and(hyper::Error::is_parse);
    match finished {
        Ok(()) => close(shared, connection, take_back(*http), linger).await,
        Err(err) => {
            tracing::debug!(error = %err, "connection ended with an error");
            if linger {
                crate::linger::close_stream(&mut take_back(*http), crate::linger::BOUNDS).await;
            }
        }
    }
    None
}

/// The client's stream from a finished hyper connection, with the bytes hyper had read past
/// its last message (the start of the next request, or of an upgraded protocol) put back.
fn take_back(http: Connection) -> ClientStream {
    let parts = http.into_parts();
    let mut client = parts.io.into_inner();
    client.read_ahead = parts.read_buf;
    client
}

/// How long a connection stays idle before hyper is stopped. Parking at once would rebuild
/// hyper's connection between every two requests of a busy client (a few percent of the CPU
/// per request); a client that has been quiet this long is most likely thinking, reading or
/// gone, and its buffers are better returned.
const IDLE_BEFORE_PARKING: Duration = Duration::from_millis(20);

/// Run hyper until it finishes on its own, or until it has been idle for
/// [`IDLE_BEFORE_PARKING`] and agrees to stop there.
///
/// One timer per connection, reset at most once per period (not per request): when it fires,
/// a connection that took requests in the meantime is given another period.
async fn until_idle(http: &mut Connection, activity: &Activity) -> Ended {
    let mut quiet = std::pin::pin!(tokio::time::sleep(IDLE_BEFORE_PARKING));
    // Requests taken when the timer was last set; `None` while it is not set.
    let mut set_at: Option<u32> = None;
    poll_fn(|cx| {
        if let Poll::Ready(finished) = http.poll_without_shutdown(cx) {
            return Poll::Ready(Ended::Finished(finished));
        }
        if !activity.idle() {
            return Poll::Pending;
        }
        let requests = activity.requests.load(Ordering::Relaxed);
        // Set the timer on the first idle moment; when it fires after the connection took more
        // requests, give it another period. In between it keeps running, untouched.
        if set_at != Some(requests) && (set_at.is_none() || quiet.as_mut().poll(cx).is_ready()) {
            quiet.as_mut().reset(tokio::time::Instant::now() + IDLE_BEFORE_PARKING);
            set_at = Some(requests);
        }
        if quiet.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut *http).graceful_shutdown();
        // An idle hyper connection closes at once. If it does not, it was busy after all
        // (it now finishes its message and ends): it is never reused, whatever it returns.
        match http.poll_without_shutdown(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ended::Parked),
            Poll::Ready(Err(err)) => Poll::Ready(Ended::Finished(Err(err))),
            Poll::Pending => {
                activity.refuse_parking();
                Poll::Pending
            }
        }
    })
    .await
}

/// hyper finished the connection: hand the stream to the upgrade waiting for it (the app
/// answered 101), or close it with a TLS close_notify as hyper would have, lingering when the
/// client may still be sending ([`crate::linger`]).
async fn close(shared: &Shared, connection: &ConnectionInfo, client: ClientStream, linger: bool) {
    let Err(mut client) = connection.upgrade.hand_over(Box::new(client)) else {
        return;
    };
    if linger {
        return crate::linger::close_stream(&mut client, crate::linger::BOUNDS).await;
    }
    let header_timeout = shared.installed().snapshot.settings.request_header_timeout;
    let _ = tokio::time::timeout(header_timeout, client.shutdown()).await;
}

/// hyper's HTTP/1.1 connection with the limits of the current configuration. Upgrades are
/// handed over by [`close`], not by hyper.
fn http1_connection(
    shared: &Arc<Shared>,
    connection: &Arc<ConnectionInfo>,
    client: ClientStream,
    activity: &Arc<Activity>,
) -> Connection {
    let settings = &shared.installed().snapshot.settings;
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_header_timeout)
        // The head limit is enforced exactly on the parsed request (`proxy::admission`); hyper's
        // own bounds only stop a head too large to be worth parsing (431 from hyper).
        .max_buf_size(super::http::raw_head_bound(settings.max_request_header_bytes))
        .max_headers(settings.max_request_headers)
        .serve_connection(
            TokioIo::new(client),
            service(shared, connection.clone(), Some(activity.clone())),
        )
}

/// What the current hyper connection is doing, as far as parking needs to know.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests the current hyper connection has taken.
    requests: AtomicU32,
    /// Responses whose body hyper has not yet sent in full (or dropped).
    responses_open: AtomicU32,
    /// A request had a body, or hyper did not stop when asked: run this hyper connection to
    /// its end.
    unparkable: AtomicBool,
    /// Everything hyper wrote has been flushed to the socket.
    flushed: AtomicBool,
}

impl Activity {
    fn restart(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.responses_open.store(0, Ordering::Relaxed);
        self.unparkable.store(false, Ordering::Relaxed);
        self.flushed.store(true, Ordering::Relaxed);
    }

    /// hyper took a request; the response is open until the returned guard is dropped.
    pub fn request_started(self: &Arc<Self>, has_body: bool) -> ResponseOpen {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.responses_open.fetch_add(1, Ordering::Relaxed);
        if has_body {
            self.unparkable.store(true, Ordering::Relaxed);
        }
        ResponseOpen(self.clone())
    }

    /// A request on this hyper connection had a body (which may have been left unread), or hyper
    /// was inside a message when asked to stop: the client may still be sending.
    fn took_body(&self) -> bool {
        self.unparkable.load(Ordering::Relaxed)
    }

    fn refuse_parking(&self) {
        self.unparkable.store(true, Ordering::Relaxed);
    }

    /// Between messages: at least one request answered, every response sent and flushed, and
    /// nothing that may have left the stream inside a message.
    fn idle(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
            && self.responses_open.load(Ordering::Relaxed) == 0
            && !self.unparkable.load(Ordering::Relaxed)
            && self.flushed.load(Ordering::Relaxed)
    }
}

/// Held by a response body until hyper has sent it in full or dropped it.
#[derive(Debug)]
pub struct ResponseOpen(Arc<Activity>);

impl Drop for ResponseOpen {
    fn drop(&mut self) {
        self.0.responses_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client's TLS stream as hyper sees it: the bytes hyper had read ahead before it was parked
/// come first, and writes and flushes are tracked for [`Activity::idle`].
pub struct ClientStream {
    tls: ClientTls,
    read_ahead: Bytes,
    activity: Arc<Activity>,
}

impl AsyncRead for ClientStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.read_ahead.is_empty() {
            return Pin::new(&mut self.tls).poll_read(cx, buf);
        }
        let count = self.read_ahead.len().min(buf.remaining());
        buf.put_slice(&self.read_ahead[..count]);
        self.read_ahead.advance(count);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.activity.flushed.store(false, Ordering::Relaxed);
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.activity.flushed.store(false, Ordering::Relaxed);
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.tls).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.activity.flushed.store(true, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
