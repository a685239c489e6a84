//! The request path's metrics: families registered once, and per workload
//! handles resolved when its listener starts, so a request increments
//! counters it already holds instead of looking series up by label strings.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::authz::{CacheCounters, Outcome};
use crate::reason::Reason;

#[derive(Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    decision_seconds: HistogramVec,
    upstream_errors: IntCounterVec,
    connections: IntCounterVec,
    egress_requests: IntCounterVec,
    egress_connections: IntCounterVec,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub token_cache_entries: IntGauge,
}

impl ProxyMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "nodeward_requests_total",
                "Requests by workload, decision (allow, deny, audit_deny) and reason",
            ),
            &["workload", "decision", "reason"],
        )?;
        let decision_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nodeward_decision_duration_seconds",
                "Time from request head to decision (authn + authz)",
            )
            .buckets(vec![
                1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 0.025, 0.1, 0.5, 2.0,
            ]),
            &["workload"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "nodeward_upstream_errors_total",
                "Upstream failures by workload and kind (connect, timeout, protocol)",
            ),
            &["workload", "kind"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new("nodeward_connections_total", "Client connections accepted by workload"),
            &["workload"],
        )?;
        let egress_requests = IntCounterVec::new(
            Opts::new(
                "nodeward_egress_requests_total",
                "Outbound requests of enrolled workloads by outcome (sent with a token, sent_app_token, passthrough, refused, upstream_error)",
            ),
            &["workload", "outcome"],
        )?;
        let egress_connections = IntCounterVec::new(
            Opts::new(
                "nodeward_egress_connections_total",
                "Outbound connections accepted by a workload's egress listener, by whether their destination was known (steered) or not (unsteered: closed)",
            ),
            &["workload", "result"],
        )?;
        let token_cache_hits = IntCounter::new("nodeward_token_cache_hits_total", "Verified-token cache hits")?;
        let token_cache_misses = IntCounter::new("nodeward_token_cache_misses_total", "Verified-token cache misses")?;
        let token_cache_entries = IntGauge::new("nodeward_token_cache_entries", "Tokens in the verified-token cache")?;
        r.register(Box::new(requests.clone()))?;
        r.register(Box::new(decision_seconds.clone()))?;
        r.register(Box::new(upstream_errors.clone()))?;
        r.register(Box::new(connections.clone()))?;
        r.register(Box::new(egress_requests.clone()))?;
        r.register(Box::new(egress_connections.clone()))?;
        r.register(Box::new(token_cache_hits.clone()))?;
        r.register(Box::new(token_cache_misses.clone()))?;
        r.register(Box::new(token_cache_entries.clone()))?;
        Ok(Self {
            requests,
            decision_seconds,
            upstream_errors,
            connections,
            egress_requests,
            egress_connections,
            token_cache_hits,
            token_cache_misses,
            token_cache_entries,
        })
    }

    /// Families that belong to no registry (`nodeward explain`, unit tests).
    pub fn unregistered() -> Self {
        #[expect(clippy::unwrap_used, reason = "constant, valid metric definitions")]
        Self::register(&Registry::new()).unwrap()
    }

    pub fn cache_counters(&self) -> CacheCounters {
        CacheCounters {
            hits: self.token_cache_hits.clone(),
            misses: self.token_cache_misses.clone(),
        }
    }

    /// The handles of one workload.
    pub fn workload(&self, name: &str) -> WorkloadMetrics {
        WorkloadMetrics {
            name: name.to_string(),
            requests: self.requests.clone(),
            resolved: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            decision_seconds: self.decision_seconds.with_label_values(&[name]),
            connections: self.connections.with_label_values(&[name]),
            upstream: self.upstream_errors.clone(),
            upstream_resolved: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl ProxyMetrics {
    /// The handles of one workload's egress listener.
    pub fn egress(&self, name: &str) -> EgressMetrics {
        EgressMetrics {
            name: name.to_string(),
            requests: self.egress_requests.clone(),
            resolved: std::array::from_fn(|_| OnceLock::new()),
            connections: self.egress_connections.with_label_values(&[name, "steered"]),
            unsteered: self.egress_connections.with_label_values(&[name, "unsteered"]),
        }
    }
}

/// What became of one outbound request (`nodeward_egress_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressOutcome {
    /// Sent with the token its rule names.
    Sent,
    /// Sent with the `Authorization` the application set (the rule keeps it).
    AppToken,
    /// No rule for its host: sent unchanged.
    Passthrough,
    /// Not sent: no token, or a request that cannot be forwarded.
    Refused,
    /// The destination could not be reached or did not answer in time.
    UpstreamError,
}

impl EgressOutcome {
    const ALL: [Self; 5] = [
        Self::Sent,
        Self::AppToken,
        Self::Passthrough,
        Self::Refused,
        Self::UpstreamError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::AppToken => "sent_app_token",
            Self::Passthrough => "passthrough",
            Self::Refused => "refused",
            Self::UpstreamError => "upstream_error",
        }
    }
}

/// One egress listener's handles, resolved on first use per outcome.
pub struct EgressMetrics {
    name: String,
    requests: IntCounterVec,
    resolved: [OnceLock<IntCounter>; EgressOutcome::ALL.len()],
    pub connections: IntCounter,
    pub unsteered: IntCounter,
}

impl EgressMetrics {
    pub fn request(&self, o: EgressOutcome) -> &IntCounter {
        self.resolved[o as usize].get_or_init(|| self.requests.with_label_values(&[&self.name, o.as_str()]))
    }
}

/// Distinct reasons: the width of the per-workload request counter table.
const REASONS: usize = Reason::ALL.len();

/// What went wrong talking to an upstream (`nodeward_upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }
}

/// One workload's metric handles. Request counters are resolved on first
/// use per (decision, reason), so a workload exports only the series it has
/// seen, and every later request is a table lookup.
pub struct WorkloadMetrics {
    name: String,
    requests: IntCounterVec,
    resolved: [[OnceLock<IntCounter>; REASONS]; 3],
    pub decision_seconds: Histogram,
    pub connections: IntCounter,
    upstream: IntCounterVec,
    upstream_resolved: [OnceLock<IntCounter>; 3],
}

impl WorkloadMetrics {
    pub fn request(&self, outcome: Outcome, reason: Reason) -> &IntCounter {
        let row = match outcome {
            Outcome::Allow => 0,
            Outcome::Deny => 1,
            Outcome::AuditDeny => 2,
        };
        self.resolved[row][reason as usize].get_or_init(|| {
            self.requests
                .with_label_values(&[&self.name, outcome.as_str(), reason.as_str()])
        })
    }

    pub fn upstream_error(&self, kind: UpstreamFailure) -> &IntCounter {
        self.upstream_resolved[kind as usize]
            .get_or_init(|| self.upstream.with_label_values(&[&self.name, kind.as_str()]))
    }
}
