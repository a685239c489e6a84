//! CustomResourceDefinitions: a CRD written through the API (or
//! [`FakeKubeApi::register_crd`]) makes its custom resources servable at
//! once, with the custom-resource strategy of `rest.rs`; deleting it deletes
//! every object of the resource (their watches see DELETED, then end).
//!
//! Modelled: `spec.group`, `names` (plural, kind; singular and listKind
//! defaulted), `scope`, `versions[]` (served, storage, `subresources.status`
//! of the storage version) and the checks the apiserver makes of them; the
//! status the apiserver writes (`NamesAccepted`, `Established`,
//! `acceptedNames`, `storedVersions`). Not modelled: schema validation,
//! defaulting and pruning, CEL rules, conversion webhooks, the scale
//! subresource, printer columns, `selectableFields`, the CRD's own status
//! subresource and its cleanup finalizer.

use serde_json::{Value, json};

use super::FakeKubeApi;
use super::resource::ResourceType;
use super::status::{ApiError, FieldError};
use super::store::{Store, now_json};

/// What a CRD object says the fake should serve.
fn resource_type(crd: &Value) -> Result<ResourceType, Vec<FieldError>> {
    let spec = &crd["spec"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let group = text(&spec["group"]);
    let plural = text(&spec["names"]["plural"]);
    let kind = text(&spec["names"]["kind"]);
    let scope = text(&spec["scope"]);
    let mut errors = Vec::new();
    if !group.contains('.') {
        errors.push(FieldError::invalid(
            "spec.group",
            &spec["group"],
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    }
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if scope != "Namespaced" && scope != "Cluster" {
        errors.push(FieldError::unsupported(
            "spec.scope",
            &scope,
            &["Cluster", "Namespaced"],
        ));
    }
    let name = text(&crd["metadata"]["name"]);
    if name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            &crd["metadata"]["name"],
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage: Vec<&Value> = versions.iter().filter(|v| v["storage"] == true).collect();
    if storage.len() != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            &spec["versions"],
            "must have exactly one version marked as storage version",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let served = versions
        .iter()
        .filter(|v| v["served"] == true)
        .map(|v| text(&v["name"]))
        .collect();
    let storage = storage.first().map(|v| (*v).clone()).unwrap_or_default();
    let mut rtype = ResourceType::custom(
        &group,
        served,
        &text(&storage["name"]),
        &plural,
        &kind,
        scope == "Namespaced",
    );
    rtype.status_subresource = storage["subresources"].get("status").is_some_and(Value::is_object);
    Ok(rtype)
}

/// Checks a CRD being written, defaults its names and sets the status the
/// apiserver's controllers would (at once: the fake's CRDs are established
/// when the write returns).
pub(super) fn validate(store: &Store, crd: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
    let invalid = |errors: &[FieldError]| {
        ApiError::invalid(
            "CustomResourceDefinition.apiextensions.k8s.io",
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &name,
            errors,
        )
    };
    let rtype = resource_type(crd).map_err(|errors| invalid(&errors))?;
    if let Some(old) = old
        && old["spec"]["scope"] != crd["spec"]["scope"]
    {
        return Err(invalid(&[FieldError::invalid(
            "spec.scope",
            &crd["spec"]["scope"],
            "field is immutable",
        )]));
    }
    if let Some(existing) = store.collection(&rtype.group, &rtype.plural)
        && !existing.rtype.custom
    {
        return Err(invalid(&[FieldError::invalid(
            "spec.names.plural",
            &crd["spec"]["names"]["plural"],
            "is served by a built-in API",
        )]));
    }
    let names = &mut crd["spec"]["names"];
    if names["singular"].as_str().is_none_or(str::is_empty) {
        names["singular"] = Value::String(rtype.kind.to_lowercase());
    }
    if names["listKind"].as_str().is_none_or(str::is_empty) {
        names["listKind"] = Value::String(format!("{}List", rtype.kind));
    }
    let accepted = crd["spec"]["names"].clone();
    let condition = |kind: &str, reason: &str, message: &str| json!({ "type": kind, "status": "True", "lastTransitionTime": now_json(), "reason": reason, "message": message });
    crd["status"] = json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": accepted,
        "storedVersions": [rtype.storage_version],
    });
    Ok(())
}

/// Serves (or updates) the resource a stored CRD defines.
pub(super) fn register(store: &mut Store, crd: &Value) -> Result<(), ApiError> {
    let rtype = resource_type(crd).map_err(|errors| {
        ApiError::invalid(
            "CustomResourceDefinition.apiextensions.k8s.io",
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            crd["metadata"]["name"].as_str().unwrap_or(""),
            &errors,
        )
    })?;
    store.register(rtype)
}

/// Stops serving a deleted CRD's resource, deleting its objects.
pub(super) fn unregister(store: &mut Store, crd: &Value) {
    let spec = &crd["spec"];
    let key = (
        spec["group"].as_str().unwrap_or("").to_string(),
        spec["names"]["plural"].as_str().unwrap_or("").to_string(),
    );
    store.unregister(&key);
}

/// A CRD as `kube`'s `CustomResource` derive would generate it for a
/// resource with a status: one served storage version, a schema that keeps
/// every field, the status subresource on.
pub(super) fn definition(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{plural}.{group}") },
        "spec": {
            "group": group,
            "names": { "plural": plural, "kind": kind, "singular": kind.to_lowercase() },
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": version,
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
                "subresources": { "status": {} },
            }],
        },
    })
}

impl FakeKubeApi {
    /// Registers a custom resource with a status subresource, as applying
    /// its CustomResourceDefinition would (then `GET
    /// /apis/apiextensions.k8s.io/v1/customresourcedefinitions` lists it).
    /// For other shapes (no status subresource, several versions), apply a
    /// CRD object with [`FakeKubeApi::apply`].
    pub fn register_crd(&self, group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) {
        let crd = definition(group, version, plural, kind, namespaced);
        if let Err(e) = self.shared.store().upsert(crd) {
            panic!("register_crd {plural}.{group}: {}", e.message);
        }
    }
}
