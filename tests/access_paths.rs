//! Access restriction by path and address: longest prefix, whole-profile override, presets,
//! deny ranges, range boundaries, and no spelling of a path escaping its rule.

mod common;

use common::upstream::Upstream;
use common::{Fixture, Running, environment_toml};

const PROFILES: &str = r#"
[profiles.local]
ranges = ["127.0.0.0/8"]

[profiles.office]
ranges = ["192.0.2.0/24", "2001:db8::/32"]

[profiles.local-but-not-me]
ranges = ["127.0.0.0/8"]
deny = ["127.0.0.1/32"]

[profiles.edge-in]
ranges = ["127.0.0.0/31"]

[profiles.edge-out]
ranges = ["127.0.0.2/31", "126.255.255.255/32"]
"#;

const RULES: &str = r#"
[access]
"/" = "local"
"/api/" = "allow-all"
"/office/" = "office"
"/rest-doc/" = "deny-all"
"/not-me/" = "local-but-not-me"
"/edge-in/" = "edge-in"
"/edge-out/" = "edge-out"
"#;

async fn start(extra_env: &str) -> (Fixture, Upstream, Running) {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config(PROFILES);
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[app.addr], &format!("{extra_env}{RULES}")),
    );
    let running = fixture.start().await;
    (fixture, app, running)
}

async fn status(running: &Running, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n");
    running.raw_status("shop.apps.test", request.as_bytes()).await
}

#[tokio::test]
async fn longest_prefix_applies_its_whole_profile() {
    let (_fixture, app, running) = start("").await;
    assert_eq!(status(&running, "/").await, 200);
    assert_eq!(status(&running, "/shop/cart").await, 200);
    assert_eq!(status(&running, "/api/orders").await, 200);
    // "/" lets 127.0.0.1 in, but "/office/" has its own rule and inherits nothing from "/".
    assert_eq!(status(&running, "/office/").await, 403);
    assert_eq!(status(&running, "/office").await, 403);
    assert_eq!(status(&running, "/office/x/y").await, 403);
    assert_eq!(status(&running, "/offices").await, 200);
    assert_eq!(app.requests(), 4);
}

#[tokio::test]
async fn deny_all_and_deny_ranges_refuse_and_never_reach_the_app() {
    let (_fixture, app, running) = start("").await;
    assert_eq!(status(&running, "/rest-doc/").await, 403);
    assert_eq!(status(&running, "/not-me/").await, 403);
    assert_eq!(app.requests(), 0);
    let answer = running.get("shop.apps.test", "/rest-doc/index.html").await;
    assert_eq!(answer.status, 403);
    assert!(answer.text().starts_with("403 Forbidden"), "{}", answer.text());
}

#[tokio::test]
async fn range_boundaries_are_exact() {
    let (_fixture, _app, running) = start("").await;
    // 127.0.0.0/31 is .0 and .1: the client (127.0.0.1) is its last address.
    assert_eq!(status(&running, "/edge-in/").await, 200);
    // 127.0.0.2/31 starts right after it and 126.255.255.255 ends right before 127.0.0.0.
    assert_eq!(status(&running, "/edge-out/").await, 403);
}

#[tokio::test]
async fn no_spelling_of_rest_doc_escapes_deny_all() {
    let (_fixture, app, running) = start("").await;
    let spellings = [
        "/rest-doc/",
        "/rest-doc",
        "/rest-doc/index.html",
        "//rest-doc/",
        "///rest-doc//index.html",
        "/./rest-doc/",
        "/rest-doc/.",
        "/x/../rest-doc/",
        "/api/../rest-doc/",
        "/api/%2e%2e/rest-doc/",
        "/api/%2E%2E/rest-doc/",
        "/api/.%2e/rest-doc/",
        "/%2e/rest-doc/",
        "/rest-doc;jsessionid=1/",
        "/rest-doc;/index.html",
        "/;x/rest-doc/",
        "/%72est-doc/",
        "/rest%2ddoc/",
        "/rest%2Ddoc/",
        "/%72%65%73%74%2d%64%6f%63/",
        "/rest-doc/?x=/api/",
        "/rest-doc%2f",
        "/api%2f..%2frest-doc/",
        "/api/..%2frest-doc/",
        "/api/%252e%252e/rest-doc/",
        "/api\\..\\rest-doc/",
        "/../rest-doc/",
        "/rest-doc/%00",
    ];
    for spelling in spellings {
        let code = status(&running, spelling).await;
        assert!(code == 403 || code == 400, "{spelling} got {code}");
    }
    assert_eq!(app.requests(), 0, "a spelling of /rest-doc/ reached the app");
}

