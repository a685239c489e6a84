//! The pooled HTTP/1.1 clients to upstreams and the forwarding of one
//! allowed request with the 502/504 mapping.
//!
//! Reverse-proxy workloads share one client (its pool is keyed by upstream
//! address). Each eBPF-steered workload has its own client whose sockets are
//! created inside the workload's network namespace: there every pod's
//! upstream has the same kind of address, so pools must not mix.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};

use super::error::ProxyError;
use super::{ProxyBody, headers};
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
            let socket = match this.netns {
                // setns runs on a short-lived thread: keep it off the runtime's workers.
                Some(ns) => tokio::task::spawn_blocking(move || ns.socket(addr))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(std::io::Error::other)?,
                None if addr.is_ipv4() => TcpSocket::new_v4()?,
                None => TcpSocket::new_v6()?,
            };
            socket.set_nodelay(true)?;
            let stream = tokio::time::timeout(this.connect_timeout, socket.connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream connect timed out"))??;
            Ok(TokioIo::new(stream))
        })
    }
}

pub struct Client {
    inner: HyperClient<Connector, ProxyBody>,
    netns: Option<Arc<Netns>>,
    timeout: Duration,
}

impl Client {
    /// A client connecting from the agent's own namespace, or from inside `netns`.
    pub fn new(netns: Option<Arc<Netns>>, connect_timeout: Duration, response_timeout: Duration) -> Self {
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(Connector {
                netns: netns.clone(),
                connect_timeout,
            });
        Self {
            inner,
            netns,
            timeout: response_timeout,
        }
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
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                // An upstream's `Connection` header cannot frame anything here: just clean.
                let _ = headers::strip_hop_by_hop(&mut parts.headers);
                // The version is per hop too (RFC 9110 §6.2): an HTTP/1.0
                // upstream (Python's http.server) must not make the agent
                // answer its HTTP/1.1 clients as HTTP/1.0.
                parts.version = http::Version::HTTP_11;
                Ok(Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()))
            }
            Ok(Err(e)) => Err(classify(e)),
        }
    }
}

/// Whose fault a failed exchange was: the client's body (too large: 413;
/// broken: 400), or the upstream's (connect, protocol).
fn classify(e: hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return ProxyError::ClientBody;
        }
        source = err.source();
    }
    if e.is_connect() {
        ProxyError::UpstreamConnect(e)
    } else {
        ProxyError::UpstreamProtocol(e)
    }
}
