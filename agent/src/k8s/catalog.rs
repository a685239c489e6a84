//! Which policy a pod is bound to, from the configuration file's policies and
//! the cluster's IdentityPolicies (pure; the watch is `policies.rs`).
//!
//! Binding rules, in order:
//! 1. The pod's policy annotation `NAME` names the IdentityPolicy `NAME` of
//!    the pod's own namespace if there is one, else the configuration's
//!    policy `NAME`, else nothing (deny-all, `PolicyNotFound`).
//! 2. Else the IdentityPolicies of the pod's namespace whose selector matches
//!    its labels: exactly one binds it; two or more are a conflict (deny-all,
//!    reported on every one of them, `PolicyConflict`). A policy of another
//!    namespace is never looked at.
//! 3. Else the configuration's policies whose selector matches: exactly one
//!    binds it; two or more are a conflict.
//!
//! IdentityPolicies are addressed as `namespace/name`, which a configuration
//! policy's name cannot be (validation refuses `/`), so the two never clash.
//!
//! An IdentityPolicy whose current spec is refused keeps binding the pods
//! that were bound to its last accepted version (the [`Compiler`] remembers
//! it while the agent runs); a pod it would newly select (by the refused
//! spec's selector, when that can be read) is enrolled deny-all with the
//! reason (`PolicyNotAccepted`). A refused spec never opens a pod.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::binding::{PodPolicy, ResourcePolicy};
use super::policies::{PolicyObject, PolicyObjects};
use crate::config::{Config, KubernetesConfig, PolicyConfig, Unbound, select_policy};
use crate::policy::Policy;

/// One IdentityPolicy, compiled against the agent's configuration.
#[derive(Debug)]
pub struct Compiled {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// The verdict on the spec of `generation`: the policy, or `nodeward
    /// check`'s message.
    pub verdict: Result<Arc<PolicyConfig>, String>,
    /// The last accepted version and its generation (the current one when accepted).
    pub last_good: Option<(i64, Arc<PolicyConfig>)>,
    /// The selector the current spec asks for, read even when the spec is refused.
    pub selector: Option<BTreeMap<String, String>>,
}

impl Compiled {
    fn selects(&self, labels: &BTreeMap<String, String>, was_bound: bool) -> bool {
        let matches = |s: &BTreeMap<String, String>| s.iter().all(|(k, v)| labels.get(k) == Some(v));
        match &self.verdict {
            Ok(p) => matches(&p.selector),
            Err(_) => {
                let kept = was_bound && self.last_good.as_ref().is_some_and(|(_, p)| matches(&p.selector));
                kept || self.selector.as_ref().is_some_and(matches)
            }
        }
    }

    /// The policy a pod gets from this IdentityPolicy.
    fn bind(&self, was_bound: bool) -> (PodPolicy, Option<Arc<PolicyConfig>>) {
        match (&self.verdict, &self.last_good) {
            (Ok(p), _) => (self.resource(self.generation, p), Some(p.clone())),
            (Err(_), Some((generation, p))) if was_bound => (self.resource(*generation, p), Some(p.clone())),
            (Err(why), _) => (
                PodPolicy::NotAccepted(
                    self.key.clone(),
                    format!("IdentityPolicy {} is not accepted: {why}", self.key),
                ),
                None,
            ),
        }
    }

    fn resource(&self, generation: i64, p: &Arc<PolicyConfig>) -> PodPolicy {
        PodPolicy::Resource(ResourcePolicy {
            key: self.key.clone(),
            generation,
            config: p.clone(),
        })
    }
}

/// Every policy a pod of this node can be bound to.
#[derive(Debug, Default)]
pub struct Catalog {
    file: Vec<Arc<PolicyConfig>>,
    annotation: String,
    /// By namespace.
    resources: BTreeMap<String, Vec<Arc<Compiled>>>,
}

impl Catalog {
    /// The configuration's policies alone (no cluster: tests, `explain --labels`).
    pub fn from_config(config: &Config) -> Self {
        Self::new(&config.policies, &config.kubernetes)
    }

    pub fn new(policies: &[PolicyConfig], k8s: &KubernetesConfig) -> Self {
        Self {
            file: policies.iter().cloned().map(Arc::new).collect(),
            annotation: k8s.policy_annotation.clone(),
            resources: BTreeMap::new(),
        }
    }

    /// Every compiled IdentityPolicy.
    pub fn resources(&self) -> impl Iterator<Item = &Arc<Compiled>> {
        self.resources.values().flatten()
    }

