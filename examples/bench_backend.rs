//! The app behind every proxy in the head-to-head benchmark (`benches/head_to_head.py`): a
//! single-threaded HTTP/1.1 keep-alive server answering `/small` with 13 bytes and `/16k` with
//! 16 KiB, so that all proxies forward the same bytes to the same backend.
//!
//! Run: cargo run --release --example bench_backend -- 127.0.0.1:9100

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

static SIXTEEN_KIB: [u8; 16 * 1024] = [b'x'; 16 * 1024];

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match request.uri().path() {
        "/small" => (StatusCode::OK, Bytes::from_static(b"hello, bench\n")),
        "/16k" => (StatusCode::OK, Bytes::from_static(&SIXTEEN_KIB)),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", http::HeaderValue::from_static("text/plain"));
    Ok(response)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args().nth(1).ok_or("usage: bench_backend ADDR")?.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("bench backend on http://{addr}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    })
}
