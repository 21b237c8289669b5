//! Validators for the well-known security response headers: each value must match the header's
//! grammar completely, so that a typo is a configuration error instead of a header that browsers
//! silently ignore.

/// A validated security header: its canonical name and what it accepts.
pub struct KnownHeader {
    pub name: &'static str,
    /// The allowed forms, for error messages.
    pub expected: &'static str,
    pub validate: fn(&str) -> bool,
}

pub const KNOWN_HEADERS: &[KnownHeader] = &[
    KnownHeader {
        name: "X-Frame-Options",
        expected: "DENY or SAMEORIGIN",
        validate: x_frame_options,
    },
    KnownHeader {
        name: "Referrer-Policy",
        expected: "a comma-separated list of: no-referrer, no-referrer-when-downgrade, origin, origin-when-cross-origin, same-origin, strict-origin, strict-origin-when-cross-origin, unsafe-url",
        validate: referrer_policy,
    },
    KnownHeader {
        name: "X-Content-Type-Options",
        expected: "nosniff",
        validate: x_content_type_options,
    },
    KnownHeader {
        name: "Access-Control-Allow-Origin",
        expected: "*, null, or one origin such as https://app.example.com (scheme, host, optional port; no path)",
        validate: access_control_allow_origin,
    },
    KnownHeader {
        name: "X-Permitted-Cross-Domain-Policies",
        expected: "none, master-only, by-content-type, by-ftp-filename, all or none-this-response",
        validate: x_permitted_cross_domain_policies,
    },
    KnownHeader {
        name: "X-XSS-Protection",
        expected: "0, 1, 1; mode=block, or 1; report=<uri>",
        validate: x_xss_protection,
    },
    KnownHeader {
        name: "Strict-Transport-Security",
        expected: "max-age=<seconds> with optional ; includeSubDomains and ; preload (each once)",
        validate: strict_transport_security,
    },
    KnownHeader {
        name: "Content-Security-Policy",
        expected: "directives separated by ';', each a known directive name followed by valid sources (e.g. default-src 'self'; img-src https: data:)",
        validate: content_security_policy,
    },
    KnownHeader {
        name: "Permissions-Policy",
        expected: "a comma-separated list of feature=allowlist, with allowlist *, self, () or (self \"https://origin\" ...) (e.g. camera=(), geolocation=(self))",
        validate: permissions_policy,
    },
    KnownHeader {
        name: "Cross-Origin-Opener-Policy",
        expected: "unsafe-none, same-origin-allow-popups, same-origin or noopener-allow-popups",
        validate: cross_origin_opener_policy,
    },
    KnownHeader {
        name: "Cross-Origin-Embedder-Policy",
        expected: "unsafe-none, require-corp or credentialless",
        validate: cross_origin_embedder_policy,
    },
    KnownHeader {
        name: "Cross-Origin-Resource-Policy",
        expected: "same-site, same-origin or cross-origin",
        validate: cross_origin_resource_policy,
    },
    KnownHeader {
        name: "Origin-Trial",
        expected: "one or more base64 trial tokens, comma-separated",
        validate: origin_trial,
    },
];

/// The known header with this name (case-insensitive).
pub fn known(name: &str) -> Option<&'static KnownHeader> {
    KNOWN_HEADERS
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
}

fn one_of(value: &str, allowed: &[&str]) -> bool {
    allowed.iter().any(|token| token.eq_ignore_ascii_case(value))
}

fn comma_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

fn x_frame_options(value: &str) -> bool {
    one_of(value, &["DENY", "SAMEORIGIN"])
}

fn referrer_policy(value: &str) -> bool {
    const TOKENS: &[&str] = &[
        "no-referrer",
        "no-referrer-when-downgrade",
        "origin",
        "origin-when-cross-origin",
        "same-origin",
        "strict-origin",
        "strict-origin-when-cross-origin",
        "unsafe-url",
    ];
    comma_list(value).all(|token| one_of(token, TOKENS))
}

fn x_content_type_options(value: &str) -> bool {
    one_of(value, &["nosniff"])
}

fn access_control_allow_origin(value: &str) -> bool {
    value == "*" || value == "null" || is_origin(value)
}

