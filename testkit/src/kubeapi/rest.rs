//! Writes to any served resource with the apiserver's generic registry
//! semantics (apiserver `registry/generic/registry/store.go`,
//! `registry/rest/create.go`, `update.go`): create with server-set uid,
//! creationTimestamp and resourceVersion; replace and merge-patch with
//! resourceVersion preconditions (409 Conflict when stale); delete with
//! preconditions and finalizers (deletionTimestamp first, gone when the last
//! finalizer is removed); a no-op update writes nothing. Custom resources
//! add their strategy: generation, the status subresource, no PUT without a
//! resourceVersion and no create on PUT.

use serde_json::{Map, Value, json};

use super::collection::object_key;
use super::events::merge_patch;
use super::resource::{CRD_GROUP, RBAC_GROUP, ResourceType};
use super::status::{ApiError, FieldError};
use super::store::{Store, new_uid, now_json};
use super::{crd, rbac};

/// Which endpoint an update came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The object itself.
    Main,
    /// Its `/status` subresource.
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// PUT: the body is the whole object.
    Replace,
    /// PATCH: the object is the current one with the patch applied; no
    /// resourceVersion in the patch means no precondition.
    Patch,
}

pub(super) fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the object provided is unrecognized: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized (not a JSON object)",
        ));
    }
    Ok(value)
}

/// The object at the version the request asked for.
pub(super) fn present(rtype: &ResourceType, version: &str, object: &Value) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = Value::String(rtype.api_version(version));
    object
}

pub(super) fn meta_str<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"][key].as_str().filter(|s| !s.is_empty())
}

/// Everything but `metadata`: what a custom resource's generation follows.
fn non_metadata(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "metadata")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Refuses a body whose apiVersion or kind names another resource.
fn check_type(rtype: &ResourceType, version: &str, object: &Value) -> Result<(), ApiError> {
    let expected = rtype.api_version(version);
    if let Some(v) = object["apiVersion"].as_str()
        && v != expected
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({expected})"
        )));
    }
    if let Some(k) = object["kind"].as_str()
        && k != rtype.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rtype.kind
        )));
    }
    Ok(())
}

fn check_namespace(rtype: &ResourceType, namespace: Option<&str>, object: &mut Value) -> Result<(), ApiError> {
    let body_ns = meta_str(object, "namespace").map(str::to_string);
    match namespace.filter(|_| rtype.namespaced) {
        Some(ns) => {
            if body_ns.as_deref().is_some_and(|b| b != ns) {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            object["metadata"]["namespace"] = Value::String(ns.to_string());
        }
        None => {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
        }
    }
    Ok(())
}

/// Where a write goes: the resource type, the version the client speaks,
/// the namespace of the URL (None for cluster-scoped types and cluster-wide
/// paths).
#[derive(Clone, Copy)]
pub(super) struct At<'a> {
    pub rtype: &'a ResourceType,
    pub version: &'a str,
    pub namespace: Option<&'a str>,
}

impl<'a> At<'a> {
    pub fn new(rtype: &'a ResourceType, version: &'a str, namespace: Option<&'a str>) -> Self {
        Self {
            rtype,
            version,
            namespace: namespace.filter(|_| rtype.namespaced),
        }
    }
}

