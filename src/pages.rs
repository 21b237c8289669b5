//! gatehouse's own answers: short plain-text pages with the right status. All bodies are static,
//! so an error costs no allocation and cannot fail.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::upstream::UpstreamBody;

/// What gatehouse sends to clients: the app's streamed body, or a page of its own.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// A response of gatehouse's own with its short explanatory page.
pub fn page(status: StatusCode) -> Response<ResponseBody> {
    let text = match status {
        StatusCode::BAD_REQUEST => "400 Bad Request\n\nThe request could not be understood.\n",
        StatusCode::FORBIDDEN => "403 Forbidden\n\nAccess to this resource is restricted.\n",
        StatusCode::NOT_FOUND => "404 Not Found\n\nNo application is served under this host name.\n",
        StatusCode::PAYLOAD_TOO_LARGE => {
            "413 Content Too Large\n\nThe request body is larger than this site accepts.\n"
        }
        StatusCode::TOO_MANY_REQUESTS => {
            "429 Too Many Requests\n\nSlow down, and try again after the time in Retry-After.\n"
        }
        StatusCode::URI_TOO_LONG => "414 URI Too Long\n\nThe request's address is longer than this site accepts.\n",
        StatusCode::MISDIRECTED_REQUEST => {
            "421 Misdirected Request\n\nThis host name is not served on this connection; open a new connection for it.\n"
        }
        StatusCode::BAD_GATEWAY => "502 Bad Gateway\n\nThe application could not be reached.\n",
        StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n\nThe application is not available.\n",
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n\nThe application did not answer in time.\n",
        _ => "The request could not be completed.\n",
    };
    with_body(status, Bytes::from_static(text.as_bytes()))
}

/// A response of gatehouse's own with the given plain-text body.
pub fn with_body(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A page file an environment configured in place of gatehouse's own.
#[derive(Debug, Clone)]
pub struct CustomPage {
    body: Bytes,
    content_type: HeaderValue,
    /// The file as the configuration names it, for the status page.
    source: Box<str>,
}

impl CustomPage {
    pub fn new(body: Bytes, html: bool, source: &str) -> Self {
        let content_type = if html {
            "text/html; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        Self {
            body,
            content_type: HeaderValue::from_static(content_type),
            source: source.into(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn respond(&self, status: StatusCode) -> Response<ResponseBody> {
        let mut response = with_body(status, self.body.clone());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, self.content_type.clone());
        response
    }
}

/// An empty body, for responses whose head says it all (redirects, upgrades).
pub fn empty() -> ResponseBody {
    Either::Right(Full::new(Bytes::new()))
}
