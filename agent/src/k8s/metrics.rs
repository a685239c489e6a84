//! Metrics owned by the Kubernetes side: each watched pod's enrolment state,
//! watch events by type, API errors, whether the first full pod list has
//! been applied, IdentityPolicy watch events and status writes, and the RBAC
//! (SubjectAccessReview) and TokenReview questions asked of the API server.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
    /// SubjectAccessReviews by result: allowed, denied, error.
    pub rbac_reviews: IntCounterVec,
    pub rbac_cache_hits: IntCounter,
    pub rbac_cache_misses: IntCounter,
    pub rbac_review_seconds: Histogram,
    /// TokenReviews by result: authenticated, unauthenticated, error.
    pub token_reviews: IntCounterVec,
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
        let rbac_reviews = IntCounterVec::new(
            Opts::new(
                "nodeward_rbac_reviews_total",
                "SubjectAccessReviews asked of the API server, by result (allowed, denied, error)",
            ),
            &["result"],
        )?;
        let rbac_cache_hits = IntCounter::new(
            "nodeward_rbac_cache_hits_total",
            "RBAC decisions answered from the per-node cache",
        )?;
        let rbac_cache_misses = IntCounter::new(
            "nodeward_rbac_cache_misses_total",
            "RBAC decisions not in the per-node cache (asked, or joined a review in flight)",
        )?;
        let rbac_review_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "nodeward_rbac_review_duration_seconds",
                "Time the API server took to answer a SubjectAccessReview",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )?;
        let token_reviews = IntCounterVec::new(
            Opts::new(
                "nodeward_token_reviews_total",
                "TokenReviews asked of the API server, by result (authenticated, unauthenticated, error)",
            ),
            &["result"],
        )?;
        r.register(Box::new(pods.clone()))?;
        r.register(Box::new(watch_events.clone()))?;
        r.register(Box::new(api_errors.clone()))?;
        r.register(Box::new(synced.clone()))?;
        r.register(Box::new(rbac_reviews.clone()))?;
        r.register(Box::new(rbac_cache_hits.clone()))?;
        r.register(Box::new(rbac_cache_misses.clone()))?;
        r.register(Box::new(rbac_review_seconds.clone()))?;
        r.register(Box::new(token_reviews.clone()))?;
        Ok(Self {
            pods,
            watch_events,
            api_errors,
            synced,
            policy_watch_events,
            status_writes,
            rbac_reviews,
            rbac_cache_hits,
            rbac_cache_misses,
            rbac_review_seconds,
            token_reviews,
        })
    }

    /// Families that belong to no registry (`nodeward explain`).
    pub fn unregistered() -> Self {
        #[expect(clippy::unwrap_used, reason = "constant, valid metric definitions")]
        Self::register(&Registry::new()).unwrap()
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
