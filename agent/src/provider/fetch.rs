//! Fetching a provider's discovery document and JWKS: one HTTP client per
//! provider (its own CA bundle), a time limit and a size limit on every fetch,
//! and the Cache-Control max-age that steers the next refresh.

use std::time::Duration;

use crate::config::{ProviderConfig, url_allowed};

/// Most redirects followed per fetch.
const MAX_REDIRECTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate: {why}")]
    CaParse { path: std::path::PathBuf, why: String },
    #[error("cannot build HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: body larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("GET {url}: timed out after {0:?}", timeout)]
    Timeout { url: String, timeout: Duration },
    #[error("discovery document at {url}: {why}")]
    Discovery { url: String, why: String },
    #[error("GET {url}: {why}")]
    Kube { url: String, why: String },
}

impl FetchError {
    /// A short label for the `result` metric dimension.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CaFile { .. } | Self::CaParse { .. } | Self::Client(_) => "config",
            Self::Http { .. } | Self::Kube { .. } => "network",
            Self::Status { .. } => "status",
            Self::TooLarge { .. } => "too_large",
            Self::Timeout { .. } => "timeout",
            Self::Discovery { .. } => "bad_discovery",
        }
    }
}

/// What discovery found.
pub struct Discovered {
    pub jwks_uri: String,
    pub token_endpoint: Option<String>,
    pub max_age: Option<Duration>,
}

/// A fetched document and how long the provider says it stays fresh.
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

pub struct Fetcher {
    client: reqwest::Client,
    timeout: Duration,
    max_bytes: usize,
    allow_insecure_http: bool,
}

