//! Bearer token validation (RFC 7519 + RFC 8725): compact-JWS parsing, key
//! choice pinned by the key (never by the header alone), signature and claim
//! checks. A successful check yields a [`VerifiedToken`] that the token cache
//! shares with every later request carrying the same token.

mod claims;
mod jose;
#[cfg(test)]
mod tests;

pub use claims::NumericDate;

use std::sync::Arc;
use std::time::SystemTime;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::provider::{Key, KeySet, Provider, Providers};

/// Why a token was refused. `reason()` is the stable machine-readable code
/// (metrics label, JSON body); `Display` is the human-readable detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("token is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("encrypted tokens (JWE) are not accepted")]
    Encrypted,
    #[error("token header: {0}")]
    BadHeader(String),
    #[error("token claims: {0}")]
    BadClaims(String),
    #[error("algorithm {0:?} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("critical header parameters not understood: {0}")]
    UnknownCrit(String),
    #[error("issuer {0:?} is not a configured provider")]
    UnknownIssuer(String),
    #[error("provider {0} has no usable keys (JWKS unavailable)")]
    NoKeys(String),
    #[error("no key with kid {0:?}, even after refreshing the JWKS")]
    UnknownKid(String),
    #[error("key {kid:?} is for {key_alg}, not {token_alg}")]
    AlgorithmMismatch {
        kid: String,
        key_alg: String,
        token_alg: String,
    },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired {0}s ago")]
    Expired(u64),
    #[error("token is not valid for another {0}s (nbf)")]
    NotYetValid(u64),
    #[error("token was issued {0}s in the future (iat)")]
    IssuedInFuture(u64),
    #[error("audience {found} does not include any of {expected}")]
    WrongAudience { found: String, expected: String },
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "token_too_large",
            Self::Malformed(_) | Self::BadHeader(_) | Self::BadClaims(_) => "malformed_token",
            Self::Encrypted => "unsupported_token",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::UnknownCrit(_) => "unknown_crit",
            Self::UnknownIssuer(_) => "unknown_issuer",
            Self::NoKeys(_) => "no_keys",
            Self::UnknownKid(_) => "unknown_kid",
            Self::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired(_) => "token_expired",
            Self::NotYetValid(_) => "token_not_yet_valid",
            Self::IssuedInFuture(_) => "token_issued_in_future",
            Self::WrongAudience { .. } => "wrong_audience",
        }
    }
}

/// A token whose signature and registered claims were checked.
#[derive(Debug)]
pub struct VerifiedToken {
    pub provider: Arc<str>,
    pub iss: String,
    pub sub: Option<String>,
    /// Expiry, whole seconds since the epoch (rounded down).
    pub exp: u64,
    pub claims: Map<String, Value>,
    /// The key that verified it; a revoked key invalidates cached entries.
    pub key: Arc<Key>,
}

impl VerifiedToken {
    pub fn email(&self) -> Option<&str> {
        self.claims.get("email").and_then(Value::as_str)
    }
}

/// A compact JWS split and decoded, not yet verified.
pub struct Jws<'t> {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: &'t str,
}

/// Header parameters this implementation understands when listed in `crit`.
/// None: JWT access tokens use no critical extensions.
const UNDERSTOOD_CRIT: &[&str] = &[];

