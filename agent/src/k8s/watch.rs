//! The pod watch: kube-rs's `watcher` on this node's opted-in pods (field
//! selector `spec.nodeName`, the opt-in label selector) feeding a kube-rs
//! `reflector` store, published as complete snapshots of the desired pod set.
//!
//! The watcher lists, then watches from the list's resourceVersion; when the
//! watch expires (410 Gone) it re-lists. The reflector buffers a re-list
//! (`Init` … `InitDone`) and swaps it in only when complete, so a re-list
//! never empties the set early; a snapshot is published only once the first
//! list is complete. API errors are counted and retried with the watcher's
//! default backoff; meanwhile the last snapshot stands, so an API outage
//! un-enrols no healthy pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::binding::workload_name;
use super::metrics::KubeMetrics;

/// This node's opted-in pods by workload name (`namespace/pod`).
pub type PodSet = BTreeMap<String, Arc<Pod>>;

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    pub node: String,
    /// `key=value`.
    pub label: String,
}

impl WatchTarget {
    pub fn field_selector(&self) -> String {
        format!("spec.nodeName={}", self.node)
    }

    /// Whether `pod` is one of ours, checked again on our side.
    fn selects(&self, pod: &Pod) -> bool {
        let (k, v) = self.label.split_once('=').unwrap_or((self.label.as_str(), ""));
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str())
            && pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(k))
                .is_some_and(|x| x == v)
    }
}

/// Runs the watch until the receiver side of `tx` is gone, publishing a
/// complete snapshot after the first full list and after every change.
/// `None` in the channel means no complete list yet.
pub async fn run(
    client: kube::Client,
    target: WatchTarget,
    metrics: KubeMetrics,
    tx: watch::Sender<Option<Arc<PodSet>>>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default()
        .fields(&target.field_selector())
        .labels(&target.label);
    let (store, writer) = reflector::store();
    let mut stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff()).boxed();
    let mut synced = false;
    let count = |t: &str| metrics.watch_events.with_label_values(&[t]).inc();
    tracing::info!(node = %target.node, label = %target.label, "watching this node's pods");
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            () = tx.closed() => break,
        };
        let Some(event) = next else { break };
        let changed = match event {
            Ok(Event::Init | Event::InitApply(_)) => false,
            Ok(Event::InitDone) => {
                count("restarted");
                tracing::info!(pods = store.len(), resynced = synced, "pod list complete");
                synced = true;
                true
            }
            Ok(Event::Apply(_)) => {
                count("applied");
                true
            }
            Ok(Event::Delete(_)) => {
                count("deleted");
                true
            }
            Err(e) => {
                metrics.api_errors.inc();
                tracing::warn!(error = %e, "pod watch: Kubernetes API error; retrying with backoff, pods keep their state");
                false
            }
        };
        if changed && synced && tx.send(Some(Arc::new(snapshot(&store, &target)))).is_err() {
            break;
        }
    }
    tracing::info!("pod watch stopped");
}

/// The store's pods that are ours (checked again on our side: a watch
/// selector is the API server's promise, not ours).
fn snapshot(store: &Store<Pod>, target: &WatchTarget) -> PodSet {
    store
        .state()
        .into_iter()
        .filter(|p| target.selects(p))
        .map(|p| (workload_name(&p), p))
        .collect()
}
