//! `gatehouse replay`: re-decide the requests recorded in a JSON access log under another
//! configuration, with the request path's own routing, TLS-policy and access code (as `explain`
//! does for one request), and report what would change.
//!
//! It streams: one line is read, judged and forgotten at a time; what is kept is a count per
//! outcome and per group of changed requests (environment, host, rule, reason), bounded by
//! [`MAX_GROUPS`], each with a few sample requests. Lines are read up to [`MAX_LINE`] bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead};
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::access;
use crate::access::profile::{CertificateStatus, ClientCa, Decision};
use crate::snapshot::Snapshot;

/// Longer lines are counted as malformed and skipped (an access line is well under 16 KiB).
pub const MAX_LINE: usize = 64 * 1024;
/// At most this many groups of changed requests are told apart; the rest of a kind of change
/// is counted under one `(other)` group, so that memory stays bounded on any log.
pub const MAX_GROUPS: usize = 10_000;
/// Sample requests kept per group.
pub const SAMPLES: usize = 3;

/// What happened to a request, as far as the configuration decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Refused by an access profile: 403.
    Denied,
    /// No environment serves the host: 404.
    NotFound,
    /// The host is served under another TLS policy than the connection's SNI chose: 421.
    Misdirected,
    /// A malformed host, or a path that cannot be normalised safely: 400.
    BadRequest,
    /// Let through, but a report-only profile would refuse it.
    WouldDeny,
    /// Let through to the app.
    Allowed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied (403)",
            Self::NotFound => "not found (404)",
            Self::Misdirected => "misdirected (421)",
            Self::BadRequest => "bad request (400)",
            Self::WouldDeny => "allowed, report-only would deny",
            Self::Allowed => "allowed",
        }
    }

    /// Whether the client gets gatehouse's refusal instead of the app's answer.
    pub fn is_refused(self) -> bool {
        !matches!(self, Self::Allowed | Self::WouldDeny)
    }
}

/// Why a line could not be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unjudged {
    /// Not JSON, a field missing or of the wrong type, or longer than [`MAX_LINE`].
    Malformed,
    /// A JSON line of another log (audit, process), or an unknown `decision`.
    NotAnAccessLine,
    /// Answered before the access decision (414, 431, 429, ...): the log does not say what the
    /// decision would have been.
    NoDecisionRecorded,
    /// The client address is not an IP address.
    ClientAddress,
    /// The new configuration asks for a client certificate where the recorded connection was
    /// not asked for one: whether the client would have presented one is unknown.
    CertificateNotAsked,
    /// The new configuration checks the client certificate against a CA that the recorded
    /// connection did not check it against.
    CertificateNotChecked,
}

impl Unjudged {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed (not JSON, a field missing, or too long)",
            Self::NotAnAccessLine => "not an access log line",
            Self::NoDecisionRecorded => "answered before the access decision (414, 429, 431, ...)",
            Self::ClientAddress => "the client is not an IP address",
            Self::CertificateNotAsked => {
                "the new configuration asks for a client certificate; the recorded connection was not asked"
            }
            Self::CertificateNotChecked => {
                "the new configuration checks the client certificate against a CA the recorded connection did not"
            }
        }
    }
}

/// Changed requests that share an outcome change, environment, host, rule and reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    pub before: Outcome,
    pub after: Outcome,
    pub environment: String,
    pub host: String,
    /// The new configuration's rule (its path prefix), or `(none)`.
    pub rule: String,
    /// The new decision's reason (`not_in_range`, `open`, ...), or why it was not routed.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Group {
    pub requests: u64,
    /// Up to [`SAMPLES`] requests, `client path`, distinct clients first.
    pub samples: Vec<String>,
}

/// A sample request left behind by an unjudged line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UnjudgedCount {
    pub lines: u64,
    pub samples: Vec<String>,
}

/// What a replay found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub lines: u64,
    pub unchanged: u64,
    pub changed: u64,
    /// Changed requests, by their group; sorted when printed.
    #[serde(serialize_with = "groups_in_order")]
    pub groups: HashMap<GroupKey, Group>,
    #[serde(serialize_with = "unjudged_in_order")]
    pub unjudged: HashMap<Unjudged, UnjudgedCount>,
}