/// By default rules match without regard to case: an app that treats `/REST-DOC/` as
/// `/rest-doc/` (many do) is not opened by the capitals. Exact-case matching is an opt-in.
#[tokio::test]
async fn rules_match_without_regard_to_case_unless_exact_case_is_asked_for() {
    let (_fixture, app, running) = start("").await;
    for spelling in ["/REST-DOC/", "/Rest-Doc/x", "/rest-DOC", "/%52EST-doc/"] {
        assert_eq!(status(&running, spelling).await, 403, "{spelling}");
    }
    assert_eq!(app.requests(), 0);
    let (_fixture, _app, running) = start("case_insensitive_paths = false\n").await;
    assert_eq!(
        status(&running, "/REST-DOC/").await,
        200,
        "exact-case rules: another path"
    );
    assert_eq!(status(&running, "/rest-doc/").await, 403);
}

#[tokio::test]
async fn an_environment_may_name_its_own_403_page() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.write("sorry.html", "<h1>Not from here</h1>\n");
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "forbidden_page = \"../sorry.html\"\n[access]\n\"/\" = \"deny-all\"\n",
        ),
    );
    let running = fixture.start().await;
    let answer = running.get("shop.apps.test", "/").await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.text(), "<h1>Not from here</h1>\n");
    assert_eq!(answer.header("content-type"), Some("text/html; charset=utf-8"));
}

#[tokio::test]
async fn ipv6_clients_are_matched_against_ipv6_ranges() {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    let main = "environments = \"env/*.toml\"\n[listen]\nhttps = [\"[::1]:0\"]\nadmin = \"off\"\n\
         [tls]\ncertificate = \"platform.pem\"\nkey = \"platform.key\"\n\
         [profiles.loopback6]\nranges = [\"::1/128\"]\n[profiles.doc6]\nranges = [\"2001:db8::/32\", \"::2/128\"]\n";
    fixture.write("gatehouse.toml", main);
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "[access]\n\"/\" = \"loopback6\"\n\"/doc/\" = \"doc6\"\n",
        ),
    );
    let running = fixture.start().await;
    assert!(running.https.is_ipv6());
    assert_eq!(status(&running, "/").await, 200);
    assert_eq!(status(&running, "/doc/").await, 403);
    let answer = running.get("shop.apps.test", "/").await;
    assert_eq!(answer.upstream_saw("x-real-ip"), ["::1"]);
}

/// Two rules that differ only in case are one rule when case is ignored: refused with the file
/// and the way out, and accepted again with exact-case matching.
#[tokio::test]
async fn rules_differing_only_in_case_are_refused_unless_exact_case_is_asked_for() {
    let fixture = Fixture::new();
    fixture.main_config(PROFILES);
    let rules = "[access]\n\"/admin/\" = \"deny-all\"\n\"/Admin/\" = \"allow-all\"\n";
    let app: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app], rules));
    let errors = gatehouse::snapshot::load(&fixture.path("gatehouse.toml"))
        .unwrap_err()
        .to_string();
    assert!(errors.contains("shop.toml"), "{errors}");
    assert!(errors.contains("case_insensitive_paths = false"), "{errors}");
    let exact = format!("case_insensitive_paths = false\n{rules}");
    fixture.environment("shop", &environment_toml("shop", &["shop.apps.test"], &[app], &exact));
    assert!(gatehouse::snapshot::load(&fixture.path("gatehouse.toml")).is_ok());
}
