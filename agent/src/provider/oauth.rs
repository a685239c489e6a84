//! The provider as an OAuth 2.0 authorization server, for outbound
//! (`egress`) tokens: its token endpoint (configured, or from discovery)
//! and one token request there (RFC 6749 §4.4 client credentials, RFC 8693
//! token exchange), with the same HTTP client, CA and scheme rule as its
//! key fetches. What to ask for and caching the answer are `credentials`.

use std::time::Duration;

use super::fetch::FetchError;
use super::{Fetcher, Provider};
use crate::config::ClientAuth;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("provider {0} has no token endpoint (none configured, and discovery named none)")]
    NoTokenEndpoint(String),
    #[error("provider {provider}: {source}")]
    Fetch {
        provider: String,
        #[source]
        source: FetchError,
    },
    #[error("provider {provider} refused the token request: status {status}, {error}{}",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        provider: String,
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("provider {provider}: unusable token response: {why}")]
    BadResponse { provider: String, why: String },
}

/// Client authentication at the token endpoint.
pub struct ClientSecret<'a> {
    pub id: &'a str,
    pub secret: &'a str,
    pub method: ClientAuth,
}

/// An issued access token.
pub struct Issued {
    pub access_token: String,
    /// `expires_in`, when the provider said it.
    pub expires_in: Option<Duration>,
}

/// The largest access token accepted from a provider (it becomes a header).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

impl Provider {
    /// Remembers the token endpoint discovery named, unless one is configured.
    pub(super) fn learn_token_endpoint(&self, found: Option<String>) {
        if self.cfg.token_endpoint.is_none()
            && let Ok(mut t) = self.token_endpoint.lock()
        {
            *t = found;
        }
    }

    /// The token endpoint: configured, known from the last discovery, or
    /// discovered now.
    pub async fn token_endpoint(&self) -> Result<String, GrantError> {
        if let Some(t) = self.token_endpoint.lock().ok().and_then(|t| t.clone()) {
            return Ok(t);
        }
        let Fetcher::Http(f) = &self.fetcher else {
            return Err(GrantError::NoTokenEndpoint(self.cfg.name.clone()));
        };
        let found = f.discover(&self.cfg.issuer).await.map_err(|source| GrantError::Fetch {
            provider: self.cfg.name.clone(),
            source,
        })?;
        self.learn_token_endpoint(found.token_endpoint.clone());
        found
            .token_endpoint
            .ok_or_else(|| GrantError::NoTokenEndpoint(self.cfg.name.clone()))
    }

    /// One token request at the token endpoint with `params` (the grant
    /// type and its parameters), authenticated as `client` when given.
    pub async fn grant(
        &self,
        params: &[(&str, &str)],
        client: Option<&ClientSecret<'_>>,
    ) -> Result<Issued, GrantError> {
        let provider = || self.cfg.name.clone();
        let Fetcher::Http(f) = &self.fetcher else {
            return Err(GrantError::NoTokenEndpoint(provider()));
        };
        let url = self.token_endpoint().await?;
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let basic = match client {
            Some(c) if c.method == ClientAuth::ClientSecretBasic => Some((c.id, c.secret)),
            Some(c) => {
                form.push(("client_id", c.id));
                form.push(("client_secret", c.secret));
                None
            }
            None => None,
        };
        let (status, body) = f
            .post_form(&url, &form, basic)
            .await
            .map_err(|source| GrantError::Fetch {
                provider: provider(),
                source,
            })?;
        let bad = |why: String| GrantError::BadResponse {
            provider: provider(),
            why,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| bad(format!("status {status}, not JSON: {e}")))?;
        if !(200..300).contains(&status) {
            // RFC 6749 §5.2: error, error_description. Never the request's secrets.
            let text = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .map(|s| s.chars().take(200).collect::<String>())
            };
            return Err(GrantError::Refused {
                provider: provider(),
                status,
                error: text("error").unwrap_or_else(|| "(no error code)".into()),
                description: text("error_description"),
            });
        }
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("no access_token".into()))?;
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("access_token is empty, too long or not a header-safe string".into()));
        }
        match v.get("token_type").and_then(|t| t.as_str()) {
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            other => return Err(bad(format!("token_type {other:?}, expected Bearer"))),
        }
        let expires_in = match v.get("expires_in") {
            None => None,
            Some(e) => Some(Duration::from_secs(
                e.as_u64()
                    .ok_or_else(|| bad("expires_in is not a non-negative integer".into()))?,
            )),
        };
        Ok(Issued {
            access_token: token.to_string(),
            expires_in,
        })
    }
}