impl Report {
    /// Requests that the new configuration refuses with 403 and the old one did not.
    pub fn newly_denied(&self) -> u64 {
        self.changed(|key| key.after == Outcome::Denied)
    }

    /// Requests that reached the app and that the new configuration refuses (403, 404, 421, 400).
    pub fn newly_refused(&self) -> u64 {
        self.changed(|key| !key.before.is_refused() && key.after.is_refused())
    }

    fn changed(&self, which: impl Fn(&GroupKey) -> bool) -> u64 {
        (self.groups.iter())
            .filter(|(key, _)| which(key))
            .map(|(_, group)| group.requests)
            .sum()
    }

    pub fn unjudged_lines(&self) -> u64 {
        self.unjudged.values().map(|count| count.lines).sum()
    }

    fn sorted_groups(&self) -> Vec<(&GroupKey, &Group)> {
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_by(|(a, ga), (b, gb)| {
            (a.after, a.before)
                .cmp(&(b.after, b.before))
                .then(gb.requests.cmp(&ga.requests))
                .then(a.cmp(b))
        });
        groups
    }
}

fn groups_in_order<S: serde::Serializer>(groups: &HashMap<GroupKey, Group>, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        #[serde(flatten)]
        key: &'a GroupKey,
        #[serde(flatten)]
        group: &'a Group,
    }
    let mut sorted: Vec<_> = groups.iter().collect();
    sorted.sort_by(|(a, ga), (b, gb)| (a.after, a.before, gb.requests).cmp(&(b.after, b.before, ga.requests)));
    serializer.collect_seq(sorted.into_iter().map(|(key, group)| Entry { key, group }))
}

fn unjudged_in_order<S: serde::Serializer>(
    unjudged: &HashMap<Unjudged, UnjudgedCount>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut sorted: Vec<_> = unjudged.iter().collect();
    sorted.sort_by_key(|(reason, _)| **reason);
    serializer.collect_map(sorted)
}

/// Re-decides access log lines under one configuration.
pub struct Replay<'s> {
    snapshot: &'s Snapshot,
    report: Report,
}

impl<'s> Replay<'s> {
    pub fn new(snapshot: &'s Snapshot) -> Self {
        Self {
            snapshot,
            report: Report::default(),
        }
    }

    /// Judge every line `log` holds; malformed lines are counted, never fatal.
    pub fn read(&mut self, log: &mut impl BufRead) -> io::Result<()> {
        let mut line = Vec::with_capacity(1024);
        loop {
            // A line that lies whole in the reader's buffer is judged where it is; only one
            // that spans a refill is copied.
            let buffer = match log.fill_buf() {
                Ok(buffer) => buffer,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if let Some(end) = memchr::memchr(b'\n', buffer).filter(|&end| end <= MAX_LINE) {
                self.judge_line(&buffer[..end]);
                log.consume(end + 1);
                continue;
            }
            match next_line(log, &mut line, MAX_LINE)? {
                Line::End => return Ok(()),
                Line::TooLong => {
                    self.report.lines += 1;
                    self.unjudged(Unjudged::Malformed, None);
                }
                Line::Read => self.judge_line(&line),
            }
        }
    }

    /// Judge one access log line.
    pub fn judge_line(&mut self, text: &[u8]) {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.report.lines += 1;
        // UTF-8 checked once for the whole line, which is cheaper than string by string.
        let Ok(text) = std::str::from_utf8(text) else {
            return self.unjudged(Unjudged::Malformed, None);
        };
        let line: Recorded<'_> = match serde_json::from_str(text) {
            Ok(line) => line,
            Err(_) => return self.unjudged(Unjudged::Malformed, None),
        };
        if line.log.as_ref().is_some_and(|log| log.0 != "access") {
            return self.unjudged(Unjudged::NotAnAccessLine, None);
        }
        if line.status == 0 || line.client.0.is_empty() || line.path.0.is_empty() {
            return self.unjudged(Unjudged::Malformed, None);
        }
        let before = match before(&line) {
            Ok(before) => before,
            Err(reason) => return self.unjudged(reason, Some(&line)),
        };
        let after = match judge(self.snapshot, &line) {
            Ok(after) => after,
            Err(reason) => return self.unjudged(reason, Some(&line)),
        };
        if after.outcome == before {
            self.report.unchanged += 1;
            return;
        }
        self.report.changed += 1;
        let at_capacity = self.report.groups.len() >= MAX_GROUPS;
        let key = GroupKey {
            before,
            after: after.outcome,
            environment: after.environment.map_or_else(
                || line.environment.as_ref().map_or("-", |env| &env.0).to_owned(),
                str::to_owned,
            ),
            host: line.host.as_ref().map_or("-", |host| &host.0).to_owned(),
            rule: after
                .rule
                .map_or_else(|| "(none)".to_owned(), |rule| format!("{rule:?}")),
            reason: after.reason,
        };
        let key = match at_capacity && !self.report.groups.contains_key(&key) {
            false => key,
            true => GroupKey {
                environment: "(other)".to_owned(),
                host: "(other)".to_owned(),
                rule: "(other)".to_owned(),
                reason: "(other)",
                ..key
            },
        };
        let group = self.report.groups.entry(key).or_default();
        group.requests += 1;
        keep_sample(&mut group.samples, &line);
    }

