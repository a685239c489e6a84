//! The `IdentityPolicy` custom resource (`nodeward.io/v1alpha1`, namespaced):
//! an app team's policy for the opted-in pods of its own namespace. Its spec
//! is a policy of the configuration file without `name` (the object's
//! `metadata.name`), and its schema is generated from the same Rust types
//! (`config/schema.rs` for the hand-shaped ones), so the CRD cannot drift
//! from what the agent parses. `cargo xtask crds` writes the CRD to
//! [`CRD_FILE`]; a test fails when the committed file is not what the code
//! generates.
//!
//! The spec is kept as raw JSON in the Rust type: the agent parses it with the
//! configuration's own parser (`Config::parse_policy`), so a spec the API
//! server let through (an old CRD, no CEL support) is refused per object with
//! `nodeward check`'s precise message instead of breaking the whole watch.
//!
//! Providers are not a resource: they stay in the agent's configuration (see
//! ARCHITECTURE.md, "IdentityPolicy resources").

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::PolicyConfig;

pub const GROUP: &str = "nodeward.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "IdentityPolicy";
pub const PLURAL: &str = "identitypolicies";
/// The generated CRD, relative to the workspace root (in the base kustomization).
pub const CRD_FILE: &str = "deploy/base/crds/identitypolicies.nodeward.io.yaml";
/// The condition every agent writes: whether the spec compiles.
pub const ACCEPTED: &str = "Accepted";

/// A namespaced policy: the file's policy shape, minus `name`; its `selector`
/// chooses among the opted-in pods of the object's own namespace only.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "nodeward.io",
    version = "v1alpha1",
    kind = "IdentityPolicy",
    plural = "identitypolicies",
    namespaced,
    status = "IdentityPolicyStatus",
    shortname = "idpol",
    category = "nodeward",
    // Raw JSON: the typed form repeats `type_ = "string"`, which clippy
    // reads as a duplicated attribute.
    printcolumn = r#"{"name":"Accepted","type":"string","description":"whether the spec compiles","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","description":"pods bound to this policy, all nodes","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"Conflicts","type":"integer","description":"pods this policy selects that another policy selects too (enrolled deny-all)","jsonPath":".status.conflicts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Accepted\")].message"}"#
)]
pub struct IdentityPolicySpec(pub Map<String, Value>);

impl JsonSchema for IdentityPolicySpec {
    fn schema_name() -> Cow<'static, str> {
        "IdentityPolicySpec".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let mut schema = PolicyConfig::json_schema(g);
        if let Some(o) = schema.as_object_mut() {
            if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
                props.remove("name");
            }
            if let Some(required) = o.get_mut("required").and_then(Value::as_array_mut) {
                required.retain(|r| r != "name");
                if required.is_empty() {
                    o.remove("required");
                }
            }
            o.insert(
                "description".into(),
                Value::String(
                    "A policy of the agent's configuration file without `name` (metadata.name). `selector` \
                     chooses among the opted-in pods of this namespace only."
                        .into(),
                ),
            );
        }
        schema
    }
}

/// What the agents report. Every agent writes the shared part identically
/// (conditions, `observedGeneration`, the totals); each writes only its own
/// node's entry of `nodes`. Every write is a merge patch carrying the
/// resourceVersion it was computed from, so totals are never computed from a
/// stale view (ARCHITECTURE.md, "Status").
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityPolicyStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: True when the spec compiles, else False with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PolicyCondition>,
    /// Pods bound to this policy, summed over `nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i64>,
    /// Pods this policy selects that another policy selects too, summed over `nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<i64>,
    /// Per node name, what that node's agent does with this policy; written
    /// by that agent only, removed when it binds nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeStatus>,
}

/// One condition, as `metav1.Condition` (with the times as strings).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// One node's view of a policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Pods of this node bound to the policy.
    #[serde(default)]
    pub pods: i64,
    /// The generation this node's pods are bound to (the last accepted one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of this node the policy selects together with another policy:
    /// `namespace/pod: also selected by NAME`. They are enrolled deny-all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
}

/// The CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> String {
    let body = serde_yaml_ng::to_string(&crd()).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    format!(
        "# Generated by `cargo xtask crds` from agent/src/k8s/crd.rs and the policy types of\n\
         # agent/src/config/: do not edit (CI fails when this file differs from the code).\n{body}"
    )
}

/// The CRD object (for tests, the demo, and `crd_yaml`).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt as _;
    IdentityPolicy::crd()
}

/// The resource for dynamic clients (the watch reads raw objects).
pub fn api_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<IdentityPolicy>(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_is_what_the_code_generates() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let committed = std::fs::read_to_string(root.join(CRD_FILE)).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "{CRD_FILE} is not what the code generates: run `cargo xtask crds`"
        );
    }

    #[test]
    fn the_schema_is_structural_where_it_matters() {
        use kube::CustomResourceExt as _;
        let crd = serde_json::to_value(IdentityPolicy::crd()).expect("json");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let props = spec["properties"].as_object().expect("spec properties");
        assert!(!props.contains_key("name"), "name comes from metadata");
        for key in [
            "selector",
            "ports",
            "mode",
            "rules",
            "forward_claims",
            "path",
            "audiences",
        ] {
            assert!(props.contains_key(key), "spec.{key} missing: {spec}");
        }
        let rule = &props["rules"]["items"];
        assert_eq!(rule["type"], "object");
        assert!(rule["x-kubernetes-validations"][0]["rule"].as_str().is_some(), "{rule}");
        let condition = &rule["properties"]["require"]["properties"]["claims"]["additionalProperties"];
        assert_eq!(condition["type"], "object", "{condition}");
        assert!(condition["x-kubernetes-validations"].is_array());
        // No node without a type unless it preserves unknown fields (structural).
        fn walk(v: &Value, at: &str) {
            if let Some(o) = v.as_object() {
                if o.contains_key("properties") || o.contains_key("items") || o.contains_key("additionalProperties") {
                    assert!(o.contains_key("type"), "{at} has no type");
                }
                for k in ["oneOf", "anyOf", "allOf", "$ref"] {
                    assert!(!o.contains_key(k), "{at}: {k} is not structural");
                }
                for (k, child) in o {
                    if matches!(k.as_str(), "properties" | "default" | "x-kubernetes-validations") {
                        if k == "properties" {
                            for (name, s) in child.as_object().into_iter().flatten() {
                                walk(s, &format!("{at}.{name}"));
                            }
                        }
                        continue;
                    }
                    walk(child, &format!("{at}/{k}"));
                }
            }
        }
        walk(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "");
    }
}
