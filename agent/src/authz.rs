//! The decision for one request: match the workload policy's rule, read and
//! validate the token when the rule needs one (or to forward identity on an
//! anonymous route), check audience and rule, and apply audit mode. Pure of
//! HTTP serving and of the agent's state: it gets the providers, the token
//! cache and the request's parts, so the proxy and `nodeward explain` run
//! exactly this.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::{KubernetesRbac, Mode};
use crate::identity::{self, KubeUser};
use crate::k8s::review::{Attributes, Reviews};
use crate::policy::{Action, Policy};
use crate::provider::Providers;
use crate::reason::Reason;
use crate::snapshot::Target;
use crate::token::{self, Found, Sources, TokenError};
use crate::token_cache::{Entry, TokenCache};

/// The `decision` dimension of metrics and audit lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// A denial in audit mode: counted and logged as a denial, let through.
    AuditDeny,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Self::Allow, Self::Deny, Self::AuditDeny];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::AuditDeny => "audit_deny",
        }
    }

    /// Whether the request goes to the upstream.
    pub fn lets_through(self) -> bool {
        self != Self::Deny
    }
}

/// A token that verified, and the source it came from.
pub struct Presented {
    pub entry: Arc<Entry>,
    pub source: usize,
}

pub struct Decision {
    pub outcome: Outcome,
    pub reason: Reason,
    /// Human-readable detail for refusals.
    pub detail: Option<String>,
    pub rule: Option<Arc<str>>,
    /// The verified token, when one was presented and valid for this workload.
    pub token: Option<Presented>,
    /// The Kubernetes user a `kubernetes_rbac` rule asked about.
    pub kube_user: Option<Arc<KubeUser>>,
}

impl Decision {
    pub fn allow(reason: Reason, rule: Arc<str>, token: Option<Presented>) -> Self {
        Self {
            outcome: Outcome::Allow,
            reason,
            detail: None,
            rule: Some(rule),
            token,
            kube_user: None,
        }
    }

    /// A refusal, or (in audit mode) a logged denial that goes through.
    pub fn deny(reason: Reason, detail: String, rule: Option<Arc<str>>, mode: Mode) -> Self {
        Self {
            outcome: match mode {
                Mode::Enforce => Outcome::Deny,
                Mode::Audit => Outcome::AuditDeny,
            },
            reason,
            detail: Some(detail),
            rule,
            token: None,
            kube_user: None,
        }
    }

    pub fn sub(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.entry.verified.sub.as_deref())
    }
}

/// Cache hit/miss counters (the proxy's; `explain` has none).
pub struct CacheCounters {
    pub hits: prometheus::IntCounter,
    pub misses: prometheus::IntCounter,
}

/// What verifying a token needs.
pub struct Verifier<'a> {
    pub providers: &'a Providers,
    pub cache: &'a TokenCache,
    pub max_token_bytes: usize,
    pub counters: Option<&'a CacheCounters>,
    /// The API server's reviews (TokenReview, SubjectAccessReview), when
    /// the agent has a Kubernetes client.
    pub reviews: Option<&'a Reviews>,
}

impl Verifier<'_> {
    /// The cached verification of `token` if it still holds under the
    /// current providers, else a fresh validation (cached). A cache entry
    /// counts only while the provider that verified it is the current
    /// provider for its issuer and still trusts its key: a reload, a key
    /// rotation, a rotated shared secret or keys gone stale past
    /// `max_staleness` all make it a miss, so the cache never answers for a
    /// token a fresh validation would refuse.
    pub async fn verify(&self, token: &str) -> Result<Arc<Entry>, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge {
                limit: self.max_token_bytes,
            });
        }
        let slot = self.cache.slot(token);
        if let Some(e) = self.cache.get_at(slot, token) {
            let v = &e.verified;
            let current = self
                .providers
                .by_name(v.provider_name())
                .is_some_and(|p| Arc::ptr_eq(p, &v.provider) && p.still_trusts(&v.key));
            if current {
                if let Some(c) = self.counters {
                    c.hits.inc();
                }
                return Ok(e);
            }
        }
        if let Some(c) = self.counters {
            c.misses.inc();
        }
        // Boxed: a validation (and a review below) can wait on a JWKS fetch or
        // the API server, and their futures are large; inline, every request's
        // future would carry (and copy) their space even on a cache hit.
        let verified = Box::pin(token::validate(token, self.providers, self.max_token_bytes)).await?;
        Ok(self.cache.insert_at(slot, token, verified))
    }
}

/// The parts of a request a decision reads, after normalisation.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The normalised path as rules match it (`path::Normalized::matched`).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The called workload (what RBAC attributes name).
    pub target: &'a Target,
}

