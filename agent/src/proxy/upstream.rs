//! The HTTP/1.1 clients to upstreams and the forwarding of one allowed
//! request with the 502/504 mapping.
//!
//! A downstream HTTP/1.1 connection sends its requests over one upstream
//! connection bound to it ([`bound`]): no pool, no other task. Downstream
//! HTTP/2 connections, whose streams run concurrently, share the pooled
//! client. Reverse-proxy workloads share one client (its pool is keyed by
//! upstream address). Each eBPF-steered workload has its own client whose
//! sockets are created inside the workload's network namespace: there every
//! pod's upstream has the same kind of address, so pools must not mix.

pub mod bound;
pub mod idle;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};

use self::bound::{Bound, GiveBack, Sender};
use self::idle::IdleConns;
use super::conn::{Activity, ConnSleep, Slot};
use super::error::ProxyError;
use super::{BoxError, ProxyBody, headers};
use crate::netns::Netns;

/// Opens upstream TCP connections, in the agent's own network namespace or
/// inside a workload's.
#[derive(Clone)]
pub struct Connector {
    netns: Option<Arc<Netns>>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "upstream is not IP:port"))?;
            Ok(TokioIo::new(this.connect(addr).await?))
        })
    }
}

impl Connector {
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = match self.netns.clone() {
            // setns runs on a short-lived thread: keep it off the runtime's workers.
            Some(ns) => tokio::task::spawn_blocking(move || ns.socket(addr))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?,
            None if addr.is_ipv4() => TcpSocket::new_v4()?,
            None => TcpSocket::new_v6()?,
        };
        socket.set_nodelay(true)?;
        tokio::time::timeout(self.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream connect timed out"))?
    }
}

pub struct Client {
    inner: HyperClient<Connector, ProxyBody>,
    connector: Connector,
    h1: hyper::client::conn::http1::Builder,
    /// Bound connections whose downstream connection ended, for the next.
    idle: Arc<IdleConns>,
    netns: Option<Arc<Netns>>,
    timeout: Duration,
}

impl Client {
    /// A client connecting from the agent's own namespace, or from inside `netns`.
    pub fn new(netns: Option<Arc<Netns>>, connect_timeout: Duration, response_timeout: Duration) -> Self {
        let connector = Connector {
            netns: netns.clone(),
            connect_timeout,
        };
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        Self {
            inner,
            connector,
            h1: hyper::client::conn::http1::Builder::new(),
            idle: Arc::default(),
            netns,
            timeout: response_timeout,
        }
    }

    /// Where bound connections go when their downstream connection ends.
    pub fn idle(&self) -> Arc<IdleConns> {
        self.idle.clone()
    }

    /// The namespace this client connects from, for steered workloads.
    pub fn netns(&self) -> Option<Arc<Netns>> {
        self.netns.clone()
    }

    /// Sends `req` (its URI already the upstream's) and returns the
    /// response head; the bodies stream through. Only the wait for the head
    /// is bounded (504 past it). A failure of the client's own body (too
    /// large, broken off) is the client's error, not the upstream's.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, ProxyError> {
        match tokio::time::timeout(self.timeout, self.inner.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
            Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => Err(unasked_upgrade()),
            Ok(Ok(resp)) => Ok(downstream(resp.map(|b| b.map_err(Into::into).boxed_unsync()))),
            Ok(Err(e)) => Err(match client_fault(&e) {
                Some(fault) => fault,
                None if e.is_connect() => ProxyError::UpstreamConnect(Box::new(e)),
                None => ProxyError::UpstreamProtocol(Box::new(e)),
            }),
        }
    }

    /// [`Client::send`] over the connection bound to one downstream
    /// HTTP/1.1 connection: `req` in origin form, with its `Host`. The same
    /// bound on the wait for the head (504), connect failures are 502, and
    /// a request that found its idle connection closed by the upstream
    /// before it was sent is sent again on a new one (as the pool does).
    pub async fn send_bound<B>(
        &self,
        bound: &Arc<Bound>,
        activity: &Activity,
        target: SocketAddr,
        req: Request<B>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let req = req.map(|b| bound.watch_request(b).map_err(Into::into).boxed_unsync());
        // On the connection's watchdog, not a timer of the runtime per request.
        let deadline = ConnSleep::new(activity, Slot::Upstream, Instant::now() + self.timeout);
        tokio::select! {
            biased;
            answered = self.exchange(bound, target, req) => {
                let (resp, give_back) = answered?;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    bound.abandon(give_back.generation);
                    return Err(unasked_upgrade());
                }
                Ok(downstream(resp.map(|b| bound.watch_response(b, give_back).boxed_unsync())))
            }
            () = deadline => Err(ProxyError::UpstreamTimeout(self.timeout)),
        }
    }

    /// The exchange over, in order: this downstream connection's upstream
    /// connection, one that another downstream connection left (a few at
    /// most: they may have been closed meanwhile), a new one.
    async fn exchange(
        &self,
        bound: &Arc<Bound>,
        target: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<hyper::body::Incoming>, GiveBack), ProxyError> {
        if let Some((sender, generation)) = bound.take(target) {
            match reuse(bound, sender, generation, target, req).await? {
                Reused::Answered(answered) => return Ok(answered),
                Reused::Unsent(unsent) => req = unsent,
            }
        }
        for _ in 0..3 {
            let Some(idle) = self.idle.take(target) else { break };
            let generation = bound.install(idle.conn);
            match reuse(bound, idle.sender, generation, target, req).await? {
                Reused::Answered(answered) => return Ok(answered),
                Reused::Unsent(unsent) => req = unsent,
            }
        }
        // Boxed: connecting and the handshake are large futures, and every
        // request's future (moved whole into its box per request) would
        // carry their size, though a connection is made once per client
        // connection at most.
        Box::pin(self.exchange_new(bound, target, req)).await
    }

    /// The exchange over a new connection to `target`.
    async fn exchange_new(
        &self,
        bound: &Arc<Bound>,
        target: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<(Response<hyper::body::Incoming>, GiveBack), ProxyError> {
        let io = self
            .connector
            .connect(target)
            .await
            .map_err(|e| ProxyError::UpstreamConnect(Box::new(e)))?;
        let (mut sender, conn) = self
            .h1
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamProtocol(Box::new(e)))?;
        let generation = bound.install(conn);
        let armed = Abandon(bound, generation);
        sender.ready().await.map_err(hyper_fault)?;
        let resp = sender.send_request(req).await.map_err(hyper_fault)?;
        armed.disarm();
        Ok((
            resp,
            GiveBack {
                target,
                sender,
                generation,
            },
        ))
    }
}

