//! Bearer token validation (RFC 7519 + RFC 8725): compact-JWS parsing, key
//! choice pinned by the key (never by the header alone), signature and claim
//! checks. A successful check yields a [`VerifiedToken`] that the token cache
//! shares with every later request carrying the same token.

mod claims;
mod jose;
mod source;
#[cfg(test)]
mod tests;

pub use claims::NumericDate;
pub use source::{Found, Malformed, Source, Sources};

use jose::Text;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::config::Algorithm;
use crate::provider::{Key, KeySet, Provider, Providers};
use crate::reason::Reason;

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
    #[error("token type (typ) {0} is not accepted")]
    TypeNotAllowed(String),
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
    #[error("issuer {issuer:?} is not an authorization server of resource {resource:?}")]
    NotAuthorizationServer { issuer: String, resource: String },
}

impl TokenError {
    pub fn reason(&self) -> Reason {
        match self {
            Self::TooLarge { .. } => Reason::TokenTooLarge,
            Self::Malformed(_) | Self::BadHeader(_) | Self::BadClaims(_) => Reason::MalformedToken,
            Self::Encrypted => Reason::UnsupportedToken,
            Self::AlgorithmNotAllowed(_) => Reason::AlgorithmNotAllowed,
            Self::UnknownCrit(_) => Reason::UnknownCrit,
            Self::TypeNotAllowed(_) => Reason::TokenTypeNotAllowed,
            Self::UnknownIssuer(_) => Reason::UnknownIssuer,
            Self::NoKeys(_) => Reason::NoKeys,
            Self::UnknownKid(_) => Reason::UnknownKid,
            Self::AlgorithmMismatch { .. } => Reason::AlgorithmMismatch,
            Self::BadSignature => Reason::BadSignature,
            Self::Expired(_) => Reason::TokenExpired,
            Self::NotYetValid(_) => Reason::TokenNotYetValid,
            Self::IssuedInFuture(_) => Reason::TokenIssuedInFuture,
            Self::WrongAudience { .. } => Reason::WrongAudience,
            Self::NotAuthorizationServer { .. } => Reason::UnknownIssuer,
        }
    }
}

/// A token whose signature and registered claims were checked. Its
/// audience is checked per request ([`VerifiedToken::check_audience`]): a
/// workload's policy may accept other audiences than the provider's.
#[derive(Debug)]
pub struct VerifiedToken {
    /// The provider that verified it: a cache hit counts only while this is
    /// still the provider for the issuer and still holds [`Self::key`].
    pub provider: Arc<Provider>,
    /// The provider's issuer (shared, not copied per token).
    pub iss: Arc<String>,
    pub sub: Option<String>,
    /// Expiry, whole seconds since the epoch (rounded down).
    pub exp: u64,
    /// The audience, from the provider's first `audience_claims` claim present.
    pub audiences: Vec<String>,
    pub claims: Map<String, Value>,
    /// The key that verified it.
    pub key: Arc<Key>,
    /// `sub` and `iss` as forwarded header values, made on the first
    /// forward and shared by every request that presents this token
    /// (`proxy::headers::identity`).
    pub header_values: OnceLock<IdentityValues>,
}

/// The identity header values of a [`VerifiedToken`] that depend only on
/// the token, not on the policy.
#[derive(Debug)]
pub struct IdentityValues {
    /// `sub` as a plain header value, or why it cannot be one.
    pub sub: Option<Result<http::HeaderValue, &'static str>>,
    /// The issuer (a URL; `None` only if it is not a valid header value).
    pub iss: Option<http::HeaderValue>,
}

impl VerifiedToken {
    pub fn email(&self) -> Option<&str> {
        self.claims.get("email").and_then(Value::as_str)
    }

    /// The OAuth client the token was issued to: `azp` (OpenID Connect),
    /// else `client_id` (RFC 9068 §2.2, RFC 8693 §4.3).
    pub fn client_id(&self) -> Option<&str> {
        ["azp", "client_id"]
            .iter()
            .find_map(|c| self.claims.get(*c).and_then(Value::as_str))
    }

    /// The delegation chain of an RFC 8693 `act` claim: the current actor's
    /// `sub` first, then each prior actor's (the nested `act`s, RFC 8693
    /// §4.1), joined by `>` (`agent-b>agent-a`).
    pub fn act_chain(&self) -> Option<String> {
        claims::act_chain(&self.claims)
    }

