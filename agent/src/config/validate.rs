//! Checks that serde cannot express: cross references, URL schemes, unique
//! names, bounds that involve two fields. Each failure names the key it is
//! about. The shapes of values (algorithms, globs, methods, claim paths,
//! conditions, rule actions) were checked when they were read.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

mod egress;
mod kubernetes;
mod resource;

use super::{
    Config, ConfigError, PolicyConfig, ProviderConfig, RuleAction, RuleConfig, TokenSource, Unbound, WorkloadConfig,
    select_policy,
};
pub(super) use egress::resource_policy;
use kubernetes::{kubernetes_rbac, service_accounts, validate_kubernetes};

/// Headers a claim may not be forwarded as: the agent's own identity headers,
/// and headers that frame or route the request (a claim must never decide
/// where a request goes or how long its body is).
pub const RESERVED_HEADERS: &[&str] = &[
    "x-nodeward-sub",
    "x-nodeward-iss",
    "x-request-id",
    "x-forwarded-for",
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// An invalid key: where and why.
pub(super) type Invalid = (String, String);

pub(super) fn validate(c: &Config, file: &Path) -> Result<(), ConfigError> {
    providers(c)
        .and_then(|()| policies(c))
        .and_then(|()| workloads(c))
        .and_then(|()| validate_kubernetes(&c.kubernetes).map_err(|(k, r)| (format!("kubernetes.{k}"), r)))
        .map_err(|(key, reason)| ConfigError::invalid(file, key, reason))
}

fn providers(c: &Config) -> Result<(), Invalid> {
    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    for (i, p) in c.providers.iter().enumerate() {
        let key = |k: &str| format!("providers[{i}].{k}");
        if p.name.is_empty() {
            return Err((key("name"), "must not be empty".into()));
        }
        if !names.insert(p.name.as_str()) {
            return Err((key("name"), format!("duplicate provider name {:?}", p.name)));
        }
        service_accounts(c, p).map_err(|(k, r)| (key(k), r))?;
        if !p.issuer.is_empty() {
            if !issuers.insert(p.issuer.as_str()) {
                return Err((key("issuer"), format!("two providers share issuer {:?}", p.issuer)));
            }
            check_url(p, &p.issuer).map_err(|r| (key("issuer"), r))?;
        }
        if let Some(m) = &p.claim_mappings {
            for (k, prefix) in [("username", Some(&m.username)), ("groups", m.groups.as_ref())]
                .into_iter()
                .filter_map(|(k, m)| m.map(|m| (k, &m.prefix)))
            {
                if prefix.starts_with("system:") {
                    return Err((
                        key(&format!("claim_mappings.{k}.prefix")),
                        "`system:` names are the cluster's own; the API server refuses them too".into(),
                    ));
                }
            }
        }
        if let Some(uri) = &p.jwks_uri {
            check_url(p, uri).map_err(|r| (key("jwks_uri"), r))?;
        }
        if let Some(uri) = &p.token_endpoint {
            check_url(p, uri).map_err(|r| (key("token_endpoint"), r))?;
        }
        if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
            return Err((
                key("audiences"),
                "list at least one non-empty audience: tokens for other services must not pass".into(),
            ));
        }
        if p.audience_claims.is_empty() || p.audience_claims.iter().any(String::is_empty) {
            return Err((
                key("audience_claims"),
                "list at least one claim name: the audience is always checked".into(),
            ));
        }
        if p.algorithms.is_empty() {
            return Err((key("algorithms"), "must list at least one algorithm".into()));
        }
        if let Some((j, a)) = p.algorithms.iter().enumerate().find(|(_, a)| a.is_hmac())
            && p.hs_secret_file.is_none()
        {
            return Err((
                format!("providers[{i}].algorithms[{j}]"),
                format!("{a} needs `hs_secret_file` (a shared secret), never a public key"),
            ));
        }
        if p.typ
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.iter().any(String::is_empty))
        {
            return Err((key("typ"), "list at least one type, or leave `typ` out".into()));
        }
        refresh(p).map_err(|(k, r)| (key(k), r))?;
        if p.token_from.is_empty() {
            return Err((key("token_from"), "list at least one token source".into()));
        }
        for (j, s) in p.token_from.iter().enumerate() {
            let at = if p.token_from.len() == 1 {
                key("token_from")
            } else {
                format!("providers[{i}].token_from[{j}]")
            };
            token_source(s).map_err(|(k, r)| (format!("{at}.{k}"), r))?;
        }
    }
    Ok(())
}

