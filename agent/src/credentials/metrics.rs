//! Metrics of outbound tokens: fetches by kind and result, how long they
//! take, cache hits and misses, and how many tokens the node holds.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct CredentialMetrics {
    /// Fetches by token kind and result (ok, config, kubernetes, refused, provider, timeout).
    fetches: IntCounterVec,
    pub fetch_seconds: Histogram,
    pub hits: IntCounter,
    pub misses: IntCounter,
    /// Tokens (caller × kind) the node keeps.
    pub held: IntGauge,
}

impl CredentialMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let fetches = IntCounterVec::new(
            Opts::new(
                "nodeward_egress_token_fetches_total",
                "Outbound tokens obtained (TokenRequest, client credentials, token exchange) by kind and result",
            ),
            &["kind", "result"],
        )?;
        let fetch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "nodeward_egress_token_fetch_duration_seconds",
                "Time to obtain one outbound token",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
        let hits = IntCounter::new(
            "nodeward_egress_token_cache_hits_total",
            "Outbound requests whose token the node already held",
        )?;
        let misses = IntCounter::new(
            "nodeward_egress_token_cache_misses_total",
            "Outbound requests that had to wait for a token to be obtained",
        )?;
        let held = IntGauge::new(
            "nodeward_egress_tokens",
            "Outbound tokens (caller and kind) the node keeps fresh",
        )?;
        r.register(Box::new(fetches.clone()))?;
        r.register(Box::new(fetch_seconds.clone()))?;
        r.register(Box::new(hits.clone()))?;
        r.register(Box::new(misses.clone()))?;
        r.register(Box::new(held.clone()))?;
        Ok(Self {
            fetches,
            fetch_seconds,
            hits,
            misses,
            held,
        })
    }

    /// A registry of their own (tests, `explain`).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).unwrap_or_else(|e| unreachable!("fresh registry: {e}"))
    }

    pub(super) fn fetched(&self, kind: &str, result: &str) {
        self.fetches.with_label_values(&[kind, result]).inc();
    }
}
