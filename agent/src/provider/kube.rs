//! Fetching the cluster's service-account issuer from the API server: the
//! discovery document at `/.well-known/openid-configuration` and the keys at
//! `/openid/v1/jwks`, through the agent's own kube client (its credentials
//! and CA: service-account-issuer discovery is not anonymous everywhere).
//! Same size and time limits as any provider fetch.

use std::time::Duration;

use http_body_util::{BodyExt as _, Limited};

use super::fetch::{FetchError, Fetched, parse_max_age};

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/openid/v1/jwks";

pub struct KubeFetcher {
    client: kube::Client,
    timeout: Duration,
    max_bytes: usize,
}

impl KubeFetcher {
    pub fn new(client: kube::Client, timeout: Duration, max_bytes: usize) -> Self {
        Self {
            client,
            timeout,
            max_bytes,
        }
    }

    /// GETs `path` from the API server, refusing non-2xx answers and bodies past the size limit.
    pub async fn get(&self, path: &str) -> Result<Fetched, FetchError> {
        let url = format!("(kubernetes API){path}");
        let fetch = async {
            let req = http::Request::get(path)
                .header(http::header::ACCEPT, "application/json")
                .body(Vec::new())
                .map_err(|e| FetchError::Discovery {
                    url: url.clone(),
                    why: e.to_string(),
                })?;
            let resp = self
                .client
                .send(req.map(kube::client::Body::from))
                .await
                .map_err(|e| FetchError::Kube {
                    url: url.clone(),
                    why: e.to_string(),
                })?;
            if !resp.status().is_success() {
                return Err(FetchError::Status {
                    url: url.clone(),
                    status: resp.status().as_u16(),
                });
            }
            let max_age = resp
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let body = Limited::new(resp.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge {
                            url: url.clone(),
                            limit: self.max_bytes,
                        }
                    } else {
                        FetchError::Kube {
                            url: url.clone(),
                            why: e.to_string(),
                        }
                    }
                })?
                .to_bytes()
                .to_vec();
            Ok(Fetched { body, max_age })
        };
        tokio::time::timeout(self.timeout, fetch).await.unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })
        })
    }

    /// The issuer the API server announces (OpenID Connect Discovery), and its freshness.
    pub async fn discover(&self) -> Result<(String, Option<Duration>), FetchError> {
        let doc = self.get(DISCOVERY_PATH).await?;
        let bad = |why: String| FetchError::Discovery {
            url: DISCOVERY_PATH.into(),
            why,
        };
        let v: serde_json::Value = serde_json::from_slice(&doc.body).map_err(|e| bad(format!("not JSON: {e}")))?;
        let issuer = v
            .get("issuer")
            .and_then(|i| i.as_str())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| bad("no issuer".into()))?;
        Ok((issuer.to_string(), doc.max_age))
    }
}
