//! Claim-based authorization: a workload's policy is an ordered list of
//! rules; the first rule whose paths and methods match the request decides.
//! No matching rule denies.
//!
//! This module only decides. Reading the token is `token.rs`, normalising
//! the path `path.rs`; turning a decision into a response is `proxy/`.

mod claims;
pub mod egress;
mod resource;

pub use resource::ProtectedResource;

use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderName, Method};

use crate::config::{
    ClaimCondition, ClaimPath, ForwardClaim, KubernetesRbac, Mode, PolicyConfig, ProviderConfig, RuleAction,
    RuleConfig, Source,
};
use crate::identity::ServiceAccountCaller;
use crate::path::PathOptions;
use crate::reason::Reason;
use crate::token::VerifiedToken;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy}, rule {rule}: bad path glob {glob:?}: {source}")]
    Glob {
        policy: String,
        rule: String,
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("policy {policy}: bad forward_claims header {header:?}")]
    Header { policy: String, header: String },
    #[error("policy {policy}: protected_resource: {reason}")]
    Resource { policy: String, reason: String },
}

#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    pub mode: Mode,
    pub rules: Vec<Rule>,
    /// Header → claim, added to allowed requests with a verified token.
    pub forward_claims: Vec<(HeaderName, ForwardClaim)>,
    /// Audiences this policy's workloads accept instead of the providers'
    /// (empty: theirs). A protected resource without `audiences` accepts
    /// exactly its resource identifier (RFC 8707).
    pub audiences: Vec<String>,
    pub path: PathOptions,
    /// Forward the client's verified token upstream.
    pub forward_token: bool,
    /// The workload is an OAuth protected resource (`protected_resource`).
    pub resource: Option<ProtectedResource>,
    /// Set for the stand-in of a policy that does not exist (or is
    /// ambiguous): every request is refused with reason `no_policy`,
    /// whatever its mode.
    pub missing: Option<String>,
    /// What the workloads' outbound calls carry.
    pub egress: egress::EgressRules,
}

#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    paths: Option<GlobSet>,
    methods: Option<Vec<Method>>,
    pub action: Action,
    pub mode: Mode,
    /// The scopes the rule's claim conditions require, space-separated (a
    /// protected resource's challenges name them).
    pub scope: Option<Box<str>>,
}

#[derive(Debug)]
pub enum Action {
    Anonymous,
    /// A valid token from one of `providers` (any when empty) meeting every
    /// condition, from an admitted source, and allowed by RBAC when asked.
    Require {
        providers: Vec<Arc<str>>,
        claims: Vec<(ClaimPath, ClaimCondition)>,
        source: Option<Box<Source>>,
        rbac: Option<Box<KubernetesRbac>>,
    },
    Deny,
}

/// Why a token-bearing request is not authorised by its rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

impl Policy {
    /// `providers` are the configuration's: a protected resource publishes
    /// their issuers.
    pub fn compile(cfg: &PolicyConfig, providers: &[ProviderConfig]) -> Result<Self, PolicyError> {
        let rules = cfg
            .rules
            .iter()
            .map(|r| Rule::compile(cfg, r))
            .collect::<Result<_, _>>()?;
        let forward_claims = cfg
            .forward_claims
            .iter()
            .map(|(h, c)| {
                let header =
                    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| PolicyError::Header {
                        policy: cfg.name.clone(),
                        header: h.clone(),
                    })?;
                Ok((header, c.clone()))
            })
            .collect::<Result<_, _>>()?;
        let resource = cfg
            .protected_resource
            .as_ref()
            .map(|r| ProtectedResource::compile(r, providers, &cfg.path))
            .transpose()
            .map_err(|reason| PolicyError::Resource {
                policy: cfg.name.clone(),
                reason,
            })?;
        let audiences = match &resource {
            Some(r) if cfg.audiences.is_empty() => vec![r.resource.clone()],
            _ => cfg.audiences.clone(),
        };
        Ok(Self {
            name: cfg.name.as_str().into(),
            mode: cfg.mode,
            rules,
            forward_claims,
            audiences,
            path: cfg.path,
            forward_token: cfg.forward_token,
            resource,
            missing: None,
            egress: egress::EgressRules::compile(&cfg.egress, cfg.egress_fail),
        })
    }

    /// A policy that denies everything, for workloads whose policy is
    /// missing (fail closed); `why` is told to every refused client.
    pub fn deny_all(name: &str, why: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mode: Mode::Enforce,
            rules: Vec::new(),
            forward_claims: Vec::new(),
            audiences: Vec::new(),
            path: PathOptions::default(),
            forward_token: false,
            resource: None,
            missing: Some(why.into()),
            egress: egress::EgressRules::default(),
        }
    }

    /// The first rule matching `method` and the normalised `path`
    /// ([`crate::path::Normalized::matched`]), if any.
    pub fn matching_rule(&self, method: &Method, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(method, path))
    }

    /// The rule of this name (a decision names the rule that decided).
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.name == name)
    }
}

