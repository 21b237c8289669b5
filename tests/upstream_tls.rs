//! TLS to the app instances: the instance's certificate is verified against the environment's
//! CA and server name, gatehouse presents its client certificate to apps that require one, and
//! HTTP/2 is used when the instance picks it over ALPN.

mod common;

use std::sync::Arc;

use common::pki::{Ca, ClientSpec, KeyKind};
use common::upstream::Upstream;
use common::{Fixture, environment_toml};
use http::StatusCode;
use rcgen::DnType;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

const HOST: &str = "shop.apps.test";

/// The app's side: its own CA and certificate, and the CA it accepts client certificates from.
struct AppTls {
    app_ca: Ca,
    client_ca: Ca,
    fixture: Fixture,
}

impl AppTls {
    fn new() -> Self {
        let fixture = Fixture::new();
        let app_ca = Ca::new("app CA");
        let client_ca = Ca::new("app client CA");
        fixture.write("app-ca.pem", &app_ca.pem);
        fixture.write("other-ca.pem", &Ca::new("some other CA").pem);
        // gatehouse's client certificate, issued by the CA the app trusts.
        let identity = client_ca.issue_client(ClientSpec {
            subject: &[(DnType::CommonName, "gatehouse edge")],
            ..ClientSpec::default()
        });
        fixture.write("edge-client.pem", &identity.pem);
        fixture.write("edge-client.key", &identity.key_pem);
        Self {
            app_ca,
            client_ca,
            fixture,
        }
    }

    /// A server config for an instance named `app.internal`, requiring a client certificate
    /// from the client CA when `require_client` holds.
    fn server(&self, alpn: &[&[u8]], require_client: bool) -> Arc<rustls::ServerConfig> {
        let leaf = self
            .app_ca
            .issue(self.fixture.dir.path(), "app", &["app.internal"], KeyKind::Ecdsa, 30);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert_path)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&leaf.key_path).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = RootCertStore::empty();
            roots.add(self.client_ca.der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Arc::new(config)
    }

    async fn gatehouse(&self, app: &Upstream, upstream_tls: &str) -> common::Running {
        self.fixture.main_config("");
        let extra = format!("[upstream_tls]\n{upstream_tls}");
        self.fixture
            .environment("shop", &environment_toml("shop", &[HOST], &[app.addr], &extra));
        self.fixture.start().await
    }
}

const VERIFIED_WITH_CLIENT_CERT: &str = "ca = \"../app-ca.pem\"\nserver_name = \"app.internal\"\n\
     certificate = \"../edge-client.pem\"\nkey = \"../edge-client.key\"\n";

#[tokio::test]
async fn with_the_right_ca_and_a_client_certificate_requests_go_over_http2() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"h2", b"http/1.1"], true)).await;
    let running = tls.gatehouse(&app, VERIFIED_WITH_CLIENT_CERT).await;
    for _ in 0..3 {
        let answer = running.get(HOST, "/hello?x=1").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.upstream_saw("x-seen-version"), ["HTTP/2.0"]);
        assert_eq!(answer.upstream_saw("x-seen-client-certificate"), ["true"]);
        assert!(
            answer.text().contains("GET https://shop.apps.test/hello?x=1"),
            "{}",
            answer.text()
        );
        // The forwarding headers travel over HTTP/2 as over HTTP/1.1.
        assert_eq!(answer.upstream_saw("x-forwarded-host"), [HOST]);
    }
    // One shared HTTP/2 connection carried them all.
    let metrics = common::admin_get(&running, "/metrics").await.text();
    assert!(metrics.contains("\ngatehouse_upstream_connections 1\n"), "{metrics}");
}

#[tokio::test]
async fn an_instance_that_offers_only_http1_gets_http1() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"http/1.1"], true)).await;
    let running = tls.gatehouse(&app, VERIFIED_WITH_CLIENT_CERT).await;
    let answer = running.get(HOST, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("x-seen-version"), ["HTTP/1.1"]);
}

