//! Talking to the agent below the level of client libraries: raw HTTP/1.1
//! bytes over TCP (so no library normalises a request target, merges
//! headers or fixes a method's case before the agent sees it), an h2c
//! client (prior knowledge, no upgrade), one request through the h2 library
//! itself or as raw HTTP/2 frames, and a free loopback port for agents run
//! as processes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `bytes`, then reads until the agent closes or `wait` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every HTTP/1.1 response in `response`, in order.
pub fn statuses(response: &str) -> Vec<u16> {
    response
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect()
}

/// One HTTP/1.x response read off the wire.
#[derive(Debug, Clone)]
pub struct Http1Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    /// Names lower-cased, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    /// De-chunked when the response was chunked.
    pub body: String,
}

impl Http1Response {
    /// The first response in `raw` (what [`exchange`] read), or `None` when
    /// there is none (the agent closed without answering).
    pub fn parse(raw: &str) -> Option<Self> {
        let version = raw
            .get(..8)
            .filter(|v| *v == "HTTP/1.1" || *v == "HTTP/1.0")?
            .to_string();
        let rest = raw.get(8..)?.strip_prefix(' ')?;
        let status = rest.get(..3)?.parse().ok()?;
        let (head, body) = rest.split_once("\r\n\r\n")?;
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let body = if chunked {
            dechunk(body)
        } else {
            match length {
                Some(n) => body.get(..n).unwrap_or(body).to_string(),
                None => body.to_string(),
            }
        };
        Some(Self {
            version,
            status,
            headers,
            body,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    // Bounded by the body: every round consumes at least the size line.
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 {
            break;
        }
        let Some(chunk) = rest.get(..n) else { break };
        out.push_str(chunk);
        body = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// An HTTP/2 client with prior knowledge (h2c): it sends `:method` and
/// `:path` exactly as given in the request (no normalisation).
pub fn h2c() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A loopback port that was free a moment ago (for an agent run as a
/// process, which needs its ports in its config file).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The two protocols the agent serves on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 as raw bytes: the request line and headers exactly as written.
    H1,
    /// h2c: `:method` and `:path` exactly as given.
    H2,
}

pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

/// One answer, from either protocol.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `(status, reason, rule)` when nodeward refused (its JSON body);
    /// `None` when the upstream answered.
    pub fn refusal(&self) -> Option<(u16, String, Option<String>)> {
        let b = self.json();
        let reason = b["reason"].as_str()?;
        b["request_id"].as_str()?;
        Some((self.status, reason.to_string(), b["rule"].as_str().map(String::from)))
    }

    /// What the [`crate::EchoUpstream`] received (panics when the request
    /// was not forwarded to one).
    pub fn echoed(&self) -> Value {
        assert_eq!(self.status, 200, "not forwarded: {self:?}");
        let v = self.json();
        assert!(v["headers"].is_object(), "not the echo upstream's answer: {self:?}");
        v
    }
}

/// One request with an empty body, on a fresh connection. Over HTTP/1.1
/// the head is `method target`, `Host`, `Connection: close` and `headers`,
/// byte for byte (so `target` may be any spelling, even absolute-form);
/// over h2c `target` is appended to `http://addr` as the `:path`.
pub async fn send(proto: Proto, addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    match proto {
        Proto::H1 => {
            let mut head = format!("{method} {target} HTTP/1.1\r\nHost: nodeward.test\r\nConnection: close\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let raw = exchange(addr, head.as_bytes(), Duration::from_secs(10)).await;
            let r = Http1Response::parse(&raw).unwrap_or_else(|| panic!("{method} {target}: no response: {raw:?}"));
            // Whatever version the upstream spoke, the agent answers in its own.
            assert_eq!(r.version, "HTTP/1.1", "{method} {target}: {raw:?}");
            Reply {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }
        }
        Proto::H2 => {
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{target}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(Bytes::new())).expect("request");
            let resp = tokio::time::timeout(Duration::from_secs(10), h2c().request(req))
                .await
                .expect("answered within 10 s")
                .unwrap_or_else(|e| panic!("{method} {target} over h2c: {e}"));
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        }
    }
}

pub const FRAME_HEADERS: u8 = 0x1;
pub const FRAME_RST_STREAM: u8 = 0x3;
pub const PROTOCOL_ERROR: u32 = 0x1;

/// `GET path` with `extra` headers as raw HTTP/2 frames (HPACK literals,
/// no Huffman coding), for headers the h2 library refuses to send (such as
/// `connection`); returns the type of the first frame the agent sends on
/// stream 1 ([`FRAME_HEADERS`] or [`FRAME_RST_STREAM`]) and, for
/// RST_STREAM, its error code.
pub async fn h2_raw_frames(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> (u8, u32) {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small frame").to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut block = Vec::new();
    let fields = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "nodeward.test"),
        (":path", path),
    ];
    for (name, value) in fields.iter().chain(extra) {
        // Literal without indexing, new name (RFC 7541 §6.2.2), lengths in
        // one byte without Huffman coding: short strings only.
        block.push(0);
        for s in [name, value] {
            block.push(u8::try_from(s.len()).ok().filter(|&n| n < 127).expect("short"));
            block.extend_from_slice(s.as_bytes());
        }
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(FRAME_HEADERS, 0x1 | 0x4, 1, &block)); // END_STREAM | END_HEADERS
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&out).await.expect("write");
    let read = async {
        for _ in 0..32 {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.expect("a frame");
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.expect("frame payload");
            let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            if head[3] == 0x4 && head[4] & 0x1 == 0 {
                s.write_all(&frame(0x4, 0x1, 0, &[])).await.expect("settings ack");
            }
            if stream == 1 && head[3] == FRAME_RST_STREAM {
                let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                return (FRAME_RST_STREAM, code);
            }
            if stream == 1 && head[3] == FRAME_HEADERS {
                return (FRAME_HEADERS, 0);
            }
        }
        panic!("no answer on stream 1 within 32 frames");
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answered within 10 s")
}

/// One request with the h2 library itself (for `:path *` and CONNECT,
/// which an HTTP client with a connection pool does not send): the status
/// and the body as JSON (`Null` when it is not).
pub async fn h2_request(addr: SocketAddr, method: http::Method, uri: http::Uri) -> (u16, Value) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answered within 10 s")
        .expect("response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    task.abort();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}
