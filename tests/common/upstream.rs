//! A real HTTP/1.1 app instance for tests. What it does depends on the path:
//!
//! * `/upload`: reads the whole body and answers `received <bytes> <fnv1a-hash>`;
//! * `/download/<bytes>`: streams that many bytes of a fixed pattern;
//! * `/gated-download/<bytes>`: streams the first MiB, then waits for `release_download`;
//! * `/slow`: answers after 5 s;
//! * `/slow-reader`: reads the request body slowly (about 1 MiB/s);
//! * `/trailers`: a chunked body followed by a `x-checksum` trailer;
//! * `/ws`: accepts a WebSocket upgrade and echoes bytes;
//! * `/healthz`: 200, or 503 after `set_healthy(false)`;
//! * `/status/<code>`: that status;
//! * `/stall-body`: a response head and the first bytes of its body, then nothing;
//! * anything else: a dump of the request as it arrived (`upstream`, method, path, headers, and
//!   `x-seen-version` / `x-seen-client-certificate` lines).
//!
//! [`Upstream::start_tls`] serves the same over TLS (HTTP/2 or HTTP/1.1 by ALPN); [`Upstream::kill`]
//! stops it abruptly, as a crashed app instance stops.
//!
//! Every response carries `x-upstream: <name>` and hop-by-hop headers that must not reach clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Body = BoxBody<Bytes, Infallible>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    requests: AtomicU64,
    upload_bytes_seen: AtomicU64,
    download_gate: Notify,
    healthy: AtomicBool,
    /// Set by `kill`: every connection is dropped at once.
    killed: tokio::sync::watch::Sender<bool>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            upload_bytes_seen: AtomicU64::new(0),
            download_gate: Notify::new(),
            healthy: AtomicBool::new(true),
            killed: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(listener, name, None)
    }

    /// The same app over TLS, with the given server config (its ALPN decides HTTP/2).
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(listener, name, Some(tls))
    }

    /// Serve on an already bound listener.
    pub fn serve_on(listener: TcpListener, name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, name.to_owned(), state.clone(), tls));
        Self {
            addr,
            name: name.to_owned(),
            state,
            task,
        }
    }

    /// Stop abruptly: the listener closes and every open connection is dropped mid-whatever.
    pub fn kill(&self) {
        self.task.abort();
        self.state.killed.send_replace(true);
    }

    /// What `/healthz` answers from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Bytes of `/upload` bodies received so far.
    pub fn upload_bytes_seen(&self) -> u64 {
        self.state.upload_bytes_seen.load(Ordering::SeqCst)
    }

    /// Let a `/gated-download` continue past its first MiB.
    pub fn release_download(&self) {
        self.state.download_gate.notify_one();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, name: String, state: Arc<State>, tls: Option<Arc<rustls::ServerConfig>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let name = name.clone();
        let state = state.clone();
        let tls = tls.clone();
        let mut killed = state.killed.subscribe();
        tokio::spawn(async move {
            let serving = async {
                match tls {
                    None => {
                        let seen = Seen::default();
                        let service = service_fn(move |request| answer(name.clone(), state.clone(), seen, request));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                    Some(tls) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await else {
                            return;
                        };
                        let seen = Seen {
                            client_certificate: stream.get_ref().1.peer_certificates().is_some(),
                        };
                        let service = service_fn(move |request| answer(name.clone(), state.clone(), seen, request));
                        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    }
                }
            };
            tokio::select! {
                _ = serving => {}
                _ = killed.wait_for(|killed| *killed) => {}
            }
        });
    }
}

/// What the app knows about the connection a request came on.
#[derive(Clone, Copy, Default)]
struct Seen {
    client_certificate: bool,
}

async fn answer(
    name: String,
    state: Arc<State>,
    seen: Seen,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(respond(&name, &state, seen, request).await)
}

