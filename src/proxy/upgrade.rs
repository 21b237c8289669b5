//! HTTP/1.1 protocol upgrades (WebSocket): once the app answers 101, the two connections are
//! joined and bytes flow both ways until either side closes.
//!
//! The client's side is handed over by the server (see [`UpgradeHandover`]): gatehouse serves
//! HTTP/1.1 with hyper's plain connection, which it can stop between requests to release hyper's
//! buffers, and that connection leaves upgrades to its user.

use std::sync::{Mutex, PoisonError};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::forward::{has_token, remove_hop_by_hop};
use crate::pages::{ResponseBody, empty, page};

/// The protocol an HTTP/1.1 request asks to upgrade to, if it asks (`Connection: upgrade` and
/// an `Upgrade` header).
pub fn requested_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| has_token(value, "upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Put back the two headers an upgrade needs after hop-by-hop removal took them out.
pub fn keep_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The client's connection once upgraded: its TLS stream, starting with any bytes the client sent
/// right after its request.
pub trait ClientSide: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientSide for T {}

pub type UpgradedClient = Box<dyn ClientSide>;

/// Where the server hands the client's connection over once hyper has sent the app's 101.
///
/// Touched only by requests that ask for an upgrade and once when a connection's hyper ends,
/// never by an ordinary request.
#[derive(Default)]
pub struct UpgradeHandover(Mutex<Option<oneshot::Sender<UpgradedClient>>>);

impl UpgradeHandover {
    /// For a request that asks to upgrade: the client's connection, once the 101 is sent.
    pub fn wait_for_client(&self) -> oneshot::Receiver<UpgradedClient> {
        let (sender, receiver) = oneshot::channel();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        receiver
    }

    /// Hand `client` to the upgrade waiting for it; give it back when none does (no upgrade was
    /// asked for, or the app did not switch protocols).
    pub fn hand_over(&self, client: UpgradedClient) -> Result<(), UpgradedClient> {
        let waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match waiting {
            Some(sender) => sender.send(client),
            None => Err(client),
        }
    }
}

impl std::fmt::Debug for UpgradeHandover {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("UpgradeHandover")
    }
}

/// Answer the client with the app's 101 and join the two upgraded connections.
pub fn tunnel(
    downstream: oneshot::Receiver<UpgradedClient>,
    mut upstream_response: Response<Incoming>,
) -> Response<ResponseBody> {
    let upstream = hyper::upgrade::on(&mut upstream_response);
    let protocol = upstream_response.headers().get(header::UPGRADE).cloned();
    let Some(protocol) = protocol else {
        return page(StatusCode::BAD_GATEWAY);
    };
    tokio::spawn(async move {
        let (mut client, app) = match tokio::join!(downstream, upstream) {
            (Ok(client), Ok(app)) => (client, app),
            (Err(_), _) => {
                tracing::debug!("upgrade did not complete: the client's connection ended first");
                return;
            }
            (_, Err(err)) => {
                tracing::debug!(error = %err, "upgrade did not complete");
                return;
            }
        };
        let mut app = TokioIo::new(app);
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
            tracing::debug!(error = %err, "upgraded connection ended with an error");
        }
    });
    let (mut parts, _) = upstream_response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    keep_upgrade_headers(&mut parts.headers, protocol);
    Response::from_parts(parts, empty())
}
