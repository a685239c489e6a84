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

use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};

use super::body::{Fault, FaultCell};
use super::{ProxyBody, headers, respond};
use crate::metrics::Metrics;
use crate::netns::Netns;
use crate::state::Workload;

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

    /// Sends the request to `target`. The body streams through; only the
    /// wait for the response head is bounded (504 past it).
    #[expect(
        clippy::too_many_arguments,
        reason = "the per-request facts the forwarding needs; a struct would only rename them"
    )]
    pub async fn forward(
        &self,
        wl: &Workload,
        target: Authority,
        client: SocketAddr,
        mut req: Request<ProxyBody>,
        fault: &FaultCell,
        request_id: &HeaderValue,
        metrics: &Metrics,
    ) -> Response<ProxyBody> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme("http")
            .authority(target)
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            return respond::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "request target cannot be forwarded",
                request_id,
            );
        };
        // HTTP/2 carries the host in :authority; the upstream speaks HTTP/1.1.
        if !req.headers().contains_key(header::HOST)
            && let Some(host) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h);
        h.append(
            header::HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_str(&client.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown")),
        );
        h.insert(headers::REQUEST_ID, request_id.clone());

        match tokio::time::timeout(self.timeout, self.inner.request(req)).await {
            Err(_) => {
                metrics.upstream_errors.with_label_values(&[&*wl.name, "timeout"]).inc();
                respond::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    &format!("upstream did not answer within {:?}", self.timeout),
                    request_id,
                )
            }
            // The client's own body failed: its error, not the upstream's.
            Ok(Err(_)) if fault.get() == Fault::TooLarge => respond::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is over the size limit",
                request_id,
            ),
            Ok(Err(_)) if fault.get() == Fault::Broken => respond::error(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body's framing is invalid or it ended early",
                request_id,
            ),
            Ok(Err(e)) => {
                let kind = if e.is_connect() { "connect" } else { "protocol" };
                metrics.upstream_errors.with_label_values(&[&*wl.name, kind]).inc();
                tracing::debug!(workload = %wl.name, error = %e, "upstream request failed");
                respond::error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "upstream connection failed",
                    request_id,
                )
            }
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                parts.headers.insert(headers::REQUEST_ID, request_id.clone());
                Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
            }
        }
    }
}