async fn respond(name: &str, state: &Arc<State>, seen: Seen, request: Request<Incoming>) -> Response<Body> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path().to_owned();
    let mut response = if path == "/upload" {
        upload(state, request).await
    } else if let Some(size) = path.strip_prefix("/download/") {
        download(size.parse().unwrap_or(0), None)
    } else if let Some(size) = path.strip_prefix("/gated-download/") {
        download(size.parse().unwrap_or(0), Some(state.clone()))
    } else if path == "/slow-reader" {
        slow_reader(request).await
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text("slow answer".to_owned())
    } else if path == "/trailers" {
        trailers()
    } else if path == "/ws" {
        websocket(request)
    } else if path == "/healthz" {
        let healthy = state.healthy.load(Ordering::SeqCst);
        let mut response = text(if healthy { "ok" } else { "down" }.to_owned());
        if !healthy {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut response = text(format!("status {code}"));
        *response.status_mut() = code.parse().unwrap_or(StatusCode::OK);
        response
    } else if path == "/stall-body" {
        let first = futures_util::stream::once(async { Ok(Frame::data(Bytes::from_static(b"first bytes"))) });
        let stalled = first.chain(futures_util::stream::pending());
        Response::new(BodyExt::boxed(StreamBody::new(stalled)))
    } else {
        let mut dump = dump(name, &request);
        dump.push_str(&format!(
            "x-seen-version: {:?}\nx-seen-client-certificate: {}\n",
            request.version(),
            seen.client_certificate
        ));
        text(dump)
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("x-upstream", HeaderValue::from_str(name).unwrap());
    if !switching {
        headers.insert("connection", HeaderValue::from_static("x-app-private"));
        headers.insert("x-app-private", HeaderValue::from_static("secret"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    }
    response
}

fn text(body: String) -> Response<Body> {
    Response::new(http_body_util::Full::new(Bytes::from(body)).boxed())
}

fn dump(name: &str, request: &Request<Incoming>) -> String {
    let mut out = format!("upstream: {name}\n{} {}\n", request.method(), request.uri());
    for (header, value) in request.headers() {
        out.push_str(&format!("{header}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    out
}

/// FNV-1a, to check that bytes arrived intact and in order.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3))
}

pub const FNV_START: u64 = 0xcbf29ce484222325;

/// The byte at `offset` of every generated stream.
pub fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

async fn upload(state: &Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let mut body = request.into_body();
    let mut total = 0u64;
    let mut hash = FNV_START;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
            hash = fnv1a(hash, data);
            state.upload_bytes_seen.fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    }
    text(format!("received {total} {hash:x}"))
}

/// Reads the request body at about 1 MiB per second, then answers with what it read.
async fn slow_reader(request: Request<Incoming>) -> Response<Body> {
    let mut body = request.into_body();
    let mut total = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        total += frame.data_ref().map_or(0, |data| data.len() as u64);
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    text(format!("read {total}"))
}

fn download(size: u64, gate: Option<Arc<State>>) -> Response<Body> {
    const CHUNK: u64 = 64 * 1024;
    const GATE_AT: u64 = 1024 * 1024;
    let stream = futures_util::stream::unfold((0u64, gate), move |(offset, gate)| async move {
        if offset >= size {
            return None;
        }
        if offset == GATE_AT
            && let Some(state) = &gate
        {
            state.download_gate.notified().await;
        }
        let len = CHUNK.min(size - offset);
        let chunk: Vec<u8> = (offset..offset + len).map(pattern).collect();
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
            (offset + len, gate),
        ))
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

fn trailers() -> Response<Body> {
    let mut trailer = HeaderMap::new();
    trailer.insert("x-checksum", HeaderValue::from_static("abc123"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"part one, "))),
        Ok(Frame::data(Bytes::from_static(b"part two"))),
        Ok(Frame::trailers(trailer)),
    ];
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))));
    response
        .headers_mut()
        .insert("trailer", HeaderValue::from_static("x-checksum"));
    response
}

fn websocket(mut request: Request<Incoming>) -> Response<Body> {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or(HeaderValue::from_static("none"));
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buffer = [0u8; 4096];
        loop {
            match io.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut response = Response::new(http_body_util::Empty::new().boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    // A real server sends base64(sha1(key + GUID)); echoing a value derived from the key is
    // enough to see that the app's handshake answer reaches the client unchanged.
    let accept = format!("accept-for-{}", key.to_str().unwrap_or(""));
    headers.insert("sec-websocket-accept", HeaderValue::from_str(&accept).unwrap());
    response
}

/// A stream of `size` pattern bytes in 64 KiB chunks, for request bodies.
pub fn pattern_stream(size: u64) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::iter((0..size).step_by(64 * 1024)).map(move |offset| {
        let len = (64 * 1024).min(size - offset);
        Ok(Frame::data(Bytes::from(
            (offset..offset + len).map(pattern).collect::<Vec<u8>>(),
        )))
    })
}
