//! Admission: every check a request passes before it may reach the app, in one documented
//! order, the first refusal answering. Nothing here waits, and nothing reads the request's body:
//! it is generic over the body type, so that the sequence is tested beside it.
//!
//! | order | check | answer |
//! | --- | --- | --- |
//! | 1 | path and query no longer than `limits.max_uri_bytes` | 414 |
//! | 2 | a head within `limits.max_request_header_bytes` ([`head_bytes`]) and `limits.max_request_headers` | 431 |
//! | 3 | a well-formed host (`:authority` or one `Host`) | 400 |
//! | 4 | an environment serves the host | 404 |
//! | 5 | the host is served under the TLS policy the connection was opened with | 421 |
//! | 6 | the client is within the environment's `rate_limit` | 429 with `Retry-After` |
//! | 7 | the path normalises safely, and the access profile allows the client | 400, 403 |
//! | 8 | a declared `Content-Length` within the environment's `max_request_body` | 413 |

use std::net::IpAddr;

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, StatusCode, header};

use super::RequestPath;
use super::client_address::{self, ClientAddress};
use super::observe::Details;
use crate::access;
use crate::access::profile::Decision;
use crate::connection::ConnectionInfo;
use crate::live::{Installed, ServedEnvironment};
use crate::logs::{AccessDenied, AccessWouldDeny, Throttle};
use crate::pages::{ResponseBody, page};
use crate::route::MalformedHost;
use crate::snapshot::{Environment, Snapshot};

/// A request that passed admission: what forwarding needs to know of it.
#[derive(Debug)]
pub struct Admission<'a> {
    pub environment: &'a ServedEnvironment,
    pub client: ClientAddress,
    pub host: HeaderValue,
    /// The request target in origin form, as the request line to the app carries it.
    pub uri: Uri,
    /// The body length the client declared (`Content-Length`), if it did.
    pub declared_length: Option<u64>,
}

/// Run the admission sequence (see the module's table); `Err` is gatehouse's own answer, and the
/// request then never reaches the app.
#[expect(
    clippy::result_large_err,
    reason = "the admission is as large as the answer that replaces it; boxing either adds an allocation"
)]
pub fn admit<'a, B>(
    requests: &RequestPath,
    connection: &ConnectionInfo,
    installed: &'a Installed,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
    request: &Request<B>,
    details: &mut Details,
) -> Result<Admission<'a>, Response<ResponseBody>> {
    let snapshot = &*installed.snapshot;
    let uri_bytes = request.uri().path_and_query().map_or(0, |path| path.as_str().len());
    if uri_bytes > snapshot.settings.max_uri_bytes {
        return Err(page(StatusCode::URI_TOO_LONG));
    }
    if request.headers().len() > snapshot.settings.max_request_headers
        || head_bytes(request) > snapshot.settings.max_request_header_bytes
    {
        return Err(page(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    let Some(host) = host else {
        return Err(page(StatusCode::BAD_REQUEST));
    };
    let route = match snapshot.route(host.as_bytes()) {
        Err(MalformedHost) => return Err(page(StatusCode::BAD_REQUEST)),
        Ok(None) => return Err(page(StatusCode::NOT_FOUND)),
        Ok(Some(route)) => route,
    };
    // A connection may only carry hosts served under the TLS terms it was opened with; HTTP/2
    // clients reuse connections for every name a certificate covers.
    let same_policy = snapshot
        .policies
        .get(route.policy)
        .is_some_and(|policy| policy.key == connection.policy);
    if !same_policy {
        return Err(page(StatusCode::MISDIRECTED_REQUEST));
    }
    let Some(environment) = installed.environment(route.environment) else {
        return Err(page(StatusCode::NOT_FOUND));
    };
    details.environment = Some(route.environment);
    let client = client_address::resolve(
        connection.client.ip(),
        request.headers(),
        &snapshot.settings.trusted_forwarders,
    );
    details.client = Some(client.ip);
    if let Some(limiter) = &environment.live.rate_limiter
        && let Err(wait) = limiter.check(snapshot.settings.client_prefixes.of(client.ip))
    {
        let mut refusal = page(StatusCode::TOO_MANY_REQUESTS);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        refusal
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return Err(refusal);
    }
    let context = RequestContext {
        requests,
        connection,
        environment,
        client: &client,
        request_id,
    };
    if let Some(refusal) = check_access(&context, snapshot, &host, request, details) {
        return Err(refusal);
    }
    let Ok(uri) = origin_form(request.uri()) else {
        return Err(page(StatusCode::BAD_REQUEST));
    };
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > environment.config.max_request_body) {
        return Err(page(StatusCode::PAYLOAD_TOO_LARGE));
    }
    Ok(Admission {
        environment,
        client,
        host,
        uri,
        declared_length,
    })
}

/// The size of the request's head as HTTP/1.1 spells it: the request line (`METHOD target
/// HTTP/1.1` and CRLF), each header field as `name: value` and CRLF, and the closing CRLF.
/// Measured on the parsed request, so that the limit holds exactly whatever the layout on the
/// wire (one field or many, one TLS record or several, HTTP/1.1 or HTTP/2). For HTTP/2 the
/// target is `:path`, and `:authority` counts as a `host` field when the request has none;
/// other pseudo-header fields are not counted.
pub fn head_bytes<B>(request: &Request<B>) -> usize {
    const VERSION_AND_CRLF: usize = " HTTP/1.1\r\n".len();
    const FIELD_SEPARATORS: usize = ": \r\n".len();
    let uri = request.uri();
    let authority = uri.authority().map_or(0, |authority| authority.as_str().len());
    let path = uri.path_and_query().map_or(0, |path| path.as_str().len());
    let (target, authority_field) = if request.version() == http::Version::HTTP_2 {
        let as_host = if request.headers().contains_key(header::HOST) {
            0
        } else {
            "host".len() + FIELD_SEPARATORS + authority
        };
        (path, as_host)
    } else {
        // Origin form (`/path`), absolute form (`https://host/path`) or authority form (CONNECT).
        let scheme = uri.scheme_str().map_or(0, |scheme| scheme.len() + "://".len());
        (scheme + authority + path, 0)
    };
    let fields: usize = (request.headers().iter())
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_SEPARATORS)
        .sum();
    request.method().as_str().len() + 1 + target + VERSION_AND_CRLF + authority_field + fields + "\r\n".len()
}

