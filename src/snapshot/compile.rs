//! Validation and compilation: typed configuration in, immutable [`Snapshot`] out.
//!
//! Every check that can fail runs here, before anything is served: certificates are read and
//! paired with their keys, every domain must be covered by a certificate, no domain may be
//! claimed twice. All problems are collected so that one run reports them all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use super::access::{Profiles, compile_profiles, compile_rules, load_page, parse_ranges};
use super::headers::compile_headers;
use super::reuse::{CompileCache, CompiledEnvironment, MainContext, settled_stamps};
use super::summary::{CertificateSummary, EnvironmentSummary, Summary, expiry_warning, unix_now};
use super::upstream::compile_upstream;
use super::{Environment, Settings, Snapshot};
use crate::access::profile::{ClientCa, Profile};
use crate::access::ranges::RangeSet;
use crate::access::rules::PathRules;
use crate::client_prefix::ClientPrefixes;
use crate::config::schema::LoggedRequests;
use crate::config::schema::{EnvironmentFile, MainFile};
use crate::config::{ConfigError, ConfigErrors, LoadedConfig, SourceFile};
use crate::headers::HeaderPolicy;
use crate::logs::Target;
use crate::pages::CustomPage;
use crate::proxy::observe::LogPolicy;
use crate::route::{Route, RouteTable};
use crate::tls::certificate_cache::CertificateCache;
use crate::tls::material::ServingCertificate;
use crate::tls::policy::{CertificateRole, TlsPolicy, crypto_provider};
use crate::tls::tickets::TicketKeyFile;
use crate::upstream::resolve::Resolver;

/// Compile loaded configuration files into a snapshot, or report every problem found.
pub fn compile(loaded: &LoadedConfig) -> Result<Snapshot, ConfigErrors> {
    compile_reusing(loaded, &mut CompileCache::default())
}

/// [`compile`], reusing from `cache` what an earlier compile made from files that have not
/// changed since (see [`super::reuse`]); the result is the same as a full compile's.
pub fn compile_reusing(loaded: &LoadedConfig, cache: &mut CompileCache) -> Result<Snapshot, ConfigErrors> {
    cache.begin(main_context(loaded));
    let compiled = compile_with(loaded, cache);
    let loads = cache.certificates.finish();
    compiled.map(|(mut snapshot, reusable)| {
        snapshot.summary.environments_reused = reusable.iter().filter(|(_, reused)| *reused).count();
        let fresh = reusable
            .iter()
            .filter(|(_, reused)| !*reused)
            .map(|(compiled, _)| compiled);
        cache.keep(fresh, &snapshot.policies);
        snapshot.summary.certificate_loads = loads;
        snapshot
    })
}

/// The main file and the files it names, as every environment is compiled against them; `None`
/// (nothing is reused) with a development certificate, which is made anew on every load.
fn main_context(loaded: &LoadedConfig) -> Option<MainContext> {
    let development = loaded.main.value.tls.development_certificate.as_ref();
    if development.is_some_and(|flag| *flag.get_ref()) {
        return None;
    }
    let inputs = loaded
        .main_input_files()
        .into_iter()
        .map(|path| {
            let stamp = crate::files::FileStamp::of(&path).ok();
            (path, stamp)
        })
        .collect();
    Some(MainContext {
        sha256: loaded.main.sha256(),
        inputs,
    })
}

/// An environment of this load: compiled now (with what it takes to reuse it next time, when
/// it may be reused), or taken as an earlier load compiled it.
enum Compiled {
    Fresh(
        Box<EnvironmentDraft>,
        Arc<SourceFile<EnvironmentFile>>,
        Option<Reusable>,
    ),
    Reused(Arc<CompiledEnvironment>),
}

/// What a freshly compiled environment needs besides its draft to be reused by the next load.
struct Reusable {
    inputs: Vec<(PathBuf, crate::files::FileStamp)>,
    certificate_files: Vec<(PathBuf, PathBuf)>,
}

type Compiles = (Snapshot, Vec<(Arc<CompiledEnvironment>, bool)>);

