//! The pool of keep-alive HTTP/1.1 connections to app instances.
//!
//! One pool serves the whole process and outlives configuration reloads, so a reload does not
//! cost the apps a wave of new connections. Connections are keyed by instance address.

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::observe::CountedBody;
use crate::snapshot::Settings;

pub type UpstreamClient = Client<HttpConnector, CountedBody<Incoming>>;

pub fn client(settings: &Settings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.upstream_connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_instance)
        .pool_timer(TokioTimer::new())
        // gatehouse sets `Host` itself: the client's own would name the instance.
        .set_host(false)
        .build(connector)
}
