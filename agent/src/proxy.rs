//! The data path: one listener per workload, HTTP/1.1 and h2c from the same
//! socket, the request pipeline (header hygiene → decision → audit/metrics →
//! forward or refuse), connection limits and graceful drain.
//!
//! The decision itself is `authz.rs`; the live configuration is `state.rs`.

mod body;
mod conn;
pub mod headers;
mod respond;
mod service;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::Shared;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: Bytes) -> ProxyBody {
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Accepts connections for `workload` until `stop` turns true, then stops
/// accepting and drains in-flight requests for up to the drain timeout.
pub async fn serve(listener: TcpListener, workload: Arc<str>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = shared.state.load().config.limits.clone();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(64))
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    let connections = shared.metrics.connections.with_label_values(&[&*workload]);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(workload = %workload, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        connections.inc();
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else { continue };
        // A dual-stack listener (steered pods with IPv6) reports IPv4 peers as
        // ::ffff:a.b.c.d; logs and upstream addresses use the plain form.
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (peer, local) = (canonical(peer), canonical(local));
        let activity = conn::Activity::new();
        let svc = service::Service {
            shared: shared.clone(),
            workload: workload.clone(),
            client: peer,
            local,
            activity: activity.clone(),
        };
        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
        let conn = graceful.watch(conn);
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            if let Err(e) = conn::run_with_idle_timeout(conn, activity, idle).await {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = shared.state.load().config.limits.drain_timeout;
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(workload = %workload, "drain timeout: closing remaining connections");
    }
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