enum Reused {
    Answered((Response<hyper::body::Incoming>, GiveBack)),
    /// Never written: the upstream closed the idle connection first.
    Unsent(Request<ProxyBody>),
}

/// `req` over an idle connection (installed in `bound` as `generation`).
async fn reuse(
    bound: &Bound,
    mut sender: Sender,
    generation: u64,
    target: SocketAddr,
    req: Request<ProxyBody>,
) -> Result<Reused, ProxyError> {
    // Dropped before the response (an error, the 504 timer, closed): the
    // connection is not used again.
    let armed = Abandon(bound, generation);
    if sender.ready().await.is_err() {
        return Ok(Reused::Unsent(req));
    }
    match sender.try_send_request(req).await {
        Ok(resp) => {
            armed.disarm();
            let give_back = GiveBack {
                target,
                sender,
                generation,
            };
            Ok(Reused::Answered((resp, give_back)))
        }
        Err(mut e) => match e.take_message() {
            Some(unsent) => Ok(Reused::Unsent(unsent)),
            None => Err(hyper_fault(e.into_error())),
        },
    }
}

/// Abandons a bound connection unless disarmed.
struct Abandon<'a>(&'a Bound, u64);

impl Abandon<'_> {
    /// The response arrived: from here its body decides.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.abandon(self.1);
    }
}

/// A `101 Switching Protocols` from the upstream. The agent never asks for
/// an upgrade (`Upgrade` is hop-by-hop and goes with the rest), so a 101 is
/// an answer to a question nobody asked: passed on, it would end the
/// client's exchange without a final response. A bad gateway, and the
/// connection is not used again.
fn unasked_upgrade() -> ProxyError {
    ProxyError::UpstreamProtocol("the upstream switched protocols though no upgrade was asked for".into())
}

/// The upstream's response head as the client gets it.
fn downstream(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    // An upstream's `Connection` header cannot frame anything here: just
    // clean. The client's framing is hyper's, from the body: the upstream's
    // length goes on only if it is the one that framed the body.
    let _ = headers::strip_hop_by_hop(resp.headers_mut());
    // The version is per hop too (RFC 9110 §6.2): an HTTP/1.0
    // upstream (Python's http.server) must not make the agent
    // answer its HTTP/1.1 clients as HTTP/1.0.
    *resp.version_mut() = http::Version::HTTP_11;
    resp
}

/// A failed exchange of a bound connection, by whose fault.
fn hyper_fault(e: hyper::Error) -> ProxyError {
    client_fault(&e).unwrap_or_else(|| ProxyError::UpstreamProtocol(Box::new(e)))
}

/// The client's fault, if it was: its body too large (413) or broken (400).
fn client_fault(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    let chain = || std::iter::successors(Some(e), |err| err.source());
    if chain().any(|err| err.is::<http_body_util::LengthLimitError>()) {
        return Some(ProxyError::BodyTooLarge);
    }
    chain()
        .any(|err| err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user))
        .then_some(ProxyError::ClientBody)
}
