//! The pooled HTTP/1.1 client to upstreams, shared by every workload, and the
//! forwarding of one allowed request with the 502/504 mapping.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{ProxyBody, headers, respond};
use crate::metrics::Metrics;
use crate::state::Workload;

pub struct Client {
    inner: HyperClient<HttpConnector, ProxyBody>,
    timeout: Duration,
}

impl Client {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            inner,
            timeout: response_timeout,
        }
    }

    /// Sends the request to the workload's upstream. The body streams through;
    /// only the wait for the response head is bounded (504 past it).
    pub async fn forward(
        &self,
        wl: &Workload,
        client: SocketAddr,
        mut req: Request<ProxyBody>,
        request_id: &HeaderValue,
        metrics: &Metrics,
    ) -> Response<ProxyBody> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme("http")
            .authority(wl.upstream_authority.clone())
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
