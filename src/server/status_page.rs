//! `GET /status` on the admin listener: one HTML page that shows a running instance at a glance,
//! as HAProxy's stats page does for its users: the configuration in force and the last reloads,
//! listeners and connections, environments with their request rates and denials, app instances
//! with health, ejection and slow start, certificates by days to expiry, session-ticket keys,
//! and each environment's rules, pages and response headers.
//!
//! Rendered on the server with `maud`, whose templates escape every interpolated string, so that
//! nothing configured or recorded (a header value, a page path, a reload error) can become
//! markup; the response's Content-Security-Policy allows no script, frame or external resource
//! besides, and the page has none: it reads the same without JavaScript. Request rates come from
//! a sample of every environment's counters every [`RATE_SAMPLE_EVERY`], kept for a minute.
//!
//! With thousands of environments the whole page would be megabytes: it lists at most
//! [`ROWS_SHOWN`] environments (those with instances down first, then the busiest) and
//! certificates (soonest expiry first), and `?environment=TEXT` narrows every section to the
//! environments whose name or a domain contains TEXT, as HAProxy's stats page has its scope.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::Shared;
use crate::headers::HeaderAction;
use crate::live::Installed;
use crate::metrics::{EnvironmentMetrics, RequestTotals};
use crate::snapshot::summary::{CertificateSummary, EnvironmentSummary, unix_now};
use crate::upstream::GroupReport;

/// Reloads the page lists, newest first.
pub const RELOADS_KEPT: usize = 10;
/// How often every environment's counters are sampled for the request rates.
pub const RATE_SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The rates are averaged over (at most) this long.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Certificates with fewer days left are highlighted: the alert in `conf/alerts.yml` fires then.
pub const EXPIRING_DAYS: i64 = 14;
/// Longer reload errors are cut (the audit log and `POST /reload` have them whole).
const ERROR_SHOWN: usize = 2_000;
/// At most this many environments, and as many certificates, are listed on one view.
pub const ROWS_SHOWN: usize = 200;

/// Which environments a view shows: all, or with `?environment=TEXT` those whose name or a
/// domain contains TEXT (ASCII case ignored).
#[derive(Debug, Default)]
pub struct Scope {
    filter: Option<String>,
}

impl Scope {
    /// The scope a request's query asks for (`environment=`, form-encoded).
    pub fn from_query(query: Option<&str>) -> Self {
        let filter = (query.into_iter())
            .flat_map(|query| form_urlencoded::parse(query.as_bytes()))
            .find(|(key, _)| key == "environment")
            .map(|(_, value)| value.trim().to_ascii_lowercase())
            .filter(|value| !value.is_empty());
        Self { filter }
    }

    fn matches(&self, environment: &EnvironmentSummary) -> bool {
        let Some(text) = &self.filter else { return true };
        let contains = |name: &str| name.to_ascii_lowercase().contains(text.as_str());
        contains(&environment.name) || environment.domains.iter().any(|domain| contains(domain))
    }
}

/// The environments one view lists, by the snapshot's index, in the order shown.
struct Selection<'a> {
    shown: Vec<usize>,
    names: std::collections::HashSet<&'a str>,
    matching: usize,
}

/// What the page remembers between views: the last reloads and the counter samples.
#[derive(Debug, Default)]
pub struct StatusHistory {
    reloads: Mutex<VecDeque<ReloadRecord>>,
    samples: Mutex<VecDeque<RateSample>>,
}

/// One reload, as the page lists it.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    /// Seconds since the Unix epoch.
    pub at: i64,
    pub trigger: &'static str,
    /// The configuration installed (its SHA-256), or why it was refused.
    pub outcome: Result<String, String>,
}

/// Every environment's request count at one moment, by the address of its metrics: those live
/// as long as the process (counters continue across reloads), so an address names one
/// environment. 16 bytes an environment, at most 7 samples.
#[derive(Debug)]
struct RateSample {
    at: Instant,
    requests: Vec<(usize, u64)>,
}

