//! The `providers` section: who issues the tokens, how their keys are kept
//! fresh, which algorithms and audiences are accepted, and where a request's
//! token is read from.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// Compared byte for byte with the token's `iss` and the discovery document's `issuer`.
    /// Leave it out for `kubernetes_service_accounts`: the API server says it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// The cluster's own service-account tokens: issuer, discovery and JWKS
    /// come from the API server, fetched with the agent's credentials and CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_service_accounts: Option<ServiceAccounts>,
    /// Service-account tokens only: also ask the API server (TokenReview)
    /// that the pod or secret the token is bound to still exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_review: bool,
    /// How long a TokenReview answer is reused for the same token.
    #[serde(
        default = "default_token_review_ttl",
        with = "humantime_serde",
        skip_serializing_if = "is_default_review_ttl"
    )]
    pub token_review_ttl: Duration,
    /// How this provider's claims become a Kubernetes user for
    /// `kubernetes_rbac` rules (as the API server's AuthenticationConfiguration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_mappings: Option<ClaimMappings>,
    /// The token's audience must contain at least one of these (a policy's
    /// own `audiences` replace them for its workloads).
    pub audiences: Vec<String>,
    /// The claims that carry the audience, tried in order; the first one the
    /// token has is the audience (AWS Cognito access tokens carry `client_id`
    /// and no `aud`). A token with none of them is refused.
    #[serde(default = "default_audience_claims")]
    pub audience_claims: Vec<String>,
    /// Skips discovery when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The OAuth 2.0 token endpoint, for `egress` tokens (client
    /// credentials, token exchange); unset: from the discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// PEM bundle trusted for this provider's HTTPS endpoints instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Signature algorithms accepted; a key is also pinned to its own `alg`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Shared secret file for HS256/384/512; HS* tokens are refused without it.
    /// Re-read on every reload (SIGHUP or a change of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs_secret_file: Option<PathBuf>,
    /// Plain http is allowed for loopback issuers only, unless this is set.
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default)]
    pub refresh: RefreshConfig,
    /// Tolerance for `exp`, `nbf` and `iat`.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Accepted values of the token header's `typ` (case-insensitive; an
    /// `application/` prefix is ignored, RFC 8725 §3.11), e.g. `[at+jwt]`
    /// for RFC 9068 access tokens. Unset: `typ` is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<Vec<String>>,
    /// Where the token is read from: one source or a list, tried in order.
    #[serde(default = "default_sources", with = "one_or_many")]
    pub token_from: Vec<TokenSource>,
}

fn default_token_review_ttl() -> Duration {
    Duration::from_secs(30)
}

fn is_default_review_ttl(d: &Duration) -> bool {
    *d == default_token_review_ttl()
}

/// `kubernetes_service_accounts: {}`: the cluster's service-account issuer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccounts {
    /// The issuer to expect; unset, the API server's discovery document says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// Claims → Kubernetes user and groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMappings {
    pub username: ClaimMapping,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<ClaimMapping>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    pub claim: super::ClaimPath,
    /// Put before each value (`oidc:`), so IdP names cannot pass for cluster ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

pub fn default_audience_claims() -> Vec<String> {
    vec!["aud".into()]
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}

fn default_sources() -> Vec<TokenSource> {
    vec![TokenSource::default()]
}

/// A JWS signature algorithm nodeward verifies (RFC 7518 and RFC 8037).
/// `none` is deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 13] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::ES512,
        Self::EdDSA,
        Self::HS256,
        Self::HS384,
        Self::HS512,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::EdDSA => "EdDSA",
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
        }
    }

    /// A shared-secret algorithm: never verified with a key from a JWKS.
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// The exact, case-sensitive name of RFC 7518 (`"rs256"` is not RS256).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|a| a.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown or forbidden algorithm {name:?}; known: {}",
                known.join(", ")
            ))
        })
    }
}

/// The asymmetric algorithms: what a provider accepts unless told otherwise.
pub fn default_algorithms() -> Vec<Algorithm> {
    Algorithm::ALL.into_iter().filter(|a| !a.is_hmac()).collect()
}

/// How the JWKS is kept fresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// Lower bound on the refresh interval, whatever Cache-Control says.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Upper bound on the refresh interval, and the interval when the provider sends no max-age.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Keys older than this (refreshes failing) are dropped: requests fail closed.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// At most one refetch per this interval for a token whose `kid` is unknown.
    #[serde(with = "humantime_serde")]
    pub unknown_kid_cooldown: Duration,
    /// Time limit on each discovery or JWKS fetch.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Size limit on each discovery or JWKS response body.
    pub max_response_bytes: usize,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(3600),
            max_staleness: Duration::from_secs(24 * 3600),
            unknown_kid_cooldown: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 512 * 1024,
        }
    }
}

/// One place a request may carry its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum TokenSource {
    /// A header, with a case-insensitive scheme before the token (empty: the
    /// whole value is the token).
    Header {
        header: String,
        #[serde(default = "default_token_prefix")]
        prefix: String,
    },
    /// A cookie of this name.
    Cookie { cookie: String },
    /// A query parameter of this name. Tokens in URLs end up in logs and
    /// browser histories, so this is never a default; nodeward removes the
    /// parameter before forwarding and never logs the query.
    Query { query: String },
}

impl Default for TokenSource {
    fn default() -> Self {
        Self::Header {
            header: "authorization".into(),
            prefix: default_token_prefix(),
        }
    }
}

fn default_token_prefix() -> String {
    "Bearer".into()
}

/// `token_from: {header: ...}` or `token_from: [{header: ...}, {cookie: ...}]`.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::TokenSource;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(TokenSource),
        Many(Vec<TokenSource>),
    }

    pub fn serialize<S: Serializer>(v: &[TokenSource], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenSource>, D::Error> {
        match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a token source ({header: NAME, prefix: SCHEME}, {cookie: NAME} or {query: NAME}) or a list of them",
            )
        })? {
            OneOrMany::One(s) => Ok(vec![s]),
            OneOrMany::Many(v) => Ok(v),
        }
    }
}
