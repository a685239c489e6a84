//! Objects written by tests without a client: any served kind (RBAC roles
//! and bindings, ServiceAccounts, Secrets, Nodes, CRDs, custom resources),
//! typed (`k8s-openapi` objects, a `CustomResource` type) or as YAML. They
//! go through the same validation and write path as API requests, so the
//! watches see them and a refused object fails with the apiserver's words.

use serde::Serialize;
use serde::de::Deserialize as _;
use serde_json::Value;

use super::FakeKubeApi;
use super::collection::object_key;
use super::rest::{self, At, Mode, Target, meta_str};
use super::status::ApiError;
use super::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("YAML document {index}: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("serializing the object to apply: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("{kind} {name:?} refused ({code} {reason}): {message}")]
    Refused {
        kind: String,
        name: String,
        code: u16,
        reason: &'static str,
        message: String,
    },
}

impl FakeKubeApi {
    /// Creates `object`, or replaces the stored object of that kind and
    /// name (namespace `default` if unset), whatever its resourceVersion;
    /// returns it as stored. A custom resource's `status` is written too.
    pub fn apply<T: Serialize>(&self, object: &T) -> Result<Value, ApplyError> {
        let value = serde_json::to_value(object).map_err(ApplyError::Serialize)?;
        let kind = value["kind"].as_str().unwrap_or("").to_string();
        let name = value["metadata"]["name"].as_str().unwrap_or("").to_string();
        self.shared.store().upsert(value).map_err(|e| ApplyError::Refused {
            kind,
            name,
            code: e.code,
            reason: e.reason,
            message: e.message,
        })
    }

    /// [`FakeKubeApi::apply`] for each document of a multi-document YAML
    /// (`---`), in order; stops at the first refused one.
    ///
    /// ```yaml
    /// apiVersion: rbac.authorization.k8s.io/v1
    /// kind: ClusterRole
    /// metadata: {name: proxy-reader}
    /// rules: [{apiGroups: [""], resources: [services/proxy], verbs: [get]}]
    /// ```
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>, ApplyError> {
        let mut applied = Vec::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
            let value = Value::deserialize(document).map_err(|source| ApplyError::Yaml { index, source })?;
            if value.is_null() {
                continue;
            }
            applied.push(self.apply(&value)?);
        }
        Ok(applied)
    }

    /// The stored object of that apiVersion and kind, as a GET returns it.
    pub fn get_object(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let store = self.shared.store();
        let rtype = store.type_of(api_version, kind)?;
        let version = api_version.rsplit('/').next().unwrap_or("");
        let ns = namespace.filter(|_| rtype.namespaced);
        store
            .get_object(&rtype.group, &rtype.plural, ns, name)
            .map(|o| rest::present(&rtype, version, o))
    }

    /// Deletes the object as a DELETE would (an object with finalizers is
    /// only marked); false if there was none.
    pub fn delete_object(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let mut store = self.shared.store();
        let Some(rtype) = store.type_of(api_version, kind) else {
            return false;
        };
        let version = api_version.rsplit('/').next().unwrap_or("").to_string();
        let ns = namespace.filter(|_| rtype.namespaced);
        if store.get_object(&rtype.group, &rtype.plural, ns, name).is_none() {
            return false;
        }
        match store.delete(rest::At::new(&rtype, &version, ns), name, b"") {
            Ok(_) => true,
            Err(e) => panic!("deleting {kind} {}: {}", object_key(ns, name), e.message),
        }
    }
}

impl Store {
    /// Creates, or replaces whatever is stored under that name: what the
    /// test helpers use (`kubectl apply` without the field management).
    pub fn upsert(&mut self, mut object: Value) -> Result<Value, ApiError> {
        let api_version = object["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let rtype = self.type_of(&api_version, &kind).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("no matches for kind {kind:?} in version {api_version:?}"),
            )
        })?;
        let version = api_version.rsplit('/').next().unwrap_or("").to_string();
        let namespace = rtype
            .namespaced
            .then(|| meta_str(&object, "namespace").unwrap_or("default").to_string());
        let at = At::new(&rtype, &version, namespace.as_deref());
        let name = meta_str(&object, "name").unwrap_or("").to_string();
        let status = object.get("status").cloned().filter(|_| rtype.status_subresource);
        let written = match self.get_object(&rtype.group, &rtype.plural, at.namespace, &name) {
            Some(current) if !name.is_empty() => {
                object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                self.update(at, &name, object.clone(), Target::Main, Mode::Replace)?
            }
            _ => self.create(at, object.clone())?,
        };
        match status {
            // Through /status, as a controller would write it.
            Some(_) => {
                let mut with_status = object;
                with_status["metadata"] = written["metadata"].clone();
                let name = written["metadata"]["name"].as_str().unwrap_or("").to_string();
                self.update(at, &name, with_status, Target::Status, Mode::Replace)
            }
            None => Ok(written),
        }
    }
}
