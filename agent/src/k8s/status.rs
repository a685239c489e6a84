//! IdentityPolicy status, written by every node's agent without fighting:
//!
//! - **Own entry only.** An agent writes `status.nodes.<its node>` (pods it
//!   binds, the generation they are bound to, its conflicts) and removes it
//!   when it binds nothing, so a policy's status holds only the nodes that
//!   use it. A map keyed by node name, because a JSON merge patch replaces
//!   lists whole but merges maps key by key.
//! - **Shared part, identical everywhere.** `Accepted` (the verdict of the
//!   same parser on the same spec and the same ConfigMap), `observedGeneration`
//!   and the totals over `nodes` are computed by each writer from the object
//!   it patches.
//! - **Optimistic concurrency.** Every write is a merge patch of `/status`
//!   carrying the resourceVersion it was computed from: a stale one gets 409
//!   and is recomputed from the newer object the watch brings, so a total is
//!   never summed from an old view and a lagging agent never puts back an
//!   older generation.
//! - **No storms.** Nothing is written when the object already says it
//!   (conditions compared without their times); at most one write per policy
//!   per [`MIN_INTERVAL`]; a write that changes only the shared part waits a
//!   per-node delay (< 1 s) first, so after a spec change one agent usually
//!   writes `Accepted` and the others find it done.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::crd::{self, ACCEPTED, IdentityPolicyStatus, NodeStatus, PolicyCondition};
use super::metrics::KubeMetrics;
use super::policies::{PolicyObject, PolicyObjects};

/// At most one status write per policy per this interval, from one agent.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Time limit on one write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's view of one IdentityPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyReport {
    /// The generation the verdict is about.
    pub generation: i64,
    /// `Ok`, or `nodeward check`'s message.
    pub accepted: Result<(), String>,
    /// The generation this node's pods are bound to.
    pub applied: Option<i64>,
    /// Pods of this node bound to it (enrolled).
    pub pods: i64,
    /// `namespace/pod: also selected by …`.
    pub conflicts: Vec<String>,
}

impl Default for PolicyReport {
    fn default() -> Self {
        Self {
            generation: 0,
            accepted: Ok(()),
            applied: None,
            pods: 0,
            conflicts: Vec::new(),
        }
    }
}

/// This node's view of every IdentityPolicy, by `namespace/name`.
pub type NodeReport = BTreeMap<String, PolicyReport>;

/// The writing task's state.
pub struct StatusWriter {
    client: kube::Client,
    node: String,
    metrics: KubeMetrics,
    last_write: HashMap<String, Instant>,
    /// When a needed write was first seen (the per-node delay counts from it).
    pending: HashMap<String, Instant>,
    /// Our last successful write per policy: the resourceVersion it was
    /// based on, the one it made, and the status it left; used until the
    /// watch shows the object past it.
    written: HashMap<String, (String, String, IdentityPolicyStatus)>,
}

/// What this node would change, if anything.
struct Change {
    body: Value,
    /// Only the shared part (conditions, totals) differs, not our entry.
    shared_only: bool,
}

impl StatusWriter {
    pub fn new(client: kube::Client, node: String, metrics: KubeMetrics) -> Self {
        Self {
            client,
            node,
            metrics,
            last_write: HashMap::new(),
            pending: HashMap::new(),
            written: HashMap::new(),
        }
    }