fn compile_with(loaded: &LoadedConfig, cache: &mut CompileCache) -> Result<Compiles, ConfigErrors> {
    let started = std::time::SystemTime::now();
    let mut errors = Vec::new();
    let settings = compile_settings(&loaded.main, &mut errors);
    let platform_source = platform_source(&loaded.main, &mut cache.certificates, &mut errors);
    let profiles = compile_profiles(&loaded.main, &mut errors);

    let mut claims: HashMap<String, Claim> = HashMap::with_capacity(loaded.environments.len() * 2);
    let mut names: HashMap<String, PathBuf> = HashMap::with_capacity(loaded.environments.len());
    let mut items = Vec::with_capacity(loaded.environments.len());
    let unchanged = cache.unchanged(&loaded.environments);
    for (file, unchanged) in loaded.environments.iter().zip(unchanged) {
        if let Some(compiled) = unchanged.then(|| cache.environment(file)).flatten() {
            if claim_reused(&compiled, &mut claims, &mut names, &mut errors) {
                items.push(Compiled::Reused(compiled));
            }
            continue;
        }
        let reusable = reusable_inputs(file, started);
        let mut context = EnvironmentContext {
            settings: &settings,
            profiles: &profiles,
            claims: &mut claims,
            names: &mut names,
            cache: &mut cache.certificates,
        };
        if let Some(draft) = compile_environment(file, &mut context, &mut errors) {
            items.push(Compiled::Fresh(Box::new(draft), file.clone(), reusable));
        }
    }
    let drafts: Vec<&EnvironmentDraft> = items
        .iter()
        .filter_map(|item| match item {
            Compiled::Fresh(draft, ..) => Some(&**draft),
            Compiled::Reused(_) => None,
        })
        .collect();
    let platform = match platform_source {
        Some(PlatformSource::Files(certificate)) => Some((certificate, "platform certificate".to_owned())),
        // No environment is reused with a development certificate: every draft is here.
        Some(PlatformSource::Development) => generate_development(&drafts, &mut errors),
        None => None,
    };
    let Some((platform, platform_label)) = platform else {
        return Err(ConfigErrors(errors));
    };
    check_platform_coverage(&loaded.main, &platform, &drafts, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let parts = Parts {
        settings,
        profiles,
        platform: (platform, platform_label),
    };
    assemble(loaded, parts, items, cache).map_err(ConfigErrors)
}

/// The files besides its own that an environment reads, stamped now, if it may be reused by the
/// next load (see [`super::reuse`]: no host-name upstream, no `upstream_tls`, every file settled).
fn reusable_inputs(file: &Arc<SourceFile<EnvironmentFile>>, now: std::time::SystemTime) -> Option<Reusable> {
    let value = &file.value;
    let by_address = value
        .upstreams
        .get_ref()
        .iter()
        .all(|written| written.get_ref().parse::<SocketAddr>().is_ok());
    if !by_address || value.upstream_tls.is_some() {
        return None;
    }
    let certificate_files: Vec<(PathBuf, PathBuf)> = value
        .certificates
        .iter()
        .map(|entry| {
            (
                file.resolve(entry.certificate.get_ref()),
                file.resolve(entry.key.get_ref()),
            )
        })
        .collect();
    let pages = (value.maintenance_page.iter())
        .chain(value.forbidden_page.iter())
        .map(|page| file.resolve(page.get_ref()));
    let paths = (certificate_files.iter())
        .flat_map(|(certificate, key)| [certificate.clone(), key.clone()])
        .chain(pages)
        .collect();
    Some(Reusable {
        inputs: settled_stamps(paths, now)?,
        certificate_files,
    })
}

/// The checks that span environments, for an environment taken from an earlier load: its name
/// and its domains must still be its own. False (with the errors) when they are not.
fn claim_reused(
    compiled: &Arc<CompiledEnvironment>,
    claims: &mut HashMap<String, Claim>,
    names: &mut HashMap<String, PathBuf>,
    errors: &mut Vec<ConfigError>,
) -> bool {
    let file = &compiled.file;
    let before = errors.len();
    if let Some(other) = names.insert(compiled.name.clone(), file.path.clone()) {
        errors.push(file.error_at(
            &file.value.name.span(),
            "name",
            format!(
                "environment {:?} is already defined in {}",
                compiled.name,
                other.display()
            ),
        ));
    }
    for domain in &compiled.domains {
        if let Some(claim) = claims.get(&domain.name) {
            errors.push(ConfigError::new(
                &file.path,
                Some(domain.line),
                Some("domains"),
                format!(
                    "domain {:?} is already claimed by environment {:?} ({}:{})",
                    domain.name,
                    claim.environment,
                    claim.file.display(),
                    claim.line
                ),
            ));
            continue;
        }
        let claim = Claim {
            environment: compiled.name.clone(),
            file: file.path.clone(),
            line: domain.line,
        };
        claims.insert(domain.name.clone(), claim);
    }
    errors.len() == before
}

/// What every environment is assembled with.
struct Parts {
    settings: Settings,
    profiles: Profiles,
    platform: (ServingCertificate, String),
}

/// What compiling one environment reads and records beyond its own file.
struct EnvironmentContext<'a> {
    settings: &'a Settings,
    profiles: &'a Profiles,
    claims: &'a mut HashMap<String, Claim>,
    names: &'a mut HashMap<String, PathBuf>,
    cache: &'a mut CertificateCache,
}

