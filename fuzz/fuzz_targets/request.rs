//! The whole request path: arbitrary bytes sent over TLS to a running gatehouse (routing, access
//! rules, path normalisation, forwarding to a real upstream, response headers), as HTTP/1.1 or as
//! HTTP/2 frames. The first byte picks the protocol: even, the rest is sent as it is over an
//! HTTP/1.1 connection; odd, the rest is read as a sequence of HTTP/2 frames (see
//! [`http2_frames`]) sent after the client preface over an `h2` connection, so that the fuzzer
//! works on frames (HEADERS, CONTINUATION, DATA, RST_STREAM, SETTINGS, ...) rather than on
//! framing. A panic anywhere in gatehouse aborts the process, so libFuzzer sees it; after each
//! input, a well-formed request must still be answered.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Harness {
    runtime: tokio::runtime::Runtime,
    https: SocketAddr,
    /// ALPN `http/1.1`, and ALPN `h2`.
    http1: tokio_rustls::TlsConnector,
    http2: tokio_rustls::TlsConnector,
    _proxy: gatehouse::server::Proxy,
    _dir: std::path::PathBuf,
}

/// The fuzz client trusts gatehouse's development certificate without checking it.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = [0u8; 65536];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    addr
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // libFuzzer's C `main` does not ignore SIGPIPE as a Rust `main` (and so gatehouse) does:
        // without this, writing to a connection gatehouse closed would kill the harness.
        // SAFETY: setting a signal disposition to SIG_IGN before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        // A panic in any gatehouse task must end the process, where libFuzzer can see it.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::abort();
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("gatehouse-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("env")).expect("config dir");
        let (proxy, https) = runtime.block_on(async {
            let app = upstream().await;
            std::fs::write(
                dir.join("gatehouse.toml"),
                "environments = \"env/*.toml\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nadmin = \"off\"\n\
                 [tls]\ndevelopment_certificate = true\n[logging]\naccess_log = \"off\"\naudit_log = \"off\"\n\
                 [reload]\nwatch_files = false\n[profiles.office]\nranges = [\"192.0.2.0/24\"]\n",
            )
            .expect("main file");
            std::fs::write(
                dir.join("env/shop.toml"),
                format!(
                    "name = \"shop\"\ndomains = [\"shop.fuzz.test\", \"*.fuzz.test\"]\nupstreams = [\"{app}\"]\n\
                     [access]\n\"/\" = \"allow-all\"\n\"/office/\" = \"office\"\n\"/rest-doc/\" = \"deny-all\"\n\
                     [response_headers]\nX-Frame-Options = \"DENY\"\n"
                ),
            )
            .expect("environment file");
            let snapshot = gatehouse::snapshot::load(&dir.join("gatehouse.toml")).expect("valid fuzz configuration");
            let proxy = gatehouse::server::Proxy::start(snapshot)
                .await
                .expect("gatehouse starts");
            let https = proxy.https_addrs()[0];
            (proxy, https)
        });
        // The configuration lives in memory now (no file watching, no reload); libFuzzer ends the
        // process without running destructors, so the directory goes here or never.
        let _ = std::fs::remove_dir_all(&dir);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let connector = |alpn: &[u8]| {
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        };
        Harness {
            runtime,
            https,
            http1: connector(b"http/1.1"),
            http2: connector(b"h2"),
            _proxy: proxy,
            _dir: dir,
        }
    })
}

/// The HTTP/2 client connection preface, then an empty SETTINGS frame.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The bytes an HTTP/2 client sends for `data`, read as frames of five bytes of head (type,
/// flags, stream, length high, length low) and the payload (cut to what is left): each becomes a
/// frame with the real nine-byte head, its stream 0 (stream byte 0) or an odd client stream
/// (`2 * byte - 1`), after the preface. Frame types and flags are passed as they come.
fn http2_frames(data: &[u8]) -> Vec<u8> {
    let mut bytes = HTTP2_PREFACE.to_vec();
    let mut rest = data;
    while let Some((head, tail)) = rest.split_first_chunk::<5>() {
        let [kind, flags, stream, high, low] = *head;
        let length = (usize::from(high) << 8 | usize::from(low)).min(tail.len());
        let (payload, after) = tail.split_at(length);
        let stream = match stream {
            0 => 0u32,
            n => u32::from(n) * 2 - 1,
        };
        bytes.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_be_bytes()[1..]);
        bytes.push(kind);
        bytes.push(flags);
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        rest = after;
    }
    bytes
}

/// Send `request` on a connection made by `connector`, collect the answer until the server
/// closes or stays quiet for `quiet`.
async fn exchange(
    harness: &Harness,
    connector: &tokio_rustls::TlsConnector,
    request: &[u8],
    quiet: Duration,
) -> Vec<u8> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(harness.https).await.ok()?;
        let name = ServerName::try_from("shop.fuzz.test").ok()?;
        let mut tls = connector.connect(name, tcp).await.ok()?;
        tls.write_all(request).await.ok()?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, tls.read(&mut buffer)).await {
            if n == 0 || answer.len() > 65536 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
        Some(answer)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    harness.runtime.block_on(async {
        if mode % 2 == 0 {
            let _ = exchange(harness, &harness.http1, rest, Duration::from_millis(5)).await;
        } else {
            let _ = exchange(harness, &harness.http2, &http2_frames(rest), Duration::from_millis(5)).await;
        }
        // gatehouse still answers a well-formed request.
        let check = b"GET / HTTP/1.1\r\nHost: shop.fuzz.test\r\nConnection: close\r\n\r\n";
        let answer = exchange(harness, &harness.http1, check, Duration::from_secs(1)).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "gatehouse stopped answering: {:?}",
            String::from_utf8_lossy(&answer)
        );
    });
});