fn refresh(p: &ProviderConfig) -> Result<(), (&'static str, String)> {
    let r = &p.refresh;
    if r.min_interval.is_zero() || r.min_interval > r.max_interval {
        return Err((
            "refresh.min_interval",
            "must be above zero and not above refresh.max_interval".into(),
        ));
    }
    if r.max_staleness < r.max_interval {
        return Err((
            "refresh.max_staleness",
            "must be at least refresh.max_interval, or keys expire before the next refresh".into(),
        ));
    }
    if r.fetch_timeout.is_zero() || r.max_response_bytes == 0 {
        return Err((
            "refresh",
            "fetch_timeout and max_response_bytes must be above zero".into(),
        ));
    }
    Ok(())
}

fn token_source(s: &TokenSource) -> Result<(), (&'static str, String)> {
    match s {
        TokenSource::Header { header, .. } => {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(("header", "not a valid header name".into()));
            }
        }
        TokenSource::Cookie { cookie } => {
            // RFC 6265 cookie-name is a token.
            if cookie.is_empty() || http::HeaderName::from_bytes(cookie.as_bytes()).is_err() {
                return Err(("cookie", "not a valid cookie name".into()));
            }
        }
        TokenSource::Query { query } => {
            if query.is_empty() || query.contains(['&', '=', '#', ' ']) {
                return Err(("query", "not a valid query parameter name".into()));
            }
        }
    }
    Ok(())
}

fn policies(c: &Config) -> Result<(), Invalid> {
    let mut names = HashSet::new();
    for (i, p) in c.policies.iter().enumerate() {
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return Err((
                format!("policies[{i}].name"),
                format!("empty or duplicate policy name {:?}", p.name),
            ));
        }
        if p.name.contains('/') {
            return Err((
                format!("policies[{i}].name"),
                format!(
                    "{:?}: `/` is reserved for IdentityPolicies, which are addressed as namespace/name",
                    p.name
                ),
            ));
        }
        policy(c, p).map_err(|(k, reason)| (format!("policies[{i}].{k}"), reason))?;
    }
    Ok(())
}

/// The checks of one policy against the rest of the configuration (its
/// providers), keys relative to the policy: the file's policies and the
/// IdentityPolicies of the cluster go through the same ones.
pub(super) fn policy(c: &Config, p: &PolicyConfig) -> Result<(), Invalid> {
    if p.audiences.iter().any(String::is_empty) {
        return Err(("audiences".into(), "audiences must not be empty".into()));
    }
    for (j, r) in p.rules.iter().enumerate() {
        rule(c, r).map_err(|(k, reason)| (format!("rules[{j}].{k}"), reason))?;
    }
    egress::egress(c, p)?;
    resource::protected_resource(c, p)?;
    forward_claims(p).map_err(|(k, reason)| (format!("forward_claims.{k}"), reason))
}

fn forward_claims(p: &PolicyConfig) -> Result<(), Invalid> {
    for header in p.forward_claims.keys() {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err((header.clone(), "not a valid header name".into()));
        }
        if RESERVED_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
            return Err((
                header.clone(),
                "reserved header: the agent sets it, or it frames/routes the request".into(),
            ));
        }
    }
    Ok(())
}

