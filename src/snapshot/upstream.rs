//! Compiling an environment's upstream settings: targets (addresses or host names, resolved
//! now), balancing, health checks, passive detection, pool limits and TLS to the instances.

use std::net::SocketAddr;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use toml::Spanned;

use super::Settings;
use crate::config::schema::{EnvironmentFile, HealthCheckSection, UpstreamTlsSection};
use crate::config::{ConfigError, SourceFile};
use crate::tls::material::ServingCertificate;
use crate::tls::policy::crypto_provider;
use crate::upstream::resolve::resolve_all_blocking;
use crate::upstream::spec::{HealthCheck, Outlier, PoolLimits, ResolvedUpstream, Target, UpstreamSpec, UpstreamTls};

/// The environment's upstream settings, with its names resolved; `None` after reporting errors.
pub fn compile_upstream(
    file: &SourceFile<EnvironmentFile>,
    settings: &Settings,
    errors: &mut Vec<ConfigError>,
) -> Option<ResolvedUpstream> {
    let before = errors.len();
    let value = &file.value;
    let targets = compile_targets(file, errors);
    let health_check = value
        .health_check
        .as_ref()
        .and_then(|section| compile_health_check(file, section, errors));
    let outlier = &value.outlier_detection;
    if *outlier.max_ejected_percent.get_ref() > 100 {
        errors.push(file.error_at(
            &outlier.max_ejected_percent.span(),
            "outlier_detection.max_ejected_percent",
            "expected a percentage from 0 to 100",
        ));
    }
    let tls = value
        .upstream_tls
        .as_ref()
        .and_then(|section| compile_tls(file, section, errors));
    if errors.len() != before {
        return None;
    }
    let spec = UpstreamSpec {
        targets,
        balance: value.load_balancing,
        health_check,
        outlier: Outlier {
            consecutive_failures: outlier.consecutive_failures,
            base_ejection: outlier.base_ejection.0,
            max_ejection: outlier.max_ejection.0.max(outlier.base_ejection.0),
            max_ejected_percent: *outlier.max_ejected_percent.get_ref(),
            slow_start: outlier.slow_start.0.unwrap_or_default(),
        },
        pool: PoolLimits {
            max_idle_per_instance: value
                .pool
                .max_idle_per_instance
                .unwrap_or(settings.pool_max_idle_per_instance),
            idle_timeout: value
                .pool
                .idle_timeout
                .map_or(settings.pool_idle_timeout, |timeout| timeout.0),
        },
        connect_timeout: value
            .timeouts
            .connect
            .map_or(settings.upstream_connect_timeout, |timeout| timeout.0),
        tls,
        resolver: settings.resolver.clone(),
        resolve_interval: settings.resolve_interval,
    };
    match resolve_all_blocking(&spec.targets, &spec.resolver) {
        Ok(addresses) => Some(ResolvedUpstream { spec, addresses }),
        Err(err) => {
            let span = value
                .upstreams
                .get_ref()
                .get(err.target)
                .map_or_else(|| value.upstreams.span(), Spanned::span);
            errors.push(file.error_at(
                &span,
                "upstreams",
                format!("{err} (expected a name that resolves, or an ip:port address)"),
            ));
            None
        }
    }
}

fn compile_targets(file: &SourceFile<EnvironmentFile>, errors: &mut Vec<ConfigError>) -> Vec<Target> {
    let written = &file.value.upstreams;
    if written.get_ref().is_empty() {
        errors.push(file.error_at(
            &written.span(),
            "upstreams",
            "expected at least one app instance, such as [\"127.0.0.1:9001\"] or [\"app-1.internal:8080\"]",
        ));
    }
    let mut targets = Vec::new();
    for entry in written.get_ref() {
        match parse_target(entry.get_ref()) {
            Ok(target) if targets.contains(&target) => {
                errors.push(file.error_at(
                    &entry.span(),
                    "upstreams",
                    format!("{} is listed twice", entry.get_ref()),
                ));
            }
            Ok(target) => targets.push(target),
            Err(message) => errors.push(file.error_at(&entry.span(), "upstreams", message)),
        }
    }
    targets
}

/// `ip:port`, `[ipv6]:port` or `host:port`.
pub fn parse_target(written: &str) -> Result<Target, String> {
    if let Ok(addr) = written.parse::<SocketAddr>() {
        return Ok(Target::Address(addr));
    }
    let expected = || {
        format!(
            "expected an instance as ip:port or host:port, such as \"127.0.0.1:9001\", \"[::1]:9001\" or \"app-1.internal:8080\", found {written:?}"
        )
    };
    let (host, port) = written.rsplit_once(':').ok_or_else(expected)?;
    let port: u16 = port.parse().map_err(|_| expected())?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid_host || port == 0 {
        return Err(expected());
    }
    Ok(Target::Name {
        host: host.to_ascii_lowercase().into(),
        port,
    })
}

