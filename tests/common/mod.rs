//! One harness for the integration tests: certificates made in the test, real upstream servers,
//! gatehouse started in-process on ephemeral loopback ports, and real TLS/HTTP clients.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod dns;
pub mod pki;
pub mod process;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::server::Proxy;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use pki::{Ca, KeyKind, Leaf};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

pub type ClientBody = BoxBody<Bytes, Infallible>;

/// The names of the platform certificate of every fixture.
pub const PLATFORM_NAMES: [&str; 2] = ["*.apps.test", "*.eu.apps.test"];

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub platform: Leaf,
}

impl Fixture {
    /// A folder with a CA, a platform certificate for [`PLATFORM_NAMES`], and an `env/` folder.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("env")).unwrap();
        let ca = Ca::new("gatehouse test CA");
        let platform = ca.issue(dir.path(), "platform", &PLATFORM_NAMES, KeyKind::Ecdsa, 365);
        Self { dir, ca, platform }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn write(&self, relative: &str, contents: &str) {
        std::fs::write(self.path(relative), contents).unwrap();
    }

    /// Issue a certificate into the fixture folder.
    pub fn issue(&self, stem: &str, names: &[&str], kind: KeyKind) -> Leaf {
        self.ca.issue(self.dir.path(), stem, names, kind, 365)
    }

    /// Write `gatehouse.toml` with ephemeral https, http and admin listeners, the platform
    /// certificate, logs off (unless `extra` has a `[logging]` table) and `extra` appended.
    pub fn main_config(&self, extra: &str) -> PathBuf {
        let logging = match extra.contains("[logging]") {
            true => "",
            false => "[logging]\naccess_log = \"off\"\naudit_log = \"off\"\n",
        };
        let text = format!(
            "environments = \"env/*.toml\"\n\
             [listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n\
             [tls]\ncertificate = \"platform.pem\"\nkey = \"platform.key\"\n{logging}{extra}"
        );
        self.write("gatehouse.toml", &text);
        self.path("gatehouse.toml")
    }

    /// Write one environment file.
    pub fn environment(&self, file: &str, toml: &str) {
        self.write(&format!("env/{file}.toml"), toml);
    }

    /// Load the written configuration and start gatehouse.
    pub async fn start(&self) -> Running {
        let snapshot =
            gatehouse::snapshot::load(&self.path("gatehouse.toml")).unwrap_or_else(|errors| panic!("{errors}"));
        let proxy = Proxy::start(snapshot).await.unwrap();
        Running::around(proxy, self.ca.der.clone())
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// A simple environment file.
pub fn environment_toml(name: &str, domains: &[&str], upstreams: &[SocketAddr], extra: &str) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
    let upstreams: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "name = \"{name}\"\ndomains = [{}]\nupstreams = [{}]\n{extra}",
        domains.join(", "),
        upstreams.join(", ")
    )
}

pub struct Running {
    /// The in-process proxy; `None` when the tests talk to a gatehouse process.
    proxy_slot: Option<Proxy>,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub roots: CertificateDer<'static>,
}

/// How a test client connects.
pub struct Connect<'a> {
    /// The name sent as SNI and checked against the certificate.
    pub server_name: &'a str,
    pub send_sni: bool,
    pub alpn: &'a [&'a [u8]],
}

impl Running {
    /// The in-process proxy.
    pub fn proxy(&self) -> &Proxy {
        self.proxy_slot
            .as_ref()
            .expect("this gatehouse runs in another process")
    }

    /// Clients for `proxy`, started by the test itself; `roots` verify its certificates.
    pub fn around(proxy: Proxy, roots: CertificateDer<'static>) -> Self {
        Self {
            https: proxy.https_addrs()[0],
            http: proxy.http_addrs().first().copied(),
            proxy_slot: Some(proxy),
            roots,
        }
    }

    /// Clients for a gatehouse running elsewhere (another process) at `https`.
    pub fn client_only(https: SocketAddr, roots: CertificateDer<'static>) -> Self {
        Self {
            proxy_slot: None,
            https,
            http: None,
            roots,
        }
    }

    pub async fn tls(&self, connect: Connect<'_>) -> TlsStream<TcpStream> {
        self.tls_as(connect, None).await
    }

    /// A TLS connection that presents `identity` when the server asks for a certificate.
    pub async fn tls_as(&self, connect: Connect<'_>, identity: Option<&pki::ClientIdentity>) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.https).await.unwrap();
        self.try_tls_over(tcp, connect, identity).await.unwrap()
    }

    /// Write `prefix` (a PROXY header, say) on a new connection, then attempt a TLS handshake.
    pub async fn try_tls_after(&self, prefix: &[u8], connect: Connect<'_>) -> std::io::Result<TlsStream<TcpStream>> {
        use tokio::io::AsyncWriteExt;
        let mut tcp = TcpStream::connect(self.https).await.unwrap();
        tcp.write_all(prefix).await?;
        self.try_tls_over(tcp, connect, None).await
    }

