//! The whole request path: arbitrary bytes sent as an HTTP/1.1 request over TLS to a running
//! gatehouse (routing, access rules, path normalisation, forwarding to a real upstream, response
//! headers). A panic anywhere in gatehouse aborts the process, so libFuzzer sees it; after each
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
    connector: tokio_rustls::TlsConnector,
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
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        Harness {
            runtime,
            https,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            _proxy: proxy,
            _dir: dir,
        }
    })
}

/// Send `request`, collect the answer until the server closes or stays quiet for `quiet`.
async fn exchange(harness: &Harness, request: &[u8], quiet: Duration) -> Vec<u8> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(harness.https).await.ok()?;
        let name = ServerName::try_from("shop.fuzz.test").ok()?;
        let mut tls = harness.connector.connect(name, tcp).await.ok()?;
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
    harness.runtime.block_on(async {
        let _ = exchange(harness, data, Duration::from_millis(5)).await;
        // gatehouse still answers a well-formed request.
        let check = b"GET / HTTP/1.1\r\nHost: shop.fuzz.test\r\nConnection: close\r\n\r\n";
        let answer = exchange(harness, check, Duration::from_secs(1)).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "gatehouse stopped answering: {:?}",
            String::from_utf8_lossy(&answer)
        );
    });
});
