//! The admin listener's status page (`GET /status`), loaded in a real headless browser
//! (Chromium): it shows the environments of the configuration with their counts, the reloads,
//! the instances and the certificates (one expiring soon, highlighted), and hostile strings from
//! the configuration (a header value, a 403 page's file name) are shown as text, never markup.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::KeyKind;
use common::upstream::Upstream;
use common::{Fixture, Running, WAIT, admin_get, admin_post, environment_toml};
use gatehouse::server::ReloadTrigger;

const HOSTILE_HEADER: &str = "<script>document.title='pwned'</script>";
const HOSTILE_PAGE: &str = "<img src=x onerror=document.title=1>.html";

/// Chromium's serialisation of the page's DOM once loaded (`--dump-dom`); bounded by [`WAIT`]
/// and then some, as a cold browser start is slow.
fn browser_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start chromium (apt-get install chromium): {err}"));
    let deadline = Instant::now() + WAIT * 4;
    while browser.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = browser.kill();
            panic!("chromium did not finish loading {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = browser.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The table row (`<tr>...</tr>`) of `html` whose first cell is `first_cell`.
fn row<'a>(html: &'a str, first_cell: &str) -> &'a str {
    let start = html
        .find(&format!("<tr><td>{first_cell}</td>"))
        .or_else(|| html.find(&format!("<td>{first_cell}</td>")))
        .unwrap_or_else(|| panic!("no row for {first_cell}: {html}"));
    let end = html[start..].find("</tr>").map_or(html.len(), |end| start + end);
    &html[start..end]
}

async fn started(fixture: &Fixture, shop: &Upstream, blog: &Upstream) -> Running {
    fixture.main_config("[profiles.office]\nranges = [\"192.0.2.0/24\"]\n");
    fixture.write(&format!("env/{HOSTILE_PAGE}"), "<h1>not for you</h1>");
    // The shop's own certificate runs out in 5 days: highlighted.
    fixture
        .ca
        .issue(fixture.dir.path(), "shop", &["shop.apps.test"], KeyKind::Ecdsa, 5);
    let shop_extra = format!(
        "forbidden_page = {HOSTILE_PAGE:?}\n\
         [[certificates]]\ncertificate = \"../shop.pem\"\nkey = \"../shop.key\"\n\
         [access]\n\"/admin/\" = \"office\"\n\
         [custom_response_headers]\nX-Note = {HOSTILE_HEADER:?}\n"
    );
    fixture.environment(
        "shop",
        &environment_toml("shop", &["shop.apps.test"], &[shop.addr], &shop_extra),
    );
    fixture.environment("blog", &environment_toml("blog", &["blog.apps.test"], &[blog.addr], ""));
    fixture.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_instance_and_every_configured_string_as_text() {
    let fixture = Fixture::new();
    let (shop, blog) = (Upstream::start("shop").await, Upstream::start("blog").await);
    let running = started(&fixture, &shop, &blog).await;

    for path in ["/", "/catalogue", "/blog-roll"] {
        assert_eq!(running.get("shop.apps.test", path).await.status, 200);
    }
    let denied = running.get("shop.apps.test", "/admin/users").await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.header("x-note"),
        Some(HOSTILE_HEADER),
        "the header is served as configured"
    );
    // One reload installed, one refused.
    assert_eq!(admin_post(&running, "/reload").await.status, 200);
    fixture.environment("blog", "name = \"blog\"\ndomains = [");
    let main_file = fixture.path("gatehouse.toml");
    assert!(running.proxy().reload(&main_file, ReloadTrigger::Api).is_err());

    let page = admin_get(&running, "/status").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");

    let admin = running.proxy().admin_addr().unwrap();
    let dom = tokio::task::spawn_blocking(move || browser_dom(&format!("http://{admin}/status")))
        .await
        .unwrap();
    assert!(dom.contains("<title>gatehouse status</title>"), "{dom}");

    // Hostile strings are text in the browser's DOM: escaped when serialised, no element made.
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "the header value is shown as text: {dom}"
    );
    assert!(!dom.contains("<script"), "no script element: {dom}");
    assert!(
        dom.contains("&lt;img src=x onerror=document.title=1&gt;.html"),
        "the 403 page's file name is shown as text: {dom}"
    );
    assert!(!dom.contains("<img"), "no image element: {dom}");

    // The environments with their counts: 4 requests to the shop, 1 denied; none to the blog.
    let shop_row = row(&dom, "shop");
    let cells: Vec<&str> = shop_row
        .split("<td class=\"number\">")
        .skip(1)
        .map(|cell| cell.split('<').next().unwrap_or_default())
        .collect();
    assert_eq!(
        cells.get(1..4),
        Some(&["4", "1", "0"][..]),
        "requests, denied, would deny: {shop_row}"
    );
    assert!(row(&dom, "blog").contains("blog.apps.test"));

    // Both reloads, the refused one with its error.
    assert!(dom.contains(">installed<"), "{dom}");
    assert!(dom.contains("refused, the running configuration stayed"), "{dom}");
    assert!(dom.contains("env/blog.toml"), "the refusal names the file: {dom}");

    // The instances, and the certificate that expires in 5 days, highlighted.
    assert!(dom.contains(&shop.addr.to_string()) && dom.contains(&blog.addr.to_string()));
    let expiring = dom
        .split("<tr class=\"expiring\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no highlighted certificate: {dom}"));
    let expiring = &expiring[..expiring.find("</tr>").unwrap_or(expiring.len())];
    assert!(expiring.contains("shop.apps.test"), "{expiring}");
    assert!(
        !dom.contains("<tr class=\"expiring\"><td>(platform)"),
        "the platform certificate (a year) is not highlighted"
    );
}

