//! A tiny app to put behind gatehouse in the quick start: it answers every request with a few
//! lines saying which instance answered and what gatehouse told it about the client.
//!
//! Usage: cargo run --example demo_app -- 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn answer(instance: SocketAddr, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let text = format!(
        "hello from the demo app, instance {instance}\n\
         request:           {} {}\n\
         host:              {}\n\
         x-forwarded-for:   {}\n\
         x-forwarded-proto: {}\n\
         x-request-id:      {}\n",
        request.method(),
        request.uri(),
        header("host"),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("x-request-id"),
    );
    Response::new(Full::new(Bytes::from(text)))
}

async fn serve(listener: TcpListener) {
    let Ok(instance) = listener.local_addr() else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |request| async move { Ok::<_, Infallible>(answer(instance, &request)) });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse())
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err("usage: demo_app ADDR [ADDR...]".into());
    }
    let mut tasks = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr).await?;
        println!("demo app listening on http://{addr}");
        tasks.push(tokio::spawn(serve(listener)));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}
