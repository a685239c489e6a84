//! Shared by the JWKS tests (`jwks.rs`, `provider_failures.rs`,
//! `token_trust.rs`): the example
//! config with test-sized refresh bounds, a one-request helper, and a
//! scripted provider that serves a real dev IdP's documents or misbehaves on
//! demand (slow, garbage, huge, trickling, failing, redirecting) — per
//! endpoint.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use nodeward_dev_idp::{DevIdp, MintRequest};
use nodeward_testkit::client;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The example config with fast refresh bounds: `refresh` is the inside of
/// the provider's `refresh:` map, e.g. `unknown_kid_cooldown: 100ms`.
pub fn config(issuer: &str, upstream: SocketAddr, refresh: &str) -> String {
    nodeward_testkit::example_config(issuer, upstream).replace(
        "    audiences: [orders]\n",
        &format!("    audiences: [orders]\n    refresh: {{min_interval: 1s, max_interval: 1h, {refresh}}}\n"),
    )
}

/// GET /orders with `token`: the status and the JSON body (null if not JSON).
pub async fn status(url: &str, token: &str) -> (u16, Value) {
    let resp = client()
        .get(format!("{url}/orders"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let s = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    (s, serde_json::from_slice(&body).unwrap_or_default())
}

/// A token of `idp` naming `kid` in its header (signed with the current
/// RS256 key whatever the kid says), with `iss` overridden when given.
pub fn token_with_kid(idp: &DevIdp, kid: &str, iss: Option<&str>) -> String {
    let mut header = serde_json::Map::new();
    header.insert("kid".into(), json!(kid));
    let mut claims = serde_json::Map::new();
    claims.insert("aud".into(), json!("orders"));
    if let Some(iss) = iss {
        claims.insert("iss".into(), json!(iss));
    }
    idp.mint(&MintRequest {
        claims,
        header,
        ..MintRequest::default()
    })
    .expect("mint")
}

/// What one endpoint of a [`ScriptedIdp`] answers.
#[derive(Clone, Debug)]
pub enum Script {
    /// The dev IdP's document.
    Live,
    /// The live JWKS without the keys of these kids (a provider retiring keys).
    LiveWithout(Vec<String>),
    /// The live document, after this long.
    Slow(Duration),
    /// This status, no document.
    Status(u16),
    /// This body, with a Content-Length.
    Body(Bytes),
    /// `total` bytes of JSON-looking filler, chunked, no Content-Length.
    Chunked { total: usize },
    /// A first byte, then one more every 100 ms, never ending.
    Trickle,
    /// `302 Found` to this URL.
    Redirect(String),
}

/// A provider on loopback whose discovery and JWKS endpoints follow scripts,
/// backed by a real dev IdP (its issuer is this server's URL) for minting.
pub struct ScriptedIdp {
    pub idp: Arc<DevIdp>,
    pub addr: SocketAddr,
    discovery: Arc<Mutex<Script>>,
    jwks: Arc<Mutex<Script>>,
    jwks_requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedIdp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let idp = Arc::new(DevIdp::new(format!("http://{addr}")).expect("idp keys"));
        let discovery = Arc::new(Mutex::new(Script::Live));
        let jwks = Arc::new(Mutex::new(Script::Live));
        let jwks_requests = Arc::new(AtomicU64::new(0));
        let state = (idp.clone(), discovery.clone(), jwks.clone(), jwks_requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (idp, discovery, jwks, jwks_requests) = state.clone();
                    async move {
                        let (script, doc) = match req.uri().path() {
                            "/.well-known/openid-configuration" => {
                                (discovery.lock().expect("script").clone(), idp.discovery())
                            }
                            "/jwks" => {
                                jwks_requests.fetch_add(1, Ordering::Relaxed);
                                (jwks.lock().expect("script").clone(), idp.jwks())
                            }
                            // Always the live JWKS: a target for redirects.
                            "/live/jwks" => (Script::Live, idp.jwks()),
                            _ => (Script::Status(404), Value::Null),
                        };
                        Ok::<_, Infallible>(answer(script, doc).await)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            idp,
            addr,
            discovery,
            jwks,
            jwks_requests,
            task,
        }
    }

    pub fn issuer(&self) -> String {
        self.idp.issuer().to_string()
    }

    pub fn set_discovery(&self, s: Script) {
        *self.discovery.lock().expect("script") = s;
    }

    pub fn set_jwks(&self, s: Script) {
        *self.jwks.lock().expect("script") = s;
    }

    /// JWKS requests received, whatever was answered.
    pub fn jwks_requests(&self) -> u64 {
        self.jwks_requests.load(Ordering::Relaxed)
    }

    /// An RS256 token for audience `orders` with the current key.
    pub fn token(&self) -> String {
        self.idp
            .mint(&MintRequest {
                claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
                ..MintRequest::default()
            })
            .expect("mint")
    }
}

impl Drop for ScriptedIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(script: Script, doc: Value) -> http::Response<ChanBody> {
    let (tx, body) = ChanBody::new();
    let mut resp = http::Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("max-age=300"),
    );
    let fixed = |resp: &mut http::Response<ChanBody>, tx: &tokio::sync::mpsc::Sender<Bytes>, bytes: Bytes| {
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
        let _ = tx.try_send(bytes);
    };
    match script {
        Script::Live => fixed(&mut resp, &tx, Bytes::from(doc.to_string())),
        Script::LiveWithout(kids) => {
            let mut doc = doc;
            if let Some(keys) = doc.get_mut("keys").and_then(Value::as_array_mut) {
                keys.retain(|k| !k["kid"].as_str().is_some_and(|kid| kids.iter().any(|x| x == kid)));
            }
            fixed(&mut resp, &tx, Bytes::from(doc.to_string()));
        }
        Script::Slow(d) => {
            tokio::time::sleep(d).await;
            fixed(&mut resp, &tx, Bytes::from(doc.to_string()));
        }
        Script::Status(code) => {
            *resp.status_mut() = http::StatusCode::from_u16(code).expect("status");
            fixed(&mut resp, &tx, Bytes::from_static(b"{}"));
        }
        Script::Body(b) => fixed(&mut resp, &tx, b),
        Script::Redirect(to) => {
            *resp.status_mut() = http::StatusCode::FOUND;
            resp.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_str(&to).expect("location"),
            );
            fixed(&mut resp, &tx, Bytes::new());
        }
        Script::Chunked { total } => {
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b' '; 16 * 1024]);
                let mut sent = 0;
                let _ = tx.send(Bytes::from_static(b"{\"keys\":[")).await;
                while sent < total && tx.send(chunk.clone()).await.is_ok() {
                    sent += chunk.len();
                }
                let _ = tx.send(Bytes::from_static(b"]}")).await;
            });
        }
        Script::Trickle => {
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"{")).await;
                // Bounded: a minute of trickle outlives every test here.
                for _ in 0..600 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tx.send(Bytes::from_static(b" ")).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    resp
}

/// A response body fed from a channel: fixed documents, chunked floods and
/// trickles alike. It ends when the sender is dropped.
pub struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl ChanBody {
    fn new() -> (tokio::sync::mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (tx, Self(rx))
    }
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
