//! A tiny DNS server on loopback that plays the platform's name server for upstream host names.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// A name server that answers every A query with one address (TTL 0), no AAAA records, and
/// NXDOMAIN for names that start with `missing`.
pub struct NameServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Ipv4Addr>>,
    task: tokio::task::JoinHandle<()>,
}

impl NameServer {
    pub async fn start(answer: Ipv4Addr) -> Self {
        Self::start_slow(answer, Duration::ZERO).await
    }

    /// A name server that takes `delay` to answer each query (each on its own, concurrently).
    pub async fn start_slow(answer: Ipv4Addr, delay: Duration) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let current = answer.clone();
        let task = tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            loop {
                let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let address = *current.lock().unwrap();
                if let Some(reply) = reply(&buffer[..length], address) {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = socket.send_to(&reply, peer).await;
                    });
                }
            }
        });
        Self { addr, answer, task }
    }

    pub fn move_to(&self, address: Ipv4Addr) {
        *self.answer.lock().unwrap() = address;
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer to one DNS query (RFC 1035 4.1), or `None` for what is not a query.
fn reply(query: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    let mut name = Vec::new();
    loop {
        let length = usize::from(*query.get(end)?);
        end += 1;
        if length == 0 {
            break;
        }
        name.push(String::from_utf8_lossy(query.get(end..end + length)?).into_owned());
        end += length;
    }
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    end += 4;
    let missing = name.first().is_some_and(|label| label.starts_with("missing"));
    let answers = u16::from(qtype == 1 && !missing);
    let mut reply = Vec::with_capacity(end + 16);
    reply.extend_from_slice(&query[0..2]);
    // QR, RD, RA; RCODE 3 (NXDOMAIN) for missing names.
    reply.extend_from_slice(&[0x81, if missing { 0x83 } else { 0x80 }]);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..end]);
    if answers == 1 {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}