    async fn try_tls_over(
        &self,
        tcp: TcpStream,
        connect: Connect<'_>,
        identity: Option<&pki::ClientIdentity>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.roots.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(identity) => config
                .with_client_auth_cert(identity.chain.clone(), identity.key())
                .unwrap(),
            None => config.with_no_client_auth(),
        };
        config.alpn_protocols = connect.alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = connect.send_sni;
        let connector = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(connect.server_name.to_owned()).unwrap();
        tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.unwrap()
    }

    /// An HTTP/1.1 connection whose SNI is `host`.
    pub async fn h1(&self, host: &str) -> http1::SendRequest<ClientBody> {
        self.h1_as(host, None).await
    }

    /// An HTTP/1.1 connection whose SNI is `host`, presenting `identity` if asked.
    pub async fn h1_as(&self, host: &str, identity: Option<&pki::ClientIdentity>) -> http1::SendRequest<ClientBody> {
        let connect = Connect {
            server_name: host,
            send_sni: true,
            alpn: &[b"http/1.1"],
        };
        h1_over(self.tls_as(connect, identity).await).await
    }

    /// An HTTP/2 connection whose SNI is `host`.
    pub async fn h2(&self, host: &str) -> http2::SendRequest<ClientBody> {
        self.h2_as(host, None).await
    }

    /// An HTTP/2 connection whose SNI is `host`, presenting `identity` if asked.
    pub async fn h2_as(&self, host: &str, identity: Option<&pki::ClientIdentity>) -> http2::SendRequest<ClientBody> {
        let connect = Connect {
            server_name: host,
            send_sni: true,
            alpn: &[b"h2"],
        };
        let tls = self.tls_as(connect, identity).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        sender
    }

    /// Send raw bytes as an HTTP/1.1 request over TLS (SNI `host`) and return the status code
    /// of the answer; for request lines that an HTTP client library would refuse or rewrite.
    pub async fn raw_status(&self, host: &str, request: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = self
            .tls(Connect {
                server_name: host,
                send_sni: true,
                alpn: &[b"http/1.1"],
            })
            .await;
        tls.write_all(request).await.unwrap();
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        // Read up to the end of the status line; the connection may stay open.
        while !response.windows(2).any(|w| w == b"\r\n") {
            let read = tokio::time::timeout(WAIT, tls.read(&mut buffer))
                .await
                .unwrap()
                .unwrap();
            assert!(read > 0, "connection closed without an answer");
            response.extend_from_slice(&buffer[..read]);
        }
        let status = std::str::from_utf8(&response[9..12]).unwrap();
        status.parse().unwrap()
    }

    /// GET `path` on `host` over a fresh HTTP/1.1 connection.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        let mut sender = self.h1(host).await;
        send_h1(&mut sender, get(host, path)).await
    }
}

pub async fn h1_over<T>(io: T) -> http1::SendRequest<ClientBody>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

/// A GET request with a `Host` header.
pub fn get(host: &str, path: &str) -> Request<ClientBody> {
    Request::get(path)
        .header("host", host)
        .body(Empty::new().boxed())
        .unwrap()
}

/// What a test client saw.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of a request header as the upstream's dump reports it.
    pub fn upstream_saw(&self, header: &str) -> Vec<String> {
        let prefix = format!("{header}: ");
        self.text()
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }
}

pub async fn send_h1(sender: &mut http1::SendRequest<ClientBody>, request: Request<ClientBody>) -> Answer {
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    collect(response).await
}

pub async fn send_h2(sender: &mut http2::SendRequest<ClientBody>, request: Request<ClientBody>) -> Answer {
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    collect(response).await
}

pub async fn collect(response: http::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(WAIT, body.collect()).await.unwrap().unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Resident memory of this process, in KiB (from /proc/self/statm, 4 KiB pages).
pub fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<u64>().ok())
        .unwrap_or(0)
        * 4
}

pub async fn admin_get(running: &Running, path: &str) -> Answer {
    let addr = running.proxy().admin_addr().expect("admin listener");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sender = h1_over(tcp).await;
    send_h1(&mut sender, get("localhost", path)).await
}

pub async fn admin_post(running: &Running, path: &str) -> Answer {
    let addr = running.proxy().admin_addr().expect("admin listener");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sender = h1_over(tcp).await;
    let request = Request::post(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::new().boxed())
        .unwrap();
    send_h1(&mut sender, request).await
}

/// The samples of an exposition, keyed by `name{label="value",...}` with labels sorted.
pub fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        samples.insert(key, value.parse().unwrap());
    }
    samples
}

/// Scrape until `ready(samples)` holds (metrics are recorded when a response body ends, which
/// can be a moment after the client has read it), at most `WAIT`.
pub async fn scrape_until(
    running: &Running,
    ready: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
) -> (String, std::collections::HashMap<String, f64>) {
    let started = tokio::time::Instant::now();
    loop {
        let text = admin_get(running, "/metrics").await.text();
        let parsed = samples(&text);
        if ready(&parsed) || started.elapsed() > WAIT {
            return (text, parsed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
