//! The outbound side: an enrolled pod's connections to configured
//! destinations, steered by the egress programs into a listener the agent
//! owns inside the pod's namespace. Per connection, the original
//! destination (read once from the pinned map); per request:
//!
//! 1. hop-by-hop headers go (as inbound);
//! 2. the rule: the first egress rule of the pod's policy matching the
//!    request's host (`Host`, `:authority`) and the original destination;
//! 3. the token: the node's held token for (this pod, the rule's token),
//!    fetched now on a miss; an `Authorization` the application set itself
//!    is kept unless the rule says `replace_existing`;
//! 4. forwarded to the original destination from inside the pod's
//!    namespace by a socket of the agent's cgroup (never steered back).
//!
//! A request matching no rule goes out unchanged (no token): the port was
//! steered for another host. A rule whose token cannot be obtained answers
//! the application 502 `egress_token_unavailable` with the reason and sends
//! nothing: never a request without the identity it was configured to
//! carry. Every request gets one audit line naming the calling workload.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::conn::Activity;
use super::error::ProxyError;
use super::metrics::{EgressMetrics, EgressOutcome};
use super::{Context, ProxyBody, headers, respond, upstream};
use crate::audit::EgressRecord;
use crate::config::EgressToken;
use crate::drain;
use crate::ebpf::OriginalDestinations;
use crate::policy::egress::host_of;

/// One pod's egress listener: whose it is, where its connections' original
/// destinations are recorded, and the client that dials them from inside
/// the pod's namespace.
pub struct EgressEndpoint {
    pub workload: Arc<str>,
    /// The workload's id in the egress maps.
    pub id: u32,
    pub original: Arc<OriginalDestinations>,
    pub client: Arc<upstream::Client>,
    pub metrics: EgressMetrics,
}

/// Accepts the pod's steered connections until `drain` is signalled, then
/// drains in-flight requests like an inbound listener.
pub async fn serve_egress(listener: TcpListener, ctx: Arc<Context>, endpoint: EgressEndpoint, mut drain: drain::Watch) {
    let endpoint = Arc::new(endpoint);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = ctx.snapshot.load().config.limits.clone();
    let builder = super::http_builder(&limits);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(workload = %endpoint.workload, error = %e, "egress accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = drain.signaled() => break,
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        // One answer per connection; none means it was not steered (someone
        // in the pod dialled the listener itself) or its record is lost:
        // close it, never guess where it was going.
        let dst = match endpoint.original.take(endpoint.id, peer) {
            Ok(Some(dst)) => dst,
            Ok(None) => {
                endpoint.metrics.unsteered.inc();
                tracing::debug!(workload = %endpoint.workload, %peer, "egress connection without an original destination: closed");
                continue;
            }
            Err(e) => {
                endpoint.metrics.unsteered.inc();
                tracing::warn!(workload = %endpoint.workload, error = %e, "cannot read an egress connection's destination: closed");
                continue;
            }
        };
        endpoint.metrics.connections.inc();
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let svc = Service {
            ctx: ctx.clone(),
            endpoint: endpoint.clone(),
            dst,
            activity: activity.clone(),
        };
        // The connection's idle limit and cancellation budget: its
        // watchdog, polled beside it (as inbound connections are served).
        let watchdog = super::conn::Watchdog::new(activity, limits.idle_timeout);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned());
        tokio::spawn(async move {
            let conn = async move { conn.await.map_err(super::conn::ConnError::Http) };
            if let Err(e) = super::joint::Joint::new(conn, watchdog).await {
                tracing::debug!(%dst, error = %e, "egress connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain_timeout = ctx.snapshot.load().config.limits.drain_timeout;
    if tokio::time::timeout(drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(workload = %endpoint.workload, "drain timeout: closing remaining egress connections");
    }
}

#[derive(Clone)]
struct Service {
    ctx: Arc<Context>,
    endpoint: Arc<EgressEndpoint>,
    /// Where the application's connection was going.
    dst: SocketAddr,
    activity: Activity,
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
            let resp = this.handle(req).await;
            pending.done();
            Ok(resp.map(|b| super::guard_body(b, busy)))
        })
    }
}

/// What happened to one outbound request, for its audit line and metrics.
struct Outcome<'a> {
    what: EgressOutcome,
    rule: Option<&'a str>,
    token: Option<&'static str>,
    reason: Option<&'static str>,
    detail: Option<String>,
}