/// Who claimed a domain first, to name both places when a second environment claims it.
struct Claim {
    environment: String,
    file: PathBuf,
    line: usize,
}

enum PlatformSource {
    Files(ServingCertificate),
    Development,
}

/// An environment that passed validation, before policies and routes are assigned.
struct EnvironmentDraft {
    name: String,
    file: PathBuf,
    domains: Vec<DomainDraft>,
    upstream: crate::upstream::spec::ResolvedUpstream,
    retries: u32,
    idle_timeout: Option<std::time::Duration>,
    total_timeout: Option<std::time::Duration>,
    request_body_timeout: Option<std::time::Duration>,
    maintenance_page: Option<CustomPage>,
    maintenance_retry_after: u64,
    certificates: Vec<(ServingCertificate, String)>,
    response_timeout: std::time::Duration,
    max_request_body: u64,
    rate: Option<crate::rate_limit::Rate>,
    access_log: LogPolicy,
    rules: PathRules,
    forbidden_page: Option<CustomPage>,
    headers: HeaderPolicy,
    sha256: String,
}

#[derive(Debug, Clone)]
pub(super) struct DomainDraft {
    name: String,
    line: usize,
    /// Index into the environment's certificates, when a custom certificate covers it.
    certificate: Option<usize>,
}

/// `[access_log]`: which requests get a line (`sample` must be a share from 0 to 1).
fn compile_access_log(file: &SourceFile<EnvironmentFile>, errors: &mut Vec<ConfigError>) -> LogPolicy {
    let section = &file.value.access_log;
    let sample = match &section.sample {
        None => 0.0,
        Some(written) if (0.0..=1.0).contains(written.get_ref()) => *written.get_ref(),
        Some(written) => {
            errors.push(file.error_at(
                &written.span(),
                "access_log.sample",
                format!(
                    "expected a share from 0 to 1 (0.01 for one request in a hundred), found {}",
                    written.get_ref()
                ),
            ));
            0.0
        }
    };
    match section.requests {
        LoggedRequests::All => LogPolicy::EVERY,
        LoggedRequests::Notable => LogPolicy::notable(section.slow.0, sample),
    }
}

/// `limits.client_ipv4_prefix` (1 to 32) and `limits.client_ipv6_prefix` (1 to 128).
fn client_prefixes(main: &SourceFile<MainFile>, errors: &mut Vec<ConfigError>) -> ClientPrefixes {
    let limits = &main.value.limits;
    let defaults = ClientPrefixes::default();
    let mut length = |written: &Option<Spanned<u8>>, key: &str, most: u8, default: u8| match written {
        None => default,
        Some(written) if (1..=most).contains(written.get_ref()) => *written.get_ref(),
        Some(written) => {
            errors.push(main.error_at(
                &written.span(),
                key,
                format!("expected a prefix length from 1 to {most}, found {}", written.get_ref()),
            ));
            default
        }
    };
    ClientPrefixes {
        ipv4: length(
            &limits.client_ipv4_prefix,
            "limits.client_ipv4_prefix",
            32,
            defaults.ipv4,
        ),
        ipv6: length(
            &limits.client_ipv6_prefix,
            "limits.client_ipv6_prefix",
            128,
            defaults.ipv6,
        ),
    }
}

/// `listen.admin`: the admin listener's address (default 127.0.0.1:9901), or none for "off".
fn compile_admin(main: &SourceFile<MainFile>, errors: &mut Vec<ConfigError>) -> Option<SocketAddr> {
    match &main.value.listen.admin {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        Some(written) if written.get_ref() == "off" => None,
        Some(written) => match parse_socket_addr(written.get_ref()) {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "the admin listener is not on a loopback address: metrics and /config are reachable from the network");
                }
                Some(addr)
            }
            Err(message) => {
                errors.push(main.error_at(&written.span(), "listen.admin", format!("{message}, or \"off\"")));
                None
            }
        },
    }
}

