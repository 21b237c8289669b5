//! Request paths as the app will see them, so that an access rule cannot be escaped by spelling
//! a path differently.
//!
//! Normalisation, per segment: `;parameters` are dropped (servlet containers ignore them),
//! percent-escapes are decoded, empty segments (`//`) are dropped, `.` is dropped and `..` removes
//! the segment before it. A path that different servers could read differently is refused
//! instead (the caller answers 400): an encoded `/`, `\`, `;`, `?`, `#`, NUL or other control
//! character, a double-encoded `%25xx`, a raw backslash, a malformed escape, or `..` above the root.

use std::borrow::Cow;

/// Why a path cannot be matched safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path contains a malformed percent-escape")]
    BadEscape,
    #[error("the path encodes a character that servers disagree on (/, \\, ;, ?, #, %, control)")]
    AmbiguousEscape,
    #[error("the path contains a backslash or a control character")]
    ForbiddenCharacter,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
}

/// The normalised form of `raw` (a request path without its query). Borrowed when `raw` is
/// already normal, which is the common case and costs no allocation.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for raw_segment in raw[1..].split('/') {
        let without_params = raw_segment.split(';').next().unwrap_or("");
        let segment = decode_segment(without_params)?;
        match segment.as_slice() {
            b"" | b"." => {}
            b".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            _ => segments.push(segment),
        }
    }
    let trailing_slash = raw.ends_with('/') || raw.ends_with("/.") || raw.ends_with("/..");
    let mut out = Vec::with_capacity(raw.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Decoded bytes may not be UTF-8; compare them losslessly as far as rules go (rules are ASCII).
    Ok(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// True when the path needs no work: no escapes, parameters, dot segments, doubled slashes.
fn is_plain(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let suspicious = bytes
        .iter()
        .any(|&b| matches!(b, b'%' | b';' | b'\\') || b < 0x20 || b == 0x7f);
    !suspicious && !raw.contains("//") && !raw.split('/').any(|segment| segment == "." || segment == "..")
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, PathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let decoded = bytes
                .get(index + 1..index + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or(PathError::BadEscape)?;
            match decoded {
                b'/' | b'\\' | b';' | b'?' | b'#' | b'%' => return Err(PathError::AmbiguousEscape),
                control if control < 0x20 || control == 0x7f => {
                    return Err(PathError::AmbiguousEscape);
                }
                other => out.push(other),
            }
            index += 3;
        } else if byte == b'\\' || byte < 0x20 || byte == 0x7f {
            return Err(PathError::ForbiddenCharacter);
        } else {
            out.push(byte);
            index += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw).unwrap().into_owned()
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        assert!(matches!(normalize("/rest-doc/index.html"), Ok(Cow::Borrowed(_))));
        assert_eq!(ok("/"), "/");
    }

    #[test]
    fn spellings_collapse_to_one_form() {
        for spelling in [
            "/rest-doc/",
            "//rest-doc/",
            "/./rest-doc/",
            "/x/../rest-doc/",
            "/rest-doc;jsessionid=1/",
            "/%72est-doc/",
            "/rest%2Ddoc/",
            "/rest%2ddoc/",
            "/%2e/rest-doc/",
            "/x/%2e%2e/rest-doc/",
            "/rest-doc/.",
            "/rest-doc//",
        ] {
            assert_eq!(ok(spelling), "/rest-doc/", "{spelling}");
        }
        assert_eq!(ok("/a/b/../../c"), "/c");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize("rest-doc"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/rest-doc%2Fx"), Err(PathError::AmbiguousEscape));
        assert_eq!(normalize("/rest-doc%5cx"), Err(PathError::AmbiguousEscape));
        assert_eq!(normalize("/%252e%252e/"), Err(PathError::AmbiguousEscape));
        assert_eq!(normalize("/a%00b"), Err(PathError::AmbiguousEscape));
        assert_eq!(normalize("/a%3bb"), Err(PathError::AmbiguousEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a\\b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/../etc"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/%2e%2e/%2e%2e/b"), Err(PathError::AboveRoot));
    }
}
