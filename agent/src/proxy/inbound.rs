//! The request pipeline for one workload, in phases:
//!
//! 0. a protected resource's metadata document ([`metadata_request`]) is
//!    answered by the agent itself: no rule, no upstream;
//! 1. [`admit`] (shared with `nodeward explain`): hop-by-hop headers, forged
//!    identity, method and path checks, the normalisation, the decision, and
//!    the request rewritten as the upstream will get it (token sources
//!    stripped, forwarding headers, verified identity, the normalised path);
//! 2. metrics and one audit line, whatever the outcome;
//! 3. the refusal, or the forward (body size-limited and streamed).

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::conn::Activity;
use super::error::ProxyError;
use super::upstream::bound::Bound;
use super::{Context, Endpoint, ProxyBody, headers, respond};
use crate::audit;
use crate::authz::{self, Decision, Verifier};
use crate::config::Mode;
use crate::path;
use crate::policy::{Policy, ProtectedResource};
use crate::reason::Reason;
use crate::snapshot::Workload;
use crate::token::Sources;

#[derive(Clone)]
pub struct Service {
    ctx: Arc<Context>,
    endpoint: Arc<Endpoint>,
    client: SocketAddr,
    /// The accepted socket's local address: for steered connections, the
    /// original destination (pod IP and port).
    local: SocketAddr,
    activity: Activity,
    /// The upstream connection of a downstream HTTP/1.1 connection; HTTP/2
    /// streams use the endpoint's pooled client.
    bound: Option<Arc<Bound>>,
}

impl Service {
    pub fn new(
        ctx: Arc<Context>,
        endpoint: Arc<Endpoint>,
        client: SocketAddr,
        local: SocketAddr,
        activity: Activity,
        bound: Option<Arc<Bound>>,
    ) -> Self {
        Self {
            ctx,
            endpoint,
            client,
            local,
            activity,
            bound,
        }
    }
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

/// A request after [`admit`]: the decision, the path it was matched with,
/// and where to send it when allowed.
pub struct Admitted {
    pub decision: Decision,
    /// The normalised path (for the audit line), or the path as sent when it
    /// could not be normalised.
    pub path: String,
    /// The normalised path and the query (without token parameters), as the
    /// upstream gets them.
    pub target: Option<PathAndQuery>,
}

fn refused(reason: Reason, detail: String, path: &str) -> Admitted {
    Admitted {
        decision: Decision::deny(reason, detail, None, Mode::Enforce),
        path: path.to_string(),
        target: None,
    }
}

/// Standard methods are upper case; `get` is not GET to a rule, and an
/// upstream might think it is.
fn check_method(m: &Method) -> Result<(), (Reason, String)> {
    if *m == Method::CONNECT {
        return Err((Reason::UnsupportedRequest, "CONNECT is not proxied".into()));
    }
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let name = m.as_str();
    if name.bytes().any(|b| b.is_ascii_lowercase()) && STANDARD.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        return Err((
            Reason::InvalidMethod,
            format!("method {name:?} must be written in upper case"),
        ));
    }
    Ok(())
}

