//! The decision for one request: match the workload policy's rule, read and
//! validate the token when the rule needs one (or to forward identity on an
//! anonymous route), check audience and rule, and apply audit mode. Pure of
//! HTTP serving and of the agent's state: it gets the providers, the token
//! cache and the request's parts, so the proxy and `nodeward explain` run
//! exactly this.

use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::Mode;
use crate::policy::{Action, Policy};
use crate::provider::Providers;
use crate::reason::Reason;
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
}

impl Decision {
    pub fn allow(reason: Reason, rule: Arc<str>, token: Option<Presented>) -> Self {
        Self {
            outcome: Outcome::Allow,
            reason,
            detail: None,
            rule: Some(rule),
            token,
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
        if let Some(e) = self.cache.get(token) {
            let v = &e.verified;
            let current = self
                .providers
                .by_issuer(&v.iss)
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
        let verified = token::validate(token, self.providers, self.max_token_bytes).await?;
        Ok(self.cache.insert(token, verified))
    }
}

/// The parts of a request a decision reads, after normalisation.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The normalised path as rules match it (`path::Normalized::matched`).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
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
        Some(Err(why)) => Some(Err(TokenError::BadHeader(why.into()))),
        Some(Ok(Found { token, source })) => Some(
            v.verify(&token)
                .await
                .and_then(|entry| {
                    let v = &entry.verified;
                    let expected = if policy.audiences.is_empty() {
                        &v.provider.cfg.audiences
                    } else {
                        &policy.audiences
                    };
                    v.check_audience(expected)?;
                    Ok(entry)
                })
                .map(|entry| Presented { entry, source }),
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
        (_, Some(Err(e))) => Decision::deny(e.reason(), e.to_string(), Some(rule_name), rule.mode),
        (_, Some(Ok(presented))) => match rule.authorize(&presented.entry.verified) {
            Ok(()) => Decision::allow(Reason::Authorized, rule_name, Some(presented)),
            Err(refusal) => Decision {
                token: Some(presented),
                ..Decision::deny(refusal.reason, refusal.detail, Some(rule_name), rule.mode)
            },
        },
    }
}
