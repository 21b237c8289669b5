//! The client side of the admin listener, for `gatehouse reload`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Why the running instance could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `POST /reload` to the admin listener at `admin`; the status and the text of the answer.
pub async fn post_reload(admin: SocketAddr) -> Result<(StatusCode, String), AdminError> {
    // A reload of a very large configuration takes a while; the answer waits for it.
    let limit = Duration::from_secs(120);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(admin).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::post("/reload")
            .header("host", admin.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| AdminError::Timeout(limit))?
}
