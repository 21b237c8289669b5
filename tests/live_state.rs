//! The live state a running proxy keeps per environment across reloads (metric series,
//! rate-limit buckets, upstream groups with their pools and health): a reload keeps every entry
//! whose spec is unchanged, builds the rest, and drops what belongs to removed environments.

mod common;

use std::sync::Arc;

use common::upstream::Upstream;
use common::{Fixture, environment_toml};
use gatehouse::live::{Installed, LiveState};
use gatehouse::metrics::Metrics;

fn load(fixture: &Fixture) -> Arc<gatehouse::snapshot::Snapshot> {
    Arc::new(gatehouse::snapshot::load(&fixture.path("gatehouse.toml")).unwrap_or_else(|errors| panic!("{errors}")))
}

fn environment<'a>(installed: &'a Installed, name: &str) -> &'a gatehouse::live::ServedEnvironment {
    let index = installed
        .snapshot
        .environments
        .iter()
        .position(|environment| &*environment.name == name)
        .unwrap_or_else(|| panic!("{name} is not configured"));
    installed.environment(index).unwrap()
}

#[tokio::test]
async fn a_reload_keeps_the_live_state_of_unchanged_specs_and_renews_the_rest() {
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    fixture.main_config("");
    let limited = |rate: u32| format!("[rate_limit]\nrequests_per_second = {rate}\n");
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], &limited(10)),
    );
    fixture.environment("blog", &environment_toml("blog", &["blog.apps.test"], &[app.addr], ""));
    fixture.environment("gone", &environment_toml("gone", &["gone.apps.test"], &[app.addr], ""));
    let live = LiveState::new(Arc::new(Metrics::new().unwrap()));
    let first = live.reconcile(load(&fixture), 1);
    assert_eq!(live.upstream_groups().len(), 3);

    // shop: another rate, the same upstream; blog: another balancing; gone: removed; new: added.
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], &limited(20)),
    );
    fixture.environment(
        "blog",
        &environment_toml(
            "blog",
            &["blog.apps.test"],
            &[app.addr],
            "load_balancing = \"least_outstanding\"\n",
        ),
    );
    std::fs::remove_file(fixture.path("env/gone.toml")).unwrap();
    fixture.environment("new", &environment_toml("new", &["new.apps.test"], &[app.addr], ""));
    let second = live.reconcile(load(&fixture), 2);

    let (shop_before, shop_after) = (&environment(&first, "shop").live, &environment(&second, "shop").live);
    assert!(
        Arc::ptr_eq(&shop_before.upstream, &shop_after.upstream),
        "an unchanged upstream was rebuilt"
    );
    assert!(
        Arc::ptr_eq(&shop_before.metrics, &shop_after.metrics),
        "metric series were rebuilt"
    );
    let (Some(old_limiter), Some(new_limiter)) = (&shop_before.rate_limiter, &shop_after.rate_limiter) else {
        panic!("shop has a rate limit");
    };
    assert!(
        !Arc::ptr_eq(old_limiter, new_limiter),
        "a changed rate kept the old buckets"
    );

    let (blog_before, blog_after) = (&environment(&first, "blog").live, &environment(&second, "blog").live);
    assert!(
        !Arc::ptr_eq(&blog_before.upstream, &blog_after.upstream),
        "a changed upstream spec kept the old group"
    );
    assert!(Arc::ptr_eq(&blog_before.metrics, &blog_after.metrics));
    assert!(blog_after.rate_limiter.is_none());

    let mut names: Vec<String> = live
        .upstream_groups()
        .iter()
        .map(|group| group.environment.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["blog", "new", "shop"],
        "the removed environment's group was kept"
    );
    assert_eq!(second.generation, 2);

    // Unchanged everywhere: everything is kept, the buckets too.
    let third = live.reconcile(load(&fixture), 3);
    for name in ["shop", "blog", "new"] {
        let (before, after) = (&environment(&second, name).live, &environment(&third, name).live);
        assert!(Arc::ptr_eq(&before.upstream, &after.upstream), "{name}");
    }
    let kept = environment(&third, "shop").live.rate_limiter.as_ref().unwrap();
    assert!(Arc::ptr_eq(
        kept,
        environment(&second, "shop").live.rate_limiter.as_ref().unwrap()
    ));
}