fn rule(c: &Config, r: &RuleConfig) -> Result<(), Invalid> {
    let RuleAction::Require(req) = &r.action else {
        return Ok(());
    };
    if c.providers.is_empty() {
        return Err((
            "require".into(),
            "a rule requires a token but no `providers` are configured".into(),
        ));
    }
    for (k, p) in req.providers.iter().enumerate() {
        if !c.providers.iter().any(|q| &q.name == p) {
            return Err((format!("require.providers[{k}]"), format!("no provider named {p:?}")));
        }
    }
    // The providers whose tokens this rule can see.
    let admitted: Vec<&ProviderConfig> = c
        .providers
        .iter()
        .filter(|p| req.providers.is_empty() || req.providers.contains(&p.name))
        .collect();
    if let Some(src) = &req.source {
        if !admitted.iter().any(|p| p.kubernetes_service_accounts.is_some()) {
            return Err((
                "require.source".into(),
                "`source` names service-account callers: list a `kubernetes_service_accounts` provider".into(),
            ));
        }
        for (k, sa) in src.service_accounts.iter().chain(&src.pods).enumerate() {
            if sa
                .split_once('/')
                .is_none_or(|(ns, n)| ns.is_empty() || n.is_empty() || n.contains('/'))
            {
                return Err((format!("require.source[{k}]"), format!("{sa:?} must be NAMESPACE/NAME")));
            }
        }
    }
    if let Some(rbac) = &req.kubernetes_rbac {
        kubernetes_rbac(c, rbac, &admitted).map_err(|(k, why)| (format!("require.kubernetes_rbac{k}"), why))?;
    }
    Ok(())
}

fn workloads(c: &Config) -> Result<(), Invalid> {
    let mut names = HashSet::new();
    let mut listens = HashSet::new();
    for (i, w) in c.workloads.iter().enumerate() {
        let key = |k: &str| format!("workloads[{i}].{k}");
        if w.name.is_empty() || !names.insert(w.name.as_str()) {
            return Err((key("name"), format!("empty or duplicate workload name {:?}", w.name)));
        }
        if !w.ips.is_empty() && w.netns.is_none() {
            return Err((key("ips"), "`ips` only applies to `netns` workloads".into()));
        }
        let policy = match select_policy(&c.policies, &w.labels, w.policy.as_deref()) {
            Ok(p) => p,
            Err(e @ Unbound::NotFound(_)) => return Err((key("policy"), e.to_string())),
            Err(Unbound::NoneSelects) => {
                return Err((
                    key("labels"),
                    format!("no policy selects workload {:?}; it would deny everything", w.name),
                ));
            }
            Err(Unbound::Ambiguous(many)) => {
                return Err((
                    key("labels"),
                    format!("several policies select workload {:?}: {}", w.name, many.join(", ")),
                ));
            }
        };
        egress::workload(w, policy).map_err(|(k, reason)| (key(&k), reason))?;
        match (w.listen, w.upstream, &w.netns) {
            (Some(listen), Some(_), None) => {
                if !listens.insert(listen) {
                    return Err((key("listen"), format!("{listen} is used by another workload")));
                }
            }
            (None, None, Some(_)) => {
                if policy.ports.is_empty() && policy.egress.is_empty() {
                    return Err((
                        key("netns"),
                        "the policy selecting this workload lists no `ports` to protect and no `egress`".into(),
                    ));
                }
            }
            _ => {
                return Err((
                    key("listen"),
                    "set either `listen` and `upstream` (reverse proxy) or `netns` (eBPF steering)".into(),
                ));
            }
        }
    }
    Ok(())
}

/// The policy a static workload is bound to (validation made sure there is exactly one).
pub fn bound_policy<'c>(c: &'c Config, w: &WorkloadConfig) -> Option<&'c PolicyConfig> {
    select_policy(&c.policies, &w.labels, w.policy.as_deref()).ok()
}

/// https anywhere; plain http only for loopback hosts or with the explicit opt-in.
fn check_url(p: &ProviderConfig, raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    url_allowed(&url, p.allow_insecure_http)
}

/// The scheme rule for every URL a provider is reached at: configured,
/// discovered (`jwks_uri`) or redirected to. https always; plain http only
/// for loopback hosts, or with `allow_insecure_http`.
pub fn url_allowed(url: &url::Url, allow_insecure_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(
                    "plain http is only allowed for loopback issuers; use https or set allow_insecure_http: true"
                        .into(),
                )
            }
        }
        other => Err(format!("scheme {other:?} is not supported; use https")),
    }
}