    fn unjudged(&mut self, reason: Unjudged, line: Option<&Recorded<'_>>) {
        let count = self.report.unjudged.entry(reason).or_default();
        count.lines += 1;
        if let Some(line) = line {
            keep_sample(&mut count.samples, line);
        }
    }

    pub fn finish(self) -> Report {
        self.report
    }
}

/// Keep `client host path` as a sample, up to [`SAMPLES`], one per client.
fn keep_sample(samples: &mut Vec<String>, line: &Recorded<'_>) {
    if samples.len() >= SAMPLES {
        return;
    }
    let client = &*line.client.0;
    if samples.iter().any(|sample| sample.split(' ').next() == Some(client)) {
        return;
    }
    let host = line.host.as_ref().map_or("-", |host| &host.0);
    samples.push(format!("{client} {host}{}", line.path.0));
}

/// The fields of an access log line that replay reads; the others are skipped.
#[derive(Deserialize)]
struct Recorded<'a> {
    #[serde(borrow, default)]
    log: Option<Text<'a>>,
    #[serde(borrow, default)]
    environment: Option<Text<'a>>,
    #[serde(borrow, default)]
    client: Text<'a>,
    #[serde(borrow, default)]
    host: Option<Text<'a>>,
    #[serde(borrow, default)]
    path: Text<'a>,
    /// 0 when absent (the line is then malformed).
    #[serde(default)]
    status: u16,
    #[serde(borrow, default)]
    decision: Option<Text<'a>>,
    /// Absent in lines written before gatehouse logged it: then the host is taken as the SNI,
    /// as browsers send it; `null` means the client sent none.
    #[serde(borrow, default, deserialize_with = "present")]
    sni: Option<Option<Text<'a>>>,
    #[serde(borrow, default)]
    client_cas: Option<HashMap<Text<'a>, Text<'a>>>,
}

/// A string from the log, borrowed from the line unless it had escapes.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Tells a field that is absent (`None`) from one that is `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// What the recorded request met, from its decision and status.
fn before(line: &Recorded<'_>) -> Result<Outcome, Unjudged> {
    match line.decision.as_ref().map(|decision| &*decision.0) {
        Some("allow") => Ok(Outcome::Allowed),
        Some("deny") => Ok(Outcome::Denied),
        Some("would_deny") => Ok(Outcome::WouldDeny),
        Some(_) => Err(Unjudged::NotAnAccessLine),
        None => match line.status {
            404 => Ok(Outcome::NotFound),
            421 => Ok(Outcome::Misdirected),
            400 => Ok(Outcome::BadRequest),
            _ => Err(Unjudged::NoDecisionRecorded),
        },
    }
}

/// What the new configuration decides for a recorded request.
struct Judgement<'s> {
    outcome: Outcome,
    environment: Option<&'s str>,
    rule: Option<&'s str>,
    reason: &'static str,
}