/// `scheme://host[:port]` with nothing after it.
fn is_origin(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let (host, port) = if rest.starts_with('[') {
        match rest.find(']') {
            Some(close) => match &rest[close + 1..] {
                "" => (&rest[..=close], None),
                tail => (&rest[..=close], Some(tail.strip_prefix(':').unwrap_or("x"))),
            },
            None => return false,
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port_ok = port.is_none_or(|port| port.chars().all(|c| c.is_ascii_digit()) && port.parse::<u16>().is_ok());
    let host_ok = match host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')) {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .split('.')
                    .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        }
    };
    scheme_ok && host_ok && port_ok
}

fn x_permitted_cross_domain_policies(value: &str) -> bool {
    one_of(
        value,
        &[
            "none",
            "master-only",
            "by-content-type",
            "by-ftp-filename",
            "all",
            "none-this-response",
        ],
    )
}

fn x_xss_protection(value: &str) -> bool {
    let mut parts = value.split(';').map(str::trim);
    match (parts.next(), parts.next(), parts.next()) {
        (Some("0"), None, _) | (Some("1"), None, _) => true,
        (Some("1"), Some(directive), None) => {
            directive.eq_ignore_ascii_case("mode=block")
                || directive.split_once('=').is_some_and(|(name, uri)| {
                    name.trim().eq_ignore_ascii_case("report")
                        && !uri.trim().is_empty()
                        && !uri.contains(char::is_whitespace)
                })
        }
        _ => false,
    }
}

fn strict_transport_security(value: &str) -> bool {
    let mut max_age = false;
    let mut include_subdomains = false;
    let mut preload = false;
    for directive in value.split(';').map(str::trim) {
        if let Some((name, seconds)) = directive.split_once('=') {
            let seconds = seconds.trim().trim_matches('"');
            if !name.trim().eq_ignore_ascii_case("max-age")
                || max_age
                || seconds.is_empty()
                || !seconds.chars().all(|c| c.is_ascii_digit())
                || seconds.len() > 10
            {
                return false;
            }
            max_age = true;
        } else if directive.eq_ignore_ascii_case("includeSubDomains") && !include_subdomains {
            include_subdomains = true;
        } else if directive.eq_ignore_ascii_case("preload") && !preload {
            preload = true;
        } else {
            return false;
        }
    }
    max_age
}

const CSP_DIRECTIVES: &[&str] = &[
    "base-uri",
    "block-all-mixed-content",
    "child-src",
    "connect-src",
    "default-src",
    "fenced-frame-src",
    "font-src",
    "form-action",
    "frame-ancestors",
    "frame-src",
    "img-src",
    "manifest-src",
    "media-src",
    "object-src",
    "prefetch-src",
    "report-to",
    "report-uri",
    "require-trusted-types-for",
    "sandbox",
    "script-src",
    "script-src-attr",
    "script-src-elem",
    "style-src",
    "style-src-attr",
    "style-src-elem",
    "trusted-types",
    "upgrade-insecure-requests",
    "webrtc",
    "worker-src",
];

const CSP_KEYWORDS: &[&str] = &[
    "'self'",
    "'none'",
    "'unsafe-inline'",
    "'unsafe-eval'",
    "'strict-dynamic'",
    "'unsafe-hashes'",
    "'report-sample'",
    "'wasm-unsafe-eval'",
    "'unsafe-allow-redirects'",
    "'inline-speculation-rules'",
];

fn content_security_policy(value: &str) -> bool {
    let mut seen: Vec<String> = Vec::new();
    let directives: Vec<&str> = value.split(';').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        return false;
    }
    for directive in directives {
        let mut words = directive.split_ascii_whitespace();
        let Some(name) = words.next().map(str::to_ascii_lowercase) else {
            return false;
        };
        if !CSP_DIRECTIVES.contains(&name.as_str()) || seen.contains(&name) {
            return false;
        }
        let values: Vec<&str> = words.collect();
        let values_ok = match name.as_str() {
            "upgrade-insecure-requests" | "block-all-mixed-content" => values.is_empty(),
            "sandbox" => values
                .iter()
                .all(|token| is_token(token) && token.starts_with("allow-")),
            "report-uri" | "report-to" | "require-trusted-types-for" | "trusted-types" | "webrtc" => {
                !values.is_empty()
                    && values.iter().all(|token| {
                        !token.contains(['\'', ',']) || CSP_KEYWORDS.contains(token) || is_quoted_keyword(token)
                    })
            }
            _ => !values.is_empty() && values.iter().all(|source| is_csp_source(source)),
        };
        if !values_ok {
            return false;
        }
        seen.push(name);
    }
    true
}

