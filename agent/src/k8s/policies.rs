//! The IdentityPolicy watch: kube-rs's `watcher` on every namespace's
//! IdentityPolicies feeding a `reflector` store, published as complete
//! snapshots, exactly as the pod watch publishes pods (`watch.rs`): a re-list
//! is swapped in only when complete, API errors are counted and retried with
//! backoff, and the last snapshot stands meanwhile, so an outage changes no
//! binding.
//!
//! Objects are read raw (`DynamicObject`): a spec is parsed later, per
//! object, by the configuration's parser (`catalog.rs`), so one malformed
//! object is refused on its own instead of failing the whole list. A cluster
//! without the CRD (404) has no IdentityPolicies: an empty set is published,
//! and the watch keeps trying, so installing the CRD later just works.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::watch;

use super::crd::{self, IdentityPolicyStatus};
use super::metrics::KubeMetrics;

/// One IdentityPolicy as the API server last sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyObject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub resource_version: String,
    /// Raw: parsed by `Catalog`.
    pub spec: Value,
    /// What the agents wrote; a status this agent cannot read counts as empty.
    pub status: IdentityPolicyStatus,
}

impl PolicyObject {
    /// `namespace/name`: how the agent, its metrics and pods' events name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn from_dynamic(o: &DynamicObject) -> Self {
        let m = &o.metadata;
        Self {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            generation: m.generation.unwrap_or(0),
            resource_version: m.resource_version.clone().unwrap_or_default(),
            spec: o.data.get("spec").cloned().unwrap_or(Value::Null),
            status: o
                .data
                .get("status")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default(),
        }
    }
}

/// Every IdentityPolicy of the cluster by `namespace/name`.
pub type PolicyObjects = BTreeMap<String, Arc<PolicyObject>>;

/// Runs the watch until the receiver side of `tx` is gone. `None` in the
/// channel means no complete list yet.
pub async fn run(client: kube::Client, metrics: KubeMetrics, tx: watch::Sender<Option<Arc<PolicyObjects>>>) {
    let resource = crd::api_resource();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let writer = reflector::store::Writer::new(resource);
    let store = writer.as_reader();
    let mut stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    )
    .boxed();
    let mut synced = false;
    let mut missing_crd = false;
    let count = |t: &str| metrics.policy_watch_events.with_label_values(&[t]).inc();
    tracing::info!("watching IdentityPolicies");
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
                tracing::info!(policies = store.len(), "IdentityPolicy list complete");
                synced = true;
                missing_crd = false;
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
            Err(e) if is_not_found(&e) => {
                if !missing_crd {
                    tracing::warn!(
                        "the IdentityPolicy CRD is not installed (404): no IdentityPolicies, only the configuration's policies; \
                         watching for it"
                    );
                }
                missing_crd = true;
                if !synced {
                    tx.send_if_modified(|v| {
                        let first = v.is_none();
                        if first {
                            *v = Some(Arc::new(PolicyObjects::new()));
                        }
                        first
                    });
                }
                false
            }
            Err(e) => {
                metrics.api_errors.inc();
                tracing::warn!(error = %e, "IdentityPolicy watch: Kubernetes API error; retrying with backoff, bindings keep their state");
                false
            }
        };
        if changed && synced && tx.send(Some(Arc::new(snapshot(&store)))).is_err() {
            break;
        }
    }
    tracing::info!("IdentityPolicy watch stopped");
}

fn is_not_found(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        _ => return false,
    };
    api.code == 404
}

fn snapshot(store: &Store<DynamicObject>) -> PolicyObjects {
    store
        .state()
        .iter()
        .map(|o| PolicyObject::from_dynamic(o))
        .map(|p| (p.key(), Arc::new(p)))
        .collect()
}