/// Admission's configuration-dependent steps, in its order (see `proxy::admission`): a
/// well-formed host (400), an environment for it (404), the same TLS policy as the connection's
/// SNI chose (421), then the access rules (400 for a path that cannot be normalised, 403).
fn judge<'s>(snapshot: &'s Snapshot, line: &Recorded<'_>) -> Result<Judgement<'s>, Unjudged> {
    let refused = |outcome, reason| Judgement {
        outcome,
        environment: None,
        rule: None,
        reason,
    };
    let Some(host) = &line.host else {
        return Ok(refused(Outcome::BadRequest, "no host"));
    };
    let route = match snapshot.route(host.0.as_bytes()) {
        Err(_) => return Ok(refused(Outcome::BadRequest, "malformed host")),
        Ok(None) => return Ok(refused(Outcome::NotFound, "no environment serves the host")),
        Ok(Some(route)) => route,
    };
    let sni = match &line.sni {
        None => Some(&*host.0),
        Some(sni) => sni.as_ref().map(|sni| &*sni.0),
    };
    let connection_policy = snapshot.policy_for_sni(sni).key;
    if snapshot.policies.get(route.policy).map(|policy| policy.key) != Some(connection_policy) {
        return Ok(refused(
            Outcome::Misdirected,
            "the host is served under another TLS policy than the SNI's",
        ));
    }
    let Some(environment) = snapshot.environments.get(route.environment) else {
        return Ok(refused(Outcome::NotFound, "no environment serves the host"));
    };
    let client: IpAddr = line.client.0.parse().map_err(|_| Unjudged::ClientAddress)?;
    let mut unknown = None;
    let certificate = |ca: &ClientCa| recorded_status(line.client_cas.as_ref(), ca, &mut unknown);
    let judged = |outcome, rule, reason| Judgement {
        outcome,
        environment: Some(&*environment.name),
        rule,
        reason,
    };
    let evaluation = match access::evaluate(
        &snapshot.profiles,
        &environment.rules,
        &line.path.0,
        client,
        certificate,
    ) {
        Ok(evaluation) => evaluation,
        Err(_) => return Ok(judged(Outcome::BadRequest, None, "path cannot be normalised")),
    };
    if let Some(reason) = unknown {
        return Err(reason);
    }
    let outcome = match evaluation.decision {
        Decision::Allow(_) => Outcome::Allowed,
        Decision::Deny(_) => Outcome::Denied,
        Decision::WouldDeny(_) => Outcome::WouldDeny,
    };
    Ok(judged(
        outcome,
        evaluation.rule.map(|rule| rule.prefix),
        evaluation.decision.reason(),
    ))
}

/// How the recorded client certificate stood with `ca`, from the line's `client_cas` verdicts
/// (by CA id); `unknown` is set when the line cannot tell.
fn recorded_status(
    verdicts: Option<&HashMap<Text<'_>, Text<'_>>>,
    ca: &ClientCa,
    unknown: &mut Option<Unjudged>,
) -> CertificateStatus {
    let Some(verdicts) = verdicts else {
        *unknown = Some(Unjudged::CertificateNotAsked);
        return CertificateStatus::Absent;
    };
    let statuses = || {
        verdicts
            .values()
            .filter_map(|status| CertificateStatus::parse(&status.0))
    };
    // Asked and none sent: absent for any CA.
    if statuses().any(|status| status == CertificateStatus::Absent) {
        return CertificateStatus::Absent;
    }
    let id = ClientCa::id_text(ca.id);
    match (verdicts.iter())
        .find(|(ca, _)| ca.0 == id)
        .and_then(|(_, status)| CertificateStatus::parse(&status.0))
    {
        Some(status) => status,
        None => {
            *unknown = Some(Unjudged::CertificateNotChecked);
            CertificateStatus::Absent
        }
    }
}

enum Line {
    Read,
    TooLong,
    End,
}