/// The admin listener named by the main file at `main_file`, read without the environment
/// files: what `gatehouse reload` needs to reach the running process, which loads and checks
/// the whole configuration itself.
pub fn admin_address(main_file: &std::path::Path) -> Result<Option<SocketAddr>, ConfigErrors> {
    let main = crate::config::load::load_main(main_file)?;
    let mut errors = Vec::new();
    let admin = compile_admin(&main, &mut errors);
    if errors.is_empty() {
        Ok(admin)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn compile_settings(main: &SourceFile<MainFile>, errors: &mut Vec<ConfigError>) -> Settings {
    let listen = &main.value.listen;
    let https = parse_listeners(main, &listen.https, "listen.https", errors);
    let http = parse_listeners(main, &listen.http, "listen.http", errors);
    if listen.https.is_empty() {
        errors.push(ConfigError::new(
            &main.path,
            None,
            Some("listen.https"),
            "expected at least one https listener address, such as [\"0.0.0.0:443\", \"[::]:443\"]",
        ));
    }
    let limits = &main.value.limits;
    let upstream = &main.value.upstream;
    let forwarders = parse_ranges(main, "listen.trusted_forwarders", &listen.trusted_forwarders, errors);
    let admin = compile_admin(main, errors);
    let logging = &main.value.logging;
    let base = main.path.parent().unwrap_or_else(|| std::path::Path::new("."));
    Settings {
        https,
        http,
        admin,
        access_log: Target::parse(&logging.access_log, base),
        access_log_format: logging.access_log_format,
        audit_log: Target::parse(&logging.audit_log, base),
        redirect_port: listen.redirect_port,
        proxy_protocol: listen.proxy_protocol,
        trusted_forwarders: RangeSet::new(&forwarders),
        tls_handshake_timeout: limits.tls_handshake_timeout.0,
        request_header_timeout: limits.request_header_timeout.0,
        shutdown_grace: limits.shutdown_grace.0.unwrap_or_default(),
        shutdown_drain_timeout: limits.shutdown_drain_timeout.0,
        max_connections: limits.max_connections,
        max_connections_per_client: limits.max_connections_per_client,
        client_prefixes: client_prefixes(main, errors),
        ticket_keys: main.value.tls.ticket_keys.as_ref().and_then(|written| {
            TicketKeyFile::load(&main.resolve(written.get_ref()))
                .map(Arc::new)
                .map_err(|message| errors.push(main.error_at(&written.span(), "tls.ticket_keys", message)))
                .ok()
        }),
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_request_header_bytes: limits.max_request_header_bytes.max(8192),
        max_request_headers: limits.max_request_headers,
        max_uri_bytes: limits.max_uri_bytes,
        http2_max_concurrent_streams: limits.http2_max_concurrent_streams,
        max_requests_per_connection: limits.max_requests_per_connection.max(1),
        watch_files: main.value.reload.watch_files,
        watch_debounce: main.value.reload.watch_debounce.0,
        upstream_connect_timeout: upstream.connect_timeout.0,
        pool_idle_timeout: upstream.pool_idle_timeout.0,
        pool_max_idle_per_instance: upstream.pool_max_idle_per_instance,
        resolver: compile_resolver(main, errors),
        resolve_interval: upstream.resolve_interval.0,
    }
}

fn compile_resolver(main: &SourceFile<MainFile>, errors: &mut Vec<ConfigError>) -> Resolver {
    let written = &main.value.upstream.nameservers;
    if written.is_empty() {
        return Resolver::System;
    }
    let mut servers = Vec::new();
    for entry in written {
        match parse_socket_addr(entry.get_ref()) {
            Ok(addr) => servers.push(addr),
            Err(message) => errors.push(main.error_at(&entry.span(), "upstream.nameservers", message)),
        }
    }
    Resolver::NameServers(servers)
}

fn parse_listeners(
    main: &SourceFile<MainFile>,
    written: &[Spanned<String>],
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for entry in written {
        match parse_socket_addr(entry.get_ref()) {
            Ok(addr) if addr.port() != 0 && addrs.contains(&addr) => {
                errors.push(main.error_at(&entry.span(), key, format!("{addr} is listed twice")));
            }
            Ok(addr) => addrs.push(addr),
            Err(message) => errors.push(main.error_at(&entry.span(), key, message)),
        }
    }
    addrs
}

fn parse_socket_addr(written: &str) -> Result<SocketAddr, String> {
    written.parse().map_err(|_| {
        format!("expected an address as ip:port, such as \"127.0.0.1:8443\" or \"[::1]:8443\", found {written:?}")
    })
}

fn platform_source(
    main: &SourceFile<MainFile>,
    cache: &mut CertificateCache,
    errors: &mut Vec<ConfigError>,
) -> Option<PlatformSource> {
    let tls = &main.value.tls;
    let development = tls.development_certificate.as_ref().filter(|flag| *flag.get_ref());
    match (&tls.certificate, &tls.key, development) {
        (Some(_), _, Some(flag)) | (_, Some(_), Some(flag)) => {
            errors.push(main.error_at(
                &flag.span(),
                "tls.development_certificate",
                "expected either `certificate` and `key` files or `development_certificate = true`, not both",
            ));
            None
        }
        (None, None, Some(_)) => Some(PlatformSource::Development),
        (Some(certificate), Some(key), None) => {
            let certificate_path = main.resolve(certificate.get_ref());
            let key_path = main.resolve(key.get_ref());
            match cache.serving(&certificate_path, &key_path, &crypto_provider()) {
                Ok(serving) => Some(PlatformSource::Files(serving)),
                Err(err) => {
                    errors.push(main.error_at(&certificate.span(), "tls.certificate", err.to_string()));
                    None
                }
            }
        }
        (certificate, key, None) => {
            let (line, missing) = match (certificate, key) {
                (Some(certificate), None) => (Some(main.line_of(&certificate.span())), "tls.key"),
                (None, Some(key)) => (Some(main.line_of(&key.span())), "tls.certificate"),
                _ => (None, "tls.certificate"),
            };
            errors.push(ConfigError::new(
                &main.path,
                line,
                Some(missing),
                "expected the platform certificate as `certificate` and `key` PEM files (or `development_certificate = true` for a self-signed one)",
            ));
            None
        }
    }
}

fn compile_environment(
    file: &SourceFile<EnvironmentFile>,
    context: &mut EnvironmentContext<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<EnvironmentDraft> {
    let EnvironmentContext {
        settings,
        profiles,
        claims,
        names,
        cache,
    } = context;
    let before = errors.len();
    let value = &file.value;
    let name = value.name.get_ref().clone();
    if let Err(message) = validate_environment_name(&name) {
        errors.push(file.error_at(&value.name.span(), "name", message));
    } else if let Some(other) = names.insert(name.clone(), file.path.clone()) {
        errors.push(file.error_at(
            &value.name.span(),
            "name",
            format!("environment {name:?} is already defined in {}", other.display()),
        ));
    }

    let upstream = compile_upstream(file, settings, errors);
    let maintenance_page = load_page(file, value.maintenance_page.as_ref(), "maintenance_page", errors);
    let certificates = load_certificates(file, cache, errors);
    let domains = compile_domains(file, &name, &certificates, claims, errors);
    check_certificates_used(file, &certificates, &domains, errors);
    let rules = compile_rules(file, profiles, errors);
    let forbidden_page = load_page(file, value.forbidden_page.as_ref(), "forbidden_page", errors);
    let headers = compile_headers(file, errors);
    let access_log = compile_access_log(file, errors);

    let upstream = upstream?;
    (errors.len() == before).then(|| EnvironmentDraft {
        name,
        file: file.path.clone(),
        domains,
        upstream,
        retries: value.retries,
        idle_timeout: value.timeouts.idle.0,
        total_timeout: value.timeouts.total.0,
        request_body_timeout: value.timeouts.request_body.0,
        maintenance_page,
        maintenance_retry_after: value.maintenance_retry_after.0.as_secs().max(1),
        certificates,
        response_timeout: value.timeouts.response.0,
        max_request_body: value.max_request_body.0,
        access_log,
        rate: value.rate_limit.as_ref().map(|limit| crate::rate_limit::Rate {
            per_second: limit.requests_per_second,
            burst: limit.burst.unwrap_or(limit.requests_per_second),
            tracked_clients: limit.tracked_clients,
        }),
        rules,
        forbidden_page,
        headers,
        sha256: file.sha256(),
    })
}

fn validate_environment_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected a name of 1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit, found {name:?}"
        ))
    }
}

