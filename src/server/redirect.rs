//! The plain-HTTP listener: every request for a configured host is redirected (308) to the same
//! host and path on https. Hosts gatehouse does not serve get 404, so the listener is no
//! open redirector.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::Shared;
use crate::metrics::ConnectionLimit;
use crate::pages::{ResponseBody, page, with_body};
use crate::route::{MAX_HOST_LEN, normalize_host};

pub async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let (header_timeout, proxy_protocol, max_total, max_per_client, prefixes) = {
        let settings = &shared.installed().snapshot.settings;
        (
            settings.request_header_timeout,
            settings.proxy_protocol,
            settings.max_connections,
            settings.max_connections_per_client,
            settings.client_prefixes,
        )
    };
    let shared_for_drain = shared.clone();
    let Some(_total_place) = shared_for_drain.gate.admit(max_total) else {
        shared.metrics.connection_refused(ConnectionLimit::Total);
        return;
    };
    let mut client = peer;
    if proxy_protocol {
        let read = super::proxy_protocol::read_client_address(&mut stream, peer);
        match tokio::time::timeout(header_timeout, read)
            .await
            .unwrap_or_else(|elapsed| Err(elapsed.into()))
        {
            Ok(named) => client = named,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "PROXY header refused");
                return;
            }
        }
    }
    let Some(_client_place) = shared_for_drain
        .gate
        .admit_client(prefixes.of(client.ip()), max_per_client)
    else {
        shared.metrics.connection_refused(ConnectionLimit::PerClient);
        return;
    };
    let service = service_fn(move |request| {
        let response = redirect(&shared, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        // The redirect never answers 101; this only gives the connection the same type as the
        // TLS listener's, so that one graceful-shutdown implementation serves both.
        .with_upgrades();
    let connection = std::pin::pin!(connection);
    let served = super::drain::serve_until_drained(&shared_for_drain, connection, None).await;
    if let Err(err) = served {
        tracing::debug!(error = %err, "plain-http connection ended with an error");
    }
}

fn redirect(shared: &Shared, request: &Request<Incoming>) -> Response<ResponseBody> {
    let Ok(raw_host) = crate::route::request_host(request) else {
        return page(StatusCode::BAD_REQUEST);
    };
    let mut buffer = [0u8; MAX_HOST_LEN];
    let Some(host) = normalize_host(raw_host.as_bytes(), &mut buffer) else {
        return page(StatusCode::BAD_REQUEST);
    };
    let installed = shared.installed();
    let snapshot = &installed.snapshot;
    if snapshot.routes.lookup(host).is_none() {
        return page(StatusCode::NOT_FOUND);
    }
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
    let port = snapshot.settings.redirect_port;
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location_value) = HeaderValue::try_from(location.as_str()) else {
        return page(StatusCode::BAD_REQUEST);
    };
    let mut response = with_body(
        StatusCode::PERMANENT_REDIRECT,
        Bytes::from(format!("308 Permanent Redirect\n\nThis site is served at {location}\n")),
    );
    response.headers_mut().insert(header::LOCATION, location_value);
    response
}