fn compile_health_check(
    file: &SourceFile<EnvironmentFile>,
    section: &HealthCheckSection,
    errors: &mut Vec<ConfigError>,
) -> Option<HealthCheck> {
    let path = section.path.get_ref();
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        errors.push(file.error_at(
            &section.path.span(),
            "health_check.path",
            format!("expected a path such as \"/healthz\", found {path:?}"),
        ));
        return None;
    }
    let expected_status = match &section.expected_status {
        None => 200..=399,
        Some(written) => match parse_status_range(written.get_ref()) {
            Some(range) => range,
            None => {
                errors.push(file.error_at(
                    &written.span(),
                    "health_check.expected_status",
                    format!(
                        "expected a status such as \"200\" or a range such as \"200-399\", found {:?}",
                        written.get_ref()
                    ),
                ));
                return None;
            }
        },
    };
    let host = section.host.clone().or_else(|| {
        file.value
            .domains
            .get_ref()
            .iter()
            .map(|domain| domain.get_ref())
            .find(|domain| !domain.starts_with('*'))
            .cloned()
    });
    Some(HealthCheck {
        path: path.clone(),
        host: host.unwrap_or_else(|| "localhost".into()),
        interval: section.interval.0,
        timeout: section.timeout.0,
        healthy_threshold: section.healthy_threshold.get(),
        unhealthy_threshold: section.unhealthy_threshold.get(),
        expected_status,
    })
}

fn parse_status_range(written: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let status = |text: &str| {
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|code| (100..=599).contains(code))
    };
    match written.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (status(low)?, status(high)?);
            (low <= high).then_some(low..=high)
        }
        None => status(written).map(|code| code..=code),
    }
}

fn compile_tls(
    file: &SourceFile<EnvironmentFile>,
    section: &UpstreamTlsSection,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamTls> {
    let mut identity = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let ca_path = file.resolve(section.ca.get_ref());
    let roots = match read_roots(&ca_path) {
        Ok((roots, bytes)) => {
            identity.update(&bytes);
            roots
        }
        Err(message) => {
            errors.push(file.error_at(&section.ca.span(), "upstream_tls.ca", message));
            return None;
        }
    };
    let server_name = match &section.server_name {
        None => None,
        Some(written) => match ServerName::try_from(written.get_ref().clone()) {
            Ok(name) => {
                identity.update(written.get_ref().as_bytes());
                Some(name)
            }
            Err(_) => {
                errors.push(file.error_at(
                    &written.span(),
                    "upstream_tls.server_name",
                    format!("expected a DNS name or IP address, found {:?}", written.get_ref()),
                ));
                return None;
            }
        },
    };
    let client_certificate = match (&section.certificate, &section.key) {
        (None, None) => None,
        (Some(certificate), Some(key)) => {
            let (certificate_path, key_path) = (file.resolve(certificate.get_ref()), file.resolve(key.get_ref()));
            let loaded = ServingCertificate::from_files(&certificate_path, &key_path, &crypto_provider())
                .map_err(|err| err.to_string())
                .and_then(|serving| {
                    let bytes = crate::files::read_bounded(&key_path, crate::files::MAX_PEM_FILE)
                        .map_err(|err| format!("cannot read {}: {err}", key_path.display()))?;
                    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| err.to_string())?;
                    Ok((serving.certified.cert.clone(), key))
                });
            match loaded {
                Ok((chain, key)) => {
                    chain
                        .iter()
                        .for_each(|certificate| identity.update(certificate.as_ref()));
                    identity.update(key.secret_der());
                    Some((chain, key))
                }
                Err(message) => {
                    errors.push(file.error_at(&certificate.span(), "upstream_tls.certificate", message));
                    return None;
                }
            }
        }
        (Some(written), None) | (None, Some(written)) => {
            errors.push(file.error_at(
                &written.span(),
                "upstream_tls",
                "expected both `certificate` and `key` for a client certificate, or neither",
            ));
            return None;
        }
    };
    identity.update(&[u8::from(section.http2)]);
    let (config, http1_config) = match crate::upstream::client_configs(roots, client_certificate, section.http2) {
        Ok(configs) => configs,
        Err(err) => {
            errors.push(file.error_at(&section.ca.span(), "upstream_tls", format!("cannot set up TLS: {err}")));
            return None;
        }
    };
    let mut digest = [0u8; 32];
    digest.copy_from_slice(identity.finish().as_ref());
    Some(UpstreamTls {
        config,
        http1_config,
        server_name,
        identity: digest,
    })
}

fn read_roots(path: &std::path::Path) -> Result<(RootCertStore, Vec<u8>), String> {
    let source = path.display();
    let bytes = crate::files::read_bounded(path, crate::files::MAX_PEM_FILE)
        .map_err(|err| format!("cannot read CA bundle {source}: {err}"))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("cannot read CA bundle {source}: {err}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "{source} holds no PEM certificate (expected the CA that signs the instances' certificates)"
        ));
    }
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|err| format!("{source} holds a certificate that cannot be a trust anchor: {err}"))?;
    }
    Ok((roots, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_addresses_or_host_names_with_ports() {
        assert_eq!(
            parse_target("127.0.0.1:9001"),
            Ok(Target::Address(SocketAddr::from(([127, 0, 0, 1], 9001))))
        );
        assert!(matches!(parse_target("[::1]:9001"), Ok(Target::Address(_))));
        assert_eq!(
            parse_target("App-1.internal:8080"),
            Ok(Target::Name {
                host: "app-1.internal".into(),
                port: 8080
            })
        );
        for wrong in [
            "app",
            "app:",
            "app:0",
            ":80",
            "a..b:80",
            "a b:80",
            "app:99999",
            "http://app:80",
        ] {
            assert!(parse_target(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200-399"), Some(200..=399));
        assert_eq!(parse_status_range("204"), Some(204..=204));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("abc"), None);
        assert_eq!(parse_status_range("700"), None);
    }
}