fn load_certificates(
    file: &SourceFile<EnvironmentFile>,
    cache: &mut CertificateCache,
    errors: &mut Vec<ConfigError>,
) -> Vec<(ServingCertificate, String)> {
    let provider = crypto_provider();
    let mut loaded = Vec::new();
    for entry in &file.value.certificates {
        let certificate_path = file.resolve(entry.certificate.get_ref());
        let key_path = file.resolve(entry.key.get_ref());
        match cache.serving(&certificate_path, &key_path, &provider) {
            Ok(serving) => loaded.push((serving, certificate_path.display().to_string())),
            Err(err) => {
                errors.push(file.error_at(&entry.certificate.span(), "certificates.certificate", err.to_string()))
            }
        }
    }
    loaded
}

fn compile_domains(
    file: &SourceFile<EnvironmentFile>,
    environment: &str,
    certificates: &[(ServingCertificate, String)],
    claims: &mut HashMap<String, Claim>,
    errors: &mut Vec<ConfigError>,
) -> Vec<DomainDraft> {
    let written = &file.value.domains;
    if written.get_ref().is_empty() {
        errors.push(file.error_at(
            &written.span(),
            "domains",
            "expected at least one domain, such as [\"shop.apps.example.com\", \"*.shop.example\"]",
        ));
    }
    let mut domains = Vec::new();
    for entry in written.get_ref() {
        let line = file.line_of(&entry.span());
        let domain = match validate_domain(entry.get_ref()) {
            Ok(domain) => domain,
            Err(message) => {
                errors.push(file.error_at(&entry.span(), "domains", message));
                continue;
            }
        };
        if let Some(claim) = claims.get(&domain) {
            errors.push(file.error_at(
                &entry.span(),
                "domains",
                format!(
                    "domain {domain:?} is already claimed by environment {:?} ({}:{})",
                    claim.environment,
                    claim.file.display(),
                    claim.line
                ),
            ));
            continue;
        }
        claims.insert(
            domain.clone(),
            Claim {
                environment: environment.to_owned(),
                file: file.path.clone(),
                line,
            },
        );
        let certificate = certificates
            .iter()
            .position(|(serving, _)| serving.facts.covers(&domain));
        domains.push(DomainDraft {
            name: domain,
            line,
            certificate,
        });
    }
    domains
}

