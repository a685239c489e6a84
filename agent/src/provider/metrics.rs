//! Metrics owned by the provider subsystem: JWKS fetches by result, keys
//! held, on-demand refetches (made, and refused by the cooldown), and (set at
//! scrape time) key age and readiness.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The metric families, registered once per process.
#[derive(Clone)]
pub struct ProviderMetricFamilies {
    fetches: IntCounterVec,
    on_demand: IntCounterVec,
    on_demand_rate_limited: IntCounterVec,
    keys: IntGaugeVec,
    age: GaugeVec,
    ready: IntGaugeVec,
}

impl ProviderMetricFamilies {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let fetches = IntCounterVec::new(
            Opts::new(
                "nodeward_jwks_fetches_total",
                "Discovery+JWKS fetches by provider and result (ok or the failure kind)",
            ),
            &["provider", "result"],
        )?;
        let on_demand = IntCounterVec::new(
            Opts::new(
                "nodeward_jwks_on_demand_fetches_total",
                "Rate-limited refetches triggered by an unknown kid or missing keys",
            ),
            &["provider"],
        )?;
        // The refetches the cooldown refused: a flood of random kids shows up
        // here (and not as fetches), which is what an operator alerts on.
        let on_demand_rate_limited = IntCounterVec::new(
            Opts::new(
                "nodeward_jwks_on_demand_rate_limited_total",
                "On-demand refetches refused because one ran within the unknown-kid cooldown",
            ),
            &["provider"],
        )?;
        let keys = IntGaugeVec::new(Opts::new("nodeward_jwks_keys", "Verification keys held"), &["provider"])?;
        let age = GaugeVec::new(
            Opts::new(
                "nodeward_jwks_age_seconds",
                "Seconds since the held keys were fetched from the provider",
            ),
            &["provider"],
        )?;
        let ready = IntGaugeVec::new(
            Opts::new("nodeward_provider_ready", "1 when the provider has usable keys"),
            &["provider"],
        )?;
        r.register(Box::new(fetches.clone()))?;
        r.register(Box::new(on_demand.clone()))?;
        r.register(Box::new(on_demand_rate_limited.clone()))?;
        r.register(Box::new(keys.clone()))?;
        r.register(Box::new(age.clone()))?;
        r.register(Box::new(ready.clone()))?;
        Ok(Self {
            fetches,
            on_demand,
            on_demand_rate_limited,
            keys,
            age,
            ready,
        })
    }

    pub fn for_provider(&self, name: &str) -> ProviderMetrics {
        ProviderMetrics {
            name: name.to_string(),
            fetches: self.fetches.clone(),
            keys: self.keys.with_label_values(&[name]),
            on_demand: self.on_demand.with_label_values(&[name]),
            on_demand_rate_limited: self.on_demand_rate_limited.with_label_values(&[name]),
            families: self.clone(),
        }
    }

    /// Drops the series of a provider that left the configuration.
    pub fn forget(&self, name: &str) {
        let _ = self.keys.remove_label_values(&[name]);
        let _ = self.age.remove_label_values(&[name]);
        let _ = self.ready.remove_label_values(&[name]);
    }
}

/// One provider's handles.
#[derive(Clone)]
pub struct ProviderMetrics {
    name: String,
    fetches: IntCounterVec,
    pub keys: IntGauge,
    pub on_demand: IntCounter,
    pub on_demand_rate_limited: IntCounter,
    families: ProviderMetricFamilies,
}

impl ProviderMetrics {
    pub fn fetch_result(&self, result: &str) {
        self.fetches.with_label_values(&[self.name.as_str(), result]).inc();
    }

    /// Called at scrape time.
    pub fn observe(&self, age_seconds: Option<f64>, ready: bool) {
        let name = [self.name.as_str()];
        match age_seconds {
            Some(a) => self.families.age.with_label_values(&name).set(a),
            None => {
                let _ = self.families.age.remove_label_values(&name);
            }
        }
        self.families.ready.with_label_values(&name).set(i64::from(ready));
    }

    /// A detached set for tests and tools that need no registry.
    pub fn unregistered(name: &str) -> Self {
        let families = ProviderMetricFamilies::register(&Registry::new())
            .expect("a fresh registry cannot hold a conflicting family");
        families.for_provider(name)
    }
}
