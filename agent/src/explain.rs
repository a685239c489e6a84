//! `nodeward explain`: the decision the proxy would make for one request,
//! with the rule and the reason, computed by the same code the proxy runs.
//! Keys come from the disk copy in `state_dir`, else one fetch.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use crate::app::build_runtime;
use crate::authz::{self, Decision, Verdict};
use crate::config::Config;
use crate::policy::Action;
use crate::provider::{Provider, Providers};
use crate::token_cache::TokenCache;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no workload named {0:?} in the configuration")]
    NoWorkload(String),
    #[error("bad method {0:?}")]
    Method(String),
    #[error("the token is not a valid header value")]
    Token,
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
}

pub struct Explanation {
    pub policy: String,
    pub decision: Decision,
    pub rules: Vec<String>,
}

pub async fn explain(
    config: Config,
    workload: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let method =
        Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| ExplainError::Method(method.into()))?;
    let cache = TokenCache::new(&config.token_cache);
    let mut providers = Providers::default();
    for p in &config.providers {
        let metrics = crate::provider::ProviderMetrics::unregistered(&p.name);
        let provider = Arc::new(Provider::new(p.clone(), &config.state_dir, metrics)?);
        if token.is_some() && !provider.is_ready() {
            let _ = provider.refresh().await;
        }
        providers.insert(provider);
    }
    let host = std::sync::Arc::new(crate::proxy::upstream::Client::new(
        None,
        config.limits.upstream_connect_timeout,
        config.limits.upstream_timeout,
    ));
    let rt = build_runtime(config, providers, |_| Some(host.clone()))?;
    let wl = rt
        .workloads
        .get(workload)
        .ok_or_else(|| ExplainError::NoWorkload(workload.into()))?;
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ExplainError::Token)?;
        headers.insert(rt.token_sources[0].header.clone(), v);
    }
    let decision = authz::decide(
        &rt,
        &cache,
        &wl.policy,
        authz::Request {
            method: &method,
            path,
            headers: &headers,
        },
        None,
    )
    .await;
    let rules = wl
        .policy
        .rules
        .iter()
        .map(|r| {
            let what = match &r.action {
                Action::Anonymous => "allow anonymous".to_string(),
                Action::Deny => "deny".to_string(),
                Action::Require { providers, claims } => format!(
                    "require token{}{}",
                    if providers.is_empty() {
                        String::new()
                    } else {
                        format!(" from {}", providers.join(", "))
                    },
                    if claims.is_empty() {
                        String::new()
                    } else {
                        format!(" with {} claim condition(s)", claims.len())
                    }
                ),
            };
            let hit = if r.matches(&method, path) { "matches" } else { "skipped" };
            format!("{} [{}]: {what}", r.name, hit)
        })
        .collect();
    Ok(Explanation {
        policy: wl.policy.name.to_string(),
        decision,
        rules,
    })
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.decision;
        let status = match (d.verdict, d.audit_only) {
            (Verdict::Allow, _) => "ALLOW (forwarded)",
            (_, true) => "AUDIT-ONLY DENY (forwarded, logged as a denial)",
            (Verdict::Unauthenticated, _) => "DENY 401",
            (Verdict::Forbidden, _) => "DENY 403",
        };
        writeln!(f, "decision: {status}")?;
        writeln!(f, "reason:   {}", d.reason)?;
        if let Some(detail) = &d.detail {
            writeln!(f, "detail:   {detail}")?;
        }
        writeln!(f, "policy:   {}", self.policy)?;
        writeln!(f, "rule:     {}", d.rule.as_deref().unwrap_or("(none matched)"))?;
        if let Some(t) = &d.token {
            let v = &t.verified;
            writeln!(
                f,
                "caller:   iss={} sub={} email={}",
                v.iss,
                v.sub.as_deref().unwrap_or("-"),
                v.email().unwrap_or("-")
            )?;
        }
        writeln!(f, "rules in order (first match wins):")?;
        for r in &self.rules {
            writeln!(f, "  - {r}")?;
        }
        Ok(())
    }
}
