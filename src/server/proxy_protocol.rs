//! The PROXY protocol (v1 and v2), as sent by an L4 load balancer in front of gatehouse: the
//! first bytes of each connection name the real client. The header is read exactly (never a byte
//! of the TLS handshake after it) and parsed by the `proxy-header` crate. A listener that expects
//! it accepts nothing without a valid header: the connection is closed.

use std::io;
use std::net::SocketAddr;

use proxy_header::{ParseConfig, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header (RFC: 107 bytes including CRLF).
const V1_MAX: usize = 107;
/// v2 address blocks plus TLVs larger than this are refused.
const V2_MAX_PAYLOAD: usize = 4096;
const V2_FIXED: usize = 16;

/// Why a connection's PROXY header was refused. Carried inside the `io::Error` that reading it
/// returns, so that the handshake's failure metric can tell it from other errors by type.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("PROXY protocol: v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("PROXY protocol: v2 header too long")]
    V2TooLong,
    #[error("PROXY protocol: the connection does not start with a PROXY header")]
    Missing,
    #[error("PROXY protocol: header length mismatch")]
    LengthMismatch,
    #[error("PROXY protocol: malformed header ({0})")]
    Malformed(String),
}

impl From<ProxyHeaderError> for io::Error {
    fn from(error: ProxyHeaderError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

/// Read the PROXY header at the start of `stream` and return the client address it names. A
/// `LOCAL` header (the balancer's own health check) names no client: the TCP peer is used.
pub async fn read_client_address<S: AsyncRead + Unpin>(stream: &mut S, peer: SocketAddr) -> io::Result<SocketAddr> {
    let mut header = vec![0u8; 5];
    stream.read_exact(&mut header).await?;
    if header == b"PROXY" {
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(ProxyHeaderError::V1TooLong.into());
            }
            header.push(stream.read_u8().await?);
        }
    } else if header[0] == b'\r' {
        header.resize(V2_FIXED, 0);
        stream.read_exact(&mut header[5..]).await?;
        let payload = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if payload > V2_MAX_PAYLOAD {
            return Err(ProxyHeaderError::V2TooLong.into());
        }
        header.resize(V2_FIXED + payload, 0);
        stream.read_exact(&mut header[V2_FIXED..]).await?;
    } else {
        return Err(ProxyHeaderError::Missing.into());
    }
    let config = ParseConfig {
        include_tlvs: false,
        ..ParseConfig::default()
    };
    match ProxyHeader::parse(&header, config) {
        Ok((parsed, consumed)) if consumed == header.len() => {
            Ok(parsed.proxied_address().map_or(peer, |address| address.source))
        }
        Ok(_) => Err(ProxyHeaderError::LengthMismatch.into()),
        Err(err) => Err(ProxyHeaderError::Malformed(format!("{err:?}")).into()),
    }
}