impl<'t> Jws<'t> {
    /// Splits and decodes a token. Checks structure only, not trust.
    pub fn parse(token: &'t str, max_len: usize) -> Result<Self, TokenError> {
        if token.len() > max_len {
            return Err(TokenError::TooLarge { limit: max_len });
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        match parts.count() {
            0 => {}
            2 => return Err(TokenError::Encrypted),
            _ => return Err(TokenError::Malformed("expected three dot-separated parts")),
        }
        if h.is_empty() || c.is_empty() || s.is_empty() {
            return Err(TokenError::Malformed("empty part"));
        }
        let header = jose::b64(h).ok_or(TokenError::Malformed("header is not canonical base64url"))?;
        let header = jose::strict_object(&header).map_err(TokenError::BadHeader)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            Some(_) => return Err(TokenError::BadHeader("alg is not a string".into())),
            None => return Err(TokenError::BadHeader("no alg".into())),
        };
        if header.contains_key("enc") {
            return Err(TokenError::Encrypted);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(TokenError::BadHeader("kid is not a string".into())),
        };
        if let Some(crit) = header.get("crit") {
            // RFC 7515 §4.1.11: a list of names, non-empty, each understood.
            let list = crit
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| TokenError::BadHeader("crit must be a non-empty array of names".into()))?;
            let unknown: Vec<String> = list
                .iter()
                .filter(|n| !n.as_str().is_some_and(|n| UNDERSTOOD_CRIT.contains(&n)))
                .map(Value::to_string)
                .collect();
            if !unknown.is_empty() {
                return Err(TokenError::UnknownCrit(truncate(&unknown.join(", "), ECHO_MAX)));
            }
        }
        // jwk, jku, x5u and x5c are deliberately never read: keys come only
        // from the configured provider's JWKS or secret.
        let claims = jose::b64(c).ok_or(TokenError::Malformed("claims are not canonical base64url"))?;
        let claims = jose::strict_object(&claims).map_err(TokenError::BadClaims)?;
        Ok(Self {
            alg,
            kid,
            claims,
            signing_input: &token[..h.len() + 1 + c.len()],
            signature: s,
        })
    }

    pub fn iss(&self) -> Result<&str, TokenError> {
        match self.claims.get("iss") {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(TokenError::BadClaims("iss is not a string".into())),
            None => Err(TokenError::BadClaims("no iss".into())),
        }
    }

    /// Verifies the signature with `provider`'s keys and checks the claims.
    /// `Err(UnknownKid)` tells the caller a JWKS refetch may help.
    pub fn verify(self, provider: &Provider, keys: &KeySet, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        let alg: Algorithm = self
            .alg
            .parse()
            .ok()
            .filter(|a| provider.algorithms.contains(a))
            .ok_or_else(|| TokenError::AlgorithmNotAllowed(truncate(&self.alg, ECHO_MAX)))?;
        let signature =
            jose::b64(self.signature).ok_or(TokenError::Malformed("signature is not canonical base64url"))?;
        let signature = signature.as_slice();
        let message = self.signing_input.as_bytes();
        let key = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            provider
                .hs_keys(alg)
                .find(|k| k.verify(message, signature))
                .cloned()
                .ok_or(TokenError::BadSignature)?
        } else if keys.is_empty() {
            return Err(TokenError::NoKeys(provider.name.to_string()));
        } else if let Some(kid) = &self.kid {
            let key = keys
                .by_kid(kid)
                .ok_or_else(|| TokenError::UnknownKid(truncate(kid, ECHO_MAX)))?;
            if key.alg != alg {
                return Err(TokenError::AlgorithmMismatch {
                    kid: kid.clone(),
                    key_alg: format!("{:?}", key.alg),
                    token_alg: self.alg.clone(),
                });
            }
            if !key.verify(message, signature) {
                return Err(TokenError::BadSignature);
            }
            key.clone()
        } else {
            // No kid: only keys pinned to the header's algorithm are tried.
            keys.for_alg(alg)
                .find(|k| k.verify(message, signature))
                .cloned()
                .ok_or(TokenError::BadSignature)?
        };
        let checked = claims::check(&self.claims, provider, now)?;
        Ok(VerifiedToken {
            provider: provider.name.clone(),
            iss: provider.cfg.issuer.clone(),
            sub: checked.sub,
            exp: checked.exp,
            claims: self.claims,
            key,
        })
    }
}

/// Validates a token against the configured providers, refetching the JWKS
/// (rate-limited) once when its `kid` is unknown or no keys are held.
pub async fn validate(token: &str, providers: &Providers, max_len: usize) -> Result<VerifiedToken, TokenError> {
    let jws = Jws::parse(token, max_len)?;
    let iss = jws.iss()?;
    let provider = providers
        .by_issuer(iss)
        .ok_or_else(|| TokenError::UnknownIssuer(truncate(iss, ECHO_MAX)))?
        .clone();
    let keys = provider.keys();
    let missing = keys.is_empty() || jws.kid.as_deref().is_some_and(|k| keys.by_kid(k).is_none());
    let is_hs = jws.alg.starts_with("HS");
    if missing
        && !is_hs
        && jws
            .alg
            .parse::<Algorithm>()
            .is_ok_and(|a| provider.algorithms.contains(&a))
        && provider.refetch_on_demand().await
    {
        return jws.verify(&provider, &provider.keys(), SystemTime::now());
    }
    jws.verify(&provider, &keys, SystemTime::now())
}

/// Most characters of an attacker-chosen value (kid, alg, iss, crit names,
/// member names) quoted in a refusal: the detail goes into the 401 body, the
/// WWW-Authenticate header and the audit line, and a 16 KB token must not
/// turn into 16 KB of log per request.
pub(crate) const ECHO_MAX: usize = 128;

pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