/// Read the next line into `line` (without its newline), never holding more than `max` bytes of
/// it: a longer line is skipped to its end and reported as [`Line::TooLong`].
fn next_line(log: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    line.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let buffer = match log.fill_buf() {
            Ok(buffer) => buffer,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buffer.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => Line::End,
                (true, true) => Line::TooLong,
                (true, false) => Line::Read,
            });
        }
        read_any = true;
        let (chunk, done) = match memchr::memchr(b'\n', buffer) {
            Some(end) => (&buffer[..end], Some(end + 1)),
            None => (buffer, None),
        };
        if !too_long && line.len() + chunk.len() <= max {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        let consumed = done.unwrap_or(buffer.len());
        log.consume(consumed);
        if done.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Read });
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let judged = self.unchanged + self.changed;
        writeln!(
            f,
            "{} lines: {judged} judged ({} unchanged, {} changed), {} not judged",
            self.lines,
            self.unchanged,
            self.changed,
            self.unjudged_lines()
        )?;
        writeln!(
            f,
            "newly denied (403): {}; reached the app and refused now (403, 404, 421, 400): {}",
            self.newly_denied(),
            self.newly_refused()
        )?;
        let mut heading = None;
        for (key, group) in self.sorted_groups() {
            let change = (key.before, key.after);
            if heading != Some(change) {
                heading = Some(change);
                writeln!(f, "\n{} -> {}:", key.before.as_str(), key.after.as_str())?;
            }
            writeln!(
                f,
                "  {:>8}  {}  {}  rule {}  {}",
                group.requests, key.environment, key.host, key.rule, key.reason
            )?;
            for sample in &group.samples {
                writeln!(f, "            e.g. {sample}")?;
            }
        }
        if !self.unjudged.is_empty() {
            writeln!(f, "\nnot judged:")?;
            let mut unjudged: Vec<_> = self.unjudged.iter().collect();
            unjudged.sort_by_key(|(reason, _)| **reason);
            for (reason, count) in unjudged {
                writeln!(f, "  {:>8}  {}", count.lines, reason.as_str())?;
                for sample in &count.samples {
                    writeln!(f, "            e.g. {sample}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str, max: usize) -> Vec<String> {
        let mut reader = io::BufReader::with_capacity(4, text.as_bytes());
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            match next_line(&mut reader, &mut line, max).unwrap_or(Line::End) {
                Line::End => return out,
                Line::TooLong => out.push("<too long>".to_owned()),
                Line::Read => out.push(String::from_utf8_lossy(&line).into_owned()),
            }
        }
    }

    #[test]
    fn lines_are_read_whole_and_overlong_ones_skipped_to_their_end() {
        assert_eq!(
            lines("short\nthis one is too long\n\nlast", 8),
            ["short", "<too long>", "", "last"]
        );
        assert_eq!(lines("a\n", 8), ["a"]);
        assert_eq!(lines("exactly8\nx", 8), ["exactly8", "x"]);
    }

    #[test]
    fn escaped_strings_and_an_absent_or_null_sni_are_read() {
        let line: Recorded<'_> =
            serde_json::from_str(r#"{"client":"10.0.0.1","path":"/a\"b","status":200,"sni":null,"extra":[1,{"x":2}]}"#)
                .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(line.path.0, "/a\"b");
        assert!(matches!(line.sni, Some(None)));
        let line: Recorded<'_> = serde_json::from_str(r#"{"client":"10.0.0.1","path":"/","status":200}"#)
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(line.sni.is_none());
        assert!(matches!(line.path.0, Cow::Borrowed(_)));
    }

    #[test]
    fn the_recorded_outcome_comes_from_the_decision_then_the_status() {
        let outcome = |json: &str| {
            let line: Recorded<'_> = serde_json::from_str(json).unwrap_or_else(|err| panic!("{err}"));
            before(&line)
        };
        let base = r#""client":"10.0.0.1","path":"/""#;
        assert_eq!(
            outcome(&format!(r#"{{{base},"status":502,"decision":"allow"}}"#)),
            Ok(Outcome::Allowed)
        );
        assert_eq!(
            outcome(&format!(r#"{{{base},"status":403,"decision":"deny"}}"#)),
            Ok(Outcome::Denied)
        );
        assert_eq!(
            outcome(&format!(r#"{{{base},"status":200,"decision":"would_deny"}}"#)),
            Ok(Outcome::WouldDeny)
        );
        assert_eq!(
            outcome(&format!(r#"{{{base},"status":421}}"#)),
            Ok(Outcome::Misdirected)
        );
        assert_eq!(
            outcome(&format!(r#"{{{base},"status":429}}"#)),
            Err(Unjudged::NoDecisionRecorded)
        );
    }
}
