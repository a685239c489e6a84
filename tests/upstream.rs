//! The upstream connection of a downstream HTTP/1.1 connection (issue 14):
//! its requests share one upstream connection, and a connection whose
//! exchange broke off (a 504, a body cut short) is never used again, so a
//! late answer can never be taken for the next request's.
//!
//! The upstream here is a raw HTTP/1.1 server that numbers its connections
//! and answers each request with that number, after a delay the path asks for.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nodeward_testkit::{TestAgent, TestIdp, example_config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers `GET /conn?delay=MS` with `conn N` (N: the connection's number,
/// from 1) after MS milliseconds; `GET /cut` with a head announcing 100
/// bytes and 2 of them, then silence.
struct Numbered {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Numbered {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Dropping it closes the listener and every connection.
    async fn start_on(addr: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                open.spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(head) = read_head(&mut s, &mut buf).await else {
                            return;
                        };
                        let target = head.split(' ').nth(1).unwrap_or("").to_string();
                        if target == "/cut" {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx").await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        let delay = target.split("delay=").nth(1).and_then(|d| d.parse().ok()).unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let body = format!("conn {n}");
                        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Numbered {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request head (through the blank line), consumed from `buf` + `s`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
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

/// One response on `s` (head + Content-Length body): its status and body.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(s, buf))
        .await
        .expect("a response within 10 s")
        .expect("a response head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("content-length");
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[..len]).into_owned();
    buf.drain(..len);
    (status, body)
}

async fn agent(up: &Numbered, idp: &TestIdp) -> TestAgent {
    let yaml = example_config(&idp.issuer(), up.addr).replace(
        "admin: 127.0.0.1:0",
        "admin: 127.0.0.1:0\nlimits: {upstream_timeout: 500ms}",
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    agent
}

/// The provider, the numbered upstream, an agent in front of it, a token it accepts.
async fn setup() -> (TestIdp, Numbered, TestAgent, String) {
    let (idp, up) = (TestIdp::start().await, Numbered::start().await);
    let agent = agent(&up, &idp).await;
    let token = idp.token(json!({"aud": "orders"}));
    (idp, up, agent, token)
}

/// One downstream HTTP/1.1 connection to the agent, one request at a time.
struct Downstream {
    s: TcpStream,
    buf: Vec<u8>,
    token: String,
}

impl Downstream {
    async fn connect(agent: &TestAgent, token: &str) -> Self {
        let addr = agent.url("orders").trim_start_matches("http://").to_string();
        Self {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
            token: token.to_string(),
        }
    }

    async fn send(&mut self, path: &str) {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer {}\r\n\r\n",
            self.token
        );
        self.s.write_all(head.as_bytes()).await.expect("write");
    }

    /// `GET path`: the response's status and body.
    async fn get(&mut self, path: &str) -> (u16, String) {
        self.send(path).await;
        read_response(&mut self.s, &mut self.buf).await
    }
}

fn conn(n: usize) -> (u16, String) {
    (200, format!("conn {n}"))
}

#[tokio::test]
async fn the_requests_of_one_connection_share_one_upstream_connection() {
    let (_idp, up, agent, token) = setup().await;
    let mut d = Downstream::connect(&agent, &token).await;
    for _ in 0..5 {
        assert_eq!(d.get("/conn").await, conn(1));
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn a_timed_out_exchange_never_answers_the_next_request() {
    let (_idp, up, agent, token) = setup().await;
    let mut d = Downstream::connect(&agent, &token).await;
    assert_eq!(d.get("/conn").await, conn(1));
    // Past upstream_timeout: 504, and connection 1 answers late.
    assert_eq!(d.get("/conn?delay=1500").await.0, 504);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The same client connection: a new upstream connection, not the late answer.
    assert_eq!(d.get("/conn").await, conn(2));
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_body_cut_short_closes_both_connections() {
    let (_idp, _up, agent, token) = setup().await;
    // The client gets the head and 2 bytes, then the client gives up.
    let mut d = Downstream::connect(&agent, &token).await;
    d.send("/cut").await;
    let head = read_head(&mut d.s, &mut d.buf).await.expect("head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(d);
    // A new client connection gets a new upstream connection.
    let mut d = Downstream::connect(&agent, &token).await;
    assert_eq!(d.get("/conn").await, conn(2));
}

#[tokio::test]
async fn an_upstream_that_closed_its_idle_connection_is_dialled_again() {
    let (_idp, up, agent, token) = setup().await;
    let mut d = Downstream::connect(&agent, &token).await;
    assert_eq!(d.get("/conn").await, conn(1));
    // The upstream restarts: every connection it had is closed.
    let addr = up.addr;
    drop(up);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let up = Numbered::start_on(addr).await;
    assert_eq!(d.get("/conn").await, conn(1));
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn a_connection_per_request_client_does_not_make_a_connection_per_request_upstream() {
    let (_idp, up, agent, token) = setup().await;
    for _ in 0..5 {
        let mut d = Downstream::connect(&agent, &token).await;
        assert_eq!(d.get("/conn").await, conn(1));
        drop(d);
        // The agent sees the close and hands the upstream connection on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.connections(), 1);
}
