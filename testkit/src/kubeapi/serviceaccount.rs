//! The service-account token issuer: its OIDC discovery document and JWKS
//! (`pkg/serviceaccount/openidmetadata.go`), its keys, and tokens with the
//! claims of `pkg/serviceaccount/claims.go`, minted for TokenRequest
//! (`tokenrequest.rs`) or directly by tests.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::FakeKubeApi;
use super::collection::object_key;
use super::signing::{SigningError, SigningKey};
use super::status::ApiError;
use super::store::{Store, new_uid, now_seconds};

/// The apiserver's defaults, as a kubeadm or kind cluster has them.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What the issuer keeps: its URL, audiences, keys (generated on first use,
/// the last one signs), knobs and counters.
pub(super) struct Identity {
    pub issuer: String,
    /// `--api-audiences`; None: the issuer, as the apiserver defaults it.
    pub api_audiences: Option<Vec<String>>,
    keys: Vec<SigningKey>,
    pub anonymous_discovery: bool,
    pub max_expiration: Option<i64>,
    pub extend_expiration: bool,
    pub token_requests: BTreeMap<(String, String), usize>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_string(),
            api_audiences: None,
            keys: Vec::new(),
            anonymous_discovery: false,
            max_expiration: None,
            extend_expiration: true,
            token_requests: BTreeMap::new(),
        }
    }
}

impl Identity {
    pub fn api_audiences(&self) -> Vec<String> {
        self.api_audiences.clone().unwrap_or_else(|| vec![self.issuer.clone()])
    }

    /// Every public key (the signing one last), generating the first on
    /// demand: most fakes never issue a token, and RSA keygen is slow.
    pub fn keys(&mut self) -> &[SigningKey] {
        if self.keys.is_empty() {
            self.keys
                .push(SigningKey::generate().expect("a service-account signing key"));
        }
        &self.keys
    }

    pub fn rotate(&mut self, keep_old: bool) {
        if !keep_old {
            self.keys.clear();
        }
        self.keys
            .push(SigningKey::generate().expect("a service-account signing key"));
    }

    pub fn sign(&mut self, claims: &Value) -> Result<String, SigningError> {
        let key = self.keys().last().expect("keys() generates one");
        key.sign_jwt(claims)
    }

    pub fn jwks(&mut self) -> Value {
        let keys: Vec<Value> = self.keys().iter().map(|k| k.jwk().clone()).collect();
        json!({ "keys": keys })
    }

    /// The discovery document; `jwks_uri` is the fake's own URL (the
    /// apiserver builds it from its external address).
    pub fn discovery(&self, base_url: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base_url}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }
}

/// What a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Binding {
    None,
    /// A pod, and the node it runs on (name, and uid when the Node exists).
    Pod {
        name: String,
        uid: String,
        node: Option<(String, Option<String>)>,
    },
    Secret {
        name: String,
        uid: String,
    },
    Node {
        name: String,
        uid: String,
    },
}

pub(super) struct TokenSpec<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub service_account_uid: &'a str,
    pub binding: Binding,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub warn_after_seconds: Option<i64>,
}

fn name_uid(name: &str, uid: Option<&str>) -> Value {
    let mut r = json!({ "name": name });
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        r["uid"] = Value::String(uid.to_string());
    }
    r
}

impl Store {
    /// Signs a token with the claims the apiserver puts in one; returns it
    /// and its `exp`.
    pub fn mint(&mut self, spec: &TokenSpec<'_>) -> Result<(String, i64), ApiError> {
        let now = now_seconds().as_second();
        let exp = now + spec.expiration_seconds;
        let mut kubernetes = json!({
            "namespace": spec.namespace,
            "serviceaccount": name_uid(spec.service_account, Some(spec.service_account_uid)),
        });
        match &spec.binding {
            Binding::None => {}
            Binding::Pod { name, uid, node } => {
                kubernetes["pod"] = name_uid(name, Some(uid));
                if let Some((node, node_uid)) = node {
                    kubernetes["node"] = name_uid(node, node_uid.as_deref());
                }
            }
            Binding::Secret { name, uid } => kubernetes["secret"] = name_uid(name, Some(uid)),
            Binding::Node { name, uid } => kubernetes["node"] = name_uid(name, Some(uid)),
        }
        if let Some(warn) = spec.warn_after_seconds {
            kubernetes["warnafter"] = json!(now + warn);
        }
        let claims = json!({
            "iss": self.identity.issuer,
            "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
            "aud": spec.audiences,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "jti": new_uid(),
            "kubernetes.io": kubernetes,
        });
        let token = self
            .identity
            .sign(&claims)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((token, exp))
    }

