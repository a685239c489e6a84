//! The request pipeline for one workload, composed in one place:
//! request id → strip forged identity → decide → audit + metrics → refuse,
//! or add verified identity and forward.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::conn::Activity;
use super::{ProxyBody, body, headers, respond};
use crate::app::Shared;
use crate::audit;
use crate::authz;

#[derive(Clone)]
pub struct Service {
    pub shared: Arc<Shared>,
    pub workload: Arc<str>,
    pub client: SocketAddr,
    /// The accepted socket's local address: for steered connections, the
    /// original destination (pod IP and port).
    pub local: SocketAddr,
    pub activity: Activity,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let busy = this.activity.begin();
            let pending = this.activity.pending();
            let (resp, client_gave_up) = this.handle(req).await;
            if !client_gave_up {
                pending.done();
            }
            // The in-flight mark lasts until the response body is done.
            Ok(resp.map(|b| super::guard_body(b, busy)))
        })
    }
}

impl Service {
    /// The response, and whether the client abandoned the request midway
    /// (its body broke off: an HTTP/2 reset, a dropped connection), which
    /// counts against the connection's cancellation budget.
    async fn handle(&self, req: Request<Incoming>) -> (Response<ProxyBody>, bool) {
        let fault = body::FaultCell::default();
        let resp = self.respond(req, &fault).await;
        (resp, fault.get() == body::Fault::Broken)
    }

    async fn respond(&self, mut req: Request<Incoming>, fault: &body::FaultCell) -> Response<ProxyBody> {
        let start = Instant::now();
        let shared = &self.shared;
        let rt = shared.state.load_full();
        let request_id = shared.request_ids.for_request(req.headers());
        let Some(wl) = rt.workloads.get(&*self.workload) else {
            // The workload left the configuration while this connection was open.
            return respond::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "workload_removed",
                "workload is not enrolled",
                &request_id,
            );
        };
        headers::strip_identity(req.headers_mut(), &wl.policy);

        let limits = rt.limits();
        let too_large = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limits.max_body_bytes);

        let decision = authz::decide(
            &rt,
            &shared.cache,
            &wl.policy,
            authz::Request {
                method: req.method(),
                path: req.uri().path(),
                headers: req.headers(),
            },
            Some((&shared.metrics.token_cache_hits, &shared.metrics.token_cache_misses)),
        )
        .await;
        let latency = start.elapsed();
        shared
            .metrics
            .requests
            .with_label_values(&[&*wl.name, decision.label(), decision.reason])
            .inc();
        shared
            .metrics
            .decision_seconds
            .with_label_values(&[&*wl.name])
            .observe(latency.as_secs_f64());
        audit::log(&audit::Record {
            request_id: &request_id,
            workload: &wl.name,
            method: req.method(),
            path: req.uri().path(),
            decision: &decision,
            client: self.client,
            latency,
        });

        if !decision.lets_through() {
            return respond::refusal(&decision, &request_id);
        }
        if too_large {
            return respond::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("request body is larger than {} bytes", limits.max_body_bytes),
                &request_id,
            );
        }
        if let Some(entry) = &decision.token {
            headers::add_identity(req.headers_mut(), &wl.policy, &entry.verified);
        }
        let req = req.map(|b| body::ClientBody::new(b, limits.max_body_bytes, fault.clone()).boxed_unsync());
        let Some(target) = wl.upstream.target(self.local) else {
            return respond::error(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "no upstream address",
                &request_id,
            );
        };
        wl.client
            .forward(wl, target, self.client, req, fault, &request_id, &shared.metrics)
            .await
    }
}