/// Everything between the request head and the forward-or-refuse choice,
/// applied to `parts` in place: what is matched is what is forwarded.
pub async fn admit(
    v: &Verifier<'_>,
    sources: &Sources,
    workload: &Workload,
    parts: &mut Parts,
    peer: IpAddr,
    trusted_peer: bool,
) -> Admitted {
    let policy = &*workload.policy;
    // Borrowed, not copied: admit changes the headers, never the URI.
    let raw_path = parts.uri.path();
    if let Err(e) = headers::strip_hop_by_hop(&mut parts.headers) {
        return refused(Reason::InvalidHeader, e.to_string(), raw_path);
    }
    headers::strip_identity(&mut parts.headers, policy);
    if let Err((reason, detail)) = check_method(&parts.method) {
        return refused(reason, detail, raw_path);
    }
    // `OPTIONS *` (HTTP/1.1) and `:path *` (h2) are about the server, not a resource.
    if raw_path == "*" || parts.uri.path_and_query().is_some_and(|p| p.as_str() == "*") {
        return refused(
            Reason::UnsupportedRequest,
            "asterisk-form requests (OPTIONS *) are not proxied".into(),
            "*",
        );
    }
    let normalized = match path::normalize(raw_path, &policy.path) {
        Ok(n) => n,
        Err(e) => return refused(Reason::InvalidPath, e.to_string(), raw_path),
    };
    let query = parts.uri.query();
    let mut decision = authz::decide(
        v,
        sources,
        policy,
        authz::Request {
            method: &parts.method,
            path: &normalized.matched,
            headers: &parts.headers,
            query,
            target: &workload.target,
        },
    )
    .await;
    // The token goes no further (unless the policy forwards a verified one;
    // a protected resource never does, whatever its configuration says).
    let keep = decision
        .token
        .as_ref()
        .filter(|_| policy.forward_token && policy.resource.is_none())
        .map(|t| t.source);
    let stripped = sources.strip(&mut parts.headers, query, keep);
    if policy.resource.is_some() {
        // MCP: a resource server passes no token on, not even one in a
        // scheme no provider reads.
        parts.headers.remove(header::AUTHORIZATION);
    }
    headers::set_forwarded(&mut parts.headers, peer, trusted_peer);
    if decision.outcome.lets_through()
        && let Some(t) = &decision.token
    {
        match headers::identity(policy, &t.entry.verified) {
            Ok(identity) => {
                for (name, value) in identity {
                    parts.headers.insert(name, value);
                }
            }
            Err(e) => {
                decision = Decision {
                    token: decision.token.take(),
                    ..Decision::deny(
                        Reason::ClaimNotForwardable,
                        e.to_string(),
                        decision.rule.clone(),
                        Mode::Enforce,
                    )
                };
            }
        }
    }
    // The common case, a path already normal and a query without token
    // parameters, reuses the request's own (shared) bytes: no copy, no re-parse.
    let unchanged = normalized.forward == raw_path && stripped.as_deref() == query;
    let rebuilt = || {
        let target = match &stripped {
            Some(q) => format!("{}?{q}", normalized.forward),
            None => normalized.forward.clone(),
        };
        PathAndQuery::try_from(target).ok()
    };
    // (An absolute-form URI without a path has an empty one: rebuilt with "/".)
    let target = match parts.uri.path_and_query() {
        Some(p) if unchanged && p.as_str().starts_with('/') => Some(p.clone()),
        _ => rebuilt(),
    };
    Admitted {
        target,
        path: normalized.matched,
        decision,
    }
}

/// The protected resource whose metadata document `path` asks for, if the
/// policy has one and `path` normalises to one of its well-known paths.
pub fn metadata_request<'p>(policy: &'p Policy, path: &str) -> Option<&'p ProtectedResource> {
    let r = policy.resource.as_ref()?;
    let n = path::normalize(path, &policy.path).ok()?;
    r.serves(&n.matched).then_some(r)
}