impl Fetcher {
    pub fn new(cfg: &ProviderConfig) -> Result<Self, FetchError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(cfg.refresh.fetch_timeout)
            .timeout(cfg.refresh.fetch_timeout)
            .redirect(redirect_policy(cfg.allow_insecure_http))
            .user_agent(concat!("nodeward/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|source| FetchError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| FetchError::CaParse {
                path: path.clone(),
                why: e.to_string(),
            })?;
            if certs.is_empty() {
                return Err(FetchError::CaParse {
                    path: path.clone(),
                    why: "no certificates".into(),
                });
            }
            // Only the configured CA: a private issuer must not also be
            // impersonable by any public CA.
            b = b.tls_certs_only(certs);
        }
        Ok(Self {
            client: b.build().map_err(FetchError::Client)?,
            timeout: cfg.refresh.fetch_timeout,
            max_bytes: cfg.refresh.max_response_bytes,
            allow_insecure_http: cfg.allow_insecure_http,
        })
    }

    /// GETs `url`, refusing non-2xx answers and bodies past the size limit.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        let fetch = async {
            let mut resp = self
                .client
                .get(url)
                .header("accept", "application/json")
                .send()
                .await
                .map_err(|source| self.http_error(url, source))?;
            if !resp.status().is_success() {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status: resp.status().as_u16(),
                });
            }
            let max_age = resp
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            if resp.content_length().is_some_and(|n| n > self.max_bytes as u64) {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    limit: self.max_bytes,
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|source| self.http_error(url, source))? {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(FetchError::TooLarge {
                        url: url.to_string(),
                        limit: self.max_bytes,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Fetched { body, max_age })
        };
        // reqwest's own timeout covers the whole exchange too; this one also
        // bounds a body that trickles in.
        tokio::time::timeout(self.timeout, fetch).await.unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
            })
        })
    }

    /// reqwest's own time limit (the same `fetch_timeout`) usually fires
    /// before ours: a provider that is slow is a timeout, not a network error.
    fn http_error(&self, url: &str, source: reqwest::Error) -> FetchError {
        if source.is_timeout() {
            FetchError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
            }
        } else {
            FetchError::Http {
                url: url.to_string(),
                source,
            }
        }
    }

    /// POSTs a form (an OAuth 2.0 token request) to `url`, with HTTP Basic
    /// client authentication when given; answers the status and the body
    /// (bounded) whatever the status: a refusal's JSON says why. `url` is
    /// held to the scheme rule: client secrets never go over plain http to
    /// a host that is not loopback (unless `allow_insecure_http`).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<(u16, Vec<u8>), FetchError> {
        let parsed = url::Url::parse(url).map_err(|e| FetchError::Discovery {
            url: url.to_string(),
            why: format!("token endpoint is not a URL: {e}"),
        })?;
        url_allowed(&parsed, self.allow_insecure_http).map_err(|why| FetchError::Discovery {
            url: url.to_string(),
            why: format!("token endpoint: {why}"),
        })?;
        let post = async {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            let mut req = self
                .client
                .post(url)
                .header("accept", "application/json")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
            if let Some((user, password)) = basic {
                // RFC 6749 §2.3.1: both parts form-urlencoded before Basic.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                req = req.basic_auth(enc(user), Some(enc(password)));
            }
            let mut resp = req.send().await.map_err(|source| self.http_error(url, source))?;
            let status = resp.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|source| self.http_error(url, source))? {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(FetchError::TooLarge {
                        url: url.to_string(),
                        limit: self.max_bytes,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, post).await.unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                url: url.to_string(),
                timeout: self.timeout,
            })
        })
    }

    /// Discovers the JWKS URI (and the token endpoint, when the document
    /// has an acceptable one) from `issuer`, insisting the document names
    /// the same issuer byte for byte (OpenID Connect Discovery §4.3).
    pub async fn discover(&self, issuer: &str) -> Result<Discovered, FetchError> {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let doc = self.get(&url).await?;
        let bad = |why: String| FetchError::Discovery { url: url.clone(), why };
        let v: serde_json::Value = serde_json::from_slice(&doc.body).map_err(|e| bad(format!("not JSON: {e}")))?;
        let found = v
            .get("issuer")
            .and_then(|i| i.as_str())
            .ok_or_else(|| bad("no issuer".into()))?;
        if found != issuer {
            return Err(bad(format!("issuer {found:?} differs from the configured {issuer:?}")));
        }
        let jwks_uri = v
            .get("jwks_uri")
            .and_then(|i| i.as_str())
            .ok_or_else(|| bad("no jwks_uri".into()))?;
        // A discovered URI is held to the rule a configured one is: a
        // document served over https must not send the keys over plain http.
        let parsed = url::Url::parse(jwks_uri).map_err(|e| bad(format!("jwks_uri {jwks_uri:?}: {e}")))?;
        url_allowed(&parsed, self.allow_insecure_http).map_err(|why| bad(format!("jwks_uri {jwks_uri:?}: {why}")))?;
        let token_endpoint = v
            .get("token_endpoint")
            .and_then(|t| t.as_str())
            .filter(|t| url::Url::parse(t).is_ok_and(|u| url_allowed(&u, self.allow_insecure_http).is_ok()))
            .map(str::to_string);
        Ok(Discovered {
            jwks_uri: jwks_uri.to_string(),
            token_endpoint,
            max_age: doc.max_age,
        })
    }
}

/// Redirects are followed (a few) only to URLs the scheme rule admits, so a
/// provider redirected to plain http is a failed fetch, not an unprotected one.
fn redirect_policy(allow_insecure_http: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        match url_allowed(attempt.url(), allow_insecure_http) {
            Ok(()) => attempt.follow(),
            Err(why) => {
                let to = attempt.url().to_string();
                attempt.error(format!("redirect to {to} refused: {why}"))
            }
        }
    })
}

/// `max-age` from a Cache-Control value; `no-cache`/`no-store` mean zero (the
/// refresh loop then applies its lower bound).
pub fn parse_max_age(v: &str) -> Option<Duration> {
    let mut age = None;
    for part in v.split(',') {
        let part = part.trim();
        if part.eq_ignore_ascii_case("no-cache") || part.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if let Some((k, val)) = part.split_once('=')
            && k.trim().eq_ignore_ascii_case("max-age")
        {
            age = val
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read() {
        assert_eq!(parse_max_age("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_max_age("max-age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("private"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