    pub(super) fn uid_of(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<String> {
        self.get_object("", plural, namespace, name)
            .and_then(|o| o["metadata"]["uid"].as_str())
            .map(str::to_string)
    }

    /// A pod's binding: its name and uid, and its node when scheduled.
    pub(super) fn pod_binding(&self, pod: &Value) -> Binding {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let node = pod["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(|n| (n.to_string(), self.uid_of("nodes", None, n)));
        Binding::Pod { name, uid, node }
    }

    /// Creates `namespace/name` if missing; returns its uid.
    pub fn ensure_object(&mut self, kind: &str, plural: &str, namespace: Option<&str>, name: &str) -> String {
        if let Some(uid) = self.uid_of(plural, namespace, name) {
            return uid;
        }
        let mut object = json!({ "apiVersion": "v1", "kind": kind, "metadata": { "name": name } });
        if let Some(ns) = namespace {
            object["metadata"]["namespace"] = Value::String(ns.to_string());
        }
        match self.upsert(object) {
            Ok(created) => created["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            Err(e) => panic!("creating {kind} {}: {}", object_key(namespace, name), e.message),
        }
    }
}

impl FakeKubeApi {
    /// The `iss` of the tokens the fake issues (default
    /// [`DEFAULT_ISSUER`]).
    pub fn service_account_issuer(&self) -> String {
        self.shared.store().identity.issuer.clone()
    }

    /// Changes the issuer (`--service-account-issuer`), e.g. to the fake's
    /// own URL so discovery from the issuer works. Tokens already issued
    /// keep the old `iss`, and TokenReview no longer recognises them.
    pub fn set_service_account_issuer(&self, issuer: &str) {
        self.shared.store().identity.issuer = issuer.to_string();
    }

    /// `--api-audiences` (default: the issuer): the audiences of a
    /// TokenRequest or TokenReview that names none.
    pub fn set_api_audiences(&self, audiences: &[&str]) {
        self.shared.store().identity.api_audiences = Some(audiences.iter().map(|a| a.to_string()).collect());
    }

    /// Serve `/.well-known/openid-configuration` and `/openid/v1/jwks` to
    /// anyone (a cluster that binds `system:service-account-issuer-discovery`
    /// to `system:unauthenticated`); by default they need a credential.
    pub fn set_anonymous_discovery(&self, anonymous: bool) {
        self.shared.store().identity.anonymous_discovery = anonymous;
    }

    /// `--service-account-max-token-expiration`.
    pub fn set_max_token_expiration(&self, max: Option<Duration>) {
        self.shared.store().identity.max_expiration = max.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    }

    /// `--service-account-extend-token-expiration` (default true).
    pub fn set_extend_token_expiration(&self, extend: bool) {
        self.shared.store().identity.extend_expiration = extend;
    }

    /// A new signing key; with `keep_old` the old public keys stay in the
    /// JWKS (and verify), as after adding a key to
    /// `--service-account-key-file`; without, tokens they signed fail.
    pub fn rotate_service_account_key(&self, keep_old: bool) {
        self.shared.store().identity.rotate(keep_old);
    }

    /// The JWKS `/openid/v1/jwks` serves.
    pub fn service_account_jwks(&self) -> Value {
        self.shared.store().identity.jwks()
    }

    /// Creates ServiceAccount `namespace/name` if missing; returns its uid.
    pub fn apply_service_account(&self, namespace: &str, name: &str) -> String {
        self.shared
            .store()
            .ensure_object("ServiceAccount", "serviceaccounts", Some(namespace), name)
    }

    /// Creates Secret `namespace/name` if missing; returns its uid.
    pub fn apply_secret(&self, namespace: &str, name: &str) -> String {
        self.shared
            .store()
            .ensure_object("Secret", "secrets", Some(namespace), name)
    }

    /// Creates Node `name` if missing; returns its uid.
    pub fn apply_node(&self, name: &str) -> String {
        self.shared.store().ensure_object("Node", "nodes", None, name)
    }

    /// Mints a token as TokenRequest would, without a request: for
    /// `namespace/service_account` (created if missing), bound to `pod`
    /// (name, uid) when given — not checked against the stored pods, so a
    /// test can mint a token for a pod that is gone — with the node claim
    /// when that pod is stored and scheduled.
    pub fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<(&str, &str)>,
        audiences: &[&str],
        ttl: Duration,
    ) -> String {
        let mut store = self.shared.store();
        let sa_uid = store.ensure_object("ServiceAccount", "serviceaccounts", Some(namespace), service_account);
        let binding = match pod {
            None => Binding::None,
            Some((name, uid)) => {
                let node = match store.get_object("", "pods", Some(namespace), name).cloned() {
                    Some(stored) => match store.pod_binding(&stored) {
                        Binding::Pod { node, .. } => node,
                        _ => None,
                    },
                    None => None,
                };
                Binding::Pod {
                    name: name.to_string(),
                    uid: uid.to_string(),
                    node,
                }
            }
        };
        let spec = TokenSpec {
            namespace,
            service_account,
            service_account_uid: &sa_uid,
            binding,
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            warn_after_seconds: None,
        };
        match store.mint(&spec) {
            Ok((token, _)) => token,
            Err(e) => panic!("minting a service-account token: {}", e.message),
        }
    }

    /// Signs arbitrary claims with the issuer's current key: tokens no
    /// TokenRequest would issue (expired, another issuer, missing claims).
    pub fn sign_service_account_claims(&self, claims: &Value) -> String {
        match self.shared.store().identity.sign(claims) {
            Ok(token) => token,
            Err(e) => panic!("{e}"),
        }
    }

    /// TokenRequests received per (namespace, service account), failed ones
    /// included: what a client asked, not what it got.
    pub fn token_requests(&self) -> BTreeMap<(String, String), usize> {
        self.shared.store().identity.token_requests.clone()
    }
}
