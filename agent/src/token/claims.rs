//! Registered-claim checks: `exp` (required), `nbf`, `iat` with a skew, and
//! the audience read from the provider's `audience_claims` (checked against
//! the workload's audiences per request, `VerifiedToken::check_audience`).
//! The issuer was matched exactly when the provider was chosen by `iss`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::TokenError;
use crate::provider::Provider;

/// A JSON NumericDate (RFC 7519 §2): a non-negative finite number of seconds.
/// Strings, booleans and negatives are errors, never "absent".
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct NumericDate(pub f64);

impl NumericDate {
    fn read(claims: &Map<String, Value>, name: &str) -> Result<Option<Self>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(Self(v))),
                _ => Err(TokenError::BadClaims(format!("{name} is not a valid NumericDate"))),
            },
            Some(other) => Err(TokenError::BadClaims(format!(
                "{name} must be a number, not {}",
                kind(other)
            ))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) struct Checked {
    pub sub: Option<String>,
    pub exp: u64,
    pub audiences: Vec<String>,
}

pub(super) fn check(claims: &Map<String, Value>, provider: &Provider, now: SystemTime) -> Result<Checked, TokenError> {
    let now = now.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let skew = provider.cfg.clock_skew.as_secs_f64();

    let exp =
        NumericDate::read(claims, "exp")?.ok_or_else(|| TokenError::BadClaims("no exp: tokens must expire".into()))?;
    if now > exp.0 + skew {
        return Err(TokenError::Expired((now - exp.0) as u64));
    }
    if let Some(nbf) = NumericDate::read(claims, "nbf")?
        && nbf.0 > now + skew
    {
        return Err(TokenError::NotYetValid((nbf.0 - now).ceil() as u64));
    }
    if let Some(iat) = NumericDate::read(claims, "iat")?
        && iat.0 > now + skew
    {
        return Err(TokenError::IssuedInFuture((iat.0 - now).ceil() as u64));
    }

    // The first audience claim present is the audience (Cognito: `client_id`).
    let mut audiences = Vec::new();
    if let Some((name, value)) = provider
        .cfg
        .audience_claims
        .iter()
        .find_map(|n| claims.get(n).map(|v| (n, v)))
    {
        match value {
            Value::String(a) => audiences.push(a.clone()),
            Value::Array(list) => {
                for a in list {
                    let a = a
                        .as_str()
                        .ok_or_else(|| TokenError::BadClaims(format!("{name} array holds a non-string")))?;
                    audiences.push(a.to_string());
                }
            }
            other => {
                return Err(TokenError::BadClaims(format!(
                    "{name} must be a string or array, not {}",
                    kind(other)
                )));
            }
        }
    }

    let sub = match claims.get("sub") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(TokenError::BadClaims(format!(
                "sub must be a string, not {}",
                kind(other)
            )));
        }
    };
    // Whole seconds, rounded down: a cache entry never outlives the token.
    let exp = if exp.0 >= u64::MAX as f64 {
        u64::MAX
    } else {
        exp.0 as u64
    };
    Ok(Checked { sub, exp, audiences })
}

pub(super) fn short(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_string();
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The most actors of an `act` chain an audit line names.
const ACT_DEPTH: usize = 8;

/// `act` (RFC 8693 §4.1) as a chain: the current actor's `sub`, then the
/// prior actors' (nested `act`s, least recent last), joined by `>`; `?` for
/// an actor without a string `sub`; past [`ACT_DEPTH`] actors, `>…`. `None`
/// when there is no `act` object.
pub(super) fn act_chain(claims: &Map<String, Value>) -> Option<String> {
    let mut actor = claims.get("act")?.as_object()?;
    let mut chain = String::new();
    for depth in 0..=ACT_DEPTH {
        if depth == ACT_DEPTH {
            chain.push_str(">…");
            break;
        }
        if depth > 0 {
            chain.push('>');
        }
        chain.push_str(actor.get("sub").and_then(Value::as_str).unwrap_or("?"));
        match actor.get("act").and_then(Value::as_object) {
            Some(prior) => actor = prior,
            None => break,
        }
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::act_chain;

    fn chain(claims: Value) -> Option<String> {
        let Value::Object(m) = claims else { return None };
        act_chain(&m)
    }

    #[test]
    fn the_act_chain_starts_with_the_current_actor() {
        assert_eq!(chain(json!({"sub": "alice"})), None);
        assert_eq!(chain(json!({"act": "agent"})), None, "not an object: no chain");
        assert_eq!(chain(json!({"act": {"sub": "agent-a"}})).as_deref(), Some("agent-a"));
        let nested = json!({"sub": "alice", "act": {"sub": "agent-b", "act": {"sub": "agent-a"}}});
        assert_eq!(chain(nested).as_deref(), Some("agent-b>agent-a"));
        let no_sub = json!({"act": {"client_id": "x", "act": {"sub": 7}}});
        assert_eq!(chain(no_sub).as_deref(), Some("?>?"));
    }

    #[test]
    fn a_deep_chain_is_cut() {
        let mut act = json!({"sub": "a0"});
        for i in 1..20 {
            act = json!({"sub": format!("a{i}"), "act": act});
        }
        let mut claims = Map::new();
        claims.insert("act".into(), act);
        assert_eq!(act_chain(&claims).as_deref(), Some("a19>a18>a17>a16>a15>a14>a13>a12>…"));
    }
}
