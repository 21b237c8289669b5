//! W3C trace context: a client's `traceparent` and `tracestate` reach the app only from a trusted
//! forwarder and only when valid; otherwise gatehouse starts a trace whose id is the request id.
//! The access log names the trace.

mod common;

use common::upstream::Upstream;
use common::{Fixture, Running, environment_toml, send_h1};
use http::Request;
use http_body_util::{BodyExt, Empty};

const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// gatehouse with an access log, trusting loopback forwarders or none.
async fn start(trusted: bool) -> (Fixture, Upstream, Running) {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("[logging]\naccess_log = \"access.log\"\naudit_log = \"off\"\n");
    if trusted {
        let main = std::fs::read_to_string(fixture.path("gatehouse.toml")).unwrap();
        fixture.write(
            "gatehouse.toml",
            &main.replace("[tls]", "trusted_forwarders = [\"127.0.0.0/8\"]\n[tls]"),
        );
    }
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app.addr], ""));
    let running = fixture.start().await;
    (fixture, app, running)
}

async fn send(running: &Running, fields: &[(&str, &str)]) -> common::Answer {
    let mut sender = running.h1("shop.apps.test").await;
    let mut request = Request::get("/").header("host", "shop.apps.test");
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    send_h1(&mut sender, request.body(Empty::new().boxed()).unwrap()).await
}

/// The app's `traceparent`, checked to be one of gatehouse's own: `00-<request id>-...-01`.
fn assert_new_trace(answer: &common::Answer) -> String {
    let traceparent = answer.upstream_saw("traceparent");
    let request_id = answer.upstream_saw("x-request-id");
    assert_eq!(traceparent.len(), 1, "{traceparent:?}");
    assert_eq!(request_id.len(), 1);
    assert!(
        traceparent[0].starts_with(&format!("00-{}-", request_id[0])) && traceparent[0].ends_with("-01"),
        "{} is not a new trace for request {}",
        traceparent[0],
        request_id[0]
    );
    assert!(answer.upstream_saw("tracestate").is_empty());
    request_id[0].clone()
}

#[tokio::test]
async fn a_trusted_forwarders_valid_trace_is_continued_and_anything_else_starts_a_new_one() {
    let (fixture, _app, running) = start(true).await;
    // From a trusted forwarder, valid: the app gets the client's context as it was.
    let answer = send(&running, &[("traceparent", CLIENT_TRACE), ("tracestate", "vendor=abc")]).await;
    assert_eq!(answer.upstream_saw("traceparent"), [CLIENT_TRACE]);
    assert_eq!(answer.upstream_saw("tracestate"), ["vendor=abc"]);
    // Malformed (upper-case hex, a zero trace id): replaced, and its state dropped.
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ] {
        let answer = send(&running, &[("traceparent", bad), ("tracestate", "vendor=abc")]).await;
        assert_new_trace(&answer);
    }
    // None: a new trace.
    let started = assert_new_trace(&send(&running, &[]).await);

    // The access log names each request's trace: the client's, or the request id.
    let path = fixture.path("access.log");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let trace_ids: Vec<String> = lines
        .iter()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["trace_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        trace_ids.first().map(String::as_str),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(trace_ids.last(), Some(&started));
}

#[tokio::test]
async fn a_client_that_is_not_a_trusted_forwarder_cannot_choose_its_trace() {
    let (_fixture, _app, running) = start(false).await;
    let answer = send(&running, &[("traceparent", CLIENT_TRACE), ("tracestate", "vendor=abc")]).await;
    assert_new_trace(&answer);
}