    /// The policy of a pod of `namespace` with these labels and this value
    /// of the policy annotation; `previous` is what it was bound to before
    /// (so a refused update keeps it on the last accepted version). The
    /// policy config is there when the pod is bound to one.
    pub fn choose(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        annotated: Option<&str>,
        previous: Option<&PodPolicy>,
    ) -> (PodPolicy, Option<Arc<PolicyConfig>>) {
        let here = self.resources.get(namespace).map(Vec::as_slice).unwrap_or_default();
        let was_bound = |c: &Compiled| matches!(previous, Some(PodPolicy::Resource(r)) if r.key == c.key);
        if let Some(name) = annotated {
            if let Some(c) = here.iter().find(|c| c.name == name) {
                return c.bind(was_bound(c));
            }
            if let Some(p) = self.file.iter().find(|p| p.name == name) {
                return (PodPolicy::Named(p.name.clone()), Some(p.clone()));
            }
            return (
                PodPolicy::Missing(format!(
                    "policy {name:?} named by annotation {} does not exist (no IdentityPolicy {namespace}/{name}, \
                     no policy {name:?} in the configuration)",
                    self.annotation
                )),
                None,
            );
        }
        let selecting: Vec<&Arc<Compiled>> = here.iter().filter(|c| c.selects(labels, was_bound(c))).collect();
        match selecting.as_slice() {
            [one] => return one.bind(was_bound(one)),
            [] => {}
            many => {
                let keys: Vec<String> = many.iter().map(|c| c.key.clone()).collect();
                let why = format!("selected by several IdentityPolicies: {}", keys.join(", "));
                return (PodPolicy::Conflict(keys, why), None);
            }
        }
        let file: Vec<PolicyConfig> = self.file.iter().map(|p| (**p).clone()).collect();
        match select_policy(&file, labels, None) {
            Ok(p) => {
                let chosen = self.file.iter().find(|q| q.name == p.name).cloned();
                (PodPolicy::Named(p.name.clone()), chosen)
            }
            Err(Unbound::Ambiguous(names)) => {
                let why = format!(
                    "selected by several policies of the configuration: {}",
                    names.join(", ")
                );
                (PodPolicy::Conflict(Vec::new(), why), None)
            }
            Err(_) => (PodPolicy::Missing("no policy selects the pod's labels".into()), None),
        }
    }
}

/// Compiles IdentityPolicies, remembering each one's verdict (recompiled
/// when its generation, its uid or the configuration changes) and its last
/// accepted version.
#[derive(Default)]
pub struct Compiler {
    entries: HashMap<String, Arc<Compiled>>,
    config: Option<Arc<Config>>,
}

impl Compiler {
    pub fn catalog(&mut self, config: &Arc<Config>, objects: &PolicyObjects) -> Catalog {
        let reconfigured = !self.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, config));
        self.config = Some(config.clone());
        self.entries.retain(|k, _| objects.contains_key(k));
        let mut catalog = Catalog::from_config(config);
        for (key, o) in objects {
            let fresh = self
                .entries
                .get(key)
                .filter(|c| !reconfigured && c.uid == o.uid && c.generation == o.generation)
                .cloned();
            let compiled = fresh.unwrap_or_else(|| {
                let previous = self.entries.get(key).filter(|c| c.uid == o.uid);
                let c = Arc::new(compile(config, o, previous.and_then(|c| c.last_good.clone())));
                if let Err(why) = &c.verdict {
                    tracing::warn!(policy = %key, generation = o.generation, error = %why, "IdentityPolicy refused");
                } else {
                    tracing::info!(policy = %key, generation = o.generation, "IdentityPolicy accepted");
                }
                self.entries.insert(key.clone(), c.clone());
                c
            });
            catalog.resources.entry(o.namespace.clone()).or_default().push(compiled);
        }
        catalog
    }
}

/// The verdict on one object: `Config::parse_policy` (the file's parser and
/// checks) and the compilation the agent would run.
pub fn compile(config: &Config, o: &PolicyObject, last_good: Option<(i64, Arc<PolicyConfig>)>) -> Compiled {
    let key = o.key();
    let source = format!("IdentityPolicy {key}");
    let verdict = config
        .parse_policy(&key, &o.spec, Path::new(&source))
        .map_err(|e| e.to_string())
        .and_then(|p| match Policy::compile(&p, &config.providers) {
            Ok(_) => Ok(Arc::new(p)),
            Err(e) => Err(format!("{source}: {e}")),
        });
    let last_good = match &verdict {
        Ok(p) => Some((o.generation, p.clone())),
        Err(_) => last_good,
    };
    let selector = o.spec.get("selector").and_then(|s| match s {
        Value::Null => Some(BTreeMap::new()),
        other => serde_json::from_value(other.clone()).ok(),
    });
    let selector = if o.spec.get("selector").is_none() {
        Some(BTreeMap::new())
    } else {
        selector
    };
    Compiled {
        key,
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        generation: o.generation,
        verdict,
        last_good,
        selector,
    }
}

/// Checks the IdentityPolicy objects of a multi-document YAML text against
/// `config` as the agent would (`nodeward check --identity-policy`): per
/// object, `IdentityPolicy ns/name` and the verdict. Other kinds are skipped.
pub fn check_manifests(config: &Config, text: &str) -> Vec<(String, Result<(), String>)> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                out.push((
                    format!("document {}", i + 1),
                    Err(format!("document {}: not YAML: {e}", i + 1)),
                ));
                continue;
            }
        };
        if value["kind"] != super::crd::KIND {
            continue;
        }
        let object = PolicyObject {
            namespace: value["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            name: value["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            uid: String::new(),
            generation: 0,
            resource_version: String::new(),
            spec: value["spec"].clone(),
            status: Default::default(),
        };
        let c = compile(config, &object, None);
        out.push((format!("IdentityPolicy {}", c.key), c.verdict.map(|_| ())));
    }
    out
}

#[cfg(test)]
mod tests;
