//! Claim-based authorization: a workload's policy is an ordered list of
//! rules; the first rule whose paths and methods match the request decides.
//! No matching rule denies.
//!
//! This module only decides. Reading the token is `token.rs`; turning a
//! decision into a response is `proxy/`.

mod claims;

pub use claims::{ClaimPath, Condition};

use std::sync::Arc;

use globset::{GlobSet, GlobSetBuilder};
use http::{HeaderName, Method};

use crate::config::{Mode, PolicyConfig, RuleConfig};
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
}

#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    pub mode: Mode,
    pub rules: Vec<Rule>,
    /// Header → claim, added to allowed requests with a verified token.
    pub forward_claims: Vec<(HeaderName, ClaimPath)>,
    /// Set for the stand-in of a policy that does not exist: every request
    /// is refused with reason `no_policy`, whatever its mode.
    pub missing: Option<String>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    paths: Option<GlobSet>,
    methods: Option<Vec<Method>>,
    pub action: Action,
    pub mode: Mode,
}

#[derive(Debug)]
pub enum Action {
    Anonymous,
    /// A valid token from one of `providers` (any when empty) meeting every condition.
    Require {
        providers: Vec<Arc<str>>,
        claims: Vec<(ClaimPath, Condition)>,
    },
    Deny,
}

/// Why a token-bearing request is not authorised by its rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

impl Policy {
    pub fn compile(cfg: &PolicyConfig) -> Result<Self, PolicyError> {
        let rules = cfg
            .rules
            .iter()
            .map(|r| Rule::compile(&cfg.name, cfg.mode, r))
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
                Ok((header, ClaimPath::new(c)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: cfg.name.as_str().into(),
            mode: cfg.mode,
            rules,
            forward_claims,
            missing: None,
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
            missing: Some(why.into()),
        }
    }

    /// The first rule matching `method` and `path`, if any.
    pub fn matching_rule(&self, method: &Method, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(method, path))
    }
}

impl Rule {
    fn compile(policy: &str, mode: Mode, cfg: &RuleConfig) -> Result<Self, PolicyError> {
        // `*` and `**` alone mean every path (request paths start with '/').
        let paths = if cfg.paths.is_empty() || cfg.paths.iter().any(|g| g == "*" || g == "**") {
            None
        } else {
            let mut b = GlobSetBuilder::new();
            for g in &cfg.paths {
                let glob = globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|source| PolicyError::Glob {
                        policy: policy.into(),
                        rule: cfg.name.clone(),
                        glob: g.clone(),
                        source,
                    })?;
                b.add(glob);
                // `/admin/**` also covers `/admin` itself, as users expect.
                if let Some(base) = g.strip_suffix("/**")
                    && !base.is_empty()
                    && let Ok(glob) = globset::GlobBuilder::new(base).literal_separator(true).build()
                {
                    b.add(glob);
                }
            }
            Some(b.build().map_err(|source| PolicyError::Glob {
                policy: policy.into(),
                rule: cfg.name.clone(),
                glob: cfg.paths.join(", "),
                source,
            })?)
        };
        let methods = if cfg.methods.is_empty() {
            None
        } else {
            Some(
                cfg.methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
            )
        };
        let action = if cfg.deny {
            Action::Deny
        } else if let Some(req) = &cfg.require {
            Action::Require {
                providers: req.providers.iter().map(|p| p.as_str().into()).collect(),
                claims: req
                    .claims
                    .iter()
                    .map(|(p, c)| (ClaimPath::new(p), Condition::from(c)))
                    .collect(),
            }
        } else {
            Action::Anonymous
        };
        Ok(Self {
            name: cfg.name.as_str().into(),
            paths,
            methods,
            action,
            mode: cfg.mode.unwrap_or(mode),
        })
    }

    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && self.paths.as_ref().is_none_or(|g| g.is_match(path))
    }

    /// Whether this rule needs a token at all.
    pub fn needs_token(&self) -> bool {
        matches!(self.action, Action::Require { .. })
    }

    /// Checks a verified token against the rule's requirements.
    pub fn authorize(&self, token: &VerifiedToken) -> Result<(), Refusal> {
        match &self.action {
            Action::Anonymous => Ok(()),
            Action::Deny => Err(Refusal {
                reason: "rule_denies",
                detail: format!("rule {} denies every request it matches", self.name),
            }),
            Action::Require { providers, claims } => {
                if !providers.is_empty() && !providers.contains(&token.provider) {
                    return Err(Refusal {
                        reason: "provider_not_allowed",
                        detail: format!(
                            "tokens from provider {} are not accepted by rule {}",
                            token.provider, self.name
                        ),
                    });
                }
                for (path, cond) in claims {
                    cond.check(path, &token.claims).map_err(|detail| Refusal {
                        reason: "claim_mismatch",
                        detail,
                    })?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