    /// Writes until either channel closes.
    pub async fn run(
        mut self,
        mut reports: watch::Receiver<Option<Arc<NodeReport>>>,
        mut objects: watch::Receiver<Option<Arc<PolicyObjects>>>,
    ) {
        loop {
            let r = reports.borrow_and_update().clone();
            let o = objects.borrow_and_update().clone();
            let wait = match (r, o) {
                (Some(r), Some(o)) => self.pass(&r, &o).await,
                _ => None,
            };
            tokio::select! {
                c = reports.changed() => if c.is_err() { break },
                c = objects.changed() => if c.is_err() { break },
                () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
        }
    }

    /// One look at every policy; returns when to look again, if a write is due later.
    async fn pass(&mut self, reports: &NodeReport, objects: &PolicyObjects) -> Option<Duration> {
        self.pending.retain(|k, _| objects.contains_key(k));
        self.written.retain(|k, _| objects.contains_key(k));
        self.last_write.retain(|k, _| objects.contains_key(k));
        let mut next: Option<Duration> = None;
        let mut soon = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        for (key, report) in reports {
            let Some(o) = objects.get(key) else { continue };
            // The controller has not compiled this generation yet: it will.
            if report.generation != o.generation {
                continue;
            }
            let (rv, current) = self.view(key, o);
            let Some(change) = change(&self.node, o.generation, &rv, &current, report) else {
                self.pending.remove(key);
                continue;
            };
            let now = Instant::now();
            let delay = if change.shared_only {
                jitter(&self.node)
            } else {
                Duration::ZERO
            };
            let mut due = *self.pending.entry(key.clone()).or_insert(now) + delay;
            if let Some(last) = self.last_write.get(key) {
                due = due.max(*last + MIN_INTERVAL);
            }
            if now < due {
                soon(due - now);
                continue;
            }
            self.last_write.insert(key.clone(), now);
            match self.write(o, &change.body).await {
                Ok(written) => {
                    self.metrics.status_writes.with_label_values(&["written"]).inc();
                    self.pending.remove(key);
                    let w = PolicyObject::from_dynamic(&written);
                    self.written.insert(key.clone(), (rv, w.resource_version, w.status));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Someone wrote first: the watch brings the newer object.
                    self.metrics.status_writes.with_label_values(&["conflict"]).inc();
                    tracing::debug!(policy = %key, "status write raced another agent's; recomputing");
                    soon(MIN_INTERVAL);
                }
                Err(e) => {
                    self.metrics.status_writes.with_label_values(&["error"]).inc();
                    tracing::warn!(policy = %key, error = %e, "cannot write IdentityPolicy status; retrying");
                    soon(MIN_INTERVAL);
                }
            }
        }
        next
    }

    /// The newest status known for `o`: ours, if we wrote after the version the watch shows.
    fn view(&self, key: &str, o: &PolicyObject) -> (String, IdentityPolicyStatus) {
        match self.written.get(key) {
            Some((based_on, made, status)) if *based_on == o.resource_version => (made.clone(), status.clone()),
            _ => (o.resource_version.clone(), o.status.clone()),
        }
    }

    async fn write(&self, o: &PolicyObject, body: &Value) -> Result<DynamicObject, kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &o.namespace, &crd::api_resource());
        let params = PatchParams::default();
        let body = Patch::Merge(body);
        let patch = api.patch_status(&o.name, &params, &body);
        match tokio::time::timeout(WRITE_TIMEOUT, patch).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "status write timed out").into(),
            )),
        }
    }
}

