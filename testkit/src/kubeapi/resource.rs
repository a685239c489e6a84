//! What the fake knows about each resource type it serves: where it lives in
//! the URL space, whether it is namespaced, which fields a field selector may
//! use, and which of the apiserver's registry strategies apply to writes
//! (custom-resource generation and status rules, or a built-in's).

use serde_json::{Value, json};

/// A collection's identity: API group (`""` for core) and plural.
pub(super) type ResourceKey = (String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResourceType {
    pub group: String,
    /// The served versions; objects are stored at `storage_version` and
    /// presented at the version a request asked for (only `apiVersion`
    /// differs: the fake models CRDs with conversion strategy `None`).
    pub versions: Vec<String>,
    pub storage_version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// A `/status` subresource: the main endpoint ignores status, `/status`
    /// writes only status.
    pub status_subresource: bool,
    /// Custom-resource strategy (apiextensions-apiserver
    /// `registry/customresource/strategy.go`): `metadata.generation` from 1,
    /// bumped on any non-metadata change; PUT needs a resourceVersion and
    /// cannot create; list items keep `kind`/`apiVersion`.
    pub custom: bool,
    /// False for pods: tests set them through [`super::FakeKubeApi::apply_pod`],
    /// clients only read them.
    pub writable: bool,
    pub fields: Vec<&'static str>,
}

/// The pod fields the apiserver accepts in a field selector
/// (pkg/registry/core/pod `ToSelectableFields`).
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// The RBAC API group.
pub(super) const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The group of CustomResourceDefinitions.
pub(super) const CRD_GROUP: &str = "apiextensions.k8s.io";

impl ResourceType {
    /// A built-in resource at one version.
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            versions: vec![version.to_string()],
            storage_version: version.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
            status_subresource: false,
            custom: false,
            writable: true,
            fields: meta_fields(namespaced),
        }
    }

    /// A custom resource registered by a CRD.
    pub fn custom(
        group: &str,
        versions: Vec<String>,
        storage: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
    ) -> Self {
        Self {
            group: group.to_string(),
            versions,
            storage_version: storage.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
            status_subresource: true,
            custom: true,
            writable: true,
            // Without `selectableFields`, a CRD indexes only its metadata.
            fields: meta_fields(namespaced),
        }
    }

    /// What the fake serves from the start. Nodes, secrets and service
    /// accounts exist so tokens can be bound to them; RBAC objects feed
    /// SubjectAccessReview; CRDs register custom resources.
    pub fn builtins() -> Vec<Self> {
        let pods = Self {
            writable: false,
            // GET …/pods/{name}/status answers, as the apiserver's does.
            status_subresource: true,
            fields: POD_FIELDS.to_vec(),
            ..Self::builtin("", "v1", "pods", "Pod", true)
        };
        let secrets = Self {
            fields: [meta_fields(true), vec!["type"]].concat(),
            ..Self::builtin("", "v1", "secrets", "Secret", true)
        };
        vec![
            pods,
            secrets,
            Self::builtin("", "v1", "serviceaccounts", "ServiceAccount", true),
            Self::builtin("", "v1", "nodes", "Node", false),
            Self::builtin(RBAC_GROUP, "v1", "roles", "Role", true),
            Self::builtin(RBAC_GROUP, "v1", "rolebindings", "RoleBinding", true),
            Self::builtin(RBAC_GROUP, "v1", "clusterroles", "ClusterRole", false),
            Self::builtin(RBAC_GROUP, "v1", "clusterrolebindings", "ClusterRoleBinding", false),
            Self::builtin(
                CRD_GROUP,
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            ),
        ]
    }

    pub fn key(&self) -> ResourceKey {
        (self.group.clone(), self.plural.clone())
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// `pods`, `roles.rbac.authorization.k8s.io`: how Status messages name
    /// the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Pod`, `Role.rbac.authorization.k8s.io`: how Invalid errors name the
    /// kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The `details` of a NotFound/Conflict Status about one object.
    pub fn details(&self, name: &str) -> Value {
        json!({ "name": name, "group": self.group, "kind": self.plural })
    }

    /// The object of a BOOKMARK event: an empty object of this kind but for
    /// `metadata.resourceVersion`. Pods carry their empty spec and status,
    /// as the apiserver encodes a zero Pod.
    pub fn bookmark_object(&self, version: &str, metadata: Value) -> Value {
        let mut object = json!({ "kind": self.kind, "apiVersion": self.api_version(version), "metadata": metadata });
        if self.group.is_empty() && self.plural == "pods" {
            object["spec"] = json!({ "containers": null });
            object["status"] = json!({});
        }
        object
    }
}

fn meta_fields(namespaced: bool) -> Vec<&'static str> {
    if namespaced {
        vec!["metadata.name", "metadata.namespace"]
    } else {
        vec!["metadata.name"]
    }
}
