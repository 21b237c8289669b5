//! Turning `upstreams` entries into addresses. Addresses are taken as written; host names are
//! resolved when the configuration is loaded (a name that does not resolve is a configuration
//! error) and again every `upstream.resolve_interval`, so an instance that moves is followed.
//!
//! Names go to the system resolver (`getaddrinfo`, honouring `/etc/hosts`), or, when the main
//! file names `upstream.nameservers`, straight to those servers over DNS, as nginx's `resolver`
//! directive does.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

use super::spec::Target;

/// Where host names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    System,
    NameServers(Vec<SocketAddr>),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    /// Index of the `upstreams` entry.
    pub target: usize,
    pub reason: String,
}

/// Every target's addresses, each with the index of its target, sorted within a target.
pub async fn resolve_all(targets: &[Target], resolver: &Resolver) -> Result<Vec<(SocketAddr, usize)>, ResolveError> {
    let mut addresses = Vec::with_capacity(targets.len());
    for (index, target) in targets.iter().enumerate() {
        match target {
            Target::Address(addr) => addresses.push((*addr, index)),
            Target::Name { host, port } => {
                let mut found = lookup(host, *port, resolver).await.map_err(|reason| ResolveError {
                    host: host.to_string(),
                    target: index,
                    reason,
                })?;
                found.sort();
                found.dedup();
                addresses.extend(found.into_iter().map(|addr| (addr, index)));
            }
        }
    }
    Ok(addresses)
}

/// [`resolve_all`] for configuration loading, which is not async: names (if any) are resolved on
/// a short-lived thread with its own runtime, so that it works inside and outside tokio.
pub fn resolve_all_blocking(targets: &[Target], resolver: &Resolver) -> Result<Vec<(SocketAddr, usize)>, ResolveError> {
    if targets.iter().all(|target| matches!(target, Target::Address(_))) {
        let addresses = targets.iter().enumerate().filter_map(|(index, target)| match target {
            Target::Address(addr) => Some((*addr, index)),
            Target::Name { .. } => None,
        });
        return Ok(addresses.collect());
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| ResolveError {
                        host: String::new(),
                        target: 0,
                        reason: format!("cannot start the resolver: {err}"),
                    })?;
                runtime.block_on(resolve_all(targets, resolver))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(ResolveError {
                    host: String::new(),
                    target: 0,
                    reason: "the resolver stopped unexpectedly".into(),
                })
            })
    })
}

async fn lookup(host: &str, port: u16, resolver: &Resolver) -> Result<Vec<SocketAddr>, String> {
    match resolver {
        Resolver::System => tokio::net::lookup_host((host, port))
            .await
            .map(Iterator::collect)
            .map_err(|err| err.to_string()),
        Resolver::NameServers(servers) => {
            let mut config = ResolverConfig::new();
            for server in servers {
                config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            }
            let mut options = ResolverOpts::default();
            options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            options.timeout = Duration::from_secs(2);
            options.attempts = 2;
            // Every round asks the servers: the answer is what the round is for.
            options.cache_size = 0;
            let resolver = hickory_resolver::Resolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
            let found = resolver
                .lookup_ip(format!("{host}."))
                .await
                .map_err(|err| err.to_string())?;
            Ok(found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
        }
    }
}