/// The request's path and query, as an HTTP/1.1 request line carries it.
fn origin_form(original: &Uri) -> Result<Uri, http::Error> {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder().path_and_query(path).build()
}

/// What the access phase of a routed request reads.
#[derive(Clone, Copy)]
struct RequestContext<'a> {
    requests: &'a RequestPath,
    connection: &'a ConnectionInfo,
    environment: &'a ServedEnvironment,
    client: &'a ClientAddress,
    request_id: &'a HeaderValue,
}

/// Apply the environment's access rules. `Some` is the answer for a refused request, which
/// then never reaches the app.
fn check_access<B>(
    context: &RequestContext<'_>,
    snapshot: &Snapshot,
    host: &HeaderValue,
    request: &Request<B>,
    details: &mut Details,
) -> Option<Response<ResponseBody>> {
    let RequestContext {
        requests,
        connection,
        environment,
        client,
        request_id,
    } = *context;
    let path = request.uri().path();
    let evaluation = access::evaluate(&snapshot.profiles, &environment.config.rules, path, client.ip, |ca| {
        connection.certificate_status(ca)
    });
    match evaluation {
        Ok(evaluation) => {
            details.decision = Some(evaluation.decision);
            environment.live.metrics.decided(evaluation.decision);
            if let Decision::Allow(_) = evaluation.decision {
                return None;
            }
            let rule = evaluation.rule.map_or("", |rule| rule.prefix);
            audit_denial(
                requests,
                &environment.config,
                client.ip,
                host,
                path,
                rule,
                evaluation.decision,
                request_id,
            );
            // A report-only profile's denial is counted and audited, and the request goes on.
            if evaluation.decision.is_allowed() {
                return None;
            }
            Some(match &environment.config.forbidden_page {
                Some(custom) => custom.respond(StatusCode::FORBIDDEN),
                None => page(StatusCode::FORBIDDEN),
            })
        }
        Err(err) => {
            static REFUSED: Throttle = Throttle::new(10);
            if let Some(held_back) = REFUSED.admit() {
                tracing::info!(target: "gatehouse::access", environment = %environment.config.name, client = %client.ip, path, error = %err, held_back, "path refused");
            }
            Some(page(StatusCode::BAD_REQUEST))
        }
    }
}

