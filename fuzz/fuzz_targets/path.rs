//! Path normalisation and rule matching: never a panic; a normalised path is absolute, has no
//! empty, `.` or `..` segment, and normalising it again changes nothing (so no second spelling
//! of a path can be normalised into a different rule).
#![no_main]

use gatehouse::access::path::normalize;
use gatehouse::access::rules::PathRules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(normal) = normalize(raw) else { return };
    assert!(normal.starts_with('/'));
    let inner = normal.trim_end_matches('/');
    assert!(
        inner.is_empty()
            || inner[1..]
                .split('/')
                .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
    );
    if !normal.contains(['%', ';', '\\']) {
        assert_eq!(
            normalize(&normal).map(|again| again.into_owned()),
            Ok(normal.clone().into_owned())
        );
    }
    let mut rules = PathRules::new(false);
    rules.insert("/", 0);
    rules.insert("/rest-doc/", 1);
    rules.insert("/api/", 2);
    let matched = rules.lookup(&normal).map(|rule| rule.profile);
    if normal == "/rest-doc" || normal.starts_with("/rest-doc/") {
        assert_eq!(matched, Some(1));
    }
});
