//! The running configuration is one snapshot read per request: installing a new one changes the
//! next request, also on a connection opened before, while the proxy keeps its listeners.

mod common;

use common::upstream::Upstream;
use common::{Fixture, environment_toml, get, send_h1};
use http::StatusCode;

#[tokio::test]
async fn installed_snapshot_applies_to_the_next_request_on_an_open_connection() {
    let fixture = Fixture::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    fixture.main_config("");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[blue.addr], ""));
    let running = fixture.start().await;
    let mut sender = running.h1("shop.apps.test").await;
    let answer = send_h1(&mut sender, get("shop.apps.test", "/")).await;
    assert_eq!(answer.header("x-upstream"), Some("blue"));

    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[green.addr], ""),
    );
    fixture.environment("new", &environment_toml("new", &["new.apps.test"], &[blue.addr], ""));
    let snapshot = gatehouse::snapshot::load(&fixture.path("gatehouse.toml")).unwrap();
    running.proxy().install(snapshot);

    let answer = send_h1(&mut sender, get("shop.apps.test", "/")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream"), Some("green"));
    let answer = send_h1(&mut sender, get("new.apps.test", "/")).await;
    assert_eq!(answer.header("x-upstream"), Some("blue"));
    assert_eq!(running.proxy().snapshot().environments.len(), 2);
}

#[tokio::test]
async fn a_tightened_profile_applies_to_the_next_request_on_an_open_connection() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    let profiles = "[profiles.office]\nranges = [\"127.0.0.0/8\"]\n";
    fixture.main_config(profiles);
    let rules = "[access]\n\"/\" = \"office\"\n";
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], rules),
    );
    let running = fixture.start().await;
    let mut sender = running.h1("shop.apps.test").await;
    assert_eq!(
        send_h1(&mut sender, get("shop.apps.test", "/")).await.status,
        StatusCode::OK
    );

    fixture.main_config(&profiles.replace("127.0.0.0/8", "192.0.2.0/24"));
    running
        .proxy()
        .install(gatehouse::snapshot::load(&fixture.path("gatehouse.toml")).unwrap());
    assert_eq!(
        send_h1(&mut sender, get("shop.apps.test", "/")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.requests(), 1);
}