/// A custom certificate that covers none of its environment's domains is a mistake: it would
/// never be served, and the domain it was meant for would get the platform certificate.
fn check_certificates_used(
    file: &SourceFile<EnvironmentFile>,
    certificates: &[(ServingCertificate, String)],
    domains: &[DomainDraft],
    errors: &mut Vec<ConfigError>,
) {
    for (index, (serving, source)) in certificates.iter().enumerate() {
        if domains.iter().any(|domain| domain.certificate == Some(index)) {
            continue;
        }
        let entry = &file.value.certificates[index];
        errors.push(file.error_at(
            &entry.certificate.span(),
            "certificates.certificate",
            format!(
                "certificate {source} does not cover any domain of this environment (it names {:?})",
                serving.facts.dns_names
            ),
        ));
    }
}

/// Lowercase a configured domain and check it is an exact host name or `*.` followed by one.
fn validate_domain(written: &str) -> Result<String, String> {
    let domain = written.to_ascii_lowercase();
    let host = domain.strip_prefix("*.").unwrap_or(&domain);
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if labels_ok {
        Ok(domain)
    } else {
        Err(format!(
            "expected a host name such as \"shop.example.com\" or a wildcard such as \"*.apps.example.com\", found {written:?}"
        ))
    }
}

/// Every domain without a custom certificate is served with the platform certificate, which must
/// then cover it: otherwise every client would see a name mismatch.
fn check_platform_coverage(
    main: &SourceFile<MainFile>,
    platform: &ServingCertificate,
    drafts: &[&EnvironmentDraft],
    errors: &mut Vec<ConfigError>,
) {
    for draft in drafts {
        for domain in draft.domains.iter().filter(|domain| domain.certificate.is_none()) {
            if !platform.facts.covers(&domain.name) {
                errors.push(ConfigError::new(
                    &draft.file,
                    Some(domain.line),
                    Some("domains"),
                    format!(
                        "no certificate covers domain {:?}: the platform certificate ({}) names {:?}; add a [[certificates]] entry for it",
                        domain.name,
                        main.resolve(main.value.tls.certificate.as_ref().map_or("", |c| c.get_ref())).display(),
                        platform.facts.dns_names
                    ),
                ));
            }
        }
    }
}

fn generate_development(
    drafts: &[&EnvironmentDraft],
    errors: &mut Vec<ConfigError>,
) -> Option<(ServingCertificate, String)> {
    let mut names: Vec<String> = drafts
        .iter()
        .flat_map(|draft| {
            draft
                .domains
                .iter()
                .filter(|d| d.certificate.is_none())
                .map(|d| d.name.clone())
        })
        .collect();
    names.push("localhost".to_owned());
    match crate::tls::development::generate(names, &crypto_provider()) {
        Ok(serving) => Some((
            serving,
            "development certificate (self-signed, generated at start)".to_owned(),
        )),
        Err(err) => {
            errors.push(ConfigError::new(
                std::path::Path::new("tls.development_certificate"),
                None,
                None,
                err.to_string(),
            ));
            None
        }
    }
}

