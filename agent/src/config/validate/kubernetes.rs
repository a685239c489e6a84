//! The Kubernetes parts of validation: service-account providers, RBAC
//! rules and their attribute placeholders, the `kubernetes` section (label
//! keys and values as the API server accepts them).

use super::Invalid;
use crate::config::{Config, KubernetesConfig, KubernetesRbac, ProviderConfig};

/// A provider is an issuer or the cluster's service accounts, never both.
pub(super) fn service_accounts<'k>(c: &Config, p: &ProviderConfig) -> Result<(), (&'k str, String)> {
    match (&p.kubernetes_service_accounts, p.issuer.is_empty()) {
        (None, true) => Err((
            "issuer",
            "set the issuer, or `kubernetes_service_accounts: {}` for the cluster's service-account tokens".into(),
        )),
        (None, false) if p.token_review => Err((
            "token_review",
            "TokenReview is for service-account tokens (`kubernetes_service_accounts`)".into(),
        )),
        (None, false) => Ok(()),
        (Some(_), false) => Err((
            "issuer",
            "a `kubernetes_service_accounts` provider takes its issuer from the API server \
             (pin it with kubernetes_service_accounts.issuer)"
                .into(),
        )),
        (Some(_), true) if p.jwks_uri.is_some() => Err((
            "jwks_uri",
            "the keys of service-account tokens come from the API server".into(),
        )),
        (Some(_), true) if !c.kubernetes.api() => Err((
            "kubernetes_service_accounts",
            "needs the Kubernetes API: `kubernetes.enabled: true`, or `kubernetes.kubeconfig`".into(),
        )),
        (Some(_), true) => Ok(()),
    }
}

pub(super) fn kubernetes_rbac(c: &Config, r: &KubernetesRbac, admitted: &[&ProviderConfig]) -> Result<(), Invalid> {
    if !c.kubernetes.api() {
        return Err((
            String::new(),
            "RBAC decisions need the Kubernetes API: `kubernetes.enabled: true`, or `kubernetes.kubeconfig`".into(),
        ));
    }
    match (&r.resource, r.non_resource) {
        (Some(_), true) | (None, false) => {
            return Err((
                String::new(),
                "set exactly one of `resource: {...}` and `non_resource: true`".into(),
            ));
        }
        (Some(res), false) => {
            if res.resource.is_empty() {
                return Err((".resource.resource".into(), "must not be empty".into()));
            }
            for (k, v) in [
                ("group", &res.group),
                ("resource", &res.resource),
                ("subresource", &res.subresource),
                ("namespace", &res.namespace),
                ("name", &res.name),
            ] {
                check_placeholders(v).map_err(|why| (format!(".resource.{k}"), why))?;
            }
        }
        (None, true) => {}
    }
    if let Some(verb) = &r.verb
        && (verb.is_empty() || verb.bytes().any(|b| !(b.is_ascii_lowercase() || b == b'*')))
    {
        return Err((
            ".verb".into(),
            format!("{verb:?} is not a Kubernetes verb (lower case)"),
        ));
    }
    if let Some(p) = admitted
        .iter()
        .find(|p| p.kubernetes_service_accounts.is_none() && p.claim_mappings.is_none())
    {
        return Err((
            String::new(),
            format!(
                "provider {} has no `claim_mappings`: its tokens cannot become a Kubernetes user \
                 (add them, or list only mapped providers in `require.providers`)",
                p.name
            ),
        ));
    }
    Ok(())
}

/// `{namespace}`, `{pod}`, `{workload}` and `{label:KEY}` are the placeholders there are.
fn check_placeholders(v: &str) -> Result<(), String> {
    let mut rest = v;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed placeholder in {v:?}"))?;
        let name = &rest[start + 1..start + end];
        let known = matches!(name, "namespace" | "pod" | "workload")
            || name.strip_prefix("label:").is_some_and(|k| !k.is_empty());
        if !known {
            return Err(format!(
                "unknown placeholder {{{name}}}: use {{namespace}}, {{pod}}, {{workload}} or {{label:KEY}}"
            ));
        }
        rest = &rest[start + end + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray '}}' in {v:?}"));
    }
    Ok(())
}

pub(super) fn validate_kubernetes(k: &KubernetesConfig) -> Result<(), (&'static str, String)> {
    if k.enabled && k.node_name.as_deref().is_none_or(str::is_empty) {
        return Err((
            "node_name",
            "the pod watch needs this node's name: set it, or the NODE_NAME environment variable \
             (a DaemonSet passes spec.nodeName through the downward API)"
                .into(),
        ));
    }
    if let Some(n) = &k.node_name
        && (n.is_empty() || n.contains([',', '=', '!', ' ']))
    {
        return Err(("node_name", format!("{n:?} is not a node name")));
    }
    let Some((key, value)) = k.opt_in_label.split_once('=') else {
        return Err((
            "opt_in_label",
            format!(
                "{:?} must be `key=value`, e.g. nodeward.io/enabled=true",
                k.opt_in_label
            ),
        ));
    };
    label_key(key).map_err(|r| ("opt_in_label", format!("label key {key:?}: {r}")))?;
    label_value(value).map_err(|r| ("opt_in_label", format!("label value {value:?}: {r}")))?;
    label_key(&k.policy_annotation).map_err(|r| {
        (
            "policy_annotation",
            format!("annotation key {:?}: {r}", k.policy_annotation),
        )
    })?;
    if let Some(path) = &k.kubeconfig
        && path.as_os_str().is_empty()
    {
        return Err((
            "kubeconfig",
            "must not be empty; leave it out to use the in-cluster account".into(),
        ));
    }
    for (name, path) in [("proc_root", &k.proc_root), ("cgroup_root", &k.cgroup_root)] {
        if !path.is_absolute() {
            return Err((name, format!("{} must be an absolute path", path.display())));
        }
    }
    Ok(())
}

/// A Kubernetes label (or annotation) key: an optional DNS-subdomain prefix and `/`, then a name.
fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err("the prefix must be a DNS subdomain (lower case, dots)".into());
        }
    }
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    label_value(name)
}

/// A label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends (empty allowed).
fn label_value(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("at most 63 of A-Z a-z 0-9 . _ -, starting and ending alphanumeric".into())
    }
}
