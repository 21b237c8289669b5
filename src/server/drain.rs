//! Graceful shutdown of open connections. When the proxy stops, every connection is told to
//! finish: HTTP/1.1 connections close once their request in flight is answered (idle ones at
//! once), HTTP/2 connections send GOAWAY and finish their open streams. The proxy waits for them
//! up to the configured drain time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use tokio::sync::Notify;

use super::Shared;

/// A connection future that can be asked to finish gracefully.
pub trait GracefulConnection: Future {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

/// Counts a connection as open for as long as it lives.
pub struct Open<'a>(&'a Shared);

impl<'a> Open<'a> {
    pub fn count(shared: &'a Shared) -> Self {
        shared.open_connections.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serve `connection` to its end, finishing it gracefully if the proxy starts draining or
/// `retire` is woken (the connection served its share of requests).
///
/// The connection is pinned by the caller: taken by value, it would be stored twice in this
/// future (once as the argument, once pinned), and every idle connection would carry the copy.
pub async fn serve_until_drained<C: GracefulConnection + ?Sized>(
    shared: &Shared,
    mut connection: Pin<&mut C>,
    retire: Option<&Notify>,
) -> C::Output {
    let _open = Open::count(shared);
    let stop = std::pin::pin!(stop_signal(shared, retire));
    if let Some(output) = until_stopped(connection.as_mut(), stop).await {
        return output;
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// Ready once the proxy starts draining, or `retire` is woken.
pub fn stop_signal<'a>(shared: &'a Shared, retire: Option<&'a Notify>) -> impl Future<Output = ()> + 'a {
    let mut draining = shared.draining.subscribe();
    async move {
        let retired = async {
            match retire {
                Some(retire) => retire.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = draining.wait_for(|draining| *draining) => {}
            () = retired => {}
        }
    }
}

/// Run `work` to its end (`Some` of its output) unless `stop` is ready first (`None`).
///
/// `work` is polled at every wake of the task; `stop` only when it woke the task itself. A
/// connection's task wakes several times per request, and polling the drain signal and the
/// retire notification at each wake (as `tokio::select!` does) takes their waiter locks every
/// time, about 2% of a small keep-alive request. `stop` is therefore polled with a waker of its
/// own, which marks that it fired before waking the task.
///
/// Both futures are pinned by the caller and borrowed here: this future is part of every open
/// connection's state, and holding `stop` by value would store it twice (as the argument, and
/// pinned).
pub fn until_stopped<'a, W: Future + ?Sized, S: Future<Output = ()>>(
    work: Pin<&'a mut W>,
    stop: Pin<&'a mut S>,
) -> UntilStopped<'a, W, S> {
    let relay = Arc::new(Relay {
        // Poll `stop` at the first poll, which registers its waker.
        fired: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    UntilStopped {
        work,
        stop,
        relay_waker: Waker::from(relay.clone()),
        relay,
    }
}

/// The future of [`until_stopped`].
pub struct UntilStopped<'a, W: ?Sized, S> {
    work: Pin<&'a mut W>,
    stop: Pin<&'a mut S>,
    relay: Arc<Relay>,
    relay_waker: Waker,
}

impl<W: Future + ?Sized, S: Future<Output = ()>> Future for UntilStopped<'_, W, S> {
    type Output = Option<W::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        // Registered before `fired` is read: a wake in between finds this waker and wakes the
        // task again, so no signal is lost.
        self.relay.task.register(cx.waker());
        if self.relay.fired.swap(false, Ordering::AcqRel) {
            let this = &mut *self;
            if this
                .stop
                .as_mut()
                .poll(&mut Context::from_waker(&this.relay_waker))
                .is_ready()
            {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    }
}

/// The waker `stop` is polled with in [`until_stopped`].
struct Relay {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn work_that_ends_gives_its_output() {
        let work = std::pin::pin!(async { 7 });
        let stop = std::pin::pin!(std::future::pending());
        let ended = tokio::time::timeout(WAIT, until_stopped(work, stop)).await;
        assert_eq!(ended, Ok(Some(7)));
    }

    #[tokio::test]
    async fn a_stop_signal_after_the_first_poll_is_noticed() {
        let stop = Arc::new(Notify::new());
        let signal = stop.clone();
        tokio::spawn(async move {
            // Let `until_stopped` poll (and register) first, so the relay waker is what fires.
            tokio::time::sleep(Duration::from_millis(20)).await;
            signal.notify_one();
        });
        let work = std::pin::pin!(std::future::pending::<()>());
        let stopped = std::pin::pin!(async { stop.notified().await });
        let ended = tokio::time::timeout(WAIT, until_stopped(work, stopped)).await;
        assert_eq!(ended, Ok(None));
    }

    /// Work that wakes its task over and over (as a busy connection does) must not hide the
    /// stop signal: it is noticed at the first poll after it fired, whoever woke the task.
    #[tokio::test]
    async fn a_stop_signal_is_noticed_while_the_work_keeps_waking_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let busy = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = polls.clone();
        std::thread::spawn(move || {
            // Fire from another thread once the work has been polled a good many times (or after
            // the test's own wait, so that this thread never outlives a failed test spinning).
            let deadline = std::time::Instant::now() + WAIT;
            while watcher.load(Ordering::Relaxed) < 1_000 && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            let _ = stop_tx.send(());
        });
        let work = std::pin::pin!(busy);
        let stop = std::pin::pin!(async {
            let _ = stop_rx.await;
        });
        let ended = tokio::time::timeout(WAIT, until_stopped(work, stop)).await;
        assert_eq!(ended, Ok(None));
        assert!(polls.load(Ordering::Relaxed) >= 1_000);
    }
}