/// A denial goes to the audit log (for a SIEM) and to the process log.
#[allow(clippy::too_many_arguments)]
fn audit_denial(
    requests: &RequestPath,
    environment: &Environment,
    client: IpAddr,
    host: &HeaderValue,
    path: &str,
    rule: &str,
    decision: access::profile::Decision,
    request_id: &HeaderValue,
) {
    let host = String::from_utf8_lossy(host.as_bytes());
    let enforced = !decision.is_allowed();
    // Every denial is in the audit log and the metrics; the process log gets a sample.
    static DENIED: Throttle = Throttle::new(10);
    if let Some(held_back) = DENIED.admit() {
        let message = match enforced {
            true => "request denied",
            false => "request let through that a report-only profile would deny",
        };
        tracing::info!(target: "gatehouse::access", environment = %environment.name, %client, %host, path, rule, reason = decision.reason(), held_back, "{message}");
    }
    if requests.audit_log.enabled() {
        let denial = AccessDenied {
            request_id: std::str::from_utf8(request_id.as_bytes()).unwrap_or("-"),
            environment: &environment.name,
            client: client.to_string(),
            host: &host,
            path,
            rule,
            reason: decision.reason(),
        };
        match enforced {
            true => requests.audit_log.audit(&denial),
            false => requests.audit_log.audit(&AccessWouldDeny { denial }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use arc_swap::ArcSwap;
    use bytes::Bytes;
    use http_body_util::Empty;

    use super::*;
    use crate::live::LiveState;
    use crate::logs::{LogSink, Target};
    use crate::metrics::Metrics;
    use crate::proxy::request_id::RequestIds;
    use crate::tls::policy::PolicyKey;

    const OFFICE: [u8; 4] = [192, 0, 2, 10];
    const OUTSIDE: [u8; 4] = [198, 51, 100, 7];

    /// A compiled configuration with one environment: rate limited to 1 request per second, its
    /// paths for the office range only, `/open/` for everyone, bodies up to 10 bytes.
    struct Setup {
        _dir: tempfile::TempDir,
        requests: RequestPath,
        installed: Arc<Installed>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("temporary folder: {err}"));
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join("env")).unwrap_or_else(|err| panic!("{err}"));
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|err| panic!("{name}: {err}"));
        };
        write(
            "gatehouse.toml",
            "environments = \"env/*.toml\"\n\
             [listen]\nhttps = [\"127.0.0.1:0\"]\n\
             [tls]\ndevelopment_certificate = true\n\
             [logging]\naccess_log = \"off\"\naudit_log = \"off\"\n\
             [profiles.office]\nranges = [\"192.0.2.0/24\"]\n",
        );
        write(
            "env/shop.toml",
            "name = \"shop\"\ndomains = [\"shop.test\"]\nupstreams = [\"127.0.0.1:9\"]\n\
             max_request_body = \"10B\"\n\
             [rate_limit]\nrequests_per_second = 1\nburst = 1\n\
             [access]\n\"/\" = \"office\"\n\"/open/\" = \"allow-all\"\n",
        );
        let snapshot =
            crate::snapshot::load(&dir.path().join("gatehouse.toml")).unwrap_or_else(|errors| panic!("{errors}"));
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|err| panic!("{err}")));
        let installed = Arc::new(LiveState::new(metrics.clone()).reconcile(Arc::new(snapshot), 1));
        let requests = RequestPath {
            installed: ArcSwap::new(installed.clone()),
            request_ids: RequestIds::new(),
            access_log: LogSink::start(Target::Off, metrics.clone()),
            audit_log: LogSink::start(Target::Off, metrics),
        };
        Setup {
            _dir: dir,
            requests,
            installed,
        }
    }

    /// A connection from `client`, opened under the policy `shop.test` is served with (or under
    /// another one).
    fn connection(setup: &Setup, client: [u8; 4], same_policy: bool) -> ConnectionInfo {
        let snapshot = &setup.installed.snapshot;
        let route = snapshot
            .route(b"shop.test")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("shop.test is routed"));
        let key = snapshot.policies[route.policy].key;
        ConnectionInfo {
            client: SocketAddr::from((client, 40000)),
            client_ip: HeaderValue::from_static("client"),
            policy: if same_policy { key } else { PolicyKey(key.0 ^ 1) },
            sni: None,
            asks_for_certificate: false,
            tls_protocol: HeaderValue::from_static("TLSv1.3"),
            tls_cipher: HeaderValue::from_static("TLS_AES_128_GCM_SHA256"),
            client_certificate: None,
            requests: AtomicU64::new(0),
            retire: tokio::sync::Notify::new(),
            upgrade: Default::default(),
        }
    }

    fn request(host: &str, path: &str, content_length: Option<u64>) -> Request<Empty<Bytes>> {
        let mut builder = Request::post(path).header(header::HOST, host);
        if let Some(length) = content_length {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        builder.body(Empty::new()).unwrap_or_else(|err| panic!("{err}"))
    }

    /// The status admission answers `request` with on `connection`; 0 when it lets it through.
    fn status(setup: &Setup, connection: &ConnectionInfo, request: &Request<Empty<Bytes>>) -> u16 {
        let host = crate::route::request_host(request).ok();
        let id = HeaderValue::from_static("id");
        let mut details = Details::default();
        match admit(
            &setup.requests,
            connection,
            &setup.installed,
            host,
            &id,
            request,
            &mut details,
        ) {
            Ok(_) => 0,
            Err(answer) => answer.status().as_u16(),
        }
    }

    /// Each step is tried with a request that every later step would refuse too: the first
    /// refusal in the documented order answers.
    #[tokio::test]
    async fn each_check_answers_before_every_later_one() {
        let setup = setup();
        let outside = connection(&setup, OUTSIDE, true);
        let long_path = format!("/{}", "a".repeat(setup.installed.snapshot.settings.max_uri_bytes));
        // 414: a long URI to an unknown host.
        assert_eq!(
            status(&setup, &outside, &request("nowhere.test", &long_path, Some(99))),
            414
        );
        // 400: a malformed host.
        assert_eq!(status(&setup, &outside, &request("bad host", "/a%zz", Some(99))), 400);
        // 404: an unknown host, from a client the profile refuses, with a body too large.
        assert_eq!(status(&setup, &outside, &request("nowhere.test", "/", Some(99))), 404);
        // 421: the wrong TLS policy, with a refused path and a body too large.
        let misdirected = connection(&setup, OUTSIDE, false);
        assert_eq!(status(&setup, &misdirected, &request("shop.test", "/", Some(99))), 421);
        // 403 (the first request takes the client's one token), then 429 for the same client.
        assert_eq!(status(&setup, &outside, &request("shop.test", "/", Some(99))), 403);
        assert_eq!(status(&setup, &outside, &request("shop.test", "/", Some(99))), 429);
        // 400: a path that cannot be normalised, before the body's length is looked at.
        let office = connection(&setup, OFFICE, true);
        assert_eq!(status(&setup, &office, &request("shop.test", "/a%zz", Some(99))), 400);
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_refused_and_one_within_it_admitted() {
        let setup = setup();
        // Each request from its own client: each has one token of the rate limit.
        for (over, within, path) in [
            ([192, 0, 2, 11], [192, 0, 2, 12], "/orders"),
            ([198, 51, 100, 11], [198, 51, 100, 12], "/open/feed"),
        ] {
            let first = connection(&setup, over, true);
            assert_eq!(
                status(&setup, &first, &request("shop.test", path, Some(11))),
                413,
                "{path}"
            );
            let second = connection(&setup, within, true);
            assert_eq!(
                status(&setup, &second, &request("shop.test", path, Some(10))),
                0,
                "{path}"
            );
        }
    }

    #[test]
    fn the_head_is_measured_as_http1_spells_it_for_either_protocol() {
        // "GET /orders?x=1 HTTP/1.1\r\n" + "host: shop.test\r\n" + "accept: */*\r\n" + "\r\n"
        let expected = 26 + 17 + 13 + 2;
        let http1 = Request::get("/orders?x=1")
            .header(header::HOST, "shop.test")
            .header(header::ACCEPT, "*/*")
            .body(())
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(head_bytes(&http1), expected);
        // HTTP/2: the target is `:path`; `:authority` counts as the host field, `:scheme` not.
        let http2 = Request::get("https://shop.test/orders?x=1")
            .version(http::Version::HTTP_2)
            .header(header::ACCEPT, "*/*")
            .body(())
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(head_bytes(&http2), expected);
        // An absolute-form HTTP/1.1 target counts in full.
        let absolute = Request::get("https://shop.test/orders?x=1")
            .header(header::HOST, "shop.test")
            .header(header::ACCEPT, "*/*")
            .body(())
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(head_bytes(&absolute), expected + "https://shop.test".len());
    }

    #[tokio::test]
    async fn an_admitted_request_carries_its_environment_client_and_origin_form_target() {
        let setup = setup();
        let office = connection(&setup, OFFICE, true);
        let mut request = request("shop.test", "/orders/7?page=2", None);
        *request.uri_mut() = "https://shop.test/orders/7?page=2"
            .parse()
            .unwrap_or_else(|err| panic!("{err}"));
        let host = crate::route::request_host(&request).ok();
        let mut details = Details::default();
        let id = HeaderValue::from_static("id");
        let admission = admit(
            &setup.requests,
            &office,
            &setup.installed,
            host,
            &id,
            &request,
            &mut details,
        )
        .unwrap_or_else(|answer| panic!("refused: {}", answer.status()));
        assert_eq!(&*admission.environment.config.name, "shop");
        assert_eq!(admission.client.ip, std::net::IpAddr::from(OFFICE));
        assert_eq!(admission.uri, "/orders/7?page=2");
        assert_eq!(admission.declared_length, None);
        assert_eq!(details.environment, Some(0));
    }
}
