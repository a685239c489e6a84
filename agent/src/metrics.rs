//! The process's Prometheus registry and the request-path metrics. Each
//! subsystem registers its own families here at start (providers in
//! `provider/metrics.rs`); every name starts with `nodeward_`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::audit::AuditMetrics;
use crate::k8s::KubeMetrics;
use crate::provider::ProviderMetricFamilies;

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub decision_seconds: HistogramVec,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub token_cache_entries: IntGauge,
    pub upstream_errors: IntCounterVec,
    pub workloads: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub connections: IntCounterVec,
    pub ebpf_connections: IntCounterVec,
    pub enrolment_seconds: prometheus::Histogram,
    /// `/readyz` as a number, set at scrape time: an alert needs a series, not an HTTP status.
    pub ready: IntGauge,
    pub providers: ProviderMetricFamilies,
    pub kubernetes: KubeMetrics,
    pub audit: AuditMetrics,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
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
        let token_cache_hits = IntCounter::new("nodeward_token_cache_hits_total", "Verified-token cache hits")?;
        let token_cache_misses = IntCounter::new("nodeward_token_cache_misses_total", "Verified-token cache misses")?;
        let token_cache_entries = IntGauge::new("nodeward_token_cache_entries", "Tokens in the verified-token cache")?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "nodeward_upstream_errors_total",
                "Upstream failures by workload and kind (connect, timeout, protocol)",
            ),
            &["workload", "kind"],
        )?;
        let workloads = IntGaugeVec::new(Opts::new("nodeward_workloads", "Workloads by state"), &["state"])?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "nodeward_config_reloads_total",
                "Configuration reloads by result (ok, rejected)",
            ),
            &["result"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new("nodeward_connections_total", "Client connections accepted by workload"),
            &["workload"],
        )?;
        let ebpf_connections = IntCounterVec::new(
            Opts::new(
                "nodeward_ebpf_connections_total",
                "Connections to protected destinations seen by the SK_LOOKUP program, by workload and verdict (steered, passed, dropped_fail_closed)",
            ),
            &["workload", "verdict"],
        )?;
        let enrolment_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "nodeward_enrolment_duration_seconds",
                "Time to enrol a steered workload (listener, protect, attach)",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0]),
        )?;
        let ready = IntGauge::new(
            "nodeward_ready",
            "1 when /readyz answers 200 (config applied, every provider has usable keys, workloads enrolled)",
        )?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(ebpf_connections.clone()))?;
        registry.register(Box::new(enrolment_seconds.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(decision_seconds.clone()))?;
        registry.register(Box::new(token_cache_hits.clone()))?;
        registry.register(Box::new(token_cache_misses.clone()))?;
        registry.register(Box::new(token_cache_entries.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(workloads.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::new(
            std::process::id() as i32,
            "nodeward",
        )))?;
        let providers = ProviderMetricFamilies::register(&registry)?;
        let kubernetes = KubeMetrics::register(&registry)?;
        let audit = AuditMetrics::register(&registry)?;
        Ok(Self {
            registry,
            requests,
            decision_seconds,
            token_cache_hits,
            token_cache_misses,
            token_cache_entries,
            upstream_errors,
            workloads,
            config_reloads,
            connections,
            ebpf_connections,
            enrolment_seconds,
            ready,
            providers,
            kubernetes,
            audit,
        })
    }

    /// The Prometheus text exposition of every registered family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
