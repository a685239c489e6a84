//! The admin server: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (config loaded, every provider has keys, every
//! workload listening). Plain HTTP/1.1, meant for the node's monitoring.
//! What it shows comes through [`Status`], so it knows nothing of the agent.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::drain;

/// What the admin server reports.
pub trait Status: Send + Sync + 'static {
    /// The Prometheus text exposition, refreshed now.
    fn metrics(&self) -> Vec<u8>;
    /// Why the agent is not ready; empty when it is.
    fn not_ready(&self) -> Vec<String>;
}

pub async fn serve(listener: TcpListener, shared: Arc<dyn Status>, mut stop: drain::Watch) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.signaled() => return,
        };
        let shared = shared.clone();
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(&*shared, &req)) }
                }),
            )
            .into_owned();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

fn route(shared: &dyn Status, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics()),
        ("GET", "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        ("GET", "/readyz") => {
            let not_ready = shared.not_ready();
            if not_ready.is_empty() {
                reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
            } else {
                let body = serde_json::json!({ "ready": false, "waiting_for": not_ready });
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}
