//! HTTP/1.1 protocol upgrades (WebSocket): once the app answers 101, the two connections are
//! joined and bytes flow both ways until either side closes.
//!
//! The client's side is handed over by the server (see [`crate::connection::UpgradeHandover`]): gatehouse serves
//! HTTP/1.1 with hyper's plain connection, which it can stop between requests to release hyper's
//! buffers, and that connection leaves upgrades to its user.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use super::fields::{has_token, remove_hop_by_hop};
use crate::connection::UpgradedClient;
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
