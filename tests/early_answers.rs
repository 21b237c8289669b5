//! Early answers with real clients (curl over HTTP/1.1 and HTTP/2, raw TLS, h2): the request-head
//! limit holds exactly whatever the layout, and an answer given while the client is still sending
//! (431, 413, 403, 429) reaches it, because what it still sends is read and dropped within bounds
//! (lingering close) and HTTP/2 streams end the way clients accept.

mod common;

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::upstream::Upstream;
use common::{Connect, Fixture, Running, environment_toml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default `limits.max_request_header_bytes`.
const HEAD_LIMIT: usize = 32768;
/// Bodies larger than any socket buffer on loopback, so that the client is still sending when
/// gatehouse answers; within what gatehouse reads and drops (`linger::MAX_BYTES`).
const UPLOAD: usize = 3 * 1024 * 1024;

struct Site {
    fixture: Fixture,
    app: Upstream,
    running: Running,
}

/// `shop.apps.test`: bodies up to 1 MiB, `/private/` denied to everyone; `limited.apps.test`:
/// one request a second.
async fn start() -> Site {
    let fixture = Fixture::new();
    let app = Upstream::start("shop").await;
    fixture.main_config("[limits]\nmax_request_headers = 1000\n");
    fixture.environment(
        "shop",
        &environment_toml(
            "shop",
            &["shop.apps.test"],
            &[app.addr],
            "max_request_body = \"1MiB\"\n[access]\n\"/private/\" = \"deny-all\"\n",
        ),
    );
    fixture.environment(
        "limited",
        &environment_toml(
            "limited",
            &["limited.apps.test"],
            &[app.addr],
            "[rate_limit]\nrequests_per_second = 1\nburst = 1\n",
        ),
    );
    std::fs::write(fixture.path("ca.pem"), &fixture.ca.pem).unwrap();
    std::fs::write(fixture.path("upload.bin"), vec![b'u'; UPLOAD]).unwrap();
    let running = fixture.start().await;
    Site { fixture, app, running }
}

/// Run curl against `host` (resolved to the proxy) and return the status it reports (0 when it
/// got none) and its error text.
async fn curl(site: &Site, protocol: &str, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let port = site.running.https.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let ca = site.fixture.path("ca.pem");
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["-sS", protocol, "--cacert"])
        .arg(&ca)
        .args(["--resolve", &resolve, "-o", "/dev/null", "-w", "%{http_code}"])
        // Without curl's own fields, so that the test knows the head's size.
        .args(["-H", "User-Agent:", "-H", "Accept:"])
        .args(extra)
        .arg(&url)
        .stdin(Stdio::null());
    let output = tokio::time::timeout(common::WAIT, command.output())
        .await
        .expect("curl finished in time")
        .expect("curl runs");
    let status = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Header fields (one per line, as curl's `-H @file` reads them) that bring a curl request for
/// `/` on `host` to exactly `size` bytes as gatehouse measures a head: the request line, `Host`,
/// each field as `name: value` with CRLF, and the closing CRLF. `one_field`: a single large
/// field; otherwise fields of 600 bytes each (few enough for the test app's own limit of 100).
fn fields_for_head_of(size: usize, host: &str, port: u16, one_field: bool) -> String {
    let base = "GET / HTTP/1.1\r\n".len() + format!("host: {host}:{port}\r\n").len() + "\r\n".len();
    let mut remaining = size - base;
    let mut fields = String::new();
    let mut index = 0;
    while !one_field && remaining > 1000 {
        // "x-f0001: " + 589 bytes + CRLF = 600 bytes
        fields.push_str(&format!("x-f{index:04}: {}\n", "v".repeat(589)));
        remaining -= 600;
        index += 1;
    }
    let overhead = "x-fill: ".len() + "\r\n".len();
    fields.push_str(&format!("x-fill: {}\n", "w".repeat(remaining - overhead)));
    fields
}

#[tokio::test]
async fn the_head_limit_holds_exactly_over_http1_and_http2_with_one_field_or_many() {
    let site = start().await;
    let port = site.running.https.port();
    for protocol in ["--http1.1", "--http2"] {
        for one_field in [true, false] {
            for (size, expected) in [(HEAD_LIMIT, 200), (HEAD_LIMIT + 1, 431)] {
                let file = site.fixture.path("fields.txt");
                std::fs::write(&file, fields_for_head_of(size, "shop.apps.test", port, one_field)).unwrap();
                let header_file = format!("@{}", file.display());
                let (status, error) = curl(&site, protocol, "shop.apps.test", "/", &["-H", &header_file]).await;
                assert_eq!(
                    status,
                    expected,
                    "{protocol}, a head of {size} bytes ({}): {error}",
                    if one_field { "one field" } else { "many fields" }
                );
            }
        }
        // The case: one 40,000-byte field, well over the limit, and never let through.
        let file = site.fixture.path("big.txt");
        std::fs::write(&file, format!("x-big: {}\n", "a".repeat(40_000))).unwrap();
        let header_file = format!("@{}", file.display());
        let (status, error) = curl(&site, protocol, "shop.apps.test", "/", &["-H", &header_file]).await;
        assert_eq!(status, 431, "{protocol}, a 40,000-byte field: {error}");
    }
}

/// Send `head` over raw TLS in pieces of `piece` bytes, each flushed as its own TLS record, and
/// return the answer's status.
async fn raw_status_in_pieces(running: &Running, head: &[u8], piece: usize) -> u16 {
    let mut tls = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    for chunk in head.chunks(piece) {
        tls.write_all(chunk).await.unwrap();
        tls.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let answer = status_line(&mut tls).await;
    std::str::from_utf8(&answer[9..12]).unwrap().parse().unwrap()
}

/// At least the first 12 bytes of the answer on `tls` (`HTTP/1.1 NNN`).
async fn status_line<S: tokio::io::AsyncRead + Unpin>(tls: &mut S) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while answer.len() < 12 {
        let read = tokio::time::timeout(common::WAIT, tls.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "closed without an answer");
        answer.extend_from_slice(&buffer[..read]);
    }
    answer
}

#[tokio::test]
async fn the_head_limit_holds_exactly_over_several_tls_records() {
    let site = start().await;
    for piece in [1000, 7000, 40_000] {
        for (size, expected) in [(HEAD_LIMIT, 200), (HEAD_LIMIT + 1, 431)] {
            let base = "GET / HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n".len() + "X-Fill: \r\n".len();
            let head = format!(
                "GET / HTTP/1.1\r\nHost: shop.apps.test\r\nX-Fill: {}\r\n\r\n",
                "z".repeat(size - base)
            );
            assert_eq!(head.len(), size);
            assert_eq!(
                raw_status_in_pieces(&site.running, head.as_bytes(), piece).await,
                expected,
                "a head of {size} bytes in records of {piece}"
            );
        }
    }
}

#[tokio::test]
async fn early_answers_reach_curl_while_it_is_still_uploading() {
    let site = start().await;
    let upload = format!("@{}", site.fixture.path("upload.bin").display());
    let big_field = site.fixture.path("big.txt");
    std::fs::write(&big_field, format!("x-big: {}\n", "a".repeat(40_000))).unwrap();
    let big_field = format!("@{}", big_field.display());
    for protocol in ["--http1.1", "--http2"] {
        // 413: the declared length is over the environment's limit.
        let (status, error) = curl(
            &site,
            protocol,
            "shop.apps.test",
            "/upload",
            &["--data-binary", &upload],
        )
        .await;
        assert_eq!(status, 413, "{protocol}: {error}");
        // 431: the head is over the limit, and a body follows it.
        let (status, error) = curl(
            &site,
            protocol,
            "shop.apps.test",
            "/upload",
            &["-H", &big_field, "--data-binary", &upload],
        )
        .await;
        assert_eq!(status, 431, "{protocol}: {error}");
        // 403: the path is denied.
        let (status, error) = curl(
            &site,
            protocol,
            "shop.apps.test",
            "/private/x",
            &["--data-binary", &upload],
        )
        .await;
        assert_eq!(status, 403, "{protocol}: {error}");
        // 429: the second request within the second (a 429 needs the limiter's one token gone).
        let small = ["--data-binary", "x"];
        let (first, _) = curl(&site, protocol, "limited.apps.test", "/upload", &small).await;
        let (status, error) = curl(
            &site,
            protocol,
            "limited.apps.test",
            "/upload",
            &["--data-binary", &upload],
        )
        .await;
        assert!(
            first == 429 || status == 429,
            "{protocol}: no 429 within a second ({first}, {status}: {error})"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Only the small requests' bytes (one each) may have reached the app.
    assert!(site.app.upload_bytes_seen() <= 2, "{}", site.app.upload_bytes_seen());
}

#[tokio::test]
async fn a_head_far_over_the_limit_gets_431_while_the_client_is_still_sending_it() {
    let site = start().await;
    // hyper refuses a raw head past twice the limit before it has read it all. Like curl, this
    // client writes its whole request before it reads, in pieces, so that it is certainly still
    // writing when the answer is ready: every write must succeed (without lingering, gatehouse
    // closed with bytes unread, and the kernel's reset broke the client's next write), and the
    // answer must then be there to read.
    let field = "h".repeat(900_000);
    let head = format!("GET / HTTP/1.1\r\nHost: shop.apps.test\r\nX-Huge: {field}\r\n\r\n");
    let mut tls = site
        .running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"http/1.1"],
        })
        .await;
    for (index, piece) in head.as_bytes().chunks(16 * 1024).enumerate() {
        let written = tokio::time::timeout(common::WAIT, async {
            tls.write_all(piece).await?;
            tls.flush().await
        })
        .await
        .unwrap();
        assert!(written.is_ok(), "write {index} failed: {written:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answer = status_line(&mut tls).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn after_a_refused_upload_the_http1_connection_keeps_serving() {
    let site = start().await;
    let mut sender = site.running.h1("shop.apps.test").await;
    let refused = http::Request::post("/private/form")
        .header("host", "shop.apps.test")
        .body(full(Bytes::from(vec![b'p'; 200_000])))
        .unwrap();
    let answer = common::send_h1(&mut sender, refused).await;
    assert_eq!(answer.status, 403);
    // The same connection carries the next request: the refused body was read and dropped, not
    // left in the stream.
    tokio::time::timeout(common::WAIT, sender.ready())
        .await
        .unwrap()
        .unwrap();
    let answer = common::send_h1(&mut sender, common::get("shop.apps.test", "/after")).await;
    assert_eq!(answer.status, 200);
}

fn full(bytes: Bytes) -> common::ClientBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// An HTTP/2 request on `/private/` (denied) whose body is sent in `chunks` of 64 KiB; returns
/// the status, and the reset the stream got, if any, once the client sent all it wanted.
async fn h2_refused_upload(running: &Running, chunks: usize) -> (u16, Option<h2::Reason>) {
    let tls = running
        .tls(Connect {
            server_name: "shop.apps.test",
            send_sni: true,
            alpn: &[b"h2"],
        })
        .await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("https://shop.apps.test/private/upload")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let response = tokio::time::timeout(common::WAIT, response).await.unwrap().unwrap();
    let status = response.status().as_u16();
    let mut reset = None;
    for index in 0..chunks {
        body.reserve_capacity(64 * 1024);
        let capacity = tokio::time::timeout(
            common::WAIT,
            std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(reason) = body.poll_reset(cx) {
                    return std::task::Poll::Ready(Err(reason));
                }
                body.poll_capacity(cx).map(Ok)
            }),
        )
        .await
        .unwrap();
        match capacity {
            Err(reason) => {
                reset = reason.ok();
                break;
            }
            Ok(Some(Ok(capacity))) => {
                let last = index + 1 == chunks;
                if body
                    .send_data(Bytes::from(vec![b'd'; capacity.min(64 * 1024)]), last)
                    .is_err()
                {
                    break;
                }
            }
            Ok(_) => break,
        }
    }
    if reset.is_none() {
        // Give a reset that is on its way the time to arrive.
        let poll = std::future::poll_fn(|cx| body.poll_reset(cx));
        reset = tokio::time::timeout(Duration::from_millis(300), poll)
            .await
            .ok()
            .and_then(Result::ok);
    }
    (status, reset)
}

#[tokio::test]
async fn an_http2_stream_answered_early_ends_cleanly() {
    let site = start().await;
    // A body within what gatehouse reads and drops: the stream ends with the client's own end,
    // no reset.
    let (status, reset) = h2_refused_upload(&site.running, 8).await;
    assert_eq!(status, 403);
    assert_eq!(reset, None, "the stream of a small refused upload was reset");
    // A body past it: the stream is reset with NO_ERROR, which tells the client that the
    // response it has is complete (RFC 9113, section 8.1).
    let (status, reset) = h2_refused_upload(&site.running, 200).await;
    assert_eq!(status, 403);
    assert_eq!(reset, Some(h2::Reason::NO_ERROR));
}