fn is_quoted_keyword(token: &str) -> bool {
    matches!(
        token,
        "'script'" | "'allow-duplicates'" | "'none'" | "'allow'" | "'block'"
    )
}

fn is_token(value: &str) -> bool {
    !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn is_csp_source(source: &str) -> bool {
    if source.starts_with('\'') {
        let lower = source.to_ascii_lowercase();
        return CSP_KEYWORDS.contains(&lower.as_str())
            || ["'nonce-", "'sha256-", "'sha384-", "'sha512-"].iter().any(|prefix| {
                lower.starts_with(prefix)
                    && source.len() > prefix.len() + 1
                    && source.ends_with('\'')
                    && is_base64(&source[prefix.len()..source.len() - 1])
            });
    }
    if source == "*" {
        return true;
    }
    // A scheme source such as "https:" or "data:".
    if let Some(scheme) = source.strip_suffix(':') {
        return !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    }
    // A host source: [scheme://]host[:port][/path], host may start with "*.".
    let rest = source.split_once("://").map_or(source, |(_, rest)| rest);
    let host_and_port = rest.split('/').next().unwrap_or("");
    let host = host_and_port.split(':').next().unwrap_or("");
    let host = host.strip_prefix("*.").unwrap_or(host);
    !host.is_empty()
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && source
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, ',' | ';' | '\'' | '"'))
}

fn is_base64(text: &str) -> bool {
    let trimmed = text.trim_end_matches('=');
    !trimmed.is_empty()
        && text.len() - trimmed.len() <= 2
        && trimmed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_'))
}

fn permissions_policy(value: &str) -> bool {
    comma_list(value).all(|member| {
        let Some((feature, allowlist)) = member.split_once('=') else {
            return false;
        };
        let feature_ok = feature.starts_with(|c: char| c.is_ascii_lowercase())
            && feature
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        feature_ok && permissions_allowlist(allowlist)
    })
}

fn permissions_allowlist(allowlist: &str) -> bool {
    let item = |item: &str| {
        item == "*"
            || item == "self"
            || item == "src"
            || item
                .strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
                .is_some_and(is_origin)
    };
    match allowlist.strip_prefix('(').and_then(|rest| rest.strip_suffix(')')) {
        Some(inner) => inner.split(' ').filter(|part| !part.is_empty()).all(item),
        None => item(allowlist),
    }
}

fn cross_origin_opener_policy(value: &str) -> bool {
    one_of(
        value,
        &[
            "unsafe-none",
            "same-origin-allow-popups",
            "same-origin",
            "noopener-allow-popups",
        ],
    )
}

fn cross_origin_embedder_policy(value: &str) -> bool {
    one_of(value, &["unsafe-none", "require-corp", "credentialless"])
}

fn cross_origin_resource_policy(value: &str) -> bool {
    one_of(value, &["same-site", "same-origin", "cross-origin"])
}

fn origin_trial(value: &str) -> bool {
    comma_list(value).all(|token| token.len() >= 16 && is_base64(token))
}

#[cfg(test)]
mod tests {
    use super::known;

    fn check(name: &str, accepted: &[&str], rejected: &[&str]) {
        let header = known(name).unwrap();
        for value in accepted {
            assert!((header.validate)(value), "{name}: {value:?} should be accepted");
        }
        for value in rejected {
            assert!(!(header.validate)(value), "{name}: {value:?} should be rejected");
        }
    }

    #[test]
    fn x_frame_options() {
        check(
            "x-frame-options",
            &["DENY", "SAMEORIGIN", "deny"],
            &[
                "DENYY",
                "ALLOW-FROM https://a.example",
                "",
                "DENY, SAMEORIGIN",
                "SAME ORIGIN",
            ],
        );
    }