/// The `<td>` cells of the environments table's first row.
fn first_environment_row(page: &str) -> &str {
    let table = &page[page
        .find("<h2>Environments")
        .unwrap_or_else(|| panic!("no environments: {page}"))..];
    let body = &table[table.find("<tbody>").unwrap_or(0)..];
    &body[..body.find("</tr>").unwrap_or(body.len())]
}

/// At 10,000 environments the whole page would be megabytes: it lists 200, those with instances
/// down first, then the busiest, and `?environment=` narrows every section by name or domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_at_most_200_environments_and_filters_them_by_name_or_domain() {
    let fixture = Fixture::new();
    let app = Upstream::start("app").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    fixture.main_config("");
    for index in 0..205 {
        let name = format!("e{index:03}");
        let domain = format!("{name}.apps.test");
        let toml = match index {
            // Late in the configuration's order, and idle: listed first because its only
            // instance is down.
            203 => environment_toml(
                &name,
                &[&domain],
                &[closed],
                "[health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_threshold = 1\n",
            ),
            _ => environment_toml(&name, &[&domain], &[app.addr], ""),
        };
        fixture.environment(&name, &toml);
    }
    let running = fixture.start().await;
    // The last environment is the busiest.
    for _ in 0..3 {
        assert_eq!(running.get("e204.apps.test", "/").await.status, 200);
    }

    let started = Instant::now();
    let page = loop {
        let page = admin_get(&running, "/status").await.text();
        if first_environment_row(&page).contains("<td>e203</td>") || started.elapsed() > WAIT {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = first_environment_row(&page);
    assert!(
        first.contains("<td>e203</td>") && first.contains("0 of 1"),
        "down first: {first}"
    );
    assert!(
        page.contains("Showing 200 of the 205 environments configured"),
        "{page}"
    );
    assert_eq!(page.matches("<details>").count(), 200, "settings of the 200 listed");
    assert!(page.contains("<td>e204</td>"), "the busiest is listed");
    assert!(page.contains("<td>e000</td>"), "then the configuration's order");
    assert!(
        !page.contains("<td>e202</td>"),
        "idle ones late in the order are left out"
    );
    assert!(
        page.contains("<td>(platform)</td>"),
        "certificates: the platform one too"
    );

    // By name, ASCII case ignored: e200 to e204, every section narrowed.
    let narrowed = admin_get(&running, "/status?environment=E20").await.text();
    assert!(!narrowed.contains("Showing"), "all five are listed: {narrowed}");
    for name in ["e200", "e201", "e202", "e203", "e204"] {
        assert!(
            narrowed.contains(&format!("<summary>{name}</summary>")),
            "{name}: {narrowed}"
        );
    }
    assert_eq!(narrowed.matches("<details>").count(), 5);
    assert!(!narrowed.contains("<td>e000</td>"), "{narrowed}");
    // The instance tables: address and upstreams entry, for e200, e201, e202 and e204 (e203's
    // instance is another address).
    let instance_cell = format!("<td><code>{}</code></td>", app.addr);
    assert_eq!(
        narrowed.matches(&instance_cell).count(),
        8,
        "instances of the five only: {narrowed}"
    );
    assert!(!narrowed.contains("(platform)"), "{narrowed}");
    assert!(narrowed.contains("value=\"e20\""), "the field shows the filter");

    // By domain, percent-encoded as a form sends it.
    let by_domain = admin_get(&running, "/status?environment=e005%2Eapps").await.text();
    assert_eq!(by_domain.matches("<details>").count(), 1);
    assert!(by_domain.contains("<summary>e005</summary>"), "{by_domain}");
}