/// The merge patch that makes `current` say what this node knows, or `None`.
fn change(
    node: &str,
    generation: i64,
    rv: &str,
    current: &IdentityPolicyStatus,
    report: &PolicyReport,
) -> Option<Change> {
    let (status, reason, message) = match &report.accepted {
        Ok(()) => (
            "True",
            "Compiled",
            "the spec compiles: pods it selects are bound to it".to_string(),
        ),
        Err(why) => ("False", "Invalid", why.clone()),
    };
    let old = current.conditions.iter().find(|c| c.type_ == ACCEPTED);
    let mut accepted = PolicyCondition {
        type_: ACCEPTED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: None,
    };
    let same_condition = old.is_some_and(|o| {
        PolicyCondition {
            last_transition_time: None,
            ..o.clone()
        } == accepted
    });
    accepted.last_transition_time = match old {
        Some(o) if o.status == accepted.status => o.last_transition_time.clone(),
        _ => Some(now()),
    };
    let own = (report.pods > 0 || !report.conflicts.is_empty()).then(|| NodeStatus {
        pods: report.pods,
        observed_generation: report.applied,
        conflicts: report.conflicts.clone(),
    });
    let mut nodes = current.nodes.clone();
    match &own {
        Some(n) => nodes.insert(node.to_string(), n.clone()),
        None => nodes.remove(node),
    };
    let pods: i64 = nodes.values().map(|n| n.pods).sum();
    let conflicts: i64 = nodes.values().map(|n| n.conflicts.len() as i64).sum();
    let own_same = current.nodes.get(node) == own.as_ref();
    if same_condition
        && own_same
        && current.observed_generation == Some(generation)
        && current.pods == Some(pods)
        && current.conflicts == Some(conflicts)
    {
        return None;
    }
    let mut conditions: Vec<PolicyCondition> = current
        .conditions
        .iter()
        .filter(|c| c.type_ != ACCEPTED)
        .cloned()
        .collect();
    conditions.insert(0, accepted);
    let body = json!({
        "metadata": {"resourceVersion": rv},
        "status": {
            "observedGeneration": generation,
            "conditions": conditions,
            "pods": pods,
            "conflicts": conflicts,
            "nodes": {node: own},
        },
    });
    Some(Change {
        body,
        shared_only: own_same,
    })
}

/// A per-node delay below one second, the same for a node every time.
fn jitter(node: &str) -> Duration {
    let mut h = DefaultHasher::new();
    node.hash(&mut h);
    Duration::from_millis(h.finish() % 1000)
}

fn now() -> String {
    let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pods: i64) -> PolicyReport {
        PolicyReport {
            generation: 2,
            accepted: Ok(()),
            applied: Some(2),
            pods,
            conflicts: Vec::new(),
        }
    }

    #[test]
    fn a_status_that_says_it_already_is_not_written_again() {
        let empty = IdentityPolicyStatus::default();
        let c = change("node-1", 2, "7", &empty, &report(3)).expect("a first write");
        assert!(!c.shared_only);
        assert_eq!(c.body["metadata"]["resourceVersion"], "7");
        assert_eq!(c.body["status"]["nodes"]["node-1"]["pods"], 3);
        assert_eq!(c.body["status"]["pods"], 3);
        let written: IdentityPolicyStatus = serde_json::from_value(c.body["status"].clone()).expect("status");
        assert!(change("node-1", 2, "8", &written, &report(3)).is_none());
        // Another node's entry changes nothing for us; our totals include it.
        let mut theirs = written.clone();
        theirs.nodes.insert(
            "node-2".into(),
            NodeStatus {
                pods: 2,
                ..Default::default()
            },
        );
        theirs.pods = Some(5);
        assert!(change("node-1", 2, "9", &theirs, &report(3)).is_none());
        // Binding nothing removes our entry; the total follows.
        let c = change("node-1", 2, "9", &theirs, &report(0)).expect("removal");
        assert_eq!(c.body["status"]["nodes"]["node-1"], Value::Null);
        assert_eq!(c.body["status"]["pods"], 2);
    }

    #[test]
    fn a_refused_spec_is_accepted_false_with_the_message() {
        let r = PolicyReport {
            accepted: Err("IdentityPolicy shop/x: key `spec.rules[0]`: bad".into()),
            ..report(0)
        };
        let c = change("node-1", 2, "7", &IdentityPolicyStatus::default(), &r).expect("write");
        assert!(c.shared_only, "no entry of ours to write");
        let cond = &c.body["status"]["conditions"][0];
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("False"), Some("Invalid"))
        );
        assert!(cond["message"].as_str().is_some_and(|m| m.contains("spec.rules[0]")));
        assert_eq!(cond["observedGeneration"], 2);
        assert!(jitter("node-1") < Duration::from_secs(1));
    }
}
