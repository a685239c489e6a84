//! The pod watch's side of [`Control`] and restarts: applying a complete
//! pod set, and un-enrolling what a previous agent pinned that neither the
//! file nor the pod list has any more.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::watch;

use super::supervisor::{Control, lock};
use crate::config::Config;
use crate::k8s::{PodSink, PodWorkload};

impl Control {
    /// After a restart: un-enrol what a previous agent protected that this
    /// configuration no longer has. What it still has stays protected (and
    /// dropped, fail closed) until `apply` gives it a listener again.
    ///
    /// With the pod watch on, pinned pods cannot be told from gone ones until
    /// the first full pod list: nothing is un-enrolled here, and
    /// [`Control::apply_pods`] does it when that list arrives.
    pub fn adopt_pinned_state(&self, config: &Config) {
        if config.kubernetes.enabled {
            tracing::info!("pinned eBPF state is reconciled when the first pod list arrives");
            return;
        }
        let keep: HashSet<String> = config
            .workloads
            .iter()
            .filter(|w| w.netns.is_some())
            .map(|w| w.name.clone())
            .collect();
        self.forget_pinned(&keep);
    }

    /// Un-enrols pinned workloads (a previous agent's, or pods this one
    /// could not enrol) that are not in `keep`.
    pub(super) fn forget_pinned(&self, keep: &HashSet<String>) {
        let mut e = lock(&self.enroller);
        if !e.has_pinned_state() {
            return;
        }
        match e.reconcile(keep) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    ?removed,
                    "un-enrolled workloads that left the configuration while the agent was down"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "cannot adopt the pinned eBPF state"),
        }
    }

    /// Makes `pods` the pod workloads (the Kubernetes watch's complete set)
    /// and re-applies the running configuration with them. Pinned state of
    /// workloads neither configured, in `present`, nor in `pods` is
    /// un-enrolled: after a restart, pods deleted while the agent was down
    /// are released only now that the full list is known. Returns, per pod
    /// that is not enrolled, why.
    pub async fn apply_pods(&self, pods: Vec<PodWorkload>, present: HashSet<String>) -> HashMap<String, String> {
        let mut st = self.state.lock().await;
        let config = (*self.config()).clone();
        let mut out = HashMap::new();
        for p in &pods {
            if config.workloads.iter().any(|w| w.name == p.name) {
                out.insert(
                    p.name.clone(),
                    "a static workload of the configuration file has the same name".to_string(),
                );
            }
        }
        let mut keep: HashSet<String> = config
            .workloads
            .iter()
            .filter(|w| w.netns.is_some())
            .map(|w| w.name.clone())
            .collect();
        keep.extend(present.iter().cloned());
        st.present = present;
        keep.extend(pods.iter().map(|p| p.name.clone()));
        keep.extend(st.listeners.keys().cloned());
        self.forget_pinned(&keep);
        st.pods = pods;
        match self.apply_locked(&mut st, config, true).await {
            Ok(()) => {
                for p in &st.pods {
                    if let Some(f) = st.failed.get(&p.name) {
                        out.entry(p.name.clone()).or_insert_with(|| f.why.to_string());
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot apply the pod set");
                for p in &st.pods {
                    out.entry(p.name.clone()).or_insert_with(|| e.to_string());
                }
            }
        }
        lock(&self.unsynced).take();
        out
    }
}

impl PodSink for Control {
    fn config(&self) -> Arc<Config> {
        Control::config(self)
    }

    fn config_changes(&self) -> watch::Receiver<u64> {
        self.config_gen.subscribe()
    }

    fn apply_pods(
        &self,
        pods: Vec<PodWorkload>,
        present: HashSet<String>,
    ) -> impl std::future::Future<Output = HashMap<String, String>> + Send {
        Control::apply_pods(self, pods, present)
    }
}
