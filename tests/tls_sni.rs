//! TLS termination: the certificate is chosen by SNI, TLS 1.2/1.3 only, ALPN h2 and http/1.1.

mod common;

use common::pki::KeyKind;
use common::upstream::Upstream;
use common::{Connect, Fixture, environment_toml};

async fn fixture_with_custom_domain() -> (Fixture, Upstream, common::pki::Leaf) {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    // The customer's certificate uses RSA, the platform one ECDSA: both key types must work.
    let custom = fixture.issue("www.shop.example", &["www.shop.example"], KeyKind::Rsa);
    fixture.main_config("");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop-production",
            &["shop.apps.test", "www.shop.example"],
            &[app.addr],
            "[[certificates]]\ncertificate = \"../www.shop.example.pem\"\nkey = \"../www.shop.example.key\"\n",
        ),
    );
    (fixture, app, custom)
}

fn presented(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[tokio::test]
async fn custom_domain_sni_gets_the_custom_certificate() {
    let (fixture, _app, custom) = fixture_with_custom_domain().await;
    let running = fixture.start().await;
    let tls = running
        .tls(Connect {
            server_name: "www.shop.example",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    assert_eq!(presented(&tls), custom.der.as_ref());
}

#[tokio::test]
async fn platform_domain_sni_gets_the_platform_certificate() {
    let (fixture, _app, _custom) = fixture_with_custom_domain().await;
    let running = fixture.start().await;
    let tls = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    assert_eq!(presented(&tls), fixture.platform.der.as_ref());
}

#[tokio::test]
async fn no_sni_and_unknown_sni_get_the_platform_certificate() {
    let (fixture, _app, _custom) = fixture_with_custom_domain().await;
    let running = fixture.start().await;
    let without_sni = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: false,
            alpn: &[b"http/1.1"],
        })
        .await;
    assert_eq!(presented(&without_sni), fixture.platform.der.as_ref());
    let unknown = running
        .tls(Connect {
            server_name: "other.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    assert_eq!(presented(&unknown), fixture.platform.der.as_ref());
}

#[tokio::test]
async fn alpn_offers_h2_and_http11_over_tls12_and_tls13() {
    let (fixture, _app, _custom) = fixture_with_custom_domain().await;
    let running = fixture.start().await;
    let h2 = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"h2", b"http/1.1"],
        })
        .await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        h2.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let h1 = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

/// `openssl s_client` as an independent client: TLS 1.2 with the RSA custom certificate works,
/// and TLS 1.1 is refused.
#[tokio::test]
async fn openssl_client_sees_tls12_and_no_older_protocols() {
    let (fixture, _app, _custom) = fixture_with_custom_domain().await;
    let running = fixture.start().await;
    let port = running.https.port().to_string();
    let ca = fixture.dir.path().join("ca.pem");
    std::fs::write(&ca, &fixture.ca.pem).unwrap();
    let s_client = |version: &'static [&'static str]| {
        let connect = format!("127.0.0.1:{port}");
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(["s_client", "-connect", &connect, "-servername", "www.shop.example"])
                .args(version)
                .arg("-CAfile")
                .arg(&ca)
                .args(["-verify_return_error", "-brief"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let tls12 = tokio::time::timeout(common::WAIT, s_client(&["-tls1_2"]))
        .await
        .unwrap()
        .unwrap();
    let output = String::from_utf8_lossy(&tls12.stderr).into_owned() + &String::from_utf8_lossy(&tls12.stdout);
    assert!(output.contains("Protocol version: TLSv1.2"), "{output}");
    assert!(output.contains("Verification: OK"), "{output}");
    assert!(output.contains("CN = www.shop.example"), "{output}");
    let tls11 = tokio::time::timeout(common::WAIT, s_client(&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]))
        .await
        .unwrap()
        .unwrap();
    let output = String::from_utf8_lossy(&tls11.stderr).into_owned() + &String::from_utf8_lossy(&tls11.stdout);
    // The client did offer TLS 1.1 (security level 0 allows it); the server refused it with an alert.
    assert!(
        output.contains("alert handshake failure") || output.contains("alert protocol version"),
        "{output}"
    );
    assert!(!tls11.status.success(), "{output}");
}

/// Sessions resume (stateless tickets with rotating keys), also after a reload, and never
/// across host names.
#[tokio::test]
async fn sessions_resume_with_tickets_also_across_a_reload() {
    use std::sync::Arc;
    let (fixture, _app, _custom) = fixture_with_custom_domain().await;
    let running = fixture.start().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(fixture.ca.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = |name: &'static str| {
        let connector = connector.clone();
        let addr = running.https;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            // TLS 1.3 tickets arrive after the handshake: read until they are processed.
            use tokio::io::AsyncWriteExt;
            tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.apps.test\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = Vec::new();
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(common::WAIT, tls.read_to_end(&mut response)).await;
            tls.get_ref().1.handshake_kind()
        }
    };
    assert_eq!(connect("shop.apps.test").await, Some(rustls::HandshakeKind::Full));
    assert_eq!(connect("shop.apps.test").await, Some(rustls::HandshakeKind::Resumed));
    running
        .proxy()
        .reload(&fixture.path("gatehouse.toml"), gatehouse::server::ReloadTrigger::Api)
        .unwrap();
    assert_eq!(connect("shop.apps.test").await, Some(rustls::HandshakeKind::Resumed));
    // Another name gets a full handshake of its own.
    assert_eq!(connect("www.shop.example").await, Some(rustls::HandshakeKind::Full));
}
