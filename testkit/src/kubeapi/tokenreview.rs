//! TokenReview (`pkg/registry/authentication/tokenreview/storage.go`) and
//! the token authentication behind it and behind the fake's own API:
//!
//! - Service-account tokens, as `pkg/serviceaccount/jwt.go` and
//!   `claims.go` check them: the issuer picks the authenticator (another
//!   `iss` gets no opinion), the `kid` the keys, then the RS256 signature;
//!   the token's audiences must meet the requested ones (the API audiences
//!   when the review names none) and `status.audiences` is what they share;
//!   `nbf`, `exp`, `iat` with go-jose's 60 s leeway; the service account,
//!   and the bound secret, pod or node must still exist with the uid the
//!   token names. The user is `system:serviceaccount:NS:NAME` with groups
//!   `system:serviceaccounts`, `system:serviceaccounts:NS`,
//!   `system:authenticated` and `extra` pod-name, pod-uid, node-name,
//!   node-uid and credential-id (`JTI=…`) as the apiserver sets them.
//! - The fake's kubeconfig token, as a static, audience-agnostic token of
//!   user `fake-kube-admin` in `system:masters`.
//!
//! A failure reads as the apiserver's authenticator chain words it:
//! `[invalid bearer token, <why>]`, or `invalid bearer token` for a token
//! no authenticator recognises.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::api::authentication::v1::TokenReview;
use serde_json::{Value, json};

use super::FakeKubeApi;
use super::signing::parse_jwt;
use super::status::ApiError;
use super::store::{Store, now_seconds};

/// go-jose's `DefaultLeeway`.
const LEEWAY: i64 = 60;
/// Reviews kept for `token_reviews()`.
const REVIEWS: usize = 4096;
/// The user the fake's own API token authenticates as.
pub(super) const ADMIN: &str = "fake-kube-admin";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    /// The audiences the token was accepted for.
    pub audiences: Vec<String>,
}

/// What the token authenticators concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// No authenticator recognised the token.
    Unknown,
    /// One recognised it and refused it, for this reason.
    Refused(String),
    Authenticated(User),
}

impl Verdict {
    /// `status.error` as the apiserver reports it.
    pub fn error(&self) -> Option<String> {
        match self {
            Verdict::Unknown => Some("invalid bearer token".to_string()),
            Verdict::Refused(why) => Some(format!("[invalid bearer token, {why}]")),
            Verdict::Authenticated(_) => None,
        }
    }
}

