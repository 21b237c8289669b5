//! Per-instance upstream detail: attempts, failures by kind and connect time for each app
//! instance, under a bounded set of labels.

mod common;

use common::upstream::Upstream;
use common::{Fixture, environment_toml};

fn series(metrics: &std::collections::HashMap<String, f64>, name: &str, labels: &str) -> f64 {
    metrics.get(&format!("{name}{{{labels}}}")).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn each_instance_has_its_attempts_failures_and_connect_time() {
    let fixture = Fixture::new();
    let good = Upstream::start("good").await;
    let gone = {
        // An address nothing listens on: every connection attempt is refused.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[good.addr, gone], "retries = 1\n"),
    );
    let running = fixture.start().await;
    for _ in 0..6 {
        assert_eq!(running.get("shop.apps.test", "/").await.status, 200);
    }
    // A 502 from the app speaks against the instance: counted as bad_status.
    assert_eq!(running.get("shop.apps.test", "/status/502").await.status, 502);

    let text = common::admin_get(&running, "/metrics").await.text();
    let metrics = common::samples(&text);
    let good_labels = format!("environment=\"shop\",instance=\"{}\"", good.addr);
    let gone_labels = format!("environment=\"shop\",instance=\"{gone}\"");
    let attempts = |labels: &str| series(&metrics, "gatehouse_upstream_instance_requests_total", labels);
    let failures = |labels: &str, kind: &str| {
        series(
            &metrics,
            "gatehouse_upstream_instance_failures_total",
            &format!("{labels},kind=\"{kind}\""),
        )
    };
    assert!(attempts(&good_labels) >= 7.0, "{text}");
    assert!(
        attempts(&gone_labels) >= 1.0,
        "round robin sent some attempts to the gone instance: {text}"
    );
    assert_eq!(failures(&gone_labels, "connect"), attempts(&gone_labels), "{text}");
    assert_eq!(failures(&good_labels, "connect"), 0.0);
    assert!(failures(&good_labels, "bad_status") >= 1.0, "{text}");
    let connected = series(
        &metrics,
        "gatehouse_upstream_instance_connect_seconds_count",
        &good_labels,
    );
    assert!(connected >= 1.0, "{text}");
    assert_eq!(
        series(
            &metrics,
            "gatehouse_upstream_instance_connect_seconds_count",
            &gone_labels
        ),
        0.0,
        "a refused connection has no connect time"
    );
}