fn identity(metrics: &Arc<EnvironmentMetrics>) -> usize {
    Arc::as_ptr(metrics) as usize
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StatusHistory {
    /// Remember a reload (installed or refused).
    pub fn reloaded(&self, record: ReloadRecord) {
        let mut reloads = locked(&self.reloads);
        if reloads.len() == RELOADS_KEPT {
            reloads.pop_back();
        }
        reloads.push_front(record);
    }

    /// Sample every environment's counters (a few atomic reads each), dropping samples older
    /// than the rate window.
    pub fn sample(&self, installed: &Installed) {
        let requests = (installed.environments().iter())
            .map(|environment| {
                let metrics = &environment.live.metrics;
                (identity(metrics), metrics.totals().requests)
            })
            .collect();
        let now = Instant::now();
        let mut samples = locked(&self.samples);
        while samples
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.at) > RATE_WINDOW)
        {
            samples.pop_front();
        }
        samples.push_back(RateSample { at: now, requests });
    }

    /// The oldest sample in the window, by environment, with its age.
    fn rate_base(&self) -> Option<RateBase> {
        let samples = locked(&self.samples);
        let oldest = samples.front()?;
        Some((oldest.at.elapsed(), oldest.requests.iter().copied().collect()))
    }
}

/// Sample the counters every [`RATE_SAMPLE_EVERY`] while the proxy lives.
pub fn spawn_sampler(shared: &Arc<Shared>) {
    let shared: Weak<Shared> = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(RATE_SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.status.sample(&shared.installed());
        }
    });
}

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .4em 0; } th, td { padding: .2em .7em; text-align: left; vertical-align: top; }
thead th { background: #eee; } tbody tr:nth-child(even) { background: #f7f7f7; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, monospace; word-break: break-all; }
.good { color: #176117; } .bad { color: #a30000; font-weight: bold; } .warn { color: #8a5a00; font-weight: bold; }
tr.expiring td { background: #fff1c2; } tr.expired td { background: #ffd6d6; }
details { margin: .3em 0; } summary { cursor: pointer; }
";

/// The page, as of now, for `scope`.
pub fn render(shared: &Shared, scope: &Scope) -> String {
    let installed = shared.installed();
    let groups = crate::upstream::report(&shared.live.upstream_groups());
    let available = available_instances(&groups);
    let selection = select(scope, &installed, &available);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "gatehouse status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "gatehouse " (env!("CARGO_PKG_VERSION")) }
                (overview(shared, &installed))
                (reloads(shared))
                (scope_form(scope))
                (environments(shared, &installed, &selection, &available))
                (instances(&groups, &selection))
                (certificates(&installed, scope))
                (tickets(shared))
                (settings(&installed, &selection))
            }
        }
    };
    page.into_string()
}

/// Instances available and configured, by environment name.
fn available_instances(groups: &[GroupReport]) -> HashMap<&str, (usize, usize)> {
    (groups.iter())
        .map(|group| {
            let up = group.instances.iter().filter(|instance| instance.available).count();
            (group.environment.as_str(), (up, group.instances.len()))
        })
        .collect()
}

/// The environments in `scope`, those with instances down first, then the busiest, then in the
/// configuration's order; at most [`ROWS_SHOWN`].
fn select<'a>(scope: &Scope, installed: &'a Installed, available: &HashMap<&str, (usize, usize)>) -> Selection<'a> {
    let summaries = &installed.snapshot.summary.environments;
    let mut matching: Vec<(bool, std::cmp::Reverse<u64>, usize)> = (installed.environments().iter())
        .zip(summaries.iter())
        .enumerate()
        .filter(|(_, (_, summary))| scope.matches(summary))
        .map(|(index, (environment, summary))| {
            let (up, all) = available.get(summary.name.as_str()).copied().unwrap_or_default();
            let requests = environment.live.metrics.totals().requests;
            (up >= all, std::cmp::Reverse(requests), index)
        })
        .collect();
    let count = matching.len();
    if count > ROWS_SHOWN {
        matching.select_nth_unstable(ROWS_SHOWN - 1);
        matching.truncate(ROWS_SHOWN);
    }
    matching.sort_unstable();
    let shown: Vec<usize> = matching.into_iter().map(|(_, _, index)| index).collect();
    let names = shown.iter().map(|&index| summaries[index].name.as_str()).collect();
    Selection {
        shown,
        names,
        matching: count,
    }
}

