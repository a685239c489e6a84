//! The Kubernetes pod watch: this node's opted-in pods become steered
//! workloads, bound to the configuration's policies or to the cluster's
//! IdentityPolicies. Five tasks:
//!
//! - `watch`: kube-rs's watcher → complete snapshots of the pod set;
//! - `policies`: the same for every namespace's IdentityPolicies (`crd`);
//! - `controller`: each snapshot (or configuration reload) →
//!   compile the IdentityPolicies and bind every pod to its policy
//!   (`catalog`, `binding`), find its network namespace (`podns`), hand the
//!   resulting workloads to the agent (a [`PodSink`]; `app::Agent` in
//!   production), then report each pod's state in metrics, logs and
//!   Kubernetes Events, and each IdentityPolicy's view from this node;
//! - `status`: writes those views into the IdentityPolicies' status;
//! - `events`: posts Events, never in the enrolment path's way.
//!
//! Enrolling itself is `control/`; this module decides what to enrol.

pub mod binding;
pub mod catalog;
mod controller;
pub mod crd;
pub mod events;
pub mod metrics;
pub mod podns;
pub mod policies;
pub mod review;
pub mod status;
pub mod watch;

pub use binding::PodPolicy;
pub use controller::Controller;
pub use metrics::KubeMetrics;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch as channel;
use tokio::task::JoinHandle;

use crate::config::{Config, KubernetesConfig};
use events::PodEvents;
use podns::PodNsResolver;
use status::StatusWriter;
use watch::WatchTarget;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubernetes: no usable client configuration (in-cluster service account or $KUBECONFIG): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("kubernetes: cannot build the API client: {0}")]
    Client(#[source] kube::Error),
    #[error("kubernetes: enabled without a node name")]
    NoNodeName,
}

/// A pod the agent should enrol: a steered workload with explicit
/// addresses and ports, in the namespace `netns` (`<proc>/<pid>/ns/net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWorkload {
    /// `<namespace>/<pod>`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub policy: PodPolicy,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<u16>,
    pub netns: PathBuf,
    pub uid: String,
    pub service_account: String,
    /// The pod's cgroup v2 directory, for egress steering (`None`: not found).
    pub cgroup: Option<PathBuf>,
}

/// Where the controller delivers the pod workloads: the agent, or a test's recorder.
pub trait PodSink: Send + Sync + 'static {
    /// The configuration pods are bound with (policies, the `kubernetes` section).
    fn config(&self) -> Arc<Config>;
    /// Changes whenever a new configuration has been applied (a reload).
    fn config_changes(&self) -> channel::Receiver<u64>;
    /// Makes `pods` the pod workloads, enrolling and un-enrolling to match.
    /// `present` names every pod of the snapshot that should stay protected
    /// (fail closed) even if it could not be enrolled now. Returns, per pod
    /// workload that could not be enrolled, why.
    fn apply_pods(
        &self,
        pods: Vec<PodWorkload>,
        present: HashSet<String>,
    ) -> impl Future<Output = HashMap<String, String>> + Send;
}

/// A running pod watch.
pub struct PodWatch {
    tasks: Vec<JoinHandle<()>>,
}

/// The agent's API client: from `kubernetes.kubeconfig`, else in-cluster,
/// else `$KUBECONFIG`. One per process, shared by the pod watch, the
/// service-account providers and the reviews.
pub async fn client(k: &KubernetesConfig) -> Result<kube::Client, KubeError> {
    let mut config = match &k.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    // The watcher retries with its own backoff and counts each failure;
    // the client's own retries (up to 15 on a 503) would hide an outage
    // from the metrics and the logs for minutes.
    config.default_retry = false;
    kube::Client::try_from(config).map_err(KubeError::Client)
}

impl PodWatch {
    /// Starts the watches, the controller, the status writer and the event
    /// poster for `sink`, on the agent's one client.
    pub async fn start<S: PodSink>(
        sink: Arc<S>,
        client: kube::Client,
        metrics: KubeMetrics,
    ) -> Result<Self, KubeError> {
        let config = sink.config();
        let k = &config.kubernetes;
        let node = k.node_name.clone().ok_or(KubeError::NoNodeName)?;
        let resolver = PodNsResolver::new(&k.proc_root, &k.cgroup_root);
        Ok(Self::start_with(sink, metrics, client, node, resolver))
    }

    /// [`PodWatch::start`] with the node and namespace finder given
    /// (the tests run several "nodes" against one fake API).
    pub fn start_with<S: PodSink>(
        sink: Arc<S>,
        metrics: KubeMetrics,
        client: kube::Client,
        node: String,
        resolver: PodNsResolver,
    ) -> Self {
        let config = sink.config();
        // The agent's pod name when the DaemonSet passes it, else one per node.
        let instance = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
        let instance = instance.unwrap_or_else(|| format!("nodeward-{node}"));
        let (events, poster) = PodEvents::start(client.clone(), Some(instance));
        let (tx, rx) = channel::channel(None);
        let (policy_tx, policy_rx) = channel::channel(None);
        let target = WatchTarget {
            node: node.clone(),
            label: config.kubernetes.opt_in_label.clone(),
        };
        let watcher = tokio::spawn(watch::run(client.clone(), target, metrics.clone(), tx));
        let policy_watcher = tokio::spawn(policies::run(client.clone(), metrics.clone(), policy_tx));
        let controller = Controller::new(sink, events, metrics.clone(), resolver);
        let writer = StatusWriter::new(client, node, metrics);
        let writer = tokio::spawn(writer.run(controller.status_reports(), policy_rx.clone()));
        let controller = tokio::spawn(controller.run(rx, policy_rx));
        Self {
            tasks: vec![watcher, policy_watcher, controller, writer, poster],
        }
    }

    /// Stops the tasks. Enrolled pods stay enrolled (their pinned state
    /// keeps them fail closed) for the next agent to adopt.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
