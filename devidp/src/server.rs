//! The dev IdP's HTTP/1.1 server: accept loop with graceful shutdown, request
//! routing, and the JSON responses of every endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{DevIdp, DevIdpError, MintRequest};

const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Matches what real providers send, so client caching can be exercised.
const DOCUMENT_CACHE_CONTROL: &str = "max-age=300";
/// Mint requests are small JSON; the cap only stops a runaway test from
/// buffering unbounded bodies.
const MAX_MINT_BODY: usize = 1024 * 1024;
/// Keep-alive clients must not be able to hold shutdown hostage.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Accept errors such as EMFILE repeat immediately; back off instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the dev IdP endpoints on an already-bound listener until `shutdown`
/// resolves, then waits (briefly) for open connections to finish.
pub async fn serve(
    idp: Arc<DevIdp>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DevIdpError> {
    let local = listener
        .local_addr()
        .map_err(|source| DevIdpError::LocalAddr { source })?;
    tracing::warn!(
        %local,
        issuer = idp.issuer(),
        "dev-idp is for development and tests only: it signs any token it is asked for"
    );
    let builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let idp = Arc::clone(&idp);
                    let service = service_fn(move |req| {
                        let idp = Arc::clone(&idp);
                        async move { Ok::<_, Infallible>(handle(&idp, req).await) }
                    });
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::debug!(%peer, %error, "dev-idp connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "dev-idp accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("dev-idp shut down with connections still open");
    }
    Ok(())
}

async fn handle(idp: &DevIdp, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or_default().to_owned();
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, DISCOVERY_PATH) => {
            idp.record_discovery_fetch();
            document(idp, idp.discovery())
        }
        (Method::GET, "/jwks") => {
            idp.record_jwks_fetch();
            document(idp, idp.jwks())
        }
        (Method::GET, "/stats") => json_response(StatusCode::OK, &json!(idp.stats())),
        (Method::POST, "/mint") => mint(idp, req.into_body()).await,
        (Method::POST, "/rotate") => rotate(idp, &query),
        (Method::POST, "/fail") => fail(idp, &query),
        _ => error_response(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Discovery and JWKS honour the injected failure; the counters are bumped
/// before this so tests see failed fetch attempts too.
fn document(idp: &DevIdp, body: Value) -> Response<Full<Bytes>> {
    if let Some(status) = idp.failure() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error_response(status, "failure injected via /fail");
    }
    let mut response = json_response(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, http::HeaderValue::from_static(DOCUMENT_CACHE_CONTROL));
    response
}

async fn mint(idp: &DevIdp, body: Incoming) -> Response<Full<Bytes>> {
    let bytes = match Limited::new(body, MAX_MINT_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("reading the mint request failed: {error}"),
            );
        }
    };
    let request: MintRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(error) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("invalid mint request: {error}"));
        }
    };
    match idp.mint(&request) {
        Ok(token) => json_response(StatusCode::OK, &json!({ "token": token })),
        Err(error @ DevIdpError::UnsupportedAlg { .. }) => error_response(StatusCode::BAD_REQUEST, &error.to_string()),
        Err(error) => {
            tracing::error!(%error, "dev-idp mint failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
        }
    }
}

fn rotate(idp: &DevIdp, query: &str) -> Response<Full<Bytes>> {
    let keep_old = match query_param(query, "keep_old") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("keep_old must be true or false, got {other:?}"),
            );
        }
    };
    match idp.rotate(keep_old) {
        Ok(kids) => json_response(StatusCode::OK, &json!({ "kids": kids })),
        Err(error) => {
            tracing::error!(%error, "dev-idp rotation failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
        }
    }
}

fn fail(idp: &DevIdp, query: &str) -> Response<Full<Bytes>> {
    let status = match query_param(query, "status").filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => match raw.parse::<u16>().ok().and_then(|n| StatusCode::from_u16(n).ok()) {
            Some(status) => Some(status.as_u16()),
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("status must be an HTTP status code, got {raw:?}"),
                );
            }
        },
    };
    idp.set_failure(status);
    json_response(StatusCode::OK, &json!({ "failure": status }))
}

/// The parameters here are plain tokens (numbers, true/false), so no
/// percent-decoding is needed.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    // Serializing a Value cannot fail (all keys are strings), so the empty
    // fallback body is unreachable in practice.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