fn scope_form(scope: &Scope) -> Markup {
    html! {
        form method="get" action="/status" {
            label { "Environments whose name or a domain contains "
                input type="search" name="environment" value=(scope.filter.as_deref().unwrap_or("")); }
            " " button type="submit" { "show" }
            @if scope.filter.is_some() { " " a href="/status" { "all environments" } }
        }
    }
}

fn overview(shared: &Shared, installed: &Installed) -> Markup {
    let snapshot = &installed.snapshot;
    let (ready, drained) = (
        shared.ready.load(Ordering::SeqCst),
        shared.out_of_rotation.load(Ordering::SeqCst),
    );
    let listeners = shared.listeners();
    let (https, http) = (listeners.https(), listeners.http());
    drop(listeners);
    let addresses = |addresses: &[std::net::SocketAddr]| {
        let text: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        if text.is_empty() {
            "none".to_owned()
        } else {
            text.join(", ")
        }
    };
    html! {
        table {
            tbody {
                tr { th { "state" } td {
                    @match (ready, drained) {
                        (true, false) => span.good { "ready: in rotation (/readyz 200)" },
                        (true, true) => span.warn { "drained: out of rotation (/readyz 503), still serving" },
                        (false, _) => span.bad { "not ready or stopping (/readyz 503)" },
                    }
                } }
                tr { th { "configuration" } td { code { (snapshot.sha256) } " (SHA-256 of its files)" } }
                tr { th { "generation" } td { (installed.generation) } }
                tr { th { "main file" } td { code { (snapshot.summary.main_file.display()) } } }
                tr { th { "https listeners" } td { (addresses(&https)) } }
                tr { th { "http listeners" } td { (addresses(&http)) } }
                tr { th { "admin listener" } td { (snapshot.settings.admin.map_or_else(|| "off".to_owned(), |admin| admin.to_string())) } }
                tr { th { "open connections" } td { (shared.open_connections.load(Ordering::Relaxed)) } }
                tr { th { "time" } td { (date_time(unix_now())) } }
            }
        }
    }
}