    /// The name of the provider that verified it.
    pub fn provider_name(&self) -> &Arc<str> {
        &self.provider.name
    }

    /// `Ok` when the audience holds one of `expected` (exactly).
    pub fn check_audience(&self, expected: &[String]) -> Result<(), TokenError> {
        if self.audiences.iter().any(|a| expected.contains(a)) {
            return Ok(());
        }
        let found = if self.audiences.is_empty() {
            "(none)".to_string()
        } else {
            claims::short(&serde_json::to_string(&self.audiences).unwrap_or_default())
        };
        Err(TokenError::WrongAudience {
            found,
            expected: format!("{expected:?}"),
        })
    }
}

/// A compact JWS split and decoded, not yet verified.
pub struct Jws<'t> {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: &'t str,
}

/// Decoded headers up to this size stay on the stack (real ones are ~100 bytes).
const HEADER_STACK: usize = 384;
/// Decoded signatures up to this size stay on the stack (RSA-4096: 512 bytes).
const SIGNATURE_STACK: usize = 512;

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
        // A header is small: decoded on the stack, read without a map.
        let mut buf = [0u8; HEADER_STACK];
        let header = jose::b64_in(h, &mut buf).ok_or(TokenError::Malformed("header is not canonical base64url"))?;
        let header = jose::header(&header).map_err(TokenError::BadHeader)?;
        let alg = match header.alg {
            Text::Str(a) => a,
            Text::NotStr => return Err(TokenError::BadHeader("alg is not a string".into())),
            Text::Absent => return Err(TokenError::BadHeader("no alg".into())),
        };
        if header.enc {
            return Err(TokenError::Encrypted);
        }
        let kid = match header.kid {
            Text::Absent => None,
            Text::Str(k) => Some(k),
            Text::NotStr => return Err(TokenError::BadHeader("kid is not a string".into())),
        };
        let typ = match header.typ {
            Text::Absent => None,
            Text::Str(t) => Some(t),
            Text::NotStr => return Err(TokenError::BadHeader("typ is not a string".into())),
        };
        if let Some(crit) = &header.crit {
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
            typ,
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
    pub fn verify(self, provider: &Arc<Provider>, keys: &KeySet, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        let alg = Algorithm::parse(&self.alg)
            .filter(|a| provider.cfg.algorithms.contains(a))
            .ok_or_else(|| TokenError::AlgorithmNotAllowed(truncate(&self.alg, ECHO_MAX)))?;
        if let Some(allowed) = &provider.cfg.typ
            && !self.typ.as_deref().is_some_and(|t| type_matches(t, allowed))
        {
            let shown = self
                .typ
                .as_deref()
                .map_or("(none)".to_string(), |t| format!("{:?}", truncate(t, ECHO_MAX)));
            return Err(TokenError::TypeNotAllowed(shown));
        }
        let mut buf = [0u8; SIGNATURE_STACK];
        let signature = jose::b64_in(self.signature, &mut buf)
            .ok_or(TokenError::Malformed("signature is not canonical base64url"))?;
        let signature = &*signature;
        let message = self.signing_input.as_bytes();
        let key = if alg.is_hmac() {
            provider
                .hs_keys()
                .iter()
                .filter(|k| k.alg == alg)
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
                    key_alg: key.alg.to_string(),
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
            provider: provider.clone(),
            iss: provider.issuer(),
            sub: checked.sub,
            exp: checked.exp,
            audiences: checked.audiences,
            claims: self.claims,
            key,
            header_values: OnceLock::new(),
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
    let refetchable = Algorithm::parse(&jws.alg).is_some_and(|a| !a.is_hmac() && provider.cfg.algorithms.contains(&a));
    if missing && refetchable && provider.refetch_on_demand().await {
        return jws.verify(&provider, &provider.keys(), SystemTime::now());
    }
    jws.verify(&provider, &keys, SystemTime::now())
}

/// RFC 8725 §3.11 / RFC 9068 §2.1: `at+jwt` and `application/at+jwt` are one type.
fn type_matches(typ: &str, allowed: &[String]) -> bool {
    let strip = |t: &str| {
        let t = t.trim();
        t.get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .map_or(t, |_| &t[12..])
            .to_ascii_lowercase()
    };
    let typ = strip(typ);
    allowed.iter().any(|a| strip(a) == typ)
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
