//! The admin listener, on its own address (loopback by default, never on the public
//! listeners): `/metrics` (Prometheus text format), `/healthz` (the process is alive),
//! `/readyz` (configuration loaded and every listener bound; 503 before and while shutting
//! down, and while taken out of rotation by `POST /drain` until `POST /undrain`) and `/config`
//! (generation, hash, environments and certificate expiry; never a key).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpStream;

use super::{ReloadTrigger, Shared};
use crate::snapshot::summary::{CertificateSummary, unix_now};

pub async fn serve(shared: Arc<Shared>, stream: TcpStream, _peer: SocketAddr) {
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let response = match (request.method(), request.uri().path()) {
                (&Method::POST, "/reload") => reload(shared).await,
                (&Method::POST, "/drain") => rotation(&shared, true),
                (&Method::POST, "/undrain") => rotation(&shared, false),
                _ => answer(&shared, &request),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        tracing::debug!(error = %err, "admin connection ended with an error");
    }
}

/// `POST /reload` (what `gatehouse reload` sends): reload the configuration files the running
/// configuration came from. 200 when installed; 422 with the errors when refused.
async fn reload(shared: Arc<Shared>) -> Response<Full<Bytes>> {
    let main_file = shared.installed().snapshot.summary.main_file.clone();
    let reloading = shared.clone();
    let outcome = tokio::task::spawn_blocking(move || reloading.reload(&main_file, ReloadTrigger::Admin)).await;
    match outcome {
        Ok(Ok(())) => text(
            StatusCode::OK,
            format!("reloaded: generation {}\n", shared.generation.load(Ordering::SeqCst)),
        ),
        Ok(Err(errors)) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("refused; the running configuration stays:\n{errors}\n"),
        ),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload did not complete: {err}\n"),
        ),
    }
}

/// `POST /drain` and `POST /undrain`: take the instance out of rotation (`/readyz` 503, every
/// connection still served) for maintenance, or bring it back.
fn rotation(shared: &Shared, out: bool) -> Response<Full<Bytes>> {
    shared.out_of_rotation.store(out, Ordering::SeqCst);
    if out {
        tracing::info!("taken out of rotation: /readyz says 503, connections are still served");
        text(
            StatusCode::OK,
            "drained: /readyz says 503; POST /undrain to return\n".to_owned(),
        )
    } else {
        tracing::info!("back in rotation");
        text(StatusCode::OK, "back in rotation\n".to_owned())
    }
}

fn answer(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => {
            shared
                .metrics
                .set_instance_states(&crate::upstream::states(&shared.live.upstream_groups()));
            let mut response = text(StatusCode::OK, shared.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match (
            shared.ready.load(Ordering::SeqCst),
            shared.out_of_rotation.load(Ordering::SeqCst),
        ) {
            (true, false) => text(StatusCode::OK, "ready\n".to_owned()),
            (true, true) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "drained (POST /undrain to return)\n".to_owned(),
            ),
            (false, _) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()),
        },
        "/config" => {
            let mut response = text(StatusCode::OK, config_json(shared));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/status" => {
            let scope = super::status_page::Scope::from_query(request.uri().query());
            let mut response = text(StatusCode::OK, super::status_page::render(shared, &scope));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            // Defence in depth beside the escaping: no script, frame or outside resource, and
            // the one form (the environment filter) goes back to this page only.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
                ),
            );
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            response
        }
        "/upstreams" => {
            let report = serde_json::to_string_pretty(&crate::upstream::report(&shared.live.upstream_groups()))
                .unwrap_or_default();
            let mut response = text(StatusCode::OK, report);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /status, /metrics, /healthz, /readyz, /config, /upstreams, or POST /reload, /drain, /undrain\n"
                .to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Serialize)]
struct ConfigView<'a> {
    generation: u64,
    sha256: &'a str,
    main_file: String,
    platform_certificate: CertificateView<'a>,
    environments: Vec<EnvironmentView<'a>>,
}

#[derive(Serialize)]
struct EnvironmentView<'a> {
    name: &'a str,
    file: String,
    domains: &'a [String],
    upstreams: &'a [String],
    certificates: Vec<CertificateView<'a>>,
}

#[derive(Serialize)]
struct CertificateView<'a> {
    source: &'a str,
    subject: &'a str,
    names: &'a [String],
    not_after: i64,
    days_left: i64,
}

fn certificate_view(certificate: &CertificateSummary, now: i64) -> CertificateView<'_> {
    CertificateView {
        source: &certificate.source,
        subject: &certificate.subject,
        names: &certificate.names,
        not_after: certificate.not_after,
        days_left: certificate.days_left(now),
    }
}

/// What is in force, for operators: no key, no key path, no secret.
fn config_json(shared: &Shared) -> String {
    let snapshot = shared.snapshot();
    let summary = &snapshot.summary;
    let now = unix_now();
    let view = ConfigView {
        generation: shared.generation.load(Ordering::SeqCst),
        sha256: &snapshot.sha256,
        main_file: summary.main_file.display().to_string(),
        platform_certificate: certificate_view(&summary.platform_certificate, now),
        environments: summary
            .environments
            .iter()
            .map(|environment| EnvironmentView {
                name: &environment.name,
                file: environment.file.display().to_string(),
                domains: &environment.domains,
                upstreams: &environment.upstreams,
                certificates: environment
                    .certificates
                    .iter()
                    .map(|c| certificate_view(c, now))
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&view).unwrap_or_default()
}
