//! Pod → workload: what the agent should do with one watched pod, from the
//! pod object and the policies it can be bound to alone (pure; the binding
//! rules are `catalog.rs`, finding the pod's namespace is `podns`, enrolling
//! is `control`).
//!
//! A pod becomes the workload `<namespace>/<pod>` with the pod's labels. When
//! no single policy binds it (none, a missing one, a conflict, a refused
//! IdentityPolicy) it is still enrolled, fail closed (every request refused,
//! `no_policy`), on its TCP container ports.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::catalog::Catalog;
use crate::config::{Config, KubernetesConfig, PolicyConfig};

/// The policy a pod is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPolicy {
    /// A policy of the configuration file.
    Named(String),
    /// An IdentityPolicy of the pod's namespace, at one accepted generation.
    Resource(ResourcePolicy),
    /// No such policy: enrolled deny-all; the text says why.
    Missing(String),
    /// Several policies select the pod (the IdentityPolicies' `ns/name`s, if
    /// those are the ones): enrolled deny-all.
    Conflict(Vec<String>, String),
    /// The IdentityPolicy (`ns/name`) that would bind it is refused: deny-all.
    NotAccepted(String, String),
}

impl PodPolicy {
    /// Why the pod is enrolled deny-all, if it is.
    pub fn deny_all(&self) -> Option<&str> {
        match self {
            Self::Named(_) | Self::Resource(_) => None,
            Self::Missing(why) | Self::Conflict(_, why) | Self::NotAccepted(_, why) => Some(why),
        }
    }

    /// The policy's name as the snapshot knows it (`ns/name` for an IdentityPolicy).
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Named(n) => Some(n),
            Self::Resource(r) => Some(&r.key),
            _ => None,
        }
    }
}

/// An IdentityPolicy a pod is bound to: its `ns/name`, the generation and
/// the policy (named `ns/name`).
#[derive(Debug, Clone)]
pub struct ResourcePolicy {
    pub key: String,
    pub generation: i64,
    pub config: Arc<PolicyConfig>,
}

impl PartialEq for ResourcePolicy {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.generation == other.generation
            && (Arc::ptr_eq(&self.config, &other.config) || self.config == other.config)
    }
}

// A policy holds JSON values, which are never NaN: equality is total.
impl Eq for ResourcePolicy {}

/// What a pod should become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Not running yet, or no IP yet: nothing to enrol (un-enrolled if it was).
    Waiting(String),
    /// Cannot be protected by design (hostNetwork).
    Refused(String),
    /// Should be protected but cannot: nothing to protect.
    Failed(String),
    Enrol(Bound),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub uid: String,
    /// `spec.serviceAccountName` (the API server fills in `default`).
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub policy: PodPolicy,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<u16>,
}

/// The workload name of a pod: `<namespace>/<name>`.
pub fn workload_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// [`bind_in`] with the configuration's policies only.
pub fn bind(pod: &Pod, config: &Config) -> Binding {
    bind_in(pod, &config.kubernetes, &Catalog::from_config(config), None)
}

/// What `pod` should become with the policies of `catalog`; `previous` is
/// the policy it was bound to on the last pass.
pub fn bind_in(pod: &Pod, k8s: &KubernetesConfig, catalog: &Catalog, previous: Option<&PodPolicy>) -> Binding {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Binding::Refused(
            "hostNetwork pods share the node's network namespace: nodeward cannot protect them without \
             steering the node's own traffic"
                .into(),
        );
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    if phase != "Running" {
        return Binding::Waiting(format!("pod phase is {phase}"));
    }
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return Binding::Waiting("no pod IP yet".into());
    }
    let Some(uid) = pod.metadata.uid.clone() else {
        return Binding::Failed("pod has no UID".into());
    };
    let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&k8s.policy_annotation))
        .map(|n| n.trim());
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (policy, chosen) = catalog.choose(namespace, &labels, annotated, previous);
    let container = container_ports(pod);
    let mut ports = match &chosen {
        Some(p) => {
            let mut ports = p.ports.clone();
            if p.container_ports {
                ports.extend(&container);
            }
            ports
        }
        None => container,
    };
    ports.sort_unstable();
    ports.dedup();
    let egress = chosen.as_ref().is_some_and(|p| !p.egress.is_empty());
    if ports.is_empty() && !egress {
        let why = match (&chosen, policy.name()) {
            (Some(p), Some(name)) => format!(
                "no ports to protect: policy {name} lists no `ports`{}",
                if p.container_ports {
                    " and the pod declares no TCP containerPort"
                } else {
                    " (set `container_ports: true` to protect the pod's containerPorts)"
                }
            ),
            _ => format!(
                "{}, and the pod declares no TCP containerPort to close",
                policy.deny_all().unwrap_or("no policy")
            ),
        };
        return Binding::Failed(why);
    }
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    Binding::Enrol(Bound {
        uid,
        service_account,
        labels,
        policy,
        ips,
        ports,
    })
}

/// `status.podIPs` (both families on dual-stack), else `status.podIP`.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    ips.dedup();
    ips
}

/// Every TCP `containerPort` of the pod's containers.
fn container_ports(pod: &Pod) -> Vec<u16> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok().filter(|&n| n != 0))
        .collect()
}

#[cfg(test)]
mod tests;