    #[test]
    fn referrer_policy() {
        check(
            "Referrer-Policy",
            &[
                "no-referrer",
                "strict-origin-when-cross-origin",
                "no-referrer, strict-origin-when-cross-origin",
            ],
            &[
                "no-referer",
                "strict-origin-when-crossorigin",
                "",
                "origin,",
                "unsafe_url",
            ],
        );
    }

    #[test]
    fn x_content_type_options() {
        check("X-Content-Type-Options", &["nosniff"], &["nosnif", "no-sniff", ""]);
    }

    #[test]
    fn access_control_allow_origin() {
        check(
            "Access-Control-Allow-Origin",
            &[
                "*",
                "null",
                "https://app.example.com",
                "http://localhost:3000",
                "https://[::1]:8443",
                "https://[::1]",
            ],
            &[
                "https://app.example.com/",
                "app.example.com",
                "https://a.example, https://b.example",
                "**",
                "https://",
                "https://a..b",
                "https://a.example:99999",
                "https://[::1",
                "https://a.example:",
            ],
        );
    }

    #[test]
    fn x_permitted_cross_domain_policies() {
        check(
            "X-Permitted-Cross-Domain-Policies",
            &["none", "master-only", "by-content-type"],
            &["nothing", "master_only", ""],
        );
    }

    #[test]
    fn x_xss_protection() {
        check(
            "X-XSS-Protection",
            &[
                "0",
                "1",
                "1; mode=block",
                "1;mode=block",
                "1; report=https://r.example/x",
            ],
            &["2", "1; mode=allow", "0; mode=block", "1; report=", "yes"],
        );
    }

    #[test]
    fn strict_transport_security() {
        check(
            "Strict-Transport-Security",
            &[
                "max-age=31536000",
                "max-age=63072000; includeSubDomains; preload",
                "max-age=0",
                "includeSubDomains; max-age=1",
            ],
            &[
                "max-age=",
                "max-age=-1",
                "max-age=1y",
                "includeSubDomains",
                "max-age=1; max-age=2",
                "max-age=1; includeSubdomain",
                "max_age=1",
                "max-age=1;; preload",
            ],
        );
    }

    #[test]
    fn content_security_policy() {
        check(
            "Content-Security-Policy",
            &[
                "default-src 'self'",
                "default-src 'self'; img-src https: data:; script-src 'self' 'nonce-abc123' https://cdn.example.com",
                "frame-ancestors 'none'; upgrade-insecure-requests",
                "script-src 'sha256-B2yPHKaXnvFWtRChIbabYmUBFZdVfKKXHbWtWidDVF8='",
                "default-src *.example.com:443/assets/; report-uri /csp-report",
                "sandbox allow-scripts allow-forms",
            ],
            &[
                "",
                "default-src",
                "defualt-src 'self'",
                "default-src 'slef'",
                "default-src 'self', img-src *",
                "upgrade-insecure-requests 1",
                "default-src 'self'; default-src 'none'",
                "script-src 'nonce-'",
            ],
        );
    }

    #[test]
    fn permissions_policy() {
        check(
            "Permissions-Policy",
            &[
                "camera=()",
                "geolocation=(self), microphone=()",
                "fullscreen=*",
                "payment=(self \"https://pay.example.com\")",
            ],
            &[
                "camera",
                "camera=none",
                "Camera=()",
                "geolocation=(self https://a.example)",
                "camera=();",
                "camera=(self",
            ],
        );
    }

    #[test]
    fn cross_origin_policies() {
        check(
            "Cross-Origin-Opener-Policy",
            &["same-origin", "same-origin-allow-popups", "unsafe-none"],
            &["same-site", "sameorigin"],
        );
        check(
            "Cross-Origin-Embedder-Policy",
            &["require-corp", "credentialless"],
            &["require-cors", "same-origin"],
        );
        check(
            "Cross-Origin-Resource-Policy",
            &["same-site", "same-origin", "cross-origin"],
            &["cross-site", "none"],
        );
    }

    #[test]
    fn origin_trial() {
        check(
            "Origin-Trial",
            &[
                "AkVzdGhpcyBpcyBhIHRva2Vu",
                "AkVzdGhpcyBpcyBhIHRva2Vu==, Bk9hbm90aGVyIHRva2Vu",
            ],
            &["short", "not base64 at all!!", ""],
        );
    }
}
