//! Pod → workload: what the agent should do with one watched pod, from the
//! pod object and the configured policies alone (pure; finding the pod's
//! namespace is `podns`, enrolling is `app`).
//!
//! A pod becomes the workload `<namespace>/<pod>` with the pod's labels. Its
//! policy is the one its annotation names, else the first whose selector
//! its labels match; when there is none it is still enrolled, fail closed
//! (every request refused, `no_policy`), on its TCP container ports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::config::{KubernetesConfig, PolicyConfig};

/// The policy a pod is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPolicy {
    Named(String),
    /// No such policy: enrolled deny-all; the text says why.
    Missing(String),
}

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

pub fn bind(pod: &Pod, k8s: &KubernetesConfig, policies: &[PolicyConfig]) -> Binding {
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
    let chosen = choose_policy(&labels, annotated, k8s, policies);
    let container = container_ports(pod);
    let (policy, ports) = match chosen {
        Ok(p) => {
            let mut ports = p.ports.clone();
            if p.container_ports {
                ports.extend(&container);
            }
            (PodPolicy::Named(p.name.clone()), ports)
        }
        Err(why) => (PodPolicy::Missing(why), container),
    };
    let mut ports = ports;
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        let why = match &policy {
            PodPolicy::Named(p) => format!(
                "no ports to protect: policy {p} lists no `ports`{}",
                if policies.iter().any(|q| &q.name == p && q.container_ports) {
                    " and the pod declares no TCP containerPort"
                } else {
                    " (set `container_ports: true` to protect the pod's containerPorts)"
                }
            ),
            PodPolicy::Missing(why) => format!("{why}, and the pod declares no TCP containerPort to close"),
        };
        return Binding::Failed(why);
    }
    Binding::Enrol(Bound {
        uid,
        labels,
        policy,
        ips,
        ports,
    })
}

/// The policy for a pod with these labels and this value of the policy
/// annotation: the annotation names it, else the first whose selector the
/// labels match; `Err` says why there is none.
pub fn choose_policy<'p>(
    labels: &BTreeMap<String, String>,
    annotated: Option<&str>,
    k8s: &KubernetesConfig,
    policies: &'p [PolicyConfig],
) -> Result<&'p PolicyConfig, String> {
    match annotated {
        Some(name) => policies.iter().find(|p| p.name == name).ok_or_else(|| {
            format!(
                "policy {name:?} named by annotation {} does not exist",
                k8s.policy_annotation
            )
        }),
        None => policies
            .iter()
            .find(|p| p.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .ok_or_else(|| "no policy selects the pod's labels".to_string()),
    }
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
