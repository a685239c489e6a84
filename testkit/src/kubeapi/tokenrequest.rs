//! TokenRequest (`pkg/registry/core/serviceaccount/storage/token.go`):
//! the service account must exist; `expirationSeconds` defaults to 3600
//! and must be 600..=2^32; `--service-account-max-token-expiration`
//! shortens it; a pod-bound request for exactly 3607 s with the API
//! audiences is extended to a year with `warnafter`
//! (`--service-account-extend-token-expiration`, on by default), while
//! `status.expirationTimestamp` still says the requested time;
//! `boundObjectRef` may name a Pod (its node is added, with the node's uid
//! when the Node exists), a Secret or a Node, which must exist with the
//! given uid.

use serde_json::{Value, json};

use super::serviceaccount::{Binding, TokenSpec};
use super::status::{ApiError, FieldError};
use super::store::{Store, now_json, now_seconds};

/// The projected-token expiry the kubelet asks for, which the apiserver
/// extends (`WarnOnlyBoundTokenExpirationSeconds`).
const WARN_ONLY_SECONDS: i64 = 60 * 60 + 7;
/// `ExpirationExtensionSeconds`.
const EXTENDED_SECONDS: i64 = 24 * 365 * 60 * 60;
const MIN_SECONDS: i64 = 10 * 60;
const MAX_SECONDS: i64 = 1 << 32;
/// (namespace, service account) pairs counted, so a runaway test stays
/// bounded.
const COUNTED: usize = 4096;

impl Store {
    /// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
    pub fn token_request(&mut self, namespace: &str, name: &str, body: &[u8]) -> Result<Value, ApiError> {
        let counted = self.identity.token_requests.len();
        let key = (namespace.to_string(), name.to_string());
        if counted < COUNTED || self.identity.token_requests.contains_key(&key) {
            *self.identity.token_requests.entry(key).or_default() += 1;
        }
        let mut req = super::rest::parse_object(body)?;
        let invalid = |n: &str, errors: &[FieldError]| {
            ApiError::invalid(
                "TokenRequest.authentication.k8s.io",
                "authentication.k8s.io",
                "TokenRequest",
                n,
                errors,
            )
        };
        if req["apiVersion"]
            .as_str()
            .is_some_and(|v| v != "authentication.k8s.io/v1")
            || req["kind"].as_str().is_some_and(|k| k != "TokenRequest")
        {
            return Err(ApiError::bad_request(
                "the object provided is not an authentication.k8s.io/v1 TokenRequest",
            ));
        }
        for (field, want, what) in [("name", name, "name"), ("namespace", namespace, "namespace")] {
            if let Some(got) = req["metadata"][field].as_str().filter(|s| !s.is_empty())
                && got != want
            {
                return Err(invalid(
                    name,
                    &[FieldError::invalid(
                        &format!("metadata.{field}"),
                        &Value::String(got.to_string()),
                        &format!("must match the service account {what} if specified"),
                    )],
                ));
            }
        }
        let sa_uid = self
            .uid_of("serviceaccounts", Some(namespace), name)
            .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
        let spec = &mut req["spec"];
        if spec["audiences"].as_array().is_none_or(Vec::is_empty) {
            spec["audiences"] = json!(self.identity.api_audiences());
        }
        // Defaulted at decoding, validated after.
        let mut seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
        spec["expirationSeconds"] = json!(seconds);
        let shown = json!(seconds);
        if seconds < MIN_SECONDS {
            return Err(invalid(
                "",
                &[FieldError::invalid(
                    "spec.expirationSeconds",
                    &shown,
                    "may not specify a duration less than 10 minutes",
                )],
            ));
        }
        if seconds > MAX_SECONDS {
            return Err(invalid(
                "",
                &[FieldError::invalid(
                    "spec.expirationSeconds",
                    &shown,
                    "may not specify a duration larger than 2^32 seconds",
                )],
            ));
        }
        let audiences: Vec<String> = spec["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let binding = match spec.get("boundObjectRef").filter(|r| r.is_object()) {
            None => Binding::None,
            Some(r) => self.bound_object(namespace, name, r)?,
        };
        if let Some(max) = self.identity.max_expiration
            && seconds > max
        {
            seconds = max;
        }
        let api_audiences = self.identity.api_audiences();
        let mut exp = seconds;
        let mut warn_after = None;
        if self.identity.extend_expiration
            && matches!(binding, Binding::Pod { .. })
            && seconds == WARN_ONLY_SECONDS
            && audiences.iter().all(|a| api_audiences.contains(a))
        {
            warn_after = Some(seconds);
            exp = EXTENDED_SECONDS;
        }
        let issued_at = now_seconds().as_second();
        let (token, _) = self.mint(&TokenSpec {
            namespace,
            service_account: name,
            service_account_uid: &sa_uid,
            binding,
            audiences,
            expiration_seconds: exp,
            warn_after_seconds: warn_after,
        })?;
        req["spec"]["expirationSeconds"] = json!(seconds);
        req["apiVersion"] = Value::String("authentication.k8s.io/v1".into());
        req["kind"] = Value::String("TokenRequest".into());
        req["metadata"] = json!({ "name": name, "namespace": namespace, "creationTimestamp": now_json() });
        // The status says the requested expiry even when the token's exp was
        // extended (token.go: nowTime + spec.expirationSeconds).
        let expires = k8s_openapi::jiff::Timestamp::from_second(issued_at + seconds)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        req["status"] = json!({
            "token": token,
            "expirationTimestamp": serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(expires)).unwrap_or(Value::Null),
        });
        Ok(req)
    }

    /// Resolves `spec.boundObjectRef`, as token.go does.
    fn bound_object(&self, namespace: &str, service_account: &str, r: &Value) -> Result<Binding, ApiError> {
        let api_version = r["apiVersion"].as_str().unwrap_or("");
        let kind = r["kind"].as_str().unwrap_or("");
        let name = r["name"].as_str().unwrap_or("");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let (binding, uid) = match (group, kind) {
            ("", "Pod") => {
                let pod = self
                    .get_object("", "pods", Some(namespace), name)
                    .ok_or_else(|| ApiError::not_found("pods", name))?;
                if pod["spec"]["serviceAccountName"].as_str() != Some(service_account) {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount {service_account:?} to pod running with different serviceaccount name."
                    )));
                }
                let binding = self.pod_binding(pod);
                let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
                (binding, uid)
            }
            ("", "Secret") => {
                let uid = self
                    .uid_of("secrets", Some(namespace), name)
                    .ok_or_else(|| ApiError::not_found("secrets", name))?;
                (
                    Binding::Secret {
                        name: name.to_string(),
                        uid: uid.clone(),
                    },
                    uid,
                )
            }
            ("", "Node") => {
                let uid = self
                    .uid_of("nodes", None, name)
                    .ok_or_else(|| ApiError::not_found("nodes", name))?;
                (
                    Binding::Node {
                        name: name.to_string(),
                        uid: uid.clone(),
                    },
                    uid,
                )
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {group}/{version}, Kind={kind}"
                )));
            }
        };
        if let Some(want) = r["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError {
                details: Some(json!({ "name": name, "group": "", "kind": kind })),
                ..ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {kind} \"{name}\": the UID in the bound object reference ({want}) \
                         does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                )
            });
        }
        Ok(binding)
    }
}