#[derive(Default)]
pub(super) struct ReviewLog(VecDeque<Value>);

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted(list: &[String]) -> String {
    format!(
        "[{}]",
        list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ")
    )
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

impl Store {
    /// Authenticates `token` for `requested` audiences (None: the API
    /// audiences), as the apiserver's bearer-token chain would.
    pub fn authenticate(&mut self, token: &str, requested: Option<&[String]>, admin_token: &str) -> Verdict {
        let api_audiences = self.identity.api_audiences();
        let requested: Vec<String> = requested.map_or_else(|| api_audiences.clone(), <[String]>::to_vec);
        if token == admin_token {
            // Audience-agnostic authenticators are wrapped to accept only
            // the API audiences (authenticator.WrapAudienceAgnosticToken).
            let audiences: Vec<String> = api_audiences
                .iter()
                .filter(|a| requested.contains(a))
                .cloned()
                .collect();
            if audiences.is_empty() {
                return Verdict::Unknown;
            }
            return Verdict::Authenticated(User {
                username: ADMIN.into(),
                uid: String::new(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                extra: BTreeMap::new(),
                audiences,
            });
        }
        match self.service_account_user(token, &requested, &api_audiences) {
            Ok(Some(user)) => Verdict::Authenticated(user),
            Ok(None) => Verdict::Unknown,
            Err(why) => Verdict::Refused(why),
        }
    }

    /// Ok(None): not a token of this issuer.
    fn service_account_user(
        &mut self,
        token: &str,
        requested: &[String],
        implicit: &[String],
    ) -> Result<Option<User>, String> {
        let Some(jwt) = parse_jwt(token) else { return Ok(None) };
        if jwt.claims["iss"].as_str() != Some(self.identity.issuer.as_str()) {
            return Ok(None);
        }
        let kid = jwt.header["kid"].as_str().unwrap_or("");
        let keys: Vec<_> = self
            .identity
            .keys()
            .iter()
            .filter(|k| kid.is_empty() || k.kid() == kid)
            .collect();
        if keys.is_empty() {
            return Err("invalid signature, no keys found".into());
        }
        // go-jose verifies with the key's type: other RSA algorithms fail
        // the signature check, anything else is not an RSA algorithm.
        match jwt.header["alg"].as_str() {
            Some("RS256") => {}
            Some("RS384" | "RS512" | "PS256" | "PS384" | "PS512") => {
                return Err("go-jose/go-jose: error in cryptographic primitive".into());
            }
            _ => return Err("go-jose/go-jose: unknown/unsupported algorithm".into()),
        }
        if !keys
            .iter()
            .any(|k| k.verifies(jwt.signing_input.as_bytes(), &jwt.signature))
        {
            return Err("go-jose/go-jose: error in cryptographic primitive".into());
        }
        let claims = jwt.claims;
        let mut token_audiences = strings(&claims["aud"]);
        if token_audiences.is_empty() {
            token_audiences = implicit.to_vec();
        }
        let audiences: Vec<String> = token_audiences
            .iter()
            .filter(|a| requested.contains(a))
            .cloned()
            .collect();
        if audiences.is_empty() {
            return Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quoted(&token_audiences),
                go_quoted(requested)
            ));
        }
        let now = now_seconds().as_second();
        let time = |k: &str| claims[k].as_i64();
        if time("nbf").is_some_and(|nbf| now + LEEWAY < nbf) {
            return Err("service account token is not valid yet".into());
        }
        if time("exp").is_some_and(|exp| now - LEEWAY > exp) {
            return Err("service account token has expired".into());
        }
        if time("iat").is_some_and(|iat| now + LEEWAY < iat) {
            return Err("service account token is issued in the future".into());
        }
        let k = &claims["kubernetes.io"];
        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
        let namespace = text(&k["namespace"]);
        let (sa_name, sa_uid) = (text(&k["serviceaccount"]["name"]), text(&k["serviceaccount"]["uid"]));
        let stored_uid = |store: &Store, plural: &str, ns: Option<&str>, name: &str| {
            store.get_object("", plural, ns, name).map(|o| {
                (
                    text(&o["metadata"]["uid"]),
                    o["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null()),
                )
            })
        };
        let invalidated = || "service account token has been invalidated".to_string();
        let (uid, deleting) = stored_uid(self, "serviceaccounts", Some(&namespace), &sa_name)
            .ok_or_else(|| format!("serviceaccounts \"{sa_name}\" not found"))?;
        if uid != sa_uid {
            return Err(format!("service account UID ({uid}) does not match claim ({sa_uid})"));
        }
        if deleting {
            return Err(format!("service account {namespace}/{sa_name} has been deleted"));
        }
        if k["secret"].is_object() {
            let (name, want) = (text(&k["secret"]["name"]), text(&k["secret"]["uid"]));
            let (uid, deleting) = stored_uid(self, "secrets", Some(&namespace), &name).ok_or_else(invalidated)?;
            if uid != want {
                return Err(format!(
                    "secret UID ({uid}) does not match service account secret ref claim ({want})"
                ));
            }
            if deleting {
                return Err(invalidated());
            }
        }
        let mut extra = BTreeMap::new();
        let pod_bound = k["pod"].is_object();
        if pod_bound {
            let (name, want) = (text(&k["pod"]["name"]), text(&k["pod"]["uid"]));
            let (uid, deleting) = stored_uid(self, "pods", Some(&namespace), &name).ok_or_else(invalidated)?;
            if uid != want {
                return Err(format!(
                    "pod UID ({uid}) does not match service account pod ref claim ({want})"
                ));
            }
            if deleting {
                return Err(invalidated());
            }
            if !name.is_empty() && !want.is_empty() {
                extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![name]);
                extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![want]);
            }
        }
        if k["node"].is_object() {
            let (name, want) = (text(&k["node"]["name"]), text(&k["node"]["uid"]));
            if !pod_bound {
                // A node-bound token: the node must still be there.
                let (uid, deleting) = stored_uid(self, "nodes", None, &name).ok_or_else(invalidated)?;
                if uid != want {
                    return Err(format!(
                        "node UID ({uid}) does not match service account node ref claim ({want})"
                    ));
                }
                if deleting {
                    return Err(invalidated());
                }
            }
            if !name.is_empty() {
                extra.insert("authentication.kubernetes.io/node-name".to_string(), vec![name]);
                if !want.is_empty() {
                    extra.insert("authentication.kubernetes.io/node-uid".to_string(), vec![want]);
                }
            }
        }
        if let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) {
            extra.insert(
                "authentication.kubernetes.io/credential-id".to_string(),
                vec![format!("JTI={jti}")],
            );
        }
        Ok(Some(User {
            username: format!("system:serviceaccount:{namespace}:{sa_name}"),
            uid: sa_uid,
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra,
            audiences,
        }))
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn token_review(&mut self, body: &[u8], admin_token: &str) -> Result<Value, ApiError> {
        let mut review = super::rest::parse_object(body)?;
        if review["apiVersion"]
            .as_str()
            .is_some_and(|v| v != "authentication.k8s.io/v1")
            || review["kind"].as_str().is_some_and(|k| k != "TokenReview")
        {
            return Err(ApiError::bad_request(
                "the object provided is not an authentication.k8s.io/v1 TokenReview",
            ));
        }
        let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            return Err(ApiError::bad_request(
                "token is required for TokenReview in authentication",
            ));
        }
        let requested = strings(&review["spec"]["audiences"]);
        let verdict = self.authenticate(
            &token,
            (!requested.is_empty()).then_some(requested.as_slice()),
            admin_token,
        );
        let mut status = json!({ "user": {} });
        if let Some(error) = verdict.error() {
            status["error"] = Value::String(error);
        }
        if let Verdict::Authenticated(user) = &verdict {
            status["authenticated"] = Value::Bool(true);
            status["user"] = json!({ "username": user.username, "groups": user.groups, "extra": user.extra });
            if !user.uid.is_empty() {
                status["user"]["uid"] = Value::String(user.uid.clone());
            }
            status["audiences"] = json!(user.audiences);
        }
        review["apiVersion"] = Value::String("authentication.k8s.io/v1".into());
        review["kind"] = Value::String("TokenReview".into());
        review["metadata"] = json!({ "creationTimestamp": null });
        review["status"] = status;
        let log = &mut self.authorization.token_reviews.0;
        if log.len() == REVIEWS {
            log.pop_front();
        }
        log.push_back(review.clone());
        Ok(review)
    }
}

impl FakeKubeApi {
    /// Every TokenReview answered, oldest first (the last 4096), with the
    /// status the fake gave.
    pub fn token_reviews(&self) -> Vec<TokenReview> {
        let store = self.shared.store();
        store
            .authorization
            .token_reviews
            .0
            .iter()
            .filter_map(|r| serde_json::from_value(r.clone()).ok())
            .collect()
    }
}
