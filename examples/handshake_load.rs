//! The load generator of `benches/certificates.py`: full TLS 1.3 handshakes (no resumption, no
//! request) to one address, each with the SNI name that comes next in a list, from many
//! connections at once, for a given time; prints how many completed and how many failed.
//!
//! The server's certificate is not verified (the benchmark measures the server's cost, and a
//! client that verifies 10,000 chains would itself be the bottleneck): never use this client's
//! configuration for anything else.
//!
//! Run: cargo run --release --example handshake_load -- 127.0.0.1:9543 NAMES_FILE SECONDS CONNECTIONS

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Accepts any certificate: see the module's notes.
#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: handshake_load ADDR NAMES_FILE SECONDS CONNECTIONS";
    let addr: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let names: Vec<ServerName<'static>> = std::fs::read_to_string(args.next().ok_or(usage)?)?
        .lines()
        .map(|name| ServerName::try_from(name.to_owned()))
        .collect::<Result<_, _>>()?;
    let seconds: f64 = args.next().ok_or(usage)?.parse()?;
    let connections: usize = args.next().ok_or(usage)?.parse()?;
    if names.is_empty() {
        return Err("no names".into());
    }

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));

    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let (connector, names, next) = (connector.clone(), names.clone(), next.clone());
                let (done, failed) = (done.clone(), failed.clone());
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let name = names[next.fetch_add(1, Ordering::Relaxed) % names.len()].clone();
                        let handshake = async {
                            let tcp = TcpStream::connect(addr).await?;
                            connector.connect(name, tcp).await
                        };
                        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                            Ok(Ok(_tls)) => done.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    });
    println!(
        "handshakes: {} done, {} failed",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}
