//! The controller: each pod snapshot, IdentityPolicy change or
//! configuration reload → compile the IdentityPolicies, bind every pod to its
//! policy (`catalog`, `binding`), find its network namespace (`podns`), hand
//! the workloads to the agent (a [`PodSink`]), then report each pod's state
//! in metrics, logs and Events, and each IdentityPolicy's view from this node.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource as _;
use tokio::sync::watch as channel;

use super::binding::{self, Binding, PodPolicy};
use super::catalog::{self, Compiler};
use super::events::{PodEvents, Reason};
use super::metrics::KubeMetrics;
use super::podns::{self, PodNsResolver};
use super::policies::PolicyObjects;
use super::status::{NodeReport, PolicyReport};
use super::watch::PodSet;
use super::{PodSink, PodWorkload};

/// How often pods whose namespace could not be found are looked at again.
const RETRY: Duration = Duration::from_secs(2);

/// A pod's reported state: the metric's `state` label and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodState {
    state: &'static str,
    why: String,
    /// The event a deny-all pod gets.
    deny: Reason,
}

struct Known {
    state: PodState,
    reference: ObjectReference,
}

/// Binds, resolves, applies and reports.
pub struct Controller<S> {
    sink: Arc<S>,
    events: PodEvents,
    metrics: KubeMetrics,
    resolver: PodNsResolver,
    /// Namespace found per pod UID: the path and the namespace's inode.
    netns: HashMap<String, (PathBuf, u64)>,
    known: HashMap<String, Known>,
    /// Some pod's namespace was not found, or its enrolment failed: look again after `RETRY`.
    retry: bool,
    compiler: Compiler,
    /// The policy each pod was bound to on the last pass.
    bound: HashMap<String, PodPolicy>,
    reports: channel::Sender<Option<Arc<NodeReport>>>,
}

impl<S: PodSink> Controller<S> {
    pub fn new(sink: Arc<S>, events: PodEvents, metrics: KubeMetrics, resolver: PodNsResolver) -> Self {
        Self {
            sink,
            events,
            metrics,
            resolver,
            netns: HashMap::new(),
            known: HashMap::new(),
            retry: false,
            compiler: Compiler::default(),
            bound: HashMap::new(),
            reports: channel::channel(None).0,
        }
    }

    /// This node's view of every IdentityPolicy, after each pass (for the status writer).
    pub fn status_reports(&self) -> channel::Receiver<Option<Arc<NodeReport>>> {
        self.reports.subscribe()
    }

