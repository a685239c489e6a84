//! RBAC as the apiserver's authorizer evaluates it
//! (`plugin/pkg/auth/authorizer/rbac/rbac.go`,
//! `pkg/registry/rbac/validation/rule.go`,
//! `pkg/apis/rbac/v1/evaluation_helpers.go`), over the Role, ClusterRole,
//! RoleBinding and ClusterRoleBinding objects stored in the fake, and the
//! checks `pkg/apis/rbac/validation` makes when they are written.
//!
//! ClusterRoleBindings are visited first, then (for a namespaced request)
//! the RoleBindings of that namespace, each in name order (the apiserver's
//! informer order is unspecified); the first rule that allows wins and the
//! reason names its binding (`RBAC: allowed by ClusterRoleBinding "x" of
//! ClusterRole "y" to Group "z"`, `RoleBinding "x/ns" of Role "y" to
//! ServiceAccount "sa/ns"`). Nothing matching: no opinion, reason empty,
//! unless a binding named a role that does not exist (`RBAC: role.rbac…
//! "x" not found`). Not modelled: aggregated ClusterRoles
//! (`aggregationRule`), the escalation check on writing roles and bindings.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use serde_json::Value;

use super::resource::ResourceType;
use super::status::{ApiError, FieldError};
use super::store::Store;

/// What is asked: `resourceAttributes` or `nonResourceAttributes` of a
/// SubjectAccessReview, for a user and groups.
#[derive(Debug, Clone, Default)]
pub(super) struct Attributes {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub namespace: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// Some: a non-resource request for this path.
    pub path: Option<String>,
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == "*" || v == verb)
}

fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    rule.api_groups.iter().flatten().any(|g| g == "*" || g == group)
}

fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    rule.resources.iter().flatten().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty()
                && r.len() == subresource.len() + 2
                && r.starts_with("*/")
                && r.ends_with(subresource))
    })
}

fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    match &rule.resource_names {
        Some(names) if !names.is_empty() => names.iter().any(|n| n == name),
        _ => true,
    }
}

fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls
        .iter()
        .flatten()
        .any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*'))))
}

