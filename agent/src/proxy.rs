//! The data path: one listener per workload, HTTP/1.1 and h2c from the same
//! socket, the request pipeline (`inbound.rs`: header hygiene → normalise →
//! decide → audit/metrics → refuse, or add verified identity and forward),
//! connection limits and graceful drain.
//!
//! [`Context`] is what every request shares. The decision itself is
//! `authz.rs`; the configuration a request sees is one `snapshot::Snapshot`.

mod conn;
mod error;
pub mod headers;
mod inbound;
mod joint;
pub mod metrics;
pub mod outbound;
mod respond;
pub mod upstream;

pub use inbound::{admit, metadata_request};

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use self::headers::RequestIds;
use self::metrics::{ProxyMetrics, WorkloadMetrics};
use self::upstream::bound::Bound;
use crate::audit::Audit;
use crate::authz::CacheCounters;
use crate::credentials::Credentials;
use crate::drain;
use crate::k8s::review::Reviews;
use crate::snapshot::Snapshot;
use crate::token_cache::TokenCache;
use crate::trace::Traces;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: Bytes) -> ProxyBody {
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What every connection and request shares.
pub struct Context {
    /// The configuration now; a request loads it once.
    pub snapshot: ArcSwap<Snapshot>,
    pub cache: TokenCache,
    pub metrics: ProxyMetrics,
    cache_counters: CacheCounters,
    pub request_ids: RequestIds,
    pub traces: Traces,
    pub audit: Audit,
    /// TokenReview and SubjectAccessReview, with a Kubernetes API client.
    pub reviews: Option<Reviews>,
    /// The tokens egress calls carry.
    pub credentials: Credentials,
}

impl Context {
    pub fn new(
        snapshot: Snapshot,
        cache: TokenCache,
        metrics: ProxyMetrics,
        audit: Audit,
        reviews: Option<Reviews>,
        credentials: Credentials,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            cache,
            cache_counters: metrics.cache_counters(),
            metrics,
            request_ids: RequestIds::default(),
            traces: Traces::default(),
            audit,
            reviews,
            credentials,
        }
    }
}

/// One workload's listener: where its allowed requests go and its metrics.
pub struct Endpoint {
    pub workload: Arc<str>,
    pub client: Arc<upstream::Client>,
    pub metrics: WorkloadMetrics,
}

/// Accepts connections for `endpoint` until `drain` is signalled, then
/// stops accepting and drains in-flight requests for up to the drain timeout.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, endpoint: Endpoint, mut drain: drain::Watch) {
    let endpoint = Arc::new(endpoint);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = ctx.snapshot.load().config.limits.clone();
    // HTTP/1.1 connections (the first bytes are not the h2 preface) are
    // served by hyper's HTTP/1 server directly, with a bound upstream
    // connection; the rest by the auto builder (h2c with prior knowledge).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Exact: the read buffer's limit alone (all the auto builder
        // offers) lets a head through when it arrives in large reads.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192));
    if let Some(n) = max_headers_setting(limits.max_headers) {
        http1.max_headers(n);
    }
    let builders = Arc::new((http1, http_builder(&limits)));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(workload = %endpoint.workload, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = drain.signaled() => break,
        };
        endpoint.metrics.connections.inc();
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else { continue };
        // A dual-stack listener (steered pods with IPv6) reports IPv4 peers as
        // ::ffff:a.b.c.d; logs and upstream addresses use the plain form.
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (peer, local) = (canonical(peer), canonical(local));
        let (ctx, endpoint, builders, watcher) = (ctx.clone(), endpoint.clone(), builders.clone(), graceful.watcher());
        let (idle, head_timeout) = (limits.idle_timeout, limits.header_read_timeout);
        tokio::spawn(async move {
            let activity = conn::Activity::new();
            let watchdog = conn::Watchdog::new(activity.clone(), idle);
            let ended = match tokio::time::timeout(head_timeout, conn::sniff(&stream)).await {
                Ok(Ok(conn::Preface::Http1)) => {
                    let bound = Bound::new(endpoint.client.idle());
                    let driver = bound.driver().map(Ok);
                    // The head timeout on the connection's watchdog: no
                    // timer of the runtime per request.
                    let mut http1 = builders.0.clone();
                    http1.timer(conn::ConnTimer(activity.clone()));
                    let svc = inbound::Service::new(ctx, endpoint, peer, local, activity, Some(bound));
                    let conn = watcher.watch(http1.serve_connection(TokioIo::new(stream), svc));
                    let conn = async move { conn.await.map_err(|e| conn::ConnError::Http(e.into())) };
                    joint::Joint::new(joint::Joint::new(conn, driver), watchdog).await
                }
                Ok(Ok(conn::Preface::Other)) => {
                    let svc = inbound::Service::new(ctx, endpoint, peer, local, activity, None);
                    let conn = watcher.watch(builders.1.serve_connection(TokioIo::new(stream), svc).into_owned());
                    let conn = async move { conn.await.map_err(conn::ConnError::Http) };
                    joint::Joint::new(conn, watchdog).await
                }
                // Closed, failed or silent before a first byte: nothing to serve.
                Ok(Ok(conn::Preface::Closed)) | Ok(Err(_)) | Err(_) => Ok(()),
            };
            if let Err(e) = ended {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain_timeout = ctx.snapshot.load().config.limits.drain_timeout;
    if tokio::time::timeout(drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(workload = %endpoint.workload, "drain timeout: closing remaining connections");
    }
}

/// hyper's own limit on header lines when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// What to pass to hyper's `max_headers`, if anything. hyper parses a head
/// into arrays on the stack sized for its default of 100 headers; any
/// explicit setting, even 100, makes it build and fill two arrays per
/// request instead (≈2k instructions). The default is therefore left
/// unset: the limit is the same, the parse cheaper.
fn max_headers_setting(configured: usize) -> Option<usize> {
    (configured != HYPER_DEFAULT_MAX_HEADERS).then_some(configured)
}

/// The HTTP/1.1 + h2c server of a listener, bounded by `limits` (heads,
/// header counts, read timeouts, streams, resets).
fn http_builder(limits: &crate::config::Limits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    if let Some(n) = max_headers_setting(limits.max_headers) {
        builder.http1().max_headers(n);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(64))
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

/// Connections the kernel queues for `accept` per listener. One agent fronts
/// every workload of a node, so bursts (a client pool reconnecting after a
/// restart) are large; tokio's default of 1024 overflows and turns the
/// overflow into SYN retransmits, each a stall of a second or more. The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a workload's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind does: a restarted agent must not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection marked busy until it ends.
    struct Guarded {
        #[pin]
        inner: ProxyBody,
        _busy: conn::Busy,
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn guard_body(inner: ProxyBody, busy: conn::Busy) -> ProxyBody {
    Guarded { inner, _busy: busy }.boxed_unsync()
}