impl Rule {
    fn compile(policy: &PolicyConfig, cfg: &RuleConfig) -> Result<Self, PolicyError> {
        let glob_error = |glob: &str| {
            let rule = cfg.name.clone();
            let glob = glob.to_string();
            move |source| PolicyError::Glob {
                policy: policy.name.clone(),
                rule,
                glob,
                source,
            }
        };
        // `*` and `**` alone mean every path (request paths start with '/').
        let patterns: Option<Vec<&str>> = cfg.paths.iter().map(|g| g.pattern()).collect();
        let paths = match patterns {
            Some(patterns) if !patterns.is_empty() => {
                let mut b = GlobSetBuilder::new();
                let build = |p: &str| {
                    GlobBuilder::new(p)
                        .literal_separator(true)
                        .case_insensitive(policy.path.case_insensitive)
                        .build()
                };
                for p in patterns {
                    b.add(build(p).map_err(glob_error(p))?);
                    // `/admin/**` also covers `/admin` itself, as users expect.
                    if let Some(base) = p.strip_suffix("/**")
                        && !base.is_empty()
                    {
                        b.add(build(base).map_err(glob_error(base))?);
                    }
                }
                Some(b.build().map_err(glob_error(&cfg.paths.len().to_string()))?)
            }
            _ => None,
        };
        let methods = (!cfg.methods.is_empty()).then(|| {
            let mut ms: Vec<Method> = cfg.methods.iter().map(|m| m.0.clone()).collect();
            // Frameworks answer HEAD with the GET handler: a GET rule covers HEAD.
            if ms.contains(&Method::GET) && !ms.contains(&Method::HEAD) {
                ms.push(Method::HEAD);
            }
            ms
        });
        let action = match &cfg.action {
            RuleAction::Anonymous => Action::Anonymous,
            RuleAction::Deny => Action::Deny,
            RuleAction::Require(req) => Action::Require {
                providers: req.providers.iter().map(|p| p.as_str().into()).collect(),
                claims: req.claims.iter().map(|(p, c)| (p.clone(), c.clone())).collect(),
                source: req.source.clone().map(Box::new),
                rbac: req.kubernetes_rbac.clone().map(Box::new),
            },
        };
        let scope = match &action {
            Action::Require { claims, .. } => resource::required_scope(claims),
            _ => None,
        };
        Ok(Self {
            name: cfg.name.as_str().into(),
            paths,
            methods,
            action,
            mode: cfg.mode.unwrap_or(policy.mode),
            scope,
        })
    }

    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && self.paths.as_ref().is_none_or(|g| g.is_match(path))
    }

    /// Whether `token` fails one of the rule's conditions on a scope claim
    /// (a 403 then names the rule's scopes, so the client can step up).
    pub fn scope_unmet(&self, token: &VerifiedToken) -> bool {
        let Action::Require { claims, .. } = &self.action else {
            return false;
        };
        claims
            .iter()
            .any(|(path, cond)| path.is_scope() && cond.check(path, &token.claims).is_err())
    }

    /// Checks a verified token against the rule's requirements.
    pub fn authorize(&self, token: &VerifiedToken) -> Result<(), Refusal> {
        match &self.action {
            Action::Anonymous => Ok(()),
            Action::Deny => Err(Refusal {
                reason: Reason::RuleDenies,
                detail: format!("rule {} denies every request it matches", self.name),
            }),
            Action::Require {
                providers,
                claims,
                source,
                ..
            } => {
                if !providers.is_empty() && !providers.contains(token.provider_name()) {
                    return Err(Refusal {
                        reason: Reason::ProviderNotAllowed,
                        detail: format!(
                            "tokens from provider {} are not accepted by rule {}",
                            token.provider_name(),
                            self.name
                        ),
                    });
                }
                for (path, cond) in claims {
                    cond.check(path, &token.claims).map_err(|detail| Refusal {
                        reason: Reason::ClaimMismatch,
                        detail,
                    })?;
                }
                match source {
                    Some(s) => check_source(s, token),
                    None => Ok(()),
                }
            }
        }
    }
}

/// `source:`: the caller is a service account of the listed namespaces,
/// service accounts and pods (each list that is set must match).
fn check_source(s: &Source, token: &VerifiedToken) -> Result<(), Refusal> {
    let refuse = |detail: String| Refusal {
        reason: Reason::SourceMismatch,
        detail,
    };
    if token.provider.cfg.kubernetes_service_accounts.is_none() {
        return Err(refuse(format!(
            "the caller must be a service account; provider {} is not the cluster's",
            token.provider_name()
        )));
    }
    let caller = ServiceAccountCaller::of(token).map_err(|e| refuse(e.to_string()))?;
    let sa = format!("{}/{}", caller.namespace, caller.service_account);
    if !s.namespaces.is_empty() && !s.namespaces.contains(&caller.namespace) {
        return Err(refuse(format!(
            "caller namespace {} is not one of {:?}",
            caller.namespace, s.namespaces
        )));
    }
    if !s.service_accounts.is_empty() && !s.service_accounts.contains(&sa) {
        return Err(refuse(format!(
            "caller service account {sa} is not one of {:?}",
            s.service_accounts
        )));
    }
    if !s.pods.is_empty() {
        let pod = caller.pod.as_ref().map(|(p, _)| format!("{}/{p}", caller.namespace));
        if !pod.as_ref().is_some_and(|p| s.pods.contains(p)) {
            return Err(refuse(format!(
                "caller pod {} is not one of {:?}",
                pod.as_deref().unwrap_or("(not bound to a pod)"),
                s.pods
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
