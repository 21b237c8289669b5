//! Compiling an environment's `[response_headers]` (validated security headers) and
//! `[custom_response_headers]` (any other header, checked for HTTP syntax) into a policy.

use std::collections::HashSet;

use http::header::{HeaderName, HeaderValue};
use toml::Spanned;

use crate::config::schema::EnvironmentFile;
use crate::config::{ConfigError, SourceFile};
use crate::headers::validate::known;
use crate::headers::{DEFAULT_HSTS, HeaderAction, HeaderPolicy, PROTECTED};

const ENTRY_FORMS: &str = "expected a value (\"...\"), a table { value = \"...\", mode = \"set\" | \"if_missing\" }, { mode = \"remove\" }, or false to leave the header alone";

/// One entry as written: `false`, or a mode with its value.
enum Entry {
    Off,
    Action(HeaderAction),
}

pub fn compile_headers(file: &SourceFile<EnvironmentFile>, errors: &mut Vec<ConfigError>) -> HeaderPolicy {
    let value = &file.value;
    let mut actions: Vec<(HeaderName, HeaderAction)> = Vec::new();
    let mut hsts_configured = false;
    let mut seen: HashSet<HeaderName> = HashSet::new();
    for (table, custom) in [(&value.response_headers, false), (&value.custom_response_headers, true)] {
        let table_name = if custom {
            "custom_response_headers"
        } else {
            "response_headers"
        };
        for (name, written) in table {
            let key = format!("{table_name}.{name}");
            let located = |message: String| file.error_at(&written.span(), &key, message);
            let header_name = match check_name(name, custom) {
                Ok(header_name) => header_name,
                Err(message) => {
                    errors.push(located(message));
                    continue;
                }
            };
            if !seen.insert(header_name.clone()) {
                errors.push(located(format!("{name} is configured twice")));
                continue;
            }
            hsts_configured |= header_name == http::header::STRICT_TRANSPORT_SECURITY;
            match parse_entry(name, written, custom) {
                Ok(Entry::Off) => {}
                Ok(Entry::Action(action)) => actions.push((header_name, action)),
                Err(message) => errors.push(located(message)),
            }
        }
    }
    if !hsts_configured {
        actions.push((
            http::header::STRICT_TRANSPORT_SECURITY,
            HeaderAction::Set(HeaderValue::from_static(DEFAULT_HSTS)),
        ));
    }
    HeaderPolicy::new(actions)
}

fn check_name(name: &str, custom: bool) -> Result<HeaderName, String> {
    let header_name =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a valid HTTP header name"))?;
    if PROTECTED.contains(&header_name.as_str()) {
        return Err(format!(
            "{name} frames the message or connection and cannot be configured"
        ));
    }
    match (known(name), custom) {
        (Some(_), true) => Err(format!(
            "{name} is a validated security header: configure it under [response_headers]"
        )),
        (None, false) => Err(format!(
            "{name} is not one of the validated security headers ({}); declare other headers under [custom_response_headers]",
            crate::headers::validate::KNOWN_HEADERS
                .iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Ok(header_name),
    }
}

fn parse_entry(name: &str, written: &Spanned<toml::Value>, custom: bool) -> Result<Entry, String> {
    let (mode, text) = match written.get_ref() {
        toml::Value::Boolean(false) => return Ok(Entry::Off),
        toml::Value::String(text) => ("set", Some(text.as_str())),
        toml::Value::Table(table) => {
            if let Some(unknown) = table.keys().find(|key| *key != "value" && *key != "mode") {
                return Err(format!("unknown key `{unknown}`; {ENTRY_FORMS}"));
            }
            let mode = match table.get("mode") {
                None => "set",
                Some(toml::Value::String(mode)) => mode.as_str(),
                Some(_) => return Err(ENTRY_FORMS.to_owned()),
            };
            let text = match table.get("value") {
                None => None,
                Some(toml::Value::String(text)) => Some(text.as_str()),
                Some(_) => return Err(ENTRY_FORMS.to_owned()),
            };
            (mode, text)
        }
        _ => return Err(ENTRY_FORMS.to_owned()),
    };
    match (mode, text) {
        ("remove", None) => Ok(Entry::Action(HeaderAction::Remove)),
        ("remove", Some(_)) => Err("mode \"remove\" takes no value".to_owned()),
        ("set" | "if_missing", Some(text)) => {
            let value = checked_value(name, text, custom)?;
            Ok(Entry::Action(if mode == "set" {
                HeaderAction::Set(value)
            } else {
                HeaderAction::IfMissing(value)
            }))
        }
        ("set" | "if_missing", None) => Err(format!("mode {mode:?} needs a value")),
        (other, _) => Err(format!(
            "unknown mode {other:?}: expected \"set\" (the default), \"if_missing\" or \"remove\""
        )),
    }
}

fn checked_value(name: &str, text: &str, custom: bool) -> Result<HeaderValue, String> {
    if !custom
        && let Some(header) = known(name)
        && !(header.validate)(text.trim())
    {
        return Err(format!(
            "invalid value {text:?} for {}: expected {}",
            header.name, header.expected
        ));
    }
    if text.trim() != text || text.is_empty() {
        return Err(format!(
            "invalid value {text:?}: no leading or trailing spaces, not empty"
        ));
    }
    HeaderValue::from_str(text)
        .map_err(|_| format!("invalid value {text:?}: only visible ASCII characters and spaces are allowed"))
}