impl Service {
    /// The response, and whether the client abandoned the request midway.
    async fn handle(&self, req: Request<Incoming>) -> (Response<ProxyBody>, bool) {
        let start = Instant::now();
        let ctx = &self.ctx;
        let snap = ctx.snapshot.load_full();
        let request_id = ctx.request_ids.for_request(req.headers());
        let Some(wl) = snap.workloads.get(&*self.endpoint.workload) else {
            // The workload left the configuration while this connection was open.
            return (ProxyError::WorkloadRemoved.respond(&request_id, None), false);
        };
        if let Some(r) = metadata_request(&wl.policy, req.uri().path()) {
            return (respond::resource_metadata(r, req.method(), &request_id, None), false);
        }
        let (mut parts, body) = req.into_parts();
        let limits = snap.limits();
        let verifier = Verifier {
            providers: &snap.providers,
            cache: &ctx.cache,
            max_token_bytes: limits.max_token_bytes,
            counters: Some(&ctx.cache_counters),
            reviews: ctx.reviews.as_ref(),
        };
        let peer = self.client.ip();
        let trusted = snap.config.trusted_proxies.iter().any(|n| n.contains(&peer));
        let admitted = admit(&verifier, &snap.sources, wl, &mut parts, peer, trusted).await;
        // After admit's hop-by-hop stripping: what is traced is what is forwarded.
        let trace = ctx.traces.for_request(&mut parts.headers, &snap.config.traces);
        let decision = &admitted.decision;
        let latency = start.elapsed();
        let m = &self.endpoint.metrics;
        m.request(decision.outcome, decision.reason).inc();
        m.decision_seconds.observe(latency.as_secs_f64());
        ctx.audit.log(&audit::Record {
            request_id: &request_id,
            trace_id: trace.as_ref(),
            workload: &wl.name,
            method: &parts.method,
            path: &admitted.path,
            decision,
            client: self.client,
            latency,
        });

        if !decision.outcome.lets_through() {
            return (
                respond::refusal(decision, &wl.policy, &request_id, trace.as_ref()),
                false,
            );
        }
        let declared_too_large = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limits.max_body_bytes);
        if declared_too_large {
            return (ProxyError::BodyTooLarge.respond(&request_id, trace.as_ref()), false);
        }
        let target = wl.upstream.target(self.local);
        let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(body, limit);
        let client = &self.endpoint.client;
        let result = match upstream_request(parts, admitted.target, target, &request_id, self.bound.is_none()) {
            Ok(parts) => match &self.bound {
                Some(bound) => {
                    let req = Request::from_parts(parts, body);
                    client.send_bound(bound, &self.activity, target, req).await
                }
                None => client.send(Request::from_parts(parts, body.boxed_unsync())).await,
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(mut resp) => {
                resp.headers_mut().insert(headers::REQUEST_ID, request_id);
                (resp, false)
            }
            Err(e) => {
                if let Some(kind) = e.upstream_failure() {
                    m.upstream_error(kind).inc();
                    tracing::debug!(workload = %wl.name, error = %e, "upstream request failed");
                }
                (e.respond(&request_id, trace.as_ref()), e.client_gave_up())
            }
        }
    }
}

/// The request head as the upstream gets it: HTTP/1.1 to `target`, with
/// the admitted path and the request id; the URI in absolute form for the
/// pooled client (which picks the connection by it), else in origin form
/// with a `Host` (the upstream's address when the client sent none, as the
/// pooled client does).
pub(super) fn upstream_request(
    mut parts: Parts,
    path: Option<PathAndQuery>,
    target: SocketAddr,
    request_id: &HeaderValue,
    absolute: bool,
) -> Result<Parts, ProxyError> {
    let path = path.ok_or(ProxyError::BadTarget)?;
    // HTTP/2 carries the host in :authority; the upstream speaks HTTP/1.1.
    if !parts.headers.contains_key(header::HOST) {
        let host = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None if absolute => None,
            None => Some(host_of(target)?),
        };
        if let Some(host) = host {
            parts.headers.insert(header::HOST, host);
        }
    }
    parts.uri = if absolute {
        Uri::builder()
            .scheme("http")
            .authority(authority_of(target)?)
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadTarget)?
    } else {
        Uri::from(path)
    };
    parts.version = Version::HTTP_11;
    parts.headers.insert(headers::REQUEST_ID, request_id.clone());
    Ok(parts)
}

/// The `Host` the pooled client would set for `target`: the port left out
/// when it is HTTP's default.
fn host_of(target: SocketAddr) -> Result<HeaderValue, ProxyError> {
    let host = match target.port() {
        80 => match target.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        },
        _ => authority_of(target)?.as_str().to_string(),
    };
    HeaderValue::from_str(&host).map_err(|_| ProxyError::BadTarget)
}

/// `target` as a URI authority. A worker forwards to few upstreams (one per
/// reverse-proxy workload; a steered connection's original destination), so
/// the last one is kept per thread: formatting and parsing a socket address
/// cost more than the rest of building the upstream URI.
fn authority_of(target: SocketAddr) -> Result<Authority, ProxyError> {
    thread_local! {
        static LAST: RefCell<Option<(SocketAddr, Authority)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((addr, authority)) = last.as_ref()
            && *addr == target
        {
            return Ok(authority.clone());
        }
        let authority =
            Authority::from_maybe_shared(Bytes::from(target.to_string())).map_err(|_| ProxyError::BadTarget)?;
        *last = Some((target, authority.clone()));
        Ok(authority)
    })
}
