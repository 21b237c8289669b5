//! Compiling access configuration: profiles from the main file, path rules and the 403 page of
//! each environment.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ipnet::IpNet;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use toml::Spanned;

use crate::access::path;
use crate::access::profile::{ALLOW_ALL, ClientCa, DENY_ALL, Profile, Restriction};
use crate::access::ranges::RangeSet;
use crate::access::rules::{PathRules, rule_key};
use crate::config::schema::{EnvironmentFile, MainFile, ProfileSection};
use crate::config::{ConfigError, SourceFile};
use crate::pages::CustomPage;
use crate::tls::policy::crypto_provider;
use crate::tls::revocation::RevocationList;

/// Largest 403 page file accepted.
const MAX_PAGE_BYTES: u64 = 64 * 1024;

/// All profiles of a configuration; indices 0 and 1 are the presets.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub profiles: Vec<Profile>,
    pub names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Profiles {
    pub fn get(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

pub fn compile_profiles(main: &SourceFile<MainFile>, errors: &mut Vec<ConfigError>) -> Profiles {
    let mut profiles = vec![Profile::AllowAll, Profile::DenyAll];
    let mut names = vec![ALLOW_ALL.to_owned(), DENY_ALL.to_owned()];
    for (name, section) in &main.value.profiles {
        let key = format!("profiles.{name}");
        if name == ALLOW_ALL || name == DENY_ALL {
            errors.push(main.error_at(
                &section.span(),
                &key,
                format!("{name:?} is a preset and cannot be redefined"),
            ));
            continue;
        }
        if let Some(profile) = compile_profile(main, &key, section, errors) {
            profiles.push(profile);
            names.push(name.clone());
        }
    }
    let index = names.iter().enumerate().map(|(i, name)| (name.clone(), i)).collect();
    Profiles { profiles, names, index }
}

fn compile_profile(
    main: &SourceFile<MainFile>,
    key: &str,
    section: &Spanned<ProfileSection>,
    errors: &mut Vec<ConfigError>,
) -> Option<Profile> {
    let value = section.get_ref();
    if value.ranges.is_empty() && value.client_ca.is_none() {
        errors.push(main.error_at(
            &section.span(),
            key,
            "expected `ranges` and/or `client_ca`: a profile that lets nobody in is the preset \"deny-all\"",
        ));
        return None;
    }
    let before = errors.len();
    let allow = parse_ranges(main, &format!("{key}.ranges"), &value.ranges, errors);
    let deny = parse_ranges(main, &format!("{key}.deny"), &value.deny, errors);
    if value.client_ca.is_none()
        && let Some(first) = value.client_crls.first()
    {
        errors.push(main.error_at(
            &first.span(),
            &format!("{key}.client_crls"),
            "revocation lists need the `client_ca` whose certificates they revoke",
        ));
    }
    let client_ca = value.client_ca.as_ref().and_then(|written| {
        load_client_ca(main, written, key, &value.client_crls, errors)
            .map_err(|message| errors.push(main.error_at(&written.span(), &format!("{key}.client_ca"), message)))
            .ok()
    });
    (errors.len() == before).then(|| {
        Profile::Restricted(Restriction {
            allow: RangeSet::new(&allow),
            deny: RangeSet::new(&deny),
            client_ca,
            require: value.require,
            report_only: value.report_only,
        })
    })
}

pub fn parse_ranges(
    main: &SourceFile<MainFile>,
    key: &str,
    written: &[Spanned<String>],
    errors: &mut Vec<ConfigError>,
) -> Vec<IpNet> {
    let mut networks = Vec::with_capacity(written.len());
    for entry in written {
        let text = entry.get_ref();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(network) if network.trunc() != network => errors.push(main.error_at(
                &entry.span(),
                key,
                format!("{text:?} has host bits set; did you mean {:?}?", network.trunc().to_string()),
            )),
            Ok(network) => networks.push(network),
            Err(_) => errors.push(main.error_at(
                &entry.span(),
                key,
                format!("expected an address range such as \"192.0.2.0/24\" or \"2001:db8::/32\", or an address, found {text:?}"),
            )),
        }
    }
    networks
}

/// The profile's client CA with its revocation lists. An error in the bundle is returned (it
/// belongs to `client_ca`); an error in a CRL is pushed with the CRL's own place and key.
fn load_client_ca(
    main: &SourceFile<MainFile>,
    written: &Spanned<String>,
    key: &str,
    crls: &[Spanned<String>],
    errors: &mut Vec<ConfigError>,
) -> Result<Arc<ClientCa>, String> {
    let path = main.resolve(written.get_ref());
    let source = path.display().to_string();
    let bytes = crate::files::read_bounded(&path, crate::files::MAX_PEM_FILE)
        .map_err(|err| format!("cannot read CA bundle {source}: {err}"))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("cannot read CA bundle {source}: {err}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "{source} holds no PEM certificate (expected the CA's root and optional intermediates)"
        ));
    }
    let revocation = load_crls(main, key, crls, &certificates, errors);
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        digest.update(certificate.as_ref());
        roots
            .add(certificate)
            .map_err(|err| format!("{source} holds a certificate that cannot be a trust anchor: {err}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .allow_unauthenticated()
        .build()
        .map_err(|err| format!("cannot use {source} as a client CA: {err}"))?;
    Ok(Arc::new(ClientCa {
        id: ClientCa::id_of(digest.finish().as_ref()),
        source,
        verifier,
        revocation,
    }))
}

/// Read and check a profile's `client_crls` against its CA bundle; `None` when it has none or
/// one is refused (the error is pushed, and the configuration is refused with it).
fn load_crls(
    main: &SourceFile<MainFile>,
    key: &str,
    crls: &[Spanned<String>],
    bundle: &[CertificateDer<'static>],
    errors: &mut Vec<ConfigError>,
) -> Option<RevocationList> {
    if crls.is_empty() {
        return None;
    }
    let before = errors.len();
    let mut list = RevocationList::default();
    for written in crls {
        let path = main.resolve(written.get_ref());
        let source = path.display().to_string();
        let added = crate::files::read_bounded(&path, crate::files::MAX_PEM_FILE)
            .map_err(|err| format!("cannot read CRL {source}: {err}"))
            .and_then(|bytes| list.add_file(&source, &bytes, bundle));
        if let Err(message) = added {
            errors.push(main.error_at(&written.span(), &format!("{key}.client_crls"), message));
        }
    }
    (errors.len() == before).then_some(list)
}

/// The environment's path rules; empty when it has none (the environment is open).
pub fn compile_rules(
    file: &SourceFile<EnvironmentFile>,
    profiles: &Profiles,
    errors: &mut Vec<ConfigError>,
) -> PathRules {
    let value = &file.value;
    let mut rules = PathRules::new(value.case_insensitive_paths);
    for (prefix, profile_name) in &value.access {
        let key = format!("access.{prefix:?}");
        let span = profile_name.span();
        let normal = path::normalize(prefix)
            .ok()
            .filter(|normal| rule_key(normal) == rule_key(prefix));
        if normal.is_none() || prefix.contains('%') {
            errors.push(file.error_at(
                &span,
                &key,
                format!("expected a path prefix in normal form such as \"/api/\" (no escapes, dot segments or doubled slashes), found {prefix:?}"),
            ));
            continue;
        }
        let Some(profile) = profiles.get(profile_name.get_ref()) else {
            errors.push(file.error_at(
                &span,
                &key,
                format!(
                    "unknown profile {:?}; defined profiles: {}",
                    profile_name.get_ref(),
                    profiles.names.join(", ")
                ),
            ));
            continue;
        };
        if !rules.insert(prefix, profile) {
            errors.push(file.error_at(
                &span,
                &key,
                match rules.case_insensitive() {
                    true => format!(
                        "another rule already covers the prefix {prefix:?} (rules match without regard to case; set case_insensitive_paths = false for exact-case rules)"
                    ),
                    false => format!("another rule already covers the prefix {prefix:?}"),
                },
            ));
        }
    }
    rules
}

/// The environment's own 403 page, if it names one.
/// An environment's own page file (403 or 503), read once at load.
pub fn load_page(
    file: &SourceFile<EnvironmentFile>,
    written: Option<&Spanned<String>>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<CustomPage> {
    let written = written?;
    let path = file.resolve(written.get_ref());
    let read = crate::files::read_bounded(&path, MAX_PAGE_BYTES)
        .map_err(|err| format!("cannot read {}: {err}", path.display()));
    match read {
        Ok(bytes) => {
            let html = path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("html") || ext.eq_ignore_ascii_case("htm"));
            Some(CustomPage::new(Bytes::from(bytes), html, written.get_ref()))
        }
        Err(message) => {
            errors.push(file.error_at(&written.span(), key, message));
            None
        }
    }
}