#[tokio::test]
async fn http2_can_be_turned_off() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"h2", b"http/1.1"], false)).await;
    let running = tls
        .gatehouse(
            &app,
            "ca = \"../app-ca.pem\"\nserver_name = \"app.internal\"\nhttp2 = false\n",
        )
        .await;
    let answer = running.get(HOST, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_saw("x-seen-version"), ["HTTP/1.1"]);
    assert_eq!(answer.upstream_saw("x-seen-client-certificate"), ["false"]);
}

#[tokio::test]
async fn an_instance_certificate_from_another_ca_is_refused() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"h2", b"http/1.1"], false)).await;
    let running = tls
        .gatehouse(&app, "ca = \"../other-ca.pem\"\nserver_name = \"app.internal\"\n")
        .await;
    let answer = running.get(HOST, "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn an_instance_certificate_for_another_name_is_refused() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"h2", b"http/1.1"], false)).await;
    let running = tls
        .gatehouse(&app, "ca = \"../app-ca.pem\"\nserver_name = \"billing.internal\"\n")
        .await;
    assert_eq!(running.get(HOST, "/").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn an_app_that_requires_a_client_certificate_refuses_gatehouse_without_one() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"h2", b"http/1.1"], true)).await;
    let running = tls
        .gatehouse(&app, "ca = \"../app-ca.pem\"\nserver_name = \"app.internal\"\n")
        .await;
    assert_eq!(running.get(HOST, "/").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn websocket_upgrades_use_http1_even_when_the_instance_prefers_http2() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"h2", b"http/1.1"], true)).await;
    let running = tls.gatehouse(&app, VERIFIED_WITH_CLIENT_CERT).await;
    let mut stream = running
        .tls(common::Connect {
            server_name: HOST,
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(common::WAIT, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"echo me").await.unwrap();
    let mut echoed = [0u8; 7];
    tokio::time::timeout(common::WAIT, stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"echo me");
}

#[test]
fn a_client_certificate_without_its_key_is_a_config_error() {
    let tls = AppTls::new();
    tls.fixture.main_config("");
    tls.fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &[HOST],
            &["127.0.0.1:9".parse().unwrap()],
            "[upstream_tls]\nca = \"../app-ca.pem\"\ncertificate = \"../edge-client.pem\"\n",
        ),
    );
    let errors = gatehouse::snapshot::load(&tls.fixture.path("gatehouse.toml"))
        .expect_err("refused")
        .to_string();
    assert!(errors.contains("shop.toml:6: key `upstream_tls`"), "{errors}");
    assert!(errors.contains("both `certificate` and `key`"), "{errors}");
}

/// The watcher follows the upstream CA file (and the client certificate and key) like the
/// environment's other files: an operator who puts the right CA in place needs no signal.
#[tokio::test]
async fn a_corrected_upstream_ca_file_is_reloaded_by_the_watcher() {
    let tls = AppTls::new();
    let app = Upstream::start_tls("app", tls.server(&[b"http/1.1"], false)).await;
    std::fs::create_dir_all(tls.fixture.path("upstream")).unwrap();
    // The wrong CA first: the instance's certificate is refused.
    let other = std::fs::read_to_string(tls.fixture.path("other-ca.pem")).unwrap();
    tls.fixture.write("upstream/ca.pem", &other);
    tls.fixture.main_config("[reload]\nwatch_debounce = \"100ms\"\n");
    let extra = "[upstream_tls]\nca = \"../upstream/ca.pem\"\nserver_name = \"app.internal\"\n";
    tls.fixture
        .environment("shop", &environment_toml("shop", &[HOST], &[app.addr], extra));
    let running = tls.fixture.start().await;
    let _watcher = gatehouse::watch::spawn(running.proxy().shared(), tls.fixture.path("gatehouse.toml")).unwrap();
    assert_eq!(running.get(HOST, "/").await.status, StatusCode::BAD_GATEWAY);

    tls.fixture.write("upstream/ca.pem", &tls.app_ca.pem);
    let mut status = StatusCode::BAD_GATEWAY;
    for _ in 0..100 {
        status = running.get(HOST, "/").await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK, "the corrected CA file was not reloaded");
}
