//! Where outbound tokens come from, one fetch each:
//!
//! - `service_account`: a TokenRequest for the calling pod's service
//!   account (`POST …/serviceaccounts/NAME/token`), bound to the pod, so the
//!   token dies with it and names it (`kubernetes.io.pod`);
//! - `client_credentials`: RFC 6749 §4.4 at the provider's token endpoint;
//! - `exchange`: RFC 8693 at the provider's token endpoint, the pod's
//!   service-account token as `subject_token`, the agent's own token (a
//!   file) as `actor_token`.
//!
//! Secrets are read from their files at each fetch (fetches are rare), so a
//! rotated secret is used from the next token on. No secret or token is ever
//! put into an error.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use super::{Subject, Want};
use crate::config::{ClientCredentials, EgressToken, TokenExchange};
use crate::provider::Provider;
use crate::provider::oauth::{ClientSecret, GrantError};

/// A token whose lifetime nobody said (no `expires_in`, not a JWT) is
/// kept this long.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no Kubernetes API client: service-account tokens need `kubernetes`")]
    NoKubernetes,
    #[error("workload {0} has no service account to request a token for")]
    NoServiceAccount(String),
    #[error("TokenRequest for {namespace}/{service_account}: {source}")]
    TokenRequest {
        namespace: String,
        service_account: String,
        #[source]
        source: kube::Error,
    },
    #[error("TokenRequest for {0}: the API server answered no token")]
    EmptyTokenRequest(String),
    #[error("provider {0} is not configured")]
    NoProvider(String),
    #[error("cannot read {what} {path}: {source}")]
    Secret {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the token is not a valid header value")]
    NotAHeader,
    #[error("the token expires before it could be used ({0:?} left)")]
    ExpiresTooSoon(Duration),
}

impl FetchError {
    /// The `result` label of `nodeward_egress_token_fetches_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoKubernetes | Self::NoServiceAccount(_) | Self::NoProvider(_) | Self::Secret { .. } => "config",
            Self::TokenRequest { .. } | Self::EmptyTokenRequest(_) => "kubernetes",
            Self::Grant(GrantError::Refused { .. }) => "refused",
            Self::Grant(_) | Self::NotAHeader | Self::ExpiresTooSoon(_) => "provider",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// Obtains the token `want` describes and how long it lives.
pub(super) async fn obtain(
    kube: Option<&kube::Client>,
    want: &Want,
    provider: Option<&Provider>,
) -> Result<(String, Duration), FetchError> {
    let provider_for = |name: &str| provider.ok_or_else(|| FetchError::NoProvider(name.to_string()));
    let (token, stated) = match &want.token {
        EgressToken::ServiceAccount(sa) => {
            let (token, expires) = token_request(kube, &want.subject, &sa.audience, sa.expiration).await?;
            (token, Some(until(expires)))
        }
        EgressToken::ClientCredentials(cc) => client_credentials(provider_for(&cc.provider)?, cc).await?,
        EgressToken::Exchange(ex) => exchange(kube, provider_for(&ex.provider)?, &want.subject, ex).await?,
    };
    let lifetime = stated.or_else(|| jwt_lifetime(&token)).unwrap_or(UNSTATED_LIFETIME);
    // Not worth keeping (and maybe expired by the time it arrives).
    if lifetime < Duration::from_secs(2) {
        return Err(FetchError::ExpiresTooSoon(lifetime));
    }
    Ok((token, lifetime))
}

/// A TokenRequest for the subject's service account with `audience`, bound
/// to its pod when it is one. Answers the token and when it expires.
async fn token_request(
    kube: Option<&kube::Client>,
    subject: &Subject,
    audience: &str,
    expiration: Duration,
) -> Result<(String, SystemTime), FetchError> {
    let client = kube.ok_or(FetchError::NoKubernetes)?;
    let sa = subject
        .service_account
        .as_deref()
        .ok_or_else(|| FetchError::NoServiceAccount(subject.workload.to_string()))?;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &subject.namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: i64::try_from(expiration.as_secs()).ok(),
            bound_object_ref: subject.pod.as_ref().map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.to_string()),
                uid: Some(uid.to_string()),
            }),
        },
        ..TokenRequest::default()
    };
    let answered = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .map_err(|source| FetchError::TokenRequest {
            namespace: subject.namespace.to_string(),
            service_account: sa.to_string(),
            source,
        })?;
    let status = answered
        .status
        .filter(|s| !s.token.is_empty())
        .ok_or_else(|| FetchError::EmptyTokenRequest(format!("{}/{sa}", subject.namespace)))?;
    let expires = u64::try_from(status.expiration_timestamp.0.as_second())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH);
    Ok((status.token, expires))
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

fn read_secret(what: &'static str, path: &Path) -> Result<String, FetchError> {
    let raw = std::fs::read_to_string(path).map_err(|source| FetchError::Secret {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(raw.trim().to_string())
}

/// The optional parameters every grant may carry.
fn extras<'a>(
    out: &mut Vec<(&'a str, &'a str)>,
    scope: &'a Option<String>,
    audience: &'a Option<String>,
    resource: &'a Option<String>,
) {
    for (name, value) in [("scope", scope), ("audience", audience), ("resource", resource)] {
        if let Some(v) = value {
            out.push((name, v));
        }
    }
}

async fn client_credentials(
    provider: &Provider,
    cc: &ClientCredentials,
) -> Result<(String, Option<Duration>), FetchError> {
    let secret = read_secret("client secret", &cc.client_secret_file)?;
    let mut params = vec![("grant_type", "client_credentials")];
    extras(&mut params, &cc.scope, &cc.audience, &cc.resource);
    let client = ClientSecret {
        id: &cc.client_id,
        secret: &secret,
        method: cc.auth_method,
    };
    let issued = provider.grant(&params, Some(&client)).await?;
    Ok((issued.access_token, issued.expires_in))
}

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn exchange(
    kube: Option<&kube::Client>,
    provider: &Provider,
    subject: &Subject,
    ex: &TokenExchange,
) -> Result<(String, Option<Duration>), FetchError> {
    // A short-lived subject token: it only has to reach the provider.
    let (subject_token, _) = token_request(kube, subject, &ex.subject_audience, Duration::from_secs(600)).await?;
    let actor = ex
        .actor_token_file
        .as_deref()
        .map(|p| read_secret("actor token", p))
        .transpose()?;
    let secret = ex
        .client_secret_file
        .as_deref()
        .map(|p| read_secret("client secret", p))
        .transpose()?;
    let mut params = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject_token.as_str()),
        ("subject_token_type", JWT_TYPE),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
    ];
    if let Some(actor) = &actor {
        params.push(("actor_token", actor));
        params.push(("actor_token_type", JWT_TYPE));
    }
    extras(&mut params, &ex.scope, &ex.audience, &ex.resource);
    let client = match (&ex.client_id, &secret) {
        (Some(id), Some(secret)) => Some(ClientSecret {
            id,
            secret,
            method: ex.auth_method,
        }),
        (Some(id), None) => {
            // A public client names itself in the form.
            params.push(("client_id", id));
            None
        }
        _ => None,
    };
    let issued = provider.grant(&params, client.as_ref()).await?;
    Ok((issued.access_token, issued.expires_in))
}

/// The lifetime a JWT's `exp` claim states (unverified: it only decides how
/// long the agent keeps a token the provider just gave it).
pub(super) fn jwt_lifetime(token: &str) -> Option<Duration> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&claims)
        .ok()?
        .get("exp")?
        .as_u64()?;
    Some(until(UNIX_EPOCH + Duration::from_secs(exp)))
}
