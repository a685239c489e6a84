//! The decision for one request: match the workload policy's rule, read and
//! validate the token when the rule needs one (or to forward identity on an
//! anonymous route), check the rule, and apply audit mode. Shared by the
//! proxy and `nodeward explain`, so what `explain` prints is what the proxy does.

use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::Mode;
use crate::policy::{Action, Policy};
use crate::state::{Runtime, Source};
use crate::token::{self, TokenError};
use crate::token_cache::{Entry, TokenCache};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 401: no usable token.
    Unauthenticated,
    /// 403: authenticated (or not needed) but not permitted.
    Forbidden,
}

pub struct Decision {
    pub verdict: Verdict,
    /// The verdict was a denial but the rule or policy is in audit mode: let through.
    pub audit_only: bool,
    /// Machine-readable reason (metrics label, JSON body).
    pub reason: &'static str,
    /// Human-readable detail for refusals.
    pub detail: Option<String>,
    pub rule: Option<Arc<str>>,
    /// The verified token, when one was presented and valid.
    pub token: Option<Arc<Entry>>,
    /// Whether no token was presented (for the 401 flavour).
    pub token_missing: bool,
}

impl Decision {
    /// Whether the request goes to the upstream.
    pub fn lets_through(&self) -> bool {
        self.verdict == Verdict::Allow || self.audit_only
    }

    /// Label for the `decision` metric dimension and the audit line.
    pub fn label(&self) -> &'static str {
        match (self.verdict, self.audit_only) {
            (Verdict::Allow, _) => "allow",
            (_, true) => "audit_deny",
            _ => "deny",
        }
    }
}

/// The token from the first source that carries one. `Err` when a source's
/// header is present but not in the expected shape.
pub fn extract<'h>(headers: &'h HeaderMap, sources: &[Source]) -> Option<Result<&'h str, &'static str>> {
    for s in sources {
        let mut values = headers.get_all(&s.header).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Some(Err("several token headers"));
        }
        let Ok(v) = v.to_str() else {
            return Some(Err("token header is not visible ASCII"));
        };
        let token = if s.prefix.is_empty() {
            v.trim()
        } else {
            match v.get(..s.prefix.len()) {
                Some(p) if p.eq_ignore_ascii_case(&s.prefix) => v[s.prefix.len()..].trim(),
                // Another scheme (Basic, ...) under the same header is not our token.
                _ => continue,
            }
        };
        if token.is_empty() {
            return Some(Err("empty bearer token"));
        }
        return Some(Ok(token));
    }
    None
}

/// Looks the token up in the cache, else validates it and caches the result.
pub async fn verify(
    rt: &Runtime,
    cache: &TokenCache,
    token: &str,
    hits: Option<(&prometheus::IntCounter, &prometheus::IntCounter)>,
) -> Result<Arc<Entry>, TokenError> {
    let max = rt.limits().max_token_bytes;
    if token.len() > max {
        return Err(TokenError::TooLarge { limit: max });
    }
    if let Some(e) = cache.get(token)
        && rt.providers.by_name(&e.verified.provider).is_some()
    {
        if let Some((h, _)) = hits {
            h.inc();
        }
        return Ok(e);
    }
    if let Some((_, m)) = hits {
        m.inc();
    }
    let verified = token::validate(token, &rt.providers, max).await?;
    Ok(cache.insert(token, verified))
}

pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

pub async fn decide(
    rt: &Runtime,
    cache: &TokenCache,
    policy: &Policy,
    req: Request<'_>,
    counters: Option<(&prometheus::IntCounter, &prometheus::IntCounter)>,
) -> Decision {
    let deny = |verdict, reason, detail: String, rule: Option<Arc<str>>, mode: Mode| Decision {
        verdict,
        audit_only: mode == Mode::Audit,
        reason,
        detail: Some(detail),
        rule,
        token: None,
        token_missing: false,
    };
    if let Some(why) = &policy.missing {
        // Fail closed: a workload whose policy is missing is enrolled, but nothing passes.
        return deny(Verdict::Forbidden, "no_policy", why.clone(), None, Mode::Enforce);
    }
    let Some(rule) = policy.matching_rule(req.method, req.path) else {
        return deny(
            Verdict::Forbidden,
            "no_matching_rule",
            format!("no rule of policy {} matches {} {}", policy.name, req.method, req.path),
            None,
            policy.mode,
        );
    };
    let rule_name = Some(rule.name.clone());
    if matches!(rule.action, Action::Deny) {
        return deny(
            Verdict::Forbidden,
            "rule_denies",
            format!("rule {} denies every request it matches", rule.name),
            rule_name,
            rule.mode,
        );
    }
    let presented = extract(req.headers, &rt.token_sources);
    let checked = match presented {
        None => None,
        Some(Err(why)) => Some(Err(TokenError::BadHeader(why.into()))),
        Some(Ok(t)) => Some(verify(rt, cache, t, counters).await),
    };
    match (&rule.action, checked) {
        (Action::Anonymous, checked) => Decision {
            verdict: Verdict::Allow,
            audit_only: false,
            reason: "anonymous",
            detail: None,
            rule: rule_name,
            // A valid token on an anonymous route still forwards identity; an invalid one is ignored.
            token: checked.and_then(Result::ok),
            token_missing: false,
        },
        (_, None) => Decision {
            token_missing: true,
            ..deny(
                Verdict::Unauthenticated,
                "missing_token",
                format!("rule {} requires a bearer token", rule.name),
                rule_name,
                rule.mode,
            )
        },
        (_, Some(Err(e))) => deny(
            Verdict::Unauthenticated,
            e.reason(),
            e.to_string(),
            rule_name,
            rule.mode,
        ),
        (_, Some(Ok(entry))) => match rule.authorize(&entry.verified) {
            Ok(()) => Decision {
                verdict: Verdict::Allow,
                audit_only: false,
                reason: "authorized",
                detail: None,
                rule: rule_name,
                token: Some(entry),
                token_missing: false,
            },
            Err(refusal) => Decision {
                token: Some(entry),
                ..deny(Verdict::Forbidden, refusal.reason, refusal.detail, rule_name, rule.mode)
            },
        },
    }
}