/// An environment compiled now, in the shape an environment reused from an earlier load has.
fn build_environment(
    draft: EnvironmentDraft,
    file: Arc<SourceFile<EnvironmentFile>>,
    reusable: Option<Reusable>,
    profiles: &Profiles,
    platform: &ServingCertificate,
) -> Arc<CompiledEnvironment> {
    let certificates: Vec<CertificateSummary> = draft
        .certificates
        .iter()
        .map(|(serving, source)| certificate_summary(serving, source.clone()))
        .collect();
    let summary = EnvironmentSummary {
        name: draft.name.clone(),
        file: draft.file.clone(),
        domains: draft.domains.iter().map(|d| d.name.clone()).collect(),
        upstreams: draft.upstream.spec.targets.iter().map(ToString::to_string).collect(),
        certificates,
        sha256: draft.sha256.clone(),
        domain_expiry: draft
            .domains
            .iter()
            .map(|domain| {
                let served = domain
                    .certificate
                    .and_then(|c| draft.certificates.get(c))
                    .map_or(platform, |(c, _)| c);
                (domain.name.clone(), served.facts.not_after)
            })
            .collect(),
    };
    let client_cas = client_cas_of(&draft.rules, profiles);
    let mut environment = Environment::new(draft.name.as_str().into(), draft.upstream, draft.response_timeout);
    environment.retries = draft.retries;
    environment.idle_timeout = draft.idle_timeout;
    environment.total_timeout = draft.total_timeout;
    environment.request_body_timeout = draft.request_body_timeout;
    environment.maintenance_page = draft.maintenance_page;
    environment.maintenance_retry_after = http::HeaderValue::from(draft.maintenance_retry_after);
    environment.client_cas = profile_cas_of(&draft.rules, profiles);
    environment.rules = draft.rules;
    environment.forbidden_page = draft.forbidden_page;
    environment.max_request_body = draft.max_request_body;
    environment.rate = draft.rate;
    environment.access_log = draft.access_log;
    environment.headers = draft.headers;
    let (inputs, certificate_files, reusable) = match reusable {
        Some(reusable) => (reusable.inputs, reusable.certificate_files, true),
        None => (Vec::new(), Vec::new(), false),
    };
    Arc::new(CompiledEnvironment {
        file,
        inputs,
        reusable,
        name: draft.name,
        domains: draft.domains,
        certificates: draft.certificates,
        certificate_files,
        client_cas,
        environment: Arc::new(environment),
        summary: Arc::new(summary),
    })
}

/// Build policies (one per distinct certificate), routes and environments.
fn assemble(
    loaded: &LoadedConfig,
    parts: Parts,
    items: Vec<Compiled>,
    cache: &mut CompileCache,
) -> Result<Compiles, Vec<ConfigError>> {
    let Parts {
        settings,
        profiles,
        platform: (platform, platform_label),
    } = parts;
    let main = &loaded.main;
    let tls_error = |err: rustls::Error| vec![ConfigError::new(&main.path, None, Some("tls"), err.to_string())];
    let platform_policy = match cache.policy(
        TlsPolicy::key_for(&platform, CertificateRole::Platform, &[]),
        &platform,
        "platform",
    ) {
        Some(policy) => policy,
        None => TlsPolicy::new(&platform, CertificateRole::Platform, Vec::new(), "platform").map_err(tls_error)?,
    };
    let mut policies = vec![platform_policy.clone()];
    let mut policy_index = HashMap::from([(platform_policy.key, 0usize)]);
    let mut routes = RouteTable::default();
    let mut environments = Vec::with_capacity(items.len());
    let mut summaries = Vec::with_capacity(items.len());
    let mut compiled_environments = Vec::with_capacity(items.len());
    let now = unix_now();
    let mut warnings = Vec::new();

    for (index, item) in items.into_iter().enumerate() {
        let (compiled, reused) = match item {
            Compiled::Reused(compiled) => (compiled, true),
            Compiled::Fresh(draft, file, reusable) => {
                (build_environment(*draft, file, reusable, &profiles, &platform), false)
            }
        };
        let client_cas = &compiled.client_cas;
        let mut policy_of = |certificate: &ServingCertificate, custom: bool| -> Result<usize, Vec<ConfigError>> {
            let role = if custom {
                CertificateRole::Custom
            } else {
                CertificateRole::Platform
            };
            let key = TlsPolicy::key_for(certificate, role, client_cas);
            if let Some(&existing) = policy_index.get(&key) {
                return Ok(existing);
            }
            let label = match certificate.facts.dns_names.first() {
                Some(name) if custom => format!("{}:{name}", compiled.name),
                _ => compiled.name.clone(),
            };
            let policy = match cache.policy(key, certificate, &label) {
                Some(policy) => policy,
                None => TlsPolicy::new(certificate, role, client_cas.clone(), &label).map_err(tls_error)?,
            };
            policies.push(policy);
            policy_index.insert(key, policies.len() - 1);
            Ok(policies.len() - 1)
        };
        let platform_for_environment = policy_of(&platform, false)?;
        let mut certificate_policy = Vec::with_capacity(compiled.certificates.len());
        for (serving, _) in &compiled.certificates {
            certificate_policy.push(policy_of(serving, true)?);
        }
        for domain in &compiled.domains {
            let policy = domain
                .certificate
                .and_then(|c| certificate_policy.get(c).copied())
                .unwrap_or(platform_for_environment);
            routes.insert(
                &domain.name,
                Route {
                    environment: index,
                    policy,
                },
            );
        }
        warnings.extend(
            compiled
                .summary
                .certificates
                .iter()
                .filter_map(|c| expiry_warning(c, now)),
        );
        summaries.push(compiled.summary.clone());
        environments.push(compiled.environment.clone());
        compiled_environments.push((compiled, reused));
    }
    // Only environments that may be reused are kept for the next load.
    compiled_environments.retain(|(compiled, _)| compiled.reusable);

    let platform_certificate = certificate_summary(&platform, platform_label);
    warnings.extend(expiry_warning(&platform_certificate, now));
    warnings.extend(stale_crl_warnings(&profiles, now));
    warnings.extend(staged_profile_warnings(&profiles));
    let listeners = settings
        .https
        .iter()
        .map(|addr| format!("https://{addr}"))
        .chain(settings.http.iter().map(|addr| format!("http://{addr}")))
        .collect();
    let snapshot = Snapshot {
        sha256: loaded.sha256.clone(),
        inputs: loaded.input_files(),
        environment_dir: loaded.environment_dir(),
        unrouted_headers: HeaderPolicy::platform_defaults(),
        routes,
        environments,
        platform_policy,
        policies,
        settings,
        profiles: profiles.profiles,
        profile_names: profiles.names,
        summary: Summary {
            main_file: main.path.clone(),
            listeners,
            platform_certificate,
            environments: summaries,
            warnings,
            certificate_loads: Default::default(),
            environments_reused: 0,
        },
    };
    Ok((snapshot, compiled_environments))
}