pub async fn decide(v: &Verifier<'_>, sources: &Sources, policy: &Policy, req: Request<'_>) -> Decision {
    if let Some(why) = &policy.missing {
        // Fail closed: a workload whose policy is missing is enrolled, but nothing passes.
        return Decision::deny(Reason::NoPolicy, why.clone(), None, Mode::Enforce);
    }
    let Some(rule) = policy.matching_rule(req.method, req.path) else {
        return Decision::deny(
            Reason::NoMatchingRule,
            format!("no rule of policy {} matches {} {}", policy.name, req.method, req.path),
            None,
            policy.mode,
        );
    };
    let rule_name = rule.name.clone();
    if matches!(rule.action, Action::Deny) {
        return Decision::deny(
            Reason::RuleDenies,
            format!("rule {} denies every request it matches", rule.name),
            Some(rule_name),
            rule.mode,
        );
    }
    let checked = match sources.find(req.headers, req.query) {
        None => None,
        Some(Err(why)) => {
            let e = TokenError::BadHeader(why.into());
            Some(Err((e.reason(), e.to_string())))
        }
        Some(Ok(Found { token, source })) => Some(
            match v.verify(&token).await.and_then(|entry| {
                let t = &entry.verified;
                let expected = if policy.audiences.is_empty() {
                    &t.provider.cfg.audiences
                } else {
                    &policy.audiences
                };
                t.check_audience(expected)?;
                // A protected resource takes tokens of its own authorization
                // servers only (MCP: no other tokens are accepted).
                if let Some(r) = &policy.resource
                    && !r.accepts(t.provider_name())
                {
                    return Err(TokenError::NotAuthorizationServer {
                        issuer: t.iss.to_string(),
                        resource: r.resource.clone(),
                    });
                }
                Ok(entry)
            }) {
                Ok(entry) => match v.reviewed(&token, &entry).await {
                    Ok(()) => Ok(Presented { entry, source }),
                    Err(refused) => Err(refused),
                },
                Err(e) => Err((e.reason(), e.to_string())),
            },
        ),
    };
    match (&rule.action, checked) {
        // A valid token on an anonymous route still forwards identity; an invalid one is ignored.
        (Action::Anonymous, checked) => Decision::allow(Reason::Anonymous, rule_name, checked.and_then(Result::ok)),
        (_, None) => Decision::deny(
            Reason::MissingToken,
            format!("rule {} requires a bearer token", rule.name),
            Some(rule_name),
            rule.mode,
        ),
        (_, Some(Err((reason, detail)))) => Decision::deny(reason, detail, Some(rule_name), rule.mode),
        (Action::Require { rbac, .. }, Some(Ok(presented))) => {
            let refused = match rule.authorize(&presented.entry.verified) {
                Err(r) => Some((r.reason, r.detail, None)),
                Ok(()) => match rbac.as_ref() {
                    None => None,
                    Some(r) => v.rbac(&presented.entry, r, &req).await.err(),
                },
            };
            match refused {
                None => Decision {
                    kube_user: presented.entry.kube_user.get().and_then(|u| u.as_ref().ok()).cloned(),
                    ..Decision::allow(Reason::Authorized, rule_name, Some(presented))
                },
                Some((reason, detail, kube_user)) => Decision {
                    token: Some(presented),
                    kube_user,
                    ..Decision::deny(reason, detail, Some(rule_name), rule.mode)
                },
            }
        }
        (Action::Deny, Some(Ok(_))) => Decision::deny(
            Reason::RuleDenies,
            format!("rule {} denies every request it matches", rule.name),
            Some(rule_name),
            rule.mode,
        ),
    }
}

/// A refusal: its reason, detail, and the Kubernetes user asked about.
type Refused = (Reason, String, Option<Arc<KubeUser>>);

impl Verifier<'_> {
    /// For providers with `token_review`: the API server still authenticates
    /// the token (the pod or secret it is bound to exists). Fails closed.
    async fn reviewed(&self, token: &str, entry: &Entry) -> Result<(), (Reason, String)> {
        let p = &entry.verified.provider.cfg;
        if !p.token_review {
            return Ok(());
        }
        let Some(reviews) = self.reviews else {
            return Err((
                Reason::TokenReviewUnavailable,
                "TokenReview needs the Kubernetes API, which this agent has no client for".into(),
            ));
        };
        match Box::pin(reviews.token(token, &p.audiences, p.token_review_ttl)).await {
            Ok(s) if s.authenticated => Ok(()),
            Ok(s) => Err((
                Reason::TokenRevoked,
                format!("the API server no longer authenticates this token: {}", s.error),
            )),
            Err(e) => Err((Reason::TokenReviewUnavailable, format!("TokenReview failed: {e}"))),
        }
    }

    /// The cluster's RBAC for the caller as a Kubernetes user.
    async fn rbac(&self, entry: &Entry, rbac: &KubernetesRbac, req: &Request<'_>) -> Result<(), Refused> {
        let user = entry
            .kube_user
            .get_or_init(|| {
                let t = &entry.verified;
                identity::user_of(t, &t.provider.cfg).map(Arc::new)
            })
            .clone()
            .map_err(|e| (Reason::KubernetesUserInvalid, e.to_string(), None))?;
        let attrs = attributes(rbac, req);
        let Some(reviews) = self.reviews else {
            return Err((
                Reason::RbacUnavailable,
                "RBAC decisions need the Kubernetes API, which this agent has no client for".into(),
                Some(user),
            ));
        };
        match reviews.access(&user, &attrs).await {
            Ok(a) if a.allowed => Ok(()),
            Ok(a) => Err((
                Reason::RbacDenied,
                format!(
                    "the cluster's RBAC does not allow user {} (groups {}) {attrs}: {}",
                    user.username,
                    user.groups.join(","),
                    if a.reason.is_empty() {
                        "no RBAC policy matched"
                    } else {
                        a.reason.as_str()
                    }
                ),
                Some(user),
            )),
            Err(e) => Err((
                Reason::RbacUnavailable,
                format!("SubjectAccessReview for {attrs} failed: {e}"),
                Some(user),
            )),
        }
    }
}

