//! A hostile upstream: what the agent does when the app behind it answers
//! with responses that are malformed, ambiguously framed, longer than they
//! say, stalled or upgraded. Pinned over real sockets so that the HTTP/1
//! client half (hyper's today) can be replaced without losing any of it:
//!
//! - the client never gets bytes the upstream did not frame as this response;
//! - a later request on the same downstream connection gets the upstream's
//!   real answer to *that* request: an upstream connection with bytes left
//!   over is dropped and the next request dials a new one;
//! - a malformed head, or a 101 nobody asked for, is a 502 with the agent's
//!   own body, never forwarded;
//! - the framing the client gets is the agent's own: a received
//!   `Content-Length` goes on only if it is what framed the body, as one
//!   plain value;
//! - the agent keeps serving (a new downstream connection gets a 200).
//!
//! The upstream is a raw TCP server answering each path with scripted bytes
//! (`script`), numbering its connections; `GET /conn` answers `conn N`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nodeward_testkit::{TestAgent, TestIdp, example_config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What follows the upstream's scripted bytes on that connection.
#[derive(Clone, Copy)]
enum Then {
    /// Reads the next request on the same connection.
    KeepAlive,
    /// Closes the connection.
    Close,
    /// Neither reads nor closes for 30 s (the test is over by then).
    Stall,
    /// Writes these bytes 100 ms later, then reads the next request.
    Late(&'static str),
}

/// A complete response whose body is `SMUGGLE`: after a response it is
/// leftover bytes that must never reach a client.
macro_rules! smuggled {
    ($head:literal) => {
        concat!($head, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSMUGGLE")
    };
}

/// The upstream's answer to each path (bytes exactly as written).
#[rustfmt::skip]
const SCRIPTS: &[(&str, &str, Then)] = &[
    // 1. Both framings, `SMUGGLE` after the chunked terminator.
    ("/cl-and-chunked", smuggled!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), Then::KeepAlive),
    ("/cl-short-and-chunked", smuggled!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), Then::KeepAlive),
    ("/cl-long-and-chunked", smuggled!("HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), Then::KeepAlive),
    // TE names codings that do not end in chunked: the body ends at the close,
    // and the Content-Length beside it frames nothing.
    ("/cl-and-gzip-te", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nhello", Then::Close),
    // The same length twice, as two fields and as a list: one valid length
    // (RFC 9110 §8.6), which the client must get as one value.
    ("/cl-same-twice", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    ("/cl-same-list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", Then::KeepAlive),
    // 2. A body longer than its Content-Length.
    ("/longer-than-cl", smuggled!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), Then::KeepAlive),
    // The same leftover, arriving 100 ms after the response (before the next request).
    ("/longer-than-cl-late", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Then::Late(smuggled!(""))),
    // 3. Content-Length values no parser may guess at.
    ("/bad/cl-twice", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", Then::KeepAlive),
    ("/bad/cl-plus", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/cl-list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", Then::KeepAlive),
    ("/bad/cl-negative", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello", Then::KeepAlive),
    ("/bad/cl-hex", "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/cl-huge", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nhello", Then::KeepAlive),
    // 4. Malformed heads.
    ("/bad/bare-cr", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/nul", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/space-before-colon", "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/garbage-status", "HTPT/1.1 2OO 0K\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/status-99", "HTTP/1.1 99 X\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    ("/bad/status-1000", "HTTP/1.1 1000 X\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    // 6. An interim response first.
    ("/continue", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    // 7. Bodies where there can be none: after them, a whole smuggled response.
    ("/head-with-body", smuggled!("HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\n"), Then::KeepAlive),
    ("/204-with-body", smuggled!("HTTP/1.1 204 No Content\r\nContent-Length: 38\r\n\r\n"), Then::KeepAlive),
    ("/304-with-body", smuggled!("HTTP/1.1 304 Not Modified\r\nContent-Length: 38\r\n\r\n"), Then::KeepAlive),
    // 8, 9. Bodies delimited by the close, and an HTTP/1.0 answer that keeps
    // its connection open though it never asked to.
    ("/until-close", "HTTP/1.1 200 OK\r\n\r\nthe body ends at the close", Then::Close),
    ("/http10-until-close", "HTTP/1.0 200 OK\r\n\r\nold body ends at the close", Then::Close),
    ("/http10-open", "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", Then::KeepAlive),
    // 10. Chunked: extensions and trailers; broken chunk sizes and data.
    ("/chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n5;ext=1;q=\"a b\"\r\nhello\r\n6\r\n world\r\n0;end\r\nx-t: v\r\n\r\n", Then::KeepAlive),
    ("/chunk-overflow", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nffffffffffffffffff\r\nworld\r\n0\r\n\r\n", Then::KeepAlive),
    ("/chunk-no-crlf", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworldXX0\r\n\r\n", Then::KeepAlive),
    // 11. Hop-by-hop headers, and a close the client's connection must not inherit.
    ("/hop-by-hop", "HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nx-secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: x-t\r\nx-kept: yes\r\nContent-Length: 2\r\n\r\nok", Then::Close),
    // 12. An early answer to a large request body, which is never read.
    ("/early-413", "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!", Then::Stall),
    // 13. A status line, then nothing.
    ("/stall", "HTTP/1.1 200 OK\r\n", Then::Stall),
    // 14. An upgrade nobody asked for, then bytes of the "new protocol".
    ("/switch", "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nRAW-UPGRADED-BYTES", Then::KeepAlive),
];

/// Scripted bytes for `path` on connection `n`.
fn script(path: &str, n: usize) -> (Vec<u8>, Then) {
    match path {
        "/conn" => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nconn {n}",
                5 + n.to_string().len()
            );
            (head.into_bytes(), Then::KeepAlive)
        }
        // 5. 1 MiB of headers; 200 headers of a few bytes each.
        "/huge-head" => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..16 * 1024 {
                head.extend_from_slice(format!("x-h{i:05}: {}\r\n", "v".repeat(54)).as_bytes());
            }
            head.extend_from_slice(b"Content-Length: 5\r\n\r\nhello");
            (head, Then::KeepAlive)
        }
        "/many-headers" => {
            let lines: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
            let head = format!("HTTP/1.1 200 OK\r\n{lines}Content-Length: 5\r\n\r\nhello");
            (head.into_bytes(), Then::KeepAlive)
        }
        _ => {
            let (_, bytes, then) = SCRIPTS.iter().find(|(p, ..)| *p == path).expect("a scripted path");
            (bytes.as_bytes().to_vec(), *then)
        }
    }
}

/// The scripted upstream; dropping it closes the listener and every connection.
struct Scripted {
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start() -> (Self, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                open.spawn(async move {
                    let mut buf = Vec::new();
                    // Request bodies are never read: only /early-413 gets one.
                    while let Some(head) = read_head(&mut s, &mut buf).await {
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let (bytes, then) = script(&path, n);
                        if s.write_all(&bytes).await.is_err() {
                            return;
                        }
                        match then {
                            Then::KeepAlive => {}
                            Then::Late(bytes) => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                if s.write_all(bytes.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Then::Close => return,
                            Then::Stall => {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (Self { connections, task }, addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request head (through the blank line), consumed from `buf` + `s`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The provider, the scripted upstream, an agent in front of it (its
/// upstream_timeout 500 ms), a token it accepts, a client connection.
async fn setup() -> (TestIdp, Scripted, TestAgent, String, Downstream) {
    let idp = TestIdp::start().await;
    let (up, addr) = Scripted::start().await;
    let yaml = example_config(&idp.issuer(), addr).replace(
        "admin: 127.0.0.1:0",
        "admin: 127.0.0.1:0\nlimits: {upstream_timeout: 500ms}",
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let token = idp.token(json!({"aud": "orders"}));
    let d = Downstream::connect(&agent, &token).await;
    (idp, up, agent, token, d)
}

/// One response as the client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    /// Decoded (chunked) or as framed.
    body: Vec<u8>,
    /// The body ended as its framing says (false: the connection closed first).
    complete: bool,
}

impl Resp {
    /// Every value of the field `name`, in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.head.lines().skip(1).filter_map(move |l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.values(name).next()
    }
}

/// One downstream HTTP/1.1 connection to the agent; `raw` is every byte it received.
struct Downstream {
    s: TcpStream,
    buf: Vec<u8>,
    raw: Vec<u8>,
    token: String,
}

impl Downstream {
    async fn connect(agent: &TestAgent, token: &str) -> Self {
        let addr = agent.url("orders").trim_start_matches("http://").to_string();
        Self {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
            raw: Vec::new(),
            token: token.to_string(),
        }
    }

    fn head(&self, method: &str, path: &str, extra: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer {}\r\n{extra}\r\n",
            self.token
        )
    }

    /// More bytes into `buf`; false at the end of the stream (or a reset).
    async fn fill(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout_at(deadline, self.s.read(&mut chunk));
        match read.await.expect("the agent answers within 10 s") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.raw.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response to a `method` request; None if the connection
    /// ended before a whole head.
    async fn response(&mut self, method: &str) -> Option<Resp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            if !self.fill(deadline).await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
        let mut r = Resp {
            status,
            head,
            body: Vec::new(),
            complete: true,
        };
        if method == "HEAD" || matches!(status, 100..=199 | 204 | 304) {
            return Some(r);
        }
        if let Some(te) = r.header("transfer-encoding") {
            assert_eq!(te, "chunked", "the agent's own framing");
            r.complete = self.chunked(&mut r.body, deadline).await;
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().expect("the agent's content-length");
            while self.buf.len() < len {
                if !self.fill(deadline).await {
                    r.complete = false;
                    break;
                }
            }
            r.body = self.buf.drain(..len.min(self.buf.len())).collect();
        } else {
            while self.fill(deadline).await {}
            r.body = std::mem::take(&mut self.buf);
        }
        Some(r)
    }

    /// A chunked body into `body`; false if the stream ended before its last chunk.
    async fn chunked(&mut self, body: &mut Vec<u8>, deadline: Instant) -> bool {
        loop {
            let Some(line) = self.line(deadline).await else {
                return false;
            };
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).expect("the agent's chunk size");
            if size == 0 {
                // Trailers, up to the empty line.
                while let Some(l) = self.line(deadline).await {
                    if l.is_empty() {
                        return true;
                    }
                }
                return false;
            }
            while self.buf.len() < size + 2 {
                if !self.fill(deadline).await {
                    body.append(&mut self.buf);
                    return false;
                }
            }
            body.extend(self.buf.drain(..size));
            assert_eq!(self.buf.drain(..2).as_slice(), b"\r\n", "chunk data ends in CRLF");
        }
    }

    async fn line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// `method path`: its response, which must come.
    async fn request(&mut self, method: &str, path: &str) -> Resp {
        let head = self.head(method, path, "");
        tokio::time::timeout(Duration::from_secs(5), self.s.write_all(head.as_bytes()))
            .await
            .expect("write in time")
            .expect("write");
        self.response(method).await.expect("a response head")
    }

    /// The agent closed the connection (within 2 s) with nothing more on it.
    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), self.s.read(&mut byte)).await;
        self.buf.is_empty() && matches!(read, Ok(Ok(0) | Err(_)))
    }
}

/// The agent's own 502: its JSON body, nothing of the upstream's.
fn assert_agent_502(r: &Resp, case: &str) {
    assert_eq!(r.status, 502, "{case}: {r:?}");
    assert!(r.complete, "{case}: {r:?}");
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("the agent's JSON body");
    assert_eq!(body["error"], "bad_gateway", "{case}: {body}");
    assert_eq!(body["reason"], "upstream_unavailable", "{case}: {body}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{case}");
}

/// `r` is `status` with all of `body`, framed whole.
fn assert_resp(r: &Resp, status: u16, body: &str) {
    assert!(r.head.starts_with(&format!("HTTP/1.1 {status} ")), "{r:?}");
    let got = (r.status, String::from_utf8_lossy(&r.body), r.complete);
    assert_eq!(got, (status, body.into(), true), "{r:?}");
}

/// `GET /conn`: the answer of upstream connection `n` (from 1).
fn assert_conn(r: &Resp, n: usize) {
    assert_resp(r, 200, &format!("conn {n}"));
}

/// Nothing left over reached `d`'s client, and a new downstream connection
/// is served: the agent did not stop.
async fn clean_and_still_serving(d: &Downstream, agent: &TestAgent, token: &str) {
    for leftover in [&b"SMUGGLE"[..], b"RAW-UPGRADED", b"worldXX"] {
        let raw = String::from_utf8_lossy(&d.raw);
        assert!(
            find(&d.raw, leftover).is_none(),
            "leftover upstream bytes reached the client: {raw:?}"
        );
    }
    assert_still_serves(agent, token).await;
}

async fn assert_still_serves(agent: &TestAgent, token: &str) {
    let mut d = Downstream::connect(agent, token).await;
    let r = d.request("GET", "/conn").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with(b"conn "), "{r:?}");
}

/// Each `(method, path, status, body)` is answered as expected on one
/// downstream connection, and its next `GET /conn` (sent at once, or after
/// `pause`) goes over a new upstream connection, never the one the
/// leftover bytes are on: the agent drops it and dials again.
async fn leftovers(cases: &[(&str, &str, u16, &str)], pause: Duration) {
    let (_idp, up, agent, token, mut d) = setup().await;
    for (i, (method, path, status, body)) in cases.iter().enumerate() {
        assert_resp(&d.request(method, path).await, *status, body);
        tokio::time::sleep(pause).await;
        assert_conn(&d.request("GET", "/conn").await, i + 2);
    }
    assert_conn(&d.request("GET", "/conn").await, cases.len() + 1);
    assert_eq!(up.connections(), cases.len() + 1);
    clean_and_still_serving(&d, &agent, &token).await;
}

#[tokio::test]
async fn a_response_with_both_content_length_and_chunked_never_desyncs_the_next_request() {
    // Chunked wins (RFC 9112 §6.3): "hello"; the smuggled response after the
    // terminator leaves that upstream connection unused.
    leftovers(&[("GET", "/cl-and-chunked", 200, "hello")], Duration::ZERO).await;
}

/// Each of `paths` arrives as 200 `hello`, whole, with at most one
/// `content-length` and that one 5; the next request is answered by the
/// upstream connection `next` says.
async fn framed_as_hello(paths: &[(&str, usize)]) {
    let (_idp, _up, agent, token, mut d) = setup().await;
    for (path, next) in paths {
        let r = d.request("GET", path).await;
        assert_resp(&r, 200, "hello");
        let lengths: Vec<&str> = r.values("content-length").collect();
        assert!(lengths.is_empty() || lengths == ["5"], "{path}: {r:?}");
        assert_conn(&d.request("GET", "/conn").await, *next);
    }
    clean_and_still_serving(&d, &agent, &token).await;
}

#[tokio::test]
async fn a_content_length_beside_a_transfer_encoding_never_frames_the_client_response() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a proxy
    // removes the received Content-Length. A stale 3 must not cut the body;
    // a stale 50 must not leave the client waiting for 45 more bytes. Each
    // time the upstream connection is not used again (conn 2, 3, 4).
    framed_as_hello(&[
        ("/cl-short-and-chunked", 2),
        ("/cl-long-and-chunked", 3),
        ("/cl-and-gzip-te", 4),
    ])
    .await;
}

#[tokio::test]
async fn one_content_length_repeated_reaches_the_client_as_one() {
    framed_as_hello(&[("/cl-same-twice", 1), ("/cl-same-list", 1)]).await;
}

#[tokio::test]
async fn a_body_longer_than_its_content_length_never_answers_the_next_request() {
    leftovers(&[("GET", "/longer-than-cl", 200, "hello")], Duration::ZERO).await;
}

#[tokio::test]
async fn leftover_bytes_arriving_after_the_response_never_answer_the_next_request() {
    let late = [("GET", "/longer-than-cl-late", 200, "hello")];
    leftovers(&late, Duration::from_millis(400)).await;
}

#[tokio::test]
async fn bodies_on_head_204_and_304_responses_never_answer_the_next_request() {
    let cases = [
        ("HEAD", "/head-with-body", 200, ""),
        ("GET", "/204-with-body", 204, ""),
        ("GET", "/304-with-body", 304, ""),
    ];
    leftovers(&cases, Duration::ZERO).await;
}

/// Each of `paths` is the agent's 502; the same downstream connection's next
/// request goes over a new upstream connection (the broken one is dropped).
async fn each_is_a_502(paths: &[&str]) {
    let (_idp, up, agent, token, mut d) = setup().await;
    for (i, path) in paths.iter().enumerate() {
        assert_agent_502(&d.request("GET", path).await, path);
        assert_conn(&d.request("GET", "/conn").await, i + 2);
    }
    assert_eq!(up.connections(), paths.len() + 1);
    assert!(find(&d.raw, b"hello").is_none(), "an upstream body was forwarded");
    clean_and_still_serving(&d, &agent, &token).await;
}

#[tokio::test]
async fn an_ambiguous_content_length_is_a_502() {
    let paths = ["twice", "plus", "list", "negative", "hex", "huge"].map(|c| format!("/bad/cl-{c}"));
    each_is_a_502(&paths.each_ref().map(String::as_str)).await;
}

#[tokio::test]
async fn a_malformed_response_head_is_a_502() {
    let cases = "bare-cr nul obs-fold space-before-colon garbage-status status-99 status-1000";
    let paths: Vec<String> = cases.split(' ').map(|c| format!("/bad/{c}")).collect();
    each_is_a_502(&paths.iter().map(String::as_str).collect::<Vec<_>>()).await;
}

#[tokio::test]
async fn a_huge_response_head_is_a_502_and_the_agent_still_serves() {
    each_is_a_502(&["/huge-head", "/many-headers"]).await;
}

#[tokio::test]
async fn an_interim_100_continue_is_followed_by_the_real_response() {
    let (_idp, up, agent, token, mut d) = setup().await;
    let r = d.request("GET", "/continue").await;
    assert_resp(&r, 200, "hello");
    // A clean exchange: the same upstream connection answers the next one.
    assert_conn(&d.request("GET", "/conn").await, 1);
    assert_eq!(up.connections(), 1);
    assert_still_serves(&agent, &token).await;
}

#[tokio::test]
async fn a_body_delimited_by_the_close_arrives_whole() {
    // Re-framed for the client (chunked); the next request dials again.
    let until_close = [("GET", "/until-close", 200, "the body ends at the close")];
    leftovers(&until_close, Duration::ZERO).await;
}

#[tokio::test]
async fn http10_responses_arrive_as_http11_and_their_connection_is_not_used_again() {
    // The second keeps its connection open though HTTP/1.0 without
    // keep-alive means it closes: the agent sends it no other request.
    let cases = [
        ("GET", "/http10-until-close", 200, "old body ends at the close"),
        ("GET", "/http10-open", 200, "hello"),
    ];
    leftovers(&cases, Duration::ZERO).await;
}

#[tokio::test]
async fn a_chunked_response_with_extensions_and_trailers_arrives_decoded() {
    let (_idp, up, agent, token, mut d) = setup().await;
    assert_resp(&d.request("GET", "/chunked").await, 200, "hello world");
    assert!(find(&d.raw, b"ext=1").is_none(), "chunk extensions are not forwarded");
    // Trailers go only to a client that asked for them (`TE: trailers`).
    assert!(find(&d.raw, b"x-t").is_none(), "{:?}", String::from_utf8_lossy(&d.raw));
    // Safe either way; today the trailers make the agent drop that upstream
    // connection (a new one for the next request), unlike a chunked body
    // without them:
    assert_conn(&d.request("GET", "/conn").await, 2);
    assert_eq!(up.connections(), 2);
    assert_still_serves(&agent, &token).await;
}

/// A chunked body broken after its first chunk: never passed off as
/// complete. The client gets the 200 head and `body` (the chunks decoded
/// before the fault) in a chunked body that never ends: the agent closes
/// the downstream connection.
async fn broken_chunk_case(path: &str, body: &str) {
    let (_idp, _up, agent, token, mut d) = setup().await;
    let r = d.request("GET", path).await;
    let framing = (r.status, r.header("transfer-encoding"));
    assert_eq!(framing, (200, Some("chunked")), "{r:?}");
    assert_eq!((r.body.as_slice(), r.complete), (body.as_bytes(), false), "{r:?}");
    assert!(d.closed().await);
    clean_and_still_serving(&d, &agent, &token).await;
}

#[tokio::test]
async fn a_chunk_size_overflowing_u64_is_never_passed_off_as_a_complete_body() {
    broken_chunk_case("/chunk-overflow", "hello").await;
}

#[tokio::test]
async fn a_chunk_missing_its_crlf_is_never_passed_off_as_a_complete_body() {
    // "world" was framed by its chunk size; the missing CRLF after it is the fault.
    broken_chunk_case("/chunk-no-crlf", "helloworld").await;
}

#[tokio::test]
async fn hop_by_hop_response_headers_never_reach_the_client_and_close_stays_upstream() {
    let (_idp, up, agent, token, mut d) = setup().await;
    let r = d.request("GET", "/hop-by-hop").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "{r:?}");
    assert_eq!(r.header("x-kept"), Some("yes"), "{r:?}");
    for name in "connection x-secret keep-alive proxy-connection upgrade te trailer".split(' ') {
        assert!(r.header(name).is_none(), "{name} reached the client: {r:?}");
    }
    // The upstream's close is its own connection's: the client's goes on.
    assert_conn(&d.request("GET", "/conn").await, 2);
    assert_eq!(up.connections(), 2);
    assert_still_serves(&agent, &token).await;
}

#[tokio::test]
async fn an_early_413_to_an_unread_large_body_reaches_the_client() {
    let (_idp, up, agent, token, mut d) = setup().await;
    const LEN: usize = 2 * 1024 * 1024; // under max_body_bytes (16 MiB by default)
    let head = d.head("POST", "/early-413", &format!("Content-Length: {LEN}\r\n"));
    let (mut rd, mut wr) = d.s.into_split();
    // The body is written while the answer is read.
    let writer = tokio::spawn(async move {
        let write = async { wr.write_all(&[head.as_bytes(), &vec![b'x'; LEN]].concat()).await };
        let written = tokio::time::timeout(Duration::from_secs(10), write).await;
        (matches!(written, Ok(Ok(()))), wr)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 4096];
    while find(&d.buf, b"too big!").is_none() {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk))
            .await
            .expect("bounded")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => d.buf.extend_from_slice(&chunk[..n]),
        }
    }
    let writer = tokio::time::timeout(Duration::from_secs(15), writer).await;
    let (written, wr) = writer.expect("writer ends").expect("writer");
    d.s = rd.reunite(wr).expect("one stream");
    d.raw = d.buf.clone();
    assert_resp(&d.response("POST").await.expect("a response"), 413, "too big!");
    // Then the agent closes the client's connection (its body not read
    // whole), or, the body taken whole, answers its next request.
    if !d.closed().await {
        assert!(written, "the body was not sent whole, yet the connection stays open");
        assert_conn(&d.request("GET", "/conn").await, 2);
        assert_eq!(up.connections(), 2);
    }
    assert_still_serves(&agent, &token).await;
}

#[tokio::test]
async fn a_stalled_response_head_is_a_504_within_the_upstream_timeout() {
    let (_idp, up, agent, token, mut d) = setup().await;
    let start = Instant::now();
    let r = d.request("GET", "/stall").await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(body["reason"], "upstream_timeout");
    let bounded = Duration::from_millis(450)..Duration::from_secs(3);
    assert!(bounded.contains(&took), "{took:?}");
    // The stalled connection is never asked again.
    assert_conn(&d.request("GET", "/conn").await, 2);
    let mut d2 = Downstream::connect(&agent, &token).await;
    assert_eq!(d2.request("GET", "/conn").await.status, 200);
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn an_unasked_101_is_a_502_and_never_a_tunnel() {
    // The agent never asks for an upgrade (it strips `Upgrade`), so a 101 is
    // a bad gateway; the connection it came on is not used again.
    let (_idp, up, agent, token, mut d) = setup().await;
    assert_agent_502(&d.request("GET", "/switch").await, "switch");
    assert_conn(&d.request("GET", "/conn").await, 2);
    assert_eq!(up.connections(), 2);
    assert!(find(&d.raw, b" 101 ").is_none(), "a 101 reached the client");
    clean_and_still_serving(&d, &agent, &token).await;
}

#[tokio::test]
async fn an_h2c_client_gets_the_same_framing_and_refusals() {
    // h2c streams go through the pooled client, not the bound connection:
    // the same rules for the response head, whichever path it took.
    use http_body_util::{BodyExt, Full};
    let (_idp, _up, agent, token, _d) = setup().await;
    let h2 = nodeward_testkit::wire::h2c();
    for (path, status, body) in [
        ("/cl-short-and-chunked", 200, "hello"),
        ("/cl-same-twice", 200, "hello"),
        ("/cl-same-list", 200, "hello"),
        ("/switch", 502, ""),
        ("/bad/cl-list", 502, ""),
    ] {
        let req = http::Request::get(format!("{}{path}", agent.url("orders")))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), h2.request(req))
            .await
            .expect("answered within 10 s")
            .expect("h2c");
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let lengths: Vec<_> = resp.headers().get_all("content-length").iter().cloned().collect();
        let got = resp.into_body().collect().await.expect("whole body").to_bytes();
        if status == 200 {
            assert_eq!(got, body.as_bytes(), "{path}");
            assert!(lengths.is_empty() || lengths == ["5"], "{path}: {lengths:?}");
        } else {
            let refusal: serde_json::Value = serde_json::from_slice(&got).expect("the agent's JSON");
            assert_eq!(refusal["reason"], "upstream_unavailable", "{path}: {refusal}");
        }
    }
    assert_still_serves(&agent, &token).await;
}