/// A reminder for every report-only profile: what it would deny is let through.
fn staged_profile_warnings(profiles: &Profiles) -> Vec<String> {
    (profiles.names.iter().zip(&profiles.profiles))
        .filter(|(_, profile)| matches!(profile, Profile::Restricted(restriction) if restriction.report_only))
        .map(|(name, _)| {
            format!("profile {name:?} is report-only: requests it would deny reach the app (counted as would_deny)")
        })
        .collect()
}

/// A warning for every CRL past its `nextUpdate`: it is still applied (README, "Revocation"),
/// but its issuer has most likely published a newer one that gatehouse does not have.
fn stale_crl_warnings(profiles: &Profiles, now: i64) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, profile) in profiles.names.iter().zip(&profiles.profiles) {
        if let Profile::Restricted(restriction) = profile
            && let Some(list) = restriction.client_ca.as_ref().and_then(|ca| ca.revocation.as_ref())
        {
            for crl in &list.files {
                if let Some(next_update) = crl.next_update.filter(|next_update| *next_update <= now) {
                    let hours = (now - next_update) / 3600;
                    warnings.push(format!(
                        "CRL {} of profile {name:?} is past its nextUpdate by {hours} hours: it is still applied, \
                         but certificates revoked since are not refused until a fresh CRL is installed",
                        crl.source
                    ));
                }
            }
        }
    }
    warnings
}

/// The client CA of every profile an environment's rules use, each profile's own (two profiles
/// may share a bundle with different revocation lists).
fn profile_cas_of(rules: &PathRules, profiles: &Profiles) -> Vec<Arc<ClientCa>> {
    let mut cas: Vec<Arc<ClientCa>> = Vec::new();
    for profile in rules.profiles() {
        if let Some(Profile::Restricted(restriction)) = profiles.profiles.get(profile)
            && let Some(ca) = &restriction.client_ca
            && !cas.iter().any(|known| Arc::ptr_eq(known, ca))
        {
            cas.push(ca.clone());
        }
    }
    cas
}

/// The client CAs of every profile an environment's rules use, each bundle once.
fn client_cas_of(rules: &PathRules, profiles: &Profiles) -> Vec<Arc<ClientCa>> {
    let mut cas: Vec<Arc<ClientCa>> = Vec::new();
    for ca in profile_cas_of(rules, profiles) {
        if !cas.iter().any(|known| known.id == ca.id) {
            cas.push(ca);
        }
    }
    cas.sort_by_key(|ca| ca.id);
    cas
}

fn certificate_summary(serving: &ServingCertificate, source: String) -> CertificateSummary {
    CertificateSummary {
        source,
        subject: serving.facts.subject.clone(),
        names: serving.facts.dns_names.clone(),
        not_after: serving.facts.not_after,
    }
}

#[cfg(test)]
mod tests {
    use super::{validate_domain, validate_environment_name};

    #[test]
    fn domains_are_host_names_or_wildcards() {
        assert_eq!(validate_domain("Shop.Example.COM").as_deref(), Ok("shop.example.com"));
        assert!(validate_domain("*.apps.example").is_ok());
        for bad in [
            "",
            "*.",
            "a..b",
            "-a.b",
            "a-.b",
            "a b.c",
            "*.*.a",
            "a.*.b",
            "shop.example.com:443",
            "https://x.y",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn environment_names_are_safe_labels() {
        assert!(validate_environment_name("shop-production").is_ok());
        for bad in ["", "Shop", "-x", "a b", "a/b"] {
            assert!(validate_environment_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
