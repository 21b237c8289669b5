//! The background work of a group, off the request path: active health checks, re-resolving
//! host names, and closing idle connections past their time. Each loop holds only a weak
//! reference and ends when its group is gone (a reload replaced it and the last request on it
//! finished).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, header};
use http_body_util::{Either, Empty};
use tokio::task::JoinSet;

use super::connect::{ConnectSettings, connect};
use super::instance::Instance;
use super::pool::Sender;
use super::spec::{HealthCheck, Target};
use super::{UpstreamGroup, resolve};

/// Start the group's background loops (when running inside a tokio runtime).
pub fn supervise(group: &Arc<UpstreamGroup>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    if let Some(check) = group.spec.health_check.clone() {
        tokio::spawn(check_loop(Arc::downgrade(group), check));
    }
    if group
        .spec
        .targets
        .iter()
        .any(|target| matches!(target, Target::Name { .. }))
    {
        tokio::spawn(resolve_loop(Arc::downgrade(group), group.spec.resolve_interval));
    }
}

async fn check_loop(group: Weak<UpstreamGroup>, check: HealthCheck) {
    let mut every = tokio::time::interval(check.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(running) = group.upgrade() else { return };
        let instances = running.instances().clone();
        let mut checks = JoinSet::new();
        for instance in instances.iter() {
            let (group, instance, check) = (running.clone(), instance.clone(), check.clone());
            checks.spawn(async move {
                let passed = check_once(&group, &instance, &check).await;
                record_check(&group, &instance, &check, passed);
            });
        }
        drop(running);
        while checks.join_next().await.is_some() {}
    }
}

fn record_check(group: &UpstreamGroup, instance: &Instance, check: &HealthCheck, passed: Result<(), String>) {
    group.metrics().health_checked(passed.is_ok());
    match (instance.checked(passed.is_ok(), group.now(), check), passed) {
        (Some(true), _) => {
            tracing::info!(environment = %group.environment, instance = %instance.label, "instance healthy again");
        }
        (Some(false), Err(reason)) => {
            tracing::warn!(environment = %group.environment, instance = %instance.label, reason, "instance marked unhealthy");
        }
        (None, Err(reason)) => {
            tracing::debug!(environment = %group.environment, instance = %instance.label, reason, "health check failed");
        }
        _ => {}
    }
}

/// One check on a fresh connection: connected, answered within the timeout, expected status.
async fn check_once(group: &UpstreamGroup, instance: &Instance, check: &HealthCheck) -> Result<(), String> {
    let settings = ConnectSettings {
        timeout: check.timeout,
        tls: group.spec.tls.as_ref(),
        http1_only: false,
        counters: Some(&group.connections),
    };
    let exchange = async {
        let sender = connect(instance, &settings).await.map_err(|err| err.to_string())?;
        let mut request = Request::get(check.path.as_str())
            .header(header::USER_AGENT, "gatehouse-health-check")
            .body(Either::Right(Empty::new()))
            .map_err(|err| err.to_string())?;
        let response = match sender {
            Sender::Http1(mut sender) => {
                if let Ok(host) = http::HeaderValue::try_from(check.host.as_str()) {
                    request.headers_mut().insert(header::HOST, host);
                }
                sender.send_request(request).await
            }
            Sender::Http2(mut sender) => {
                let uri = format!("https://{}{}", check.host, check.path);
                *request.uri_mut() = uri.parse().map_err(|err: http::uri::InvalidUri| err.to_string())?;
                *request.version_mut() = http::Version::HTTP_2;
                sender.send_request(request).await
            }
        }
        .map_err(|err| err.to_string())?;
        let status = response.status().as_u16();
        if check.expected_status.contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    tokio::time::timeout(check.timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {:?}", check.timeout))?
}

async fn resolve_loop(group: Weak<UpstreamGroup>, interval: Duration) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(running) = group.upgrade() else { return };
        let targets = running.spec.targets.clone();
        let resolver = running.spec.resolver.clone();
        drop(running);
        match resolve::resolve_all(&targets, &resolver).await {
            Ok(addresses) => {
                let Some(running) = group.upgrade() else { return };
                running.replace_addresses(&addresses);
            }
            Err(err) => {
                // Keep following the addresses known last; a name server hiccup is no reason to
                // drop every instance.
                tracing::warn!(error = %err, "re-resolving upstream names failed; keeping the known addresses");
            }
        }
    }
}

/// How often [`reap_idle`] should run: the shortest period it uses.
pub const REAP_TICK: Duration = Duration::from_secs(1);

/// Close the pooled connections that have been idle past their group's `pool.idle_timeout`, for
/// each group whose turn it is (every half idle timeout, between 1 and 30 s). One task of the
/// server calls this every [`REAP_TICK`] for all groups: a task per environment would cost
/// 10,000 timers and task cells with 10,000 environments.
pub fn reap_idle(groups: &[Arc<UpstreamGroup>]) {
    for group in groups {
        let idle_timeout = group.spec.pool.idle_timeout;
        let period = (idle_timeout / 2).clamp(REAP_TICK, Duration::from_secs(30));
        let now = group.now();
        if now < group.next_reap.load(Ordering::Relaxed) {
            continue;
        }
        group
            .next_reap
            .store(now + super::instance::millis(period), Ordering::Relaxed);
        for instance in group.instances().iter() {
            instance.pool.reap(idle_timeout);
        }
    }
}
