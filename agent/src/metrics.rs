//! The process's Prometheus registry: every subsystem registers its own
//! families here at start (the proxy's request metrics, the control plane's,
//! the providers', the pod watch's); every name starts with `nodeward_`.

use prometheus::{Encoder, Registry};

use crate::audit::AuditMetrics;
use crate::control::ControlMetrics;
use crate::credentials::CredentialMetrics;
use crate::k8s::KubeMetrics;
use crate::provider::ProviderMetricFamilies;
use crate::proxy::metrics::ProxyMetrics;

pub struct Metrics {
    pub registry: Registry,
    pub proxy: ProxyMetrics,
    pub control: ControlMetrics,
    pub providers: ProviderMetricFamilies,
    pub kubernetes: KubeMetrics,
    pub audit: AuditMetrics,
    pub credentials: CredentialMetrics,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::new(
            std::process::id() as i32,
            "nodeward",
        )))?;
        Ok(Self {
            proxy: ProxyMetrics::register(&registry)?,
            control: ControlMetrics::register(&registry)?,
            providers: ProviderMetricFamilies::register(&registry)?,
            kubernetes: KubeMetrics::register(&registry)?,
            audit: AuditMetrics::register(&registry)?,
            credentials: CredentialMetrics::register(&registry)?,
            registry,
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