/// The verb a method stands for in RBAC (as kube-rbac-proxy maps it).
fn verb(m: &Method) -> Cow<'static, str> {
    match *m {
        Method::GET | Method::HEAD => "get".into(),
        Method::POST => "create".into(),
        Method::PUT => "update".into(),
        Method::PATCH => "patch".into(),
        Method::DELETE => "delete".into(),
        ref other => other.as_str().to_ascii_lowercase().into(),
    }
}

/// The rule's attributes for this request, placeholders filled in. They
/// borrow from the rule, the called workload and the request wherever the
/// value is one of those as it stands, so a cached decision builds nothing.
fn attributes<'a>(rbac: &'a KubernetesRbac, req: &Request<'a>) -> Attributes<'a> {
    let verb = rbac.verb.as_deref().map_or_else(|| verb(req.method), Cow::Borrowed);
    match &rbac.resource {
        Some(r) => Attributes::Resource {
            verb,
            group: fill(&r.group, req.target),
            resource: fill(&r.resource, req.target),
            subresource: fill(&r.subresource, req.target),
            namespace: fill(&r.namespace, req.target),
            name: fill(&r.name, req.target),
        },
        None => Attributes::NonResource {
            verb,
            path: Cow::Borrowed(req.path),
        },
    }
}

/// The value of placeholder `name` (without its braces) for workload `t`.
fn placeholder<'a>(name: &str, t: &'a Target) -> &'a str {
    match name {
        "namespace" => t.namespace.as_str(),
        "pod" => t.pod.as_deref().unwrap_or_default(),
        "workload" => t.workload.as_str(),
        _ => name
            .strip_prefix("label:")
            .and_then(|k| t.labels.get(k))
            .map_or("", String::as_str),
    }
}

/// `{namespace}`, `{pod}`, `{workload}`, `{label:KEY}` of the called workload.
/// A template without placeholders, or that is one placeholder and nothing
/// else, is borrowed as it is; only a mix is written out.
fn fill<'a>(template: &'a str, t: &'a Target) -> Cow<'a, str> {
    if !template.contains('{') {
        return Cow::Borrowed(template);
    }
    if let Some(name) = template.strip_prefix('{').and_then(|r| r.strip_suffix('}'))
        && !name.contains(['{', '}'])
    {
        return Cow::Borrowed(placeholder(name, t));
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else { break };
        out.push_str(placeholder(&rest[start + 1..start + end], t));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            workload: "orders".into(),
            namespace: "shop".into(),
            pod: Some("orders-7d9f".into()),
            labels: [
                ("app".to_string(), "orders".to_string()),
                ("tier".to_string(), "api".to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn templates_fill_the_same_whether_borrowed_or_written_out() {
        let t = target();
        // (template, value, borrowed: no copy is made for it)
        let cases = [
            ("services", "services", true),
            ("", "", true),
            ("{namespace}", "shop", true),
            ("{workload}", "orders", true),
            ("{pod}", "orders-7d9f", true),
            ("{label:tier}", "api", true),
            ("{label:missing}", "", true),
            ("{unknown}", "", true),
            ("{}", "", true),
            ("{namespace}-{workload}", "shop-orders", false),
            ("{namespace}x", "shopx", false),
            ("x{namespace}", "xshop", false),
            ("{{namespace}}", "}", false),
            ("{namespace", "{namespace", false),
            ("namespace}", "namespace}", true),
            ("{label:app}/{pod}", "orders/orders-7d9f", false),
        ];
        for (template, want, borrowed) in cases {
            let got = fill(template, &t);
            assert_eq!(got, want, "{template:?}");
            assert_eq!(matches!(got, Cow::Borrowed(_)), borrowed, "{template:?}");
        }
        let podless = Target { pod: None, ..t };
        assert_eq!(fill("{pod}", &podless), "");
    }

    #[test]
    fn methods_map_to_rbac_verbs_as_kube_rbac_proxy_maps_them() {
        for (m, v) in [
            (Method::GET, "get"),
            (Method::HEAD, "get"),
            (Method::POST, "create"),
            (Method::PUT, "update"),
            (Method::PATCH, "patch"),
            (Method::DELETE, "delete"),
            (Method::OPTIONS, "options"),
            (Method::from_bytes(b"PROPFIND").expect("method"), "propfind"),
        ] {
            assert_eq!(verb(&m), v);
        }
    }
}
