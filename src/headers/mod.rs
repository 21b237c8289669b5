//! Response header policy: headers an environment sets on, adds to, or removes from every
//! answer, the app's and gatehouse's own alike. Values are validated and compiled once; applying
//! the policy only clones prepared header values.

pub mod validate;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// What to do with one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAction {
    /// Replace whatever the app sent.
    Set(HeaderValue),
    /// Add only when the app sent none.
    IfMissing(HeaderValue),
    /// Take out what the app sent.
    Remove,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    actions: Vec<(HeaderName, HeaderAction)>,
}

/// The HSTS value every environment gets unless it configures its own or turns it off.
pub const DEFAULT_HSTS: &str = "max-age=31536000";

impl HeaderPolicy {
    pub fn new(actions: Vec<(HeaderName, HeaderAction)>) -> Self {
        Self { actions }
    }

    /// What every answer gets when no environment says otherwise: HSTS.
    pub fn platform_defaults() -> Self {
        Self::new(vec![(
            http::header::STRICT_TRANSPORT_SECURITY,
            HeaderAction::Set(HeaderValue::from_static(DEFAULT_HSTS)),
        )])
    }

    pub fn actions(&self) -> &[(HeaderName, HeaderAction)] {
        &self.actions
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        // One growth at most, instead of one per header added.
        headers.reserve(self.actions.len());
        for (name, action) in &self.actions {
            match action {
                HeaderAction::Set(value) => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderAction::IfMissing(value) => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                HeaderAction::Remove => {
                    headers.remove(name);
                }
            }
        }
    }
}

/// Headers a policy may not touch: they frame the message or the connection.
pub const PROTECTED: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_set_add_and_remove() {
        let policy = HeaderPolicy::new(vec![
            (
                HeaderName::from_static("x-frame-options"),
                HeaderAction::Set(HeaderValue::from_static("DENY")),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderAction::IfMissing(HeaderValue::from_static("no-referrer")),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderAction::IfMissing(HeaderValue::from_static("nosniff")),
            ),
            (HeaderName::from_static("server"), HeaderAction::Remove),
        ]);
        let mut headers = HeaderMap::new();
        headers.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        headers.insert("referrer-policy", HeaderValue::from_static("origin"));
        headers.insert("server", HeaderValue::from_static("app/1.0"));
        policy.apply(&mut headers);
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "origin");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(!headers.contains_key("server"));
    }
}