/// `RuleAllows`.
fn rule_allows(a: &Attributes, rule: &PolicyRule) -> bool {
    match &a.path {
        Some(path) => verb_matches(rule, &a.verb) && non_resource_url_matches(rule, path),
        None => {
            let combined = if a.subresource.is_empty() {
                a.resource.clone()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            verb_matches(rule, &a.verb)
                && api_group_matches(rule, &a.api_group)
                && resource_matches(rule, &combined, &a.subresource)
                && resource_name_matches(rule, &a.name)
        }
    }
}

/// `appliesToUser`: a ServiceAccount subject names
/// `system:serviceaccount:NS:NAME`, NS defaulting to the binding's.
fn applies(a: &Attributes, subject: &Subject, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == a.user,
        "Group" => a.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            !ns.is_empty() && a.user == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

/// `describeSubject`.
fn describe(subject: &Subject, binding_namespace: &str) -> String {
    match subject.kind.as_str() {
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            format!("{} {:?}", subject.kind, format!("{}/{ns}", subject.name))
        }
        _ => format!("{} {:?}", subject.kind, subject.name),
    }
}

fn objects<T: serde::de::DeserializeOwned>(store: &Store, plural: &str, namespace: Option<&str>) -> Vec<T> {
    store
        .collection(super::resource::RBAC_GROUP, plural)
        .map(|c| {
            c.values()
                .filter(|o| namespace.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns)))
                .filter_map(|o| serde_json::from_value(o.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `GetRoleReferenceRules`.
fn role_rules(store: &Store, kind: &str, name: &str, namespace: &str) -> Result<Vec<PolicyRule>, String> {
    let get = |plural: &str, ns: Option<&str>| store.get_object(super::resource::RBAC_GROUP, plural, ns, name).cloned();
    match kind {
        "Role" => get("roles", Some(namespace))
            .and_then(|o| serde_json::from_value::<Role>(o).ok())
            .map(|r| r.rules.unwrap_or_default())
            .ok_or_else(|| format!("role.rbac.authorization.k8s.io {name:?} not found")),
        "ClusterRole" => get("clusterroles", None)
            .and_then(|o| serde_json::from_value::<ClusterRole>(o).ok())
            .map(|r| r.rules.unwrap_or_default())
            .ok_or_else(|| format!("clusterrole.rbac.authorization.k8s.io {name:?} not found")),
        other => Err(format!("unsupported role reference kind: {other:?}")),
    }
}

/// The RBAC authorizer's decision: allowed, and the reason.
pub(super) fn authorize(store: &Store, a: &Attributes) -> (bool, String) {
    let mut errors: Vec<String> = Vec::new();
    for binding in objects::<ClusterRoleBinding>(store, "clusterrolebindings", None) {
        let Some(subject) = binding.subjects.iter().flatten().find(|s| applies(a, s, "")) else {
            continue;
        };
        let role = &binding.role_ref;
        match role_rules(store, &role.kind, &role.name, "") {
            Err(e) => errors.push(e),
            Ok(rules) if rules.iter().any(|r| rule_allows(a, r)) => {
                let name = binding.metadata.name.unwrap_or_default();
                return (
                    true,
                    format!(
                        "RBAC: allowed by ClusterRoleBinding {name:?} of {} {:?} to {}",
                        role.kind,
                        role.name,
                        describe(subject, "")
                    ),
                );
            }
            Ok(_) => {}
        }
    }
    if !a.namespace.is_empty() {
        for binding in objects::<RoleBinding>(store, "rolebindings", Some(&a.namespace)) {
            let Some(subject) = binding.subjects.iter().flatten().find(|s| applies(a, s, &a.namespace)) else {
                continue;
            };
            let role = &binding.role_ref;
            match role_rules(store, &role.kind, &role.name, &a.namespace) {
                Err(e) => errors.push(e),
                Ok(rules) if rules.iter().any(|r| rule_allows(a, r)) => {
                    let name = format!("{}/{}", binding.metadata.name.unwrap_or_default(), a.namespace);
                    return (
                        true,
                        format!(
                            "RBAC: allowed by RoleBinding {name:?} of {} {:?} to {}",
                            role.kind,
                            role.name,
                            describe(subject, &a.namespace)
                        ),
                    );
                }
                Ok(_) => {}
            }
        }
    }
    (
        false,
        aggregate(&errors).map(|e| format!("RBAC: {e}")).unwrap_or_default(),
    )
}

/// apimachinery's `utilerrors.NewAggregate(...).Error()`: one message as
/// is, several deduplicated in brackets.
pub(super) fn aggregate(errors: &[String]) -> Option<String> {
    let mut seen: Vec<&str> = Vec::new();
    for e in errors {
        if !seen.contains(&e.as_str()) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [] => None,
        [one] => Some((*one).to_string()),
        many => Some(format!("[{}]", many.join(", "))),
    }
}

// === validation of written objects ===

fn validate_rules(rules: &Value, namespaced: bool, errors: &mut Vec<FieldError>) {
    for (i, rule) in rules.as_array().into_iter().flatten().enumerate() {
        let path = format!("rules[{i}]");
        let len = |k: &str| rule[k].as_array().map_or(0, Vec::len);
        if len("verbs") == 0 {
            errors.push(FieldError::required(
                &format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        if len("nonResourceURLs") > 0 {
            if namespaced {
                errors.push(FieldError::invalid(
                    &format!("{path}.nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if len("apiGroups") > 0 || len("resources") > 0 || len("resourceNames") > 0 {
                errors.push(FieldError::invalid(
                    &format!("{path}.nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if len("apiGroups") == 0 {
            errors.push(FieldError::required(
                &format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if len("resources") == 0 {
            errors.push(FieldError::required(
                &format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

fn validate_binding(binding: &mut Value, namespaced: bool, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    // v1 defaulting: roleRef and User/Group subjects in the RBAC group.
    let rbac = super::resource::RBAC_GROUP;
    if binding["roleRef"]["apiGroup"].as_str().is_none_or(str::is_empty) && binding["roleRef"].is_object() {
        binding["roleRef"]["apiGroup"] = Value::String(rbac.into());
    }
    for subject in binding["subjects"].as_array_mut().into_iter().flatten() {
        if subject["apiGroup"].as_str().is_none_or(str::is_empty)
            && matches!(subject["kind"].as_str(), Some("User" | "Group"))
        {
            subject["apiGroup"] = Value::String(rbac.into());
        }
    }
    let role_ref = &binding["roleRef"];
    if role_ref["apiGroup"] != rbac {
        errors.push(FieldError::unsupported(
            "roleRef.apiGroup",
            role_ref["apiGroup"].as_str().unwrap_or(""),
            &[rbac],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = role_ref["kind"].as_str().unwrap_or("");
    if !kinds.contains(&kind) {
        errors.push(FieldError::unsupported("roleRef.kind", kind, kinds));
    }
    if role_ref["name"].as_str().is_none_or(str::is_empty) {
        errors.push(FieldError::required("roleRef.name", ""));
    }
    for (i, s) in binding["subjects"].as_array().into_iter().flatten().enumerate() {
        let path = format!("subjects[{i}]");
        if s["name"].as_str().is_none_or(str::is_empty) {
            errors.push(FieldError::required(&format!("{path}.name"), ""));
        }
        let group = s["apiGroup"].as_str().unwrap_or("");
        match s["kind"].as_str().unwrap_or("") {
            "ServiceAccount" => {
                if !group.is_empty() {
                    errors.push(FieldError::unsupported(&format!("{path}.apiGroup"), group, &[""]));
                }
                if !namespaced && s["namespace"].as_str().is_none_or(str::is_empty) {
                    errors.push(FieldError::required(&format!("{path}.namespace"), ""));
                }
            }
            "User" | "Group" if group != rbac => {
                errors.push(FieldError::unsupported(&format!("{path}.apiGroup"), group, &[rbac]));
            }
            "User" | "Group" => {}
            other => errors.push(FieldError::unsupported(
                &format!("{path}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    if let Some(old) = old
        && old["roleRef"] != binding["roleRef"]
    {
        errors.push(FieldError::invalid(
            "roleRef",
            &binding["roleRef"],
            "cannot change roleRef",
        ));
    }
}

/// The apiserver's checks (and v1 defaults) for a written RBAC object.
pub(super) fn validate(rtype: &ResourceType, object: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    match rtype.plural.as_str() {
        "roles" => validate_rules(&object["rules"], true, &mut errors),
        "clusterroles" => validate_rules(&object["rules"], false, &mut errors),
        "rolebindings" => validate_binding(object, true, old, &mut errors),
        "clusterrolebindings" => validate_binding(object, false, old, &mut errors),
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        let name = object["metadata"]["name"].as_str().unwrap_or("");
        Err(ApiError::invalid_object(rtype, name, &errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str], urls: &[&str]) -> PolicyRule {
        let v = |x: &[&str]| (!x.is_empty()).then(|| x.iter().map(|s| s.to_string()).collect());
        PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: v(urls),
        }
    }

    fn resource(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_like_the_rbac_helpers() {
        let pods = rule(&["get"], &[""], &["pods"], &[], &[]);
        assert!(rule_allows(&resource("get", "", "pods", "", "a"), &pods));
        assert!(
            !rule_allows(&resource("get", "", "pods", "log", "a"), &pods),
            "a subresource needs its own rule"
        );
        assert!(!rule_allows(&resource("list", "", "pods", "", ""), &pods));
        assert!(!rule_allows(&resource("get", "apps", "pods", "", ""), &pods));
        let any_scale = rule(&["*"], &["*"], &["*/scale"], &[], &[]);
        assert!(rule_allows(
            &resource("update", "apps", "deployments", "scale", "x"),
            &any_scale
        ));
        assert!(!rule_allows(
            &resource("update", "apps", "deployments", "", "x"),
            &any_scale
        ));
        let star = rule(&["get"], &["*"], &["*"], &[], &[]);
        assert!(
            rule_allows(&resource("get", "x.io", "things", "status", ""), &star),
            "* covers subresources"
        );
        let named = rule(&["get"], &[""], &["services/proxy"], &["web"], &[]);
        assert!(rule_allows(&resource("get", "", "services", "proxy", "web"), &named));
        assert!(!rule_allows(&resource("get", "", "services", "proxy", "db"), &named));
        assert!(
            !rule_allows(&resource("get", "", "services", "proxy", ""), &named),
            "names restrict, even to nothing"
        );
        let urls = rule(&["get"], &[], &[], &[], &["/healthz", "/api/*"]);
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: Some(p.into()),
            ..Default::default()
        };
        assert!(rule_allows(&path("/healthz"), &urls));
        assert!(!rule_allows(&path("/healthz/ready"), &urls));
        assert!(rule_allows(&path("/api/v1/x"), &urls));
        assert!(rule_allows(&path("/api/"), &urls));
        assert!(!rule_allows(&path("/api"), &urls));
    }

    #[test]
    fn aggregate_dedups_like_apimachinery() {
        assert_eq!(aggregate(&[]), None);
        assert_eq!(aggregate(&["a".into(), "a".into()]).as_deref(), Some("a"));
        assert_eq!(
            aggregate(&["a".into(), "b".into(), "a".into()]).as_deref(),
            Some("[a, b]")
        );
    }
}