impl Service {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let ctx = &self.ctx;
        let snap = ctx.snapshot.load_full();
        let request_id = ctx.request_ids.for_request(req.headers());
        let Some(wl) = snap.workloads.get(&*self.endpoint.workload) else {
            return ProxyError::WorkloadRemoved.respond(&request_id, None);
        };
        let (mut parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
        let host = authority.as_deref().and_then(host_of);
        let path = parts.uri.path().to_string();
        let audit = |o: &Outcome<'_>, status: Option<u16>, method: &Method| {
            self.endpoint.metrics.request(o.what).inc();
            ctx.audit.log_egress(&EgressRecord {
                request_id: request_id.to_str().unwrap_or(""),
                workload: &wl.name,
                method: method.as_str(),
                host: host.as_deref(),
                path: &path,
                destination: self.dst,
                rule: o.rule,
                token: o.token,
                outcome: o.what.as_str(),
                reason: o.reason,
                detail: o.detail.as_deref(),
                status,
                latency: start.elapsed(),
            });
        };
        let refuse = |status: StatusCode, reason: &'static str, detail: String, rule: Option<&str>, method: &Method| {
            let resp = respond::error(status, reason, &detail, &request_id, None);
            let o = Outcome {
                what: EgressOutcome::Refused,
                rule,
                token: None,
                reason: Some(reason),
                detail: Some(detail),
            };
            audit(&o, Some(status.as_u16()), method);
            resp
        };
        if let Err(e) = headers::strip_hop_by_hop(&mut parts.headers) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                e.to_string(),
                None,
                &parts.method,
            );
        }
        // Two Host headers (RFC 9112 §3.2: a 400): the rule would be chosen
        // by one and the destination might read the other.
        if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
            let detail = "more than one Host header".to_string();
            return refuse(StatusCode::BAD_REQUEST, "invalid_header", detail, None, &parts.method);
        }
        if parts.method == Method::CONNECT {
            let detail = "CONNECT is not proxied on egress".to_string();
            return refuse(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_request",
                detail,
                None,
                &parts.method,
            );
        }
        let binding = wl.egress.iter().find(|b| b.rule.matches(host.as_deref(), self.dst));
        let mut outcome = Outcome {
            what: EgressOutcome::Passthrough,
            rule: binding.map(|b| &*b.rule.name),
            token: None,
            reason: None,
            detail: None,
        };
        if let Some(b) = binding {
            if !b.rule.replace_existing && parts.headers.contains_key(header::AUTHORIZATION) {
                outcome.what = EgressOutcome::AppToken;
            } else {
                let provider = match &b.want.token {
                    EgressToken::ServiceAccount(_) => None,
                    EgressToken::ClientCredentials(c) => snap.providers.by_name(&c.provider),
                    EgressToken::Exchange(e) => snap.providers.by_name(&e.provider),
                };
                match ctx.credentials.authorization(&b.want, provider).await {
                    Ok((value, _)) => {
                        parts.headers.insert(header::AUTHORIZATION, value);
                        outcome.what = EgressOutcome::Sent;
                        outcome.token = Some(b.want.token.kind());
                    }
                    Err(e) => {
                        let detail = format!("rule {}: no {} token: {e}", b.rule.name, b.want.token.kind());
                        return refuse(
                            StatusCode::BAD_GATEWAY,
                            "egress_token_unavailable",
                            detail,
                            Some(&b.rule.name),
                            &parts.method,
                        );
                    }
                }
            }
        }
        let method = parts.method.clone();
        // Origin-form, as the application wrote it (absolute-form: its path).
        let target = parts
            .uri
            .path_and_query()
            .cloned()
            .filter(|p| p.as_str().starts_with('/'))
            .or_else(|| PathAndQuery::try_from("/").ok());
        let result = match super::inbound::upstream_request(parts, target, self.dst, &request_id, true) {
            Ok(parts) => {
                let body = body.map_err(Into::into).boxed_unsync();
                self.endpoint.client.send(Request::from_parts(parts, body)).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(mut resp) => {
                audit(&outcome, Some(resp.status().as_u16()), &method);
                resp.headers_mut().insert(headers::REQUEST_ID, request_id.clone());
                resp
            }
            Err(e) => {
                outcome.what = EgressOutcome::UpstreamError;
                outcome.reason = Some(e.reason());
                outcome.detail = Some(e.to_string());
                let resp = e.respond(&request_id, None);
                audit(&outcome, Some(resp.status().as_u16()), &method);
                resp
            }
        }
    }
}