    /// Reconciles on every snapshot of pods or IdentityPolicies, every
    /// configuration change, and (while some pod's namespace is missing)
    /// every `RETRY`, until the watches end. Nothing is bound before both
    /// first lists are complete.
    pub async fn run(
        mut self,
        mut pods: channel::Receiver<Option<Arc<PodSet>>>,
        mut policies: channel::Receiver<Option<Arc<PolicyObjects>>>,
    ) {
        let mut config = self.sink.config_changes();
        // Status writes (every agent's) change the objects too; only a new
        // spec (generation), a new or deleted object changes a binding.
        let mut specs_seen = None;
        let mut dirty = true;
        // A deadline, not a fresh sleep per wake-up: status changes must not
        // keep postponing the retry.
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let snapshot = pods.borrow_and_update().clone();
            let objects = policies.borrow_and_update().clone();
            if let (Some(set), Some(objects)) = (snapshot, objects) {
                let specs: Vec<(String, String, i64)> = objects
                    .iter()
                    .map(|(k, o)| (k.clone(), o.uid.clone(), o.generation))
                    .collect();
                if dirty || specs_seen.as_ref() != Some(&specs) {
                    self.reconcile(&set, &objects).await;
                    specs_seen = Some(specs);
                    retry_at = tokio::time::Instant::now() + RETRY;
                }
            }
            dirty = true;
            tokio::select! {
                r = pods.changed() => if r.is_err() { break },
                r = policies.changed() => if r.is_err() { break } else { dirty = false },
                r = config.changed() => if r.is_err() { break },
                () = tokio::time::sleep_until(retry_at), if self.retry => {}
            }
        }
    }

    /// One pass over a complete pod set.
    pub async fn reconcile(&mut self, set: &PodSet, objects: &PolicyObjects) {
        let config = self.sink.config();
        let catalog = self.compiler.catalog(&config, objects);
        let mut states: HashMap<String, PodState> = HashMap::new();
        let mut workloads = Vec::new();
        let mut present = HashSet::new();
        self.retry = false;
        for (name, pod) in set {
            match binding::bind_in(pod, &config.kubernetes, &catalog, self.bound.get(name)) {
                Binding::Waiting(why) => {
                    states.insert(name.clone(), state("waiting", why));
                }
                Binding::Refused(why) => {
                    states.insert(name.clone(), state("refused", why));
                }
                Binding::Failed(why) => {
                    present.insert(name.clone());
                    states.insert(name.clone(), state("failed", why));
                }
                Binding::Enrol(b) => {
                    present.insert(name.clone());
                    match self.netns_of(&b.uid) {
                        Ok(netns) => {
                            states.insert(name.clone(), bound_state(&b.policy, &b.ports));
                            let cgroup = self.resolver.cgroup_of(&b.uid);
                            workloads.push(PodWorkload {
                                name: name.clone(),
                                labels: b.labels,
                                policy: b.policy,
                                ips: b.ips,
                                ports: b.ports,
                                netns,
                                uid: b.uid,
                                service_account: b.service_account,
                                cgroup,
                            });
                        }
                        Err(e) => {
                            if matches!(e, podns::PodNsError::HostNetns { .. }) {
                                states.insert(name.clone(), state("refused", e.to_string()));
                            } else {
                                self.retry = true;
                                states.insert(
                                    name.clone(),
                                    state("failed", format!("network namespace not found: {e}")),
                                );
                            }
                        }
                    }
                }
            }
        }
        let live: HashSet<&str> = set.values().filter_map(|p| p.metadata.uid.as_deref()).collect();
        self.netns.retain(|uid, _| live.contains(uid.as_str()));
        self.bound = workloads.iter().map(|w| (w.name.clone(), w.policy.clone())).collect();
        let bindings: Vec<(String, PodPolicy)> = workloads.iter().map(|w| (w.name.clone(), w.policy.clone())).collect();

        let failures = self.sink.apply_pods(workloads, present).await;
        // The agent tries a failed enrolment again after a while: come back.
        self.retry |= !failures.is_empty();
        for (name, why) in failures {
            states.insert(name, state("failed", why));
        }
        self.report_policies(&catalog, &bindings, &states);
        self.report(set, states);
        if self.metrics.synced.get() == 0 {
            self.metrics.synced.set(1);
            tracing::info!(pods = set.len(), policies = objects.len(), "first pod list applied");
        }
    }

    /// This node's view of each IdentityPolicy, for its status.
    fn report_policies(
        &self,
        catalog: &catalog::Catalog,
        bindings: &[(String, PodPolicy)],
        states: &HashMap<String, PodState>,
    ) {
        let mut out = NodeReport::new();
        for c in catalog.resources() {
            out.insert(
                c.key.clone(),
                PolicyReport {
                    generation: c.generation,
                    accepted: c.verdict.as_ref().map(|_| ()).map_err(Clone::clone),
                    ..Default::default()
                },
            );
        }
        for (pod, policy) in bindings {
            match policy {
                PodPolicy::Resource(r) if states.get(pod).is_some_and(|s| s.state == "enrolled") => {
                    if let Some(report) = out.get_mut(&r.key) {
                        report.pods += 1;
                        report.applied = report.applied.max(Some(r.generation));
                    }
                }
                PodPolicy::Conflict(keys, _) => {
                    for key in keys {
                        let others: Vec<&str> = keys.iter().filter(|k| *k != key).map(String::as_str).collect();
                        if let Some(report) = out.get_mut(key) {
                            report
                                .conflicts
                                .push(format!("{pod}: also selected by {}", others.join(", ")));
                        }
                    }
                }
                _ => {}
            }
        }
        self.reports.send_replace(Some(Arc::new(out)));
    }

    /// The pod's namespace path: the one found before while it is still
    /// there, else a new one. When the process it was found through has
    /// exited but the pod's namespace is the same (another container's
    /// process), the old path is kept: the agent holds the namespace open,
    /// and a new path would needlessly re-enrol the pod.
    fn netns_of(&mut self, uid: &str) -> Result<PathBuf, podns::PodNsError> {
        if let Some((path, _)) = self.netns.get(uid)
            && path.exists()
        {
            return Ok(path.clone());
        }
        let found = self.resolver.resolve(uid)?;
        let ino = std::fs::metadata(&found)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        match self.netns.get(uid) {
            Some((old, old_ino)) if *old_ino == ino => Ok(old.clone()),
            _ => {
                self.netns.insert(uid.to_string(), (found.clone(), ino));
                Ok(found)
            }
        }
    }

    /// Metrics, logs and events for what changed.
    fn report(&mut self, set: &PodSet, states: HashMap<String, PodState>) {
        // Pods gone from the set (deleted, label removed).
        let gone: Vec<String> = self.known.keys().filter(|n| !set.contains_key(*n)).cloned().collect();
        for name in gone {
            if let Some(k) = self.known.remove(&name) {
                self.metrics.set_pod_state(&name, None);
                if is_protected(&k.state) {
                    tracing::info!(pod = %name, "pod un-enrolled: deleted or no longer opted in");
                    self.events.post_ref(
                        k.reference,
                        Reason::Unenrolled,
                        "no longer watched (deleted, or the opt-in label was removed); traffic goes straight to the pod".into(),
                    );
                }
            }
        }
        for (name, pod) in set {
            let Some(now) = states.get(name) else { continue };
            let before = self.known.get(name).map(|k| k.state.clone());
            if before.as_ref() == Some(now) {
                continue;
            }
            self.metrics.set_pod_state(name, Some(now.state));
            let was_protected = before.as_ref().is_some_and(is_protected);
            match now.state {
                "enrolled" => {
                    tracing::info!(pod = %name, detail = %now.why, "pod enrolled");
                    self.events
                        .post(pod, Reason::Enrolled, format!("protected by nodeward: {}", now.why));
                }
                "deny_all" => {
                    tracing::warn!(pod = %name, detail = %now.why, "pod enrolled deny-all: no single accepted policy binds it");
                    self.events.post(pod, now.deny, now.why.clone());
                }
                "failed" => {
                    tracing::error!(pod = %name, error = %now.why, "pod not enrolled");
                    self.events.post(pod, Reason::EnrolmentFailed, now.why.clone());
                }
                "refused" => {
                    tracing::warn!(pod = %name, why = %now.why, "pod refused");
                    self.events.post(pod, Reason::HostNetworkRefused, now.why.clone());
                }
                _ => {
                    tracing::debug!(pod = %name, why = %now.why, "pod waiting");
                    if was_protected {
                        self.events
                            .post(pod, Reason::Unenrolled, format!("un-enrolled: {}", now.why));
                    }
                }
            }
            self.known.insert(
                name.clone(),
                Known {
                    state: now.clone(),
                    reference: pod.object_ref(&()),
                },
            );
        }
    }
}

fn state(state: &'static str, why: String) -> PodState {
    PodState {
        state,
        why,
        deny: Reason::PolicyNotFound,
    }
}

/// An enrolled pod's state: bound, or deny-all and why.
fn bound_state(policy: &PodPolicy, ports: &[u16]) -> PodState {
    let deny = |reason: Reason, why: &str| PodState {
        state: "deny_all",
        why: format!("{why}: every request is refused (no_policy)"),
        deny: reason,
    };
    match policy {
        PodPolicy::Named(p) => state("enrolled", format!("policy {p}, ports {ports:?}")),
        PodPolicy::Resource(r) => state(
            "enrolled",
            format!(
                "IdentityPolicy {} (generation {}), ports {ports:?}",
                r.key, r.generation
            ),
        ),
        PodPolicy::Missing(why) => deny(Reason::PolicyNotFound, why),
        PodPolicy::Conflict(_, why) => deny(Reason::PolicyConflict, why),
        PodPolicy::NotAccepted(_, why) => deny(Reason::PolicyNotAccepted, why),
    }
}

fn is_protected(s: &PodState) -> bool {
    s.state == "enrolled" || s.state == "deny_all"
}