fn reloads(shared: &Shared) -> Markup {
    let reloads: Vec<ReloadRecord> = locked(&shared.status.reloads).iter().cloned().collect();
    html! {
        h2 { "Reloads (the last " (RELOADS_KEPT) ")" }
        @if reloads.is_empty() {
            p { "None since the start." }
        } @else {
            table {
                thead { tr { th { "time" } th { "trigger" } th { "result" } th { "configuration or error" } } }
                tbody {
                    @for reload in &reloads {
                        tr {
                            td { (date_time(reload.at)) }
                            td { (reload.trigger) }
                            @match &reload.outcome {
                                Ok(sha256) => {
                                    td.good { "installed" }
                                    td { code { (sha256) } }
                                }
                                Err(error) => {
                                    td.bad { "refused, the running configuration stayed" }
                                    td { code { (cut(error, ERROR_SHOWN)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn environments(
    shared: &Shared,
    installed: &Installed,
    selection: &Selection,
    available: &HashMap<&str, (usize, usize)>,
) -> Markup {
    let base = shared.status.rate_base();
    let summaries = &installed.snapshot.summary.environments;
    html! {
        h2 { "Environments (" (summaries.len()) ")" }
        @if selection.shown.len() < selection.matching {
            p.warn {
                "Showing " (selection.shown.len()) " of the " (selection.matching) " environments "
                @if selection.matching < summaries.len() { "that match" } @else { "configured" }
                " (those with instances down first, then the busiest); "
                "narrow them with the field above or ?environment= in the address."
            }
        }
        table {
            thead { tr {
                th { "environment" } th { "domains" } th { "requests/s (last minute)" } th { "requests" }
                th { "denied" } th { "would deny (report-only)" } th { "instances available" }
            } }
            tbody {
                @for &index in &selection.shown {
                    @let (environment, summary) = (&installed.environments()[index], &summaries[index]);
                    @let totals = environment.live.metrics.totals();
                    @let (up, all) = available.get(summary.name.as_str()).copied().unwrap_or_default();
                    tr {
                        td { (summary.name) }
                        td { (summary.domains.join(", ")) }
                        td.number { (rate(base.as_ref(), &environment.live.metrics, totals)) }
                        td.number { (totals.requests) }
                        td.number { (totals.denied) }
                        td.number { (totals.would_deny) }
                        td.number {
                            @if up < all { span.bad { (up) " of " (all) } } @else { (up) " of " (all) }
                        }
                    }
                }
            }
        }
    }
}

/// The oldest sample's age and request counts, by environment (see [`RateSample`]).
type RateBase = (Duration, HashMap<usize, u64>);

/// Requests per second since the oldest sample, or a dash without one old enough.
fn rate(base: Option<&RateBase>, metrics: &Arc<EnvironmentMetrics>, now: RequestTotals) -> String {
    let Some((age, by_environment)) = base else {
        return "-".to_owned();
    };
    if *age < Duration::from_secs(1) {
        return "-".to_owned();
    }
    let before = by_environment.get(&identity(metrics)).copied().unwrap_or(0);
    format!("{:.1}", now.requests.saturating_sub(before) as f64 / age.as_secs_f64())
}

fn instances(groups: &[GroupReport], selection: &Selection) -> Markup {
    html! {
        h2 { "App instances" }
        table {
            thead { tr {
                th { "environment" } th { "instance" } th { "upstreams entry" } th { "state" }
                th { "health check" } th { "slow start" } th { "in flight" } th { "idle connections" }
            } }
            tbody {
                @for group in groups.iter().filter(|group| selection.names.contains(group.environment.as_str())) {
                    @for instance in &group.instances {
                        tr {
                            td { (group.environment) }
                            td { code { (instance.address) } }
                            td { code { (instance.upstream) } }
                            td {
                                @if instance.ejected { span.bad { "ejected" } }
                                @else if instance.available { span.good { "available" } }
                                @else { span.bad { "unavailable" } }
                            }
                            td {
                                @if instance.health_check_passing { "passing" } @else { span.bad { "failing" } }
                            }
                            td {
                                @if instance.share_percent < 100 { span.warn { "warming up: " (instance.share_percent) "% of its share" } }
                                @else { "-" }
                            }
                            td.number { (instance.requests_in_flight) }
                            td.number { (instance.idle_connections) }
                        }
                    }
                }
            }
        }
    }
}

fn certificates(installed: &Installed, scope: &Scope) -> Markup {
    let summary = &installed.snapshot.summary;
    let now = unix_now();
    let mut rows: Vec<(&str, &CertificateSummary)> = Vec::new();
    if scope.filter.is_none() {
        rows.push(("(platform)", &summary.platform_certificate));
    }
    for environment in summary
        .environments
        .iter()
        .filter(|environment| scope.matches(environment))
    {
        rows.extend(
            environment
                .certificates
                .iter()
                .map(|certificate| (environment.name.as_str(), certificate)),
        );
    }
    rows.sort_by_key(|(_, certificate)| certificate.not_after);
    let count = rows.len();
    rows.truncate(ROWS_SHOWN);
    html! {
        h2 { "Certificates (soonest expiry first; highlighted under " (EXPIRING_DAYS) " days)" }
        @if rows.len() < count {
            p.warn { "Showing the " (rows.len()) " of " (count) " that expire soonest." }
        }
        table {
            thead { tr { th { "environment" } th { "file" } th { "subject" } th { "names" } th { "not after" } th { "days left" } } }
            tbody {
                @for (environment, certificate) in &rows {
                    @let days = certificate.days_left(now);
                    tr class=(if days < 0 { "expired" } else if days < EXPIRING_DAYS { "expiring" } else { "" }) {
                        td { (environment) }
                        td { code { (certificate.source) } }
                        td { (certificate.subject) }
                        td { (certificate.names.join(", ")) }
                        td { (date_time(certificate.not_after)) }
                        td.number { (days) }
                    }
                }
            }
        }
    }
}

fn tickets(shared: &Shared) -> Markup {
    let file = shared.snapshot().settings.ticket_keys.clone();
    let since = shared.live.shared_ticket_key_since();
    html! {
        h2 { "TLS session tickets" }
        @match (file, since) {
            (Some(file), Some(since)) => p {
                "Shared keys from " code { (file.source) } "; the key that encrypts new tickets was installed "
                (date_time(since)) " (" (age(unix_now() - since)) " ago)."
            },
            _ => p { "This process's own keys (no tls.ticket_keys), rotated by the TLS library; tickets resume only on this instance." },
        }
    }
}

fn settings(installed: &Installed, selection: &Selection) -> Markup {
    let snapshot = &installed.snapshot;
    html! {
        h2 { "Environment settings" }
        @for environment in selection.shown.iter().filter_map(|&index| snapshot.environments.get(index)) {
            details {
                summary { (environment.name) }
                @let rules = sorted_rules(&environment.rules);
                table {
                    thead { tr { th { "path rule" } th { "profile" } } }
                    tbody {
                        @if rules.is_empty() { tr { td colspan="2" { "no rules: every path is open" } } }
                        @for (prefix, profile) in &rules {
                            tr { td { code { (prefix) } } td { (snapshot.profile_names.get(*profile).map_or("?", String::as_str)) } }
                        }
                    }
                }
                p {
                    "403 page: " (environment.forbidden_page.as_ref().map_or("gatehouse's own", |page| page.source()))
                    "; maintenance page: " (environment.maintenance_page.as_ref().map_or("gatehouse's own", |page| page.source()))
                }
                table {
                    thead { tr { th { "response header" } th { "action" } th { "value" } } }
                    tbody {
                        @for (name, action) in environment.headers.actions() {
                            tr {
                                td { code { (name.as_str()) } }
                                @match action {
                                    HeaderAction::Set(value) => { td { "set" } td { code { (String::from_utf8_lossy(value.as_bytes())) } } }
                                    HeaderAction::IfMissing(value) => { td { "set unless the app sent it" } td { code { (String::from_utf8_lossy(value.as_bytes())) } } }
                                    HeaderAction::Remove => { td { "remove" } td { "-" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn sorted_rules(rules: &crate::access::rules::PathRules) -> Vec<(&str, usize)> {
    let mut sorted: Vec<(&str, usize)> = rules.iter().collect();
    sorted.sort_unstable();
    sorted
}

fn date_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn age(seconds: i64) -> String {
    match seconds {
        ..120 => format!("{} s", seconds.max(0)),
        120..7_200 => format!("{} min", seconds / 60),
        7_200..172_800 => format!("{} h", seconds / 3_600),
        _ => format!("{} days", seconds / 86_400),
    }
}

fn cut(text: &str, at: usize) -> String {
    match text.char_indices().nth(at) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_requests_since_the_oldest_sample_per_second() {
        let metrics = crate::metrics::Metrics::new().unwrap_or_else(|err| panic!("{err}"));
        let (shop, blog) = (metrics.environment("shop"), metrics.environment("blog"));
        let requests = |requests| RequestTotals {
            requests,
            ..RequestTotals::default()
        };
        let base = (Duration::from_secs(10), HashMap::from([(identity(&shop), 5)]));
        assert_eq!(rate(Some(&base), &shop, requests(30)), "2.5");
        // An environment that the oldest sample did not know counts from nothing.
        assert_eq!(rate(Some(&base), &blog, requests(10)), "1.0");
        assert_eq!(rate(None, &shop, requests(30)), "-");
        let fresh = (Duration::from_millis(200), HashMap::new());
        assert_eq!(rate(Some(&fresh), &shop, requests(30)), "-", "too soon to tell");
    }

    #[test]
    fn ages_read_in_the_unit_that_fits() {
        assert_eq!(age(59), "59 s");
        assert_eq!(age(600), "10 min");
        assert_eq!(age(3 * 86_400), "3 days");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(cut("ééé", 2), "éé...");
        assert_eq!(cut("short", 10), "short");
    }
}
