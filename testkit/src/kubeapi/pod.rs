//! Realistic Pods in one line, for the fake and for tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A scheduled, Pending pod `namespace/name` on `node` with `labels` and one
/// container; chain [`PodBuilder`] methods for more.
pub fn pod(namespace: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    PodBuilder::new(namespace, name).node(node).labels(labels).build()
}

/// Builds a Pod shaped like the ones the apiserver stores.
#[derive(Debug, Clone)]
pub struct PodBuilder(Pod);

impl PodBuilder {
    /// A Pending pod with one container `app` and service account `default`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry.example/app:1".into()),
                    ..Default::default()
                }],
                restart_policy: Some("Always".into()),
                scheduler_name: Some("default-scheduler".into()),
                service_account_name: Some("default".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        })
    }

    /// Scheduled onto `node` (`spec.nodeName`).
    pub fn node(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    pub fn labels(self, labels: &[(&str, &str)]) -> Self {
        labels.iter().fold(self, |b, (k, v)| b.label(k, v))
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    pub fn service_account(mut self, name: &str) -> Self {
        self.spec().service_account_name = Some(name.to_string());
        self
    }

    /// A fixed `metadata.uid` (otherwise the fake assigns one).
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.to_string());
        self
    }

    /// A TCP `containerPort` of the first container (a deny-all pod is closed on these).
    pub fn container_port(mut self, port: i32) -> Self {
        self.spec().containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(k8s_openapi::api::core::v1::ContainerPort {
                container_port: port,
                ..Default::default()
            });
        self
    }

    pub fn host_network(mut self, on: bool) -> Self {
        self.spec().host_network = Some(on);
        self
    }

    /// `status.phase`: Pending, Running, Succeeded, Failed or Unknown.
    pub fn phase(mut self, phase: &str) -> Self {
        self.status().phase = Some(phase.to_string());
        self
    }

    /// `status.podIP` and `status.podIPs`.
    pub fn pod_ip(mut self, ip: &str) -> Self {
        let status = self.status();
        status.pod_ip = Some(ip.to_string());
        status.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
        self
    }

    /// Running with `ip`, Ready, its container started with `containerID`
    /// `containerd://<pod name>-app`.
    pub fn running(self, ip: &str) -> Self {
        let name = self.0.metadata.name.clone().unwrap_or_default();
        let mut b = self.phase("Running").pod_ip(ip);
        let status = b.status();
        status.conditions = Some(
            ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                .into_iter()
                .map(|t| PodCondition {
                    type_: t.into(),
                    status: "True".into(),
                    ..Default::default()
                })
                .collect(),
        );
        status.container_statuses = Some(vec![ContainerStatus {
            name: "app".into(),
            image: "registry.example/app:1".into(),
            image_id: "registry.example/app@sha256:0".into(),
            container_id: Some(format!("containerd://{name}-app")),
            ready: true,
            started: Some(true),
            restart_count: 0,
            ..Default::default()
        }]);
        b
    }

    pub fn build(self) -> Pod {
        self.0
    }

    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    fn status(&mut self) -> &mut PodStatus {
        self.0.status.get_or_insert_with(Default::default)
    }
}