impl Store {
    pub fn create(&mut self, at: At<'_>, mut object: Value) -> Result<Value, ApiError> {
        let At {
            rtype,
            version,
            namespace,
        } = at;
        check_type(rtype, version, &object)?;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        check_namespace(rtype, namespace, &mut object)?;
        let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) => format!("{prefix}{}", &new_uid()[..5]),
            (None, None) => {
                return Err(ApiError::invalid_object(
                    rtype,
                    "",
                    &[FieldError::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
        };
        if meta_str(&object, "resourceVersion").is_some() {
            // etcd3's store refuses this, and the handler reports it as an
            // internal error.
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let key = object_key(namespace.filter(|_| rtype.namespaced), &name);
        if self
            .get_object(
                &rtype.group,
                &rtype.plural,
                namespace.filter(|_| rtype.namespaced),
                &name,
            )
            .is_some()
        {
            return Err(ApiError::already_exists(rtype, &name));
        }
        let meta = object["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        meta.insert("name".into(), Value::String(name.clone()));
        meta.insert("uid".into(), Value::String(new_uid()));
        meta.insert("creationTimestamp".into(), now_json());
        for server_set in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
        ] {
            meta.remove(server_set);
        }
        if rtype.custom {
            meta.insert("generation".into(), json!(1));
        }
        if rtype.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        self.validate(rtype, &mut object, None)?;
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        object["apiVersion"] = Value::String(rtype.api_version(&rtype.storage_version));
        object["kind"] = Value::String(rtype.kind.clone());
        self.store_object(rtype, key, object.clone(), rv)?;
        Ok(present(rtype, version, &object))
    }

    /// PUT of the object or its status.
    pub fn replace(
        &mut self,
        at: At<'_>,
        name: &str,
        object: Value,
        target: Target,
    ) -> Result<(Value, bool), ApiError> {
        let At {
            rtype, namespace: ns, ..
        } = at;
        if self.get_object(&rtype.group, &rtype.plural, ns, name).is_none() {
            // Built-in registries create on PUT; custom resources and
            // subresources do not.
            if rtype.custom || target == Target::Status {
                return Err(ApiError::not_found_in(rtype, name));
            }
            if meta_str(&object, "name").is_some_and(|n| n != name) {
                return Err(name_mismatch(&object, name));
            }
            let mut object = object;
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            return self.create(at, object).map(|o| (o, true));
        }
        self.update(at, name, object, target, Mode::Replace).map(|o| (o, false))
    }

    /// A JSON merge patch (RFC 7386) of the object or its status.
    pub fn patch(
        &mut self,
        at: At<'_>,
        name: &str,
        content_type: &str,
        body: &[u8],
        target: Target,
    ) -> Result<Value, ApiError> {
        let At {
            rtype,
            version,
            namespace: ns,
        } = at;
        let media = content_type.split(';').next().unwrap_or("").trim();
        let merge = media == "application/merge-patch+json"
            // Built-in types have strategic merge patch; for the fields the
            // fake's clients patch it is a merge patch.
            || (media == "application/strategic-merge-patch+json" && !rtype.custom);
        if !merge {
            let accepted = if rtype.custom {
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (this fake: application/merge-patch+json)"
            } else {
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (this fake: the merge patches)"
            };
            return Err(ApiError::unsupported_media(accepted, media));
        }
        let patch: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let current = self
            .get_object(&rtype.group, &rtype.plural, ns, name)
            .ok_or_else(|| ApiError::not_found_in(rtype, name))?;
        let mut patched = present(rtype, version, current);
        merge_patch(&mut patched, &patch);
        self.update(at, name, patched, target, Mode::Patch)
    }

    pub(super) fn update(
        &mut self,
        at: At<'_>,
        name: &str,
        mut new: Value,
        target: Target,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        let At {
            rtype,
            version,
            namespace: ns,
        } = at;
        let namespace = ns;
        let old = self
            .get_object(&rtype.group, &rtype.plural, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found_in(rtype, name))?;
        check_type(rtype, version, &new)?;
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        if meta_str(&new, "name").is_some_and(|n| n != name) {
            return Err(name_mismatch(&new, name));
        }
        check_namespace(rtype, namespace, &mut new)?;
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        match (meta_str(&new, "resourceVersion"), mode) {
            (Some(rv), _) if rv != old_rv => return Err(ApiError::stale(rtype, name)),
            (None, Mode::Replace) if rtype.custom => {
                return Err(ApiError::invalid_object(
                    rtype,
                    name,
                    &[FieldError {
                        field: "metadata.resourceVersion".into(),
                        reason: "FieldValueInvalid",
                        body: "Invalid value: 0x0: must be specified for an update".into(),
                    }],
                ));
            }
            _ => {}
        }
        if let (Some(uid), Some(old_uid)) = (meta_str(&new, "uid"), meta_str(&old, "uid"))
            && uid != old_uid
        {
            return Err(ApiError::conflict(
                rtype,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"),
            ));
        }
        // What clients cannot change (rest.BeforeUpdate).
        for kept in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            match old["metadata"].get(kept) {
                Some(v) => new["metadata"][kept] = v.clone(),
                None => {
                    if let Some(meta) = new["metadata"].as_object_mut() {
                        meta.remove(kept);
                    }
                }
            }
        }
        new["metadata"]["name"] = Value::String(name.to_string());
        new["apiVersion"] = Value::String(rtype.api_version(&rtype.storage_version));
        new["kind"] = Value::String(rtype.kind.clone());
        match target {
            // The status strategy: everything from the stored object but
            // the status.
            Target::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                set_or_remove(&mut new, "status", status);
            }
            Target::Main if rtype.status_subresource => set_or_remove(&mut new, "status", old.get("status").cloned()),
            Target::Main => {}
        }
        // The status strategy replaces the main one's PrepareForUpdate, so a
        // /status write never moves the generation.
        if rtype.custom && target == Target::Main && non_metadata(&new) != non_metadata(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        let finalizers = |o: &Value| -> Vec<String> {
            o["metadata"]["finalizers"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default()
        };
        let deleting = old["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null());
        if deleting && finalizers(&new).iter().any(|f| !finalizers(&old).contains(f)) {
            return Err(ApiError::invalid_object(
                rtype,
                name,
                &[FieldError::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                )],
            ));
        }
        self.validate(rtype, &mut new, Some(&old))?;
        if new == old {
            // etcd is not written for an update that changes nothing: no new
            // resourceVersion, no watch event.
            return Ok(present(rtype, version, &old));
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let key = object_key(ns, name);
        if deleting && finalizers(&new).is_empty() {
            self.remove_object(rtype, &key, rv);
            return Ok(present(rtype, version, &new));
        }
        self.store_object(rtype, key, new.clone(), rv)?;
        Ok(present(rtype, version, &new))
    }

    /// DELETE, honouring `DeleteOptions.preconditions` and finalizers.
    pub fn delete(&mut self, at: At<'_>, name: &str, body: &[u8]) -> Result<Value, ApiError> {
        let At {
            rtype,
            version,
            namespace: ns,
        } = at;
        let old = self
            .get_object(&rtype.group, &rtype.plural, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found_in(rtype, name))?;
        let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let preconditions = &options["preconditions"];
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = preconditions[field].as_str()
                && Some(want) != meta_str(&old, field)
            {
                return Err(ApiError::conflict(
                    rtype,
                    name,
                    &format!(
                        "Precondition failed: {label} in precondition: {want}, {label} in object meta: {}",
                        meta_str(&old, field).unwrap_or("")
                    ),
                ));
            }
        }
        let key = object_key(ns, name);
        let has_finalizers = old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null()) {
                return Ok(present(rtype, version, &old));
            }
            let mut marked = old;
            marked["metadata"]["deletionTimestamp"] = now_json();
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let rv = self.next_rv();
            marked["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            self.store_object(rtype, key, marked.clone(), rv)?;
            return Ok(present(rtype, version, &marked));
        }
        let rv = self.next_rv();
        self.remove_object(rtype, &key, rv);
        Ok(present(rtype, version, &old))
    }

    /// Type-specific validation and defaulting, where the fake models it.
    fn validate(&mut self, rtype: &ResourceType, new: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        match rtype.group.as_str() {
            RBAC_GROUP => rbac::validate(rtype, new, old),
            CRD_GROUP => crd::validate(self, new, old),
            _ => Ok(()),
        }
    }

    fn store_object(&mut self, rtype: &ResourceType, key: String, object: Value, rv: u64) -> Result<(), ApiError> {
        if rtype.group == CRD_GROUP {
            crd::register(self, &object)?;
        }
        let collection = self
            .collection_mut(&rtype.group, &rtype.plural)
            .ok_or_else(ApiError::no_route)?;
        collection.put(key, object, rv);
        Ok(())
    }

    fn remove_object(&mut self, rtype: &ResourceType, key: &str, rv: u64) {
        let removed = self
            .collection_mut(&rtype.group, &rtype.plural)
            .and_then(|c| c.remove(key, rv));
        if rtype.group == CRD_GROUP
            && let Some(crd_object) = removed
        {
            crd::unregister(self, &crd_object);
        }
    }
}

fn set_or_remove(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(map) = object.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(key.to_string(), v);
            }
            None => {
                map.remove(key);
            }
        }
    }
}

fn name_mismatch(object: &Value, name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "the name of the object ({}) does not match the name on the URL ({name})",
        meta_str(object, "name").unwrap_or("")
    ))
}
