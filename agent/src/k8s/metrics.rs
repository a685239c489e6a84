//! Metrics owned by the pod watch: each watched pod's enrolment state, watch
//! events by type, API errors, whether the first full pod list has been
//! applied, IdentityPolicy watch events and status writes.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The states a watched pod is reported in (`nodeward_kubernetes_pods{state}`).
pub const POD_STATES: [&str; 5] = ["waiting", "enrolled", "deny_all", "failed", "refused"];

#[derive(Clone)]
pub struct KubeMetrics {
    /// 1 for a pod's current state; the series goes when the pod does.
    pub pods: IntGaugeVec,
    /// Watch events by type: applied, deleted, restarted (a full re-list).
    pub watch_events: IntCounterVec,
    pub api_errors: IntCounter,
    /// 1 once the first full pod list of this node has been applied.
    pub synced: IntGauge,
    /// IdentityPolicy watch events by type.
    pub policy_watch_events: IntCounterVec,
    /// IdentityPolicy status writes by result: written, conflict (stale, retried), error.
    pub status_writes: IntCounterVec,
}

impl KubeMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let pods = IntGaugeVec::new(
            Opts::new(
                "nodeward_kubernetes_pods",
                "Watched pods of this node: 1 for the pod's state (waiting, enrolled, deny_all, failed, refused)",
            ),
            &["namespace", "pod", "state"],
        )?;
        let watch_events = IntCounterVec::new(
            Opts::new(
                "nodeward_kubernetes_watch_events_total",
                "Pod watch events by type (applied, deleted, restarted)",
            ),
            &["type"],
        )?;
        let api_errors = IntCounter::new(
            "nodeward_kubernetes_api_errors_total",
            "Kubernetes API errors seen by the pod watch (it re-lists with backoff; pods keep their state)",
        )?;
        let synced = IntGauge::new(
            "nodeward_kubernetes_synced",
            "1 once the first full pod list of this node has been applied",
        )?;
        let policy_watch_events = IntCounterVec::new(
            Opts::new(
                "nodeward_kubernetes_policy_watch_events_total",
                "IdentityPolicy watch events by type (applied, deleted, restarted)",
            ),
            &["type"],
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new(
                "nodeward_kubernetes_status_writes_total",
                "IdentityPolicy status writes by result (written, conflict: stale and retried, error)",
            ),
            &["result"],
        )?;
        r.register(Box::new(policy_watch_events.clone()))?;
        r.register(Box::new(status_writes.clone()))?;
        r.register(Box::new(pods.clone()))?;
        r.register(Box::new(watch_events.clone()))?;
        r.register(Box::new(api_errors.clone()))?;
        r.register(Box::new(synced.clone()))?;
        Ok(Self {
            pods,
            watch_events,
            api_errors,
            synced,
            policy_watch_events,
            status_writes,
        })
    }

    /// Reports `workload` (`namespace/pod`) in `state` only; `None` removes its series.
    pub fn set_pod_state(&self, workload: &str, state: Option<&str>) {
        let (ns, pod) = workload.split_once('/').unwrap_or(("", workload));
        for s in POD_STATES {
            if Some(s) == state {
                self.pods.with_label_values(&[ns, pod, s]).set(1);
            } else {
                let _ = self.pods.remove_label_values(&[ns, pod, s]);
            }
        }
    }
}
