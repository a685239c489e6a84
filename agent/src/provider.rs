//! OpenID providers: discovery, the shared JWKS cache (one per process, for
//! every workload), background refresh, the rate-limited refetch on an
//! unknown `kid`, stale-on-error, and the disk copy.
//!
//! Token parsing and checks live in `token.rs`; this module only answers
//! "which keys does this issuer have right now".

mod disk;
mod fetch;
mod keyset;
mod metrics;

pub use fetch::{FetchError, parse_max_age};
pub use keyset::{Key, KeySet};
pub use metrics::{ProviderMetricFamilies, ProviderMetrics};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;

use crate::config::ProviderConfig;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider}: {source}")]
    Fetch {
        provider: String,
        #[source]
        source: FetchError,
    },
    #[error("provider {provider}: JWKS from {url}: {why}")]
    Jwks { provider: String, url: String, why: String },
    #[error("provider {provider}: cannot read hs_secret_file {path}: {source}")]
    Secret {
        provider: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ProviderError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Fetch { source, .. } => source.kind(),
            Self::Jwks { .. } => "bad_jwks",
            Self::Secret { .. } => "config",
        }
    }
}

/// One configured provider and its live keys.
pub struct Provider {
    pub name: Arc<str>,
    pub cfg: ProviderConfig,
    pub algorithms: Vec<Algorithm>,
    keys: ArcSwap<KeySet>,
    /// Configured shared secrets for HS* (never from the JWKS).
    hs_keys: Vec<Arc<Key>>,
    fetcher: fetch::Fetcher,
    disk_file: PathBuf,
    jwks_uri: Mutex<Option<String>>,
    /// Serialises fetches; holds when the last on-demand fetch started.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
    metrics: ProviderMetrics,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuer", &self.cfg.issuer)
            .finish()
    }
}

impl Provider {
    /// Builds the provider and loads its disk copy, without touching the network.
    pub fn new(
        cfg: ProviderConfig,
        state_dir: &std::path::Path,
        metrics: ProviderMetrics,
    ) -> Result<Self, ProviderError> {
        let name: Arc<str> = cfg.name.as_str().into();
        let fetcher = fetch::Fetcher::new(&cfg).map_err(|source| ProviderError::Fetch {
            provider: cfg.name.clone(),
            source,
        })?;
        let algorithms: Vec<Algorithm> = cfg.algorithms.iter().filter_map(|a| a.parse().ok()).collect();
        let mut hs_keys = Vec::new();
        if let Some(path) = &cfg.hs_secret_file {
            let secret = std::fs::read(path).map_err(|source| ProviderError::Secret {
                provider: cfg.name.clone(),
                path: path.clone(),
                source,
            })?;
            let secret = secret.trim_ascii();
            for alg in algorithms
                .iter()
                .filter(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            {
                let key = Key::from_secret(secret, *alg).map_err(|why| ProviderError::Jwks {
                    provider: cfg.name.clone(),
                    url: path.display().to_string(),
                    why,
                })?;
                hs_keys.push(Arc::new(key));
            }
        }
        let provider = Self {
            disk_file: disk::path(state_dir, &cfg.name),
            jwks_uri: Mutex::new(cfg.jwks_uri.clone()),
            name,
            algorithms,
            keys: ArcSwap::from_pointee(KeySet::default()),
            hs_keys,
            fetcher,
            on_demand: tokio::sync::Mutex::new(None),
            metrics,
            cfg,
        };
        provider.load_disk_copy();
        Ok(provider)
    }

    /// The keys to verify with now: empty when none were ever fetched or the
    /// last good ones are older than `max_staleness` (fail closed).
    pub fn keys(&self) -> Arc<KeySet> {
        let keys = self.keys.load_full();
        match keys.fetched_at {
            Some(t) if age(t) <= self.cfg.refresh.max_staleness => keys,
            _ => Arc::new(KeySet::default()),
        }
    }

    pub fn hs_keys(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<Key>> {
        self.hs_keys.iter().filter(move |k| k.alg == alg)
    }

    /// Ready means this provider can verify tokens now.
    pub fn is_ready(&self) -> bool {
        !self.keys().is_empty() || !self.hs_keys.is_empty()
    }

    /// Seconds since the keys were fetched from the provider, if ever.
    pub fn keys_age(&self) -> Option<Duration> {
        self.keys.load().fetched_at.map(age)
    }

    pub fn metrics(&self) -> &ProviderMetrics {
        &self.metrics
    }

    fn load_disk_copy(&self) {
        let snap = match disk::load(&self.disk_file) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(provider = %self.name, file = %self.disk_file.display(), error = %e, "ignoring unreadable JWKS disk copy");
                return;
            }
        };
        if snap.issuer != self.cfg.issuer {
            tracing::info!(provider = %self.name, "JWKS disk copy belongs to another issuer; ignoring it");
            return;
        }
        if age(snap.fetched_at()) > self.cfg.refresh.max_staleness {
            tracing::info!(provider = %self.name, "JWKS disk copy is older than max_staleness; ignoring it");
            return;
        }
        let doc = snap.jwks.to_string();
        match KeySet::parse(doc.as_bytes(), &self.algorithms, None, Some(snap.fetched_at())) {
            Ok(set) => {
                tracing::info!(provider = %self.name, keys = set.len(), age_s = age(snap.fetched_at()).as_secs(), "loaded JWKS from disk");
                self.install(set);
                if self.cfg.jwks_uri.is_none()
                    && let Ok(mut u) = self.jwks_uri.lock()
                {
                    *u = Some(snap.jwks_uri);
                }
            }
            Err(why) => tracing::warn!(provider = %self.name, %why, "ignoring corrupt JWKS disk copy"),
        }
    }

    fn install(&self, set: KeySet) {
        for why in &set.skipped {
            tracing::warn!(provider = %self.name, %why, "JWKS key skipped");
        }
        self.metrics.keys.set(set.len() as i64);
        self.keys.store(Arc::new(set));
    }

    /// Fetches discovery (when no jwks_uri is configured) and the JWKS, and
    /// installs the new keys. Returns the provider's suggested freshness.
    pub async fn refresh(&self) -> Result<Option<Duration>, ProviderError> {
        let result = self.fetch_and_install().await;
        match &result {
            Ok(_) => self.metrics.fetch_result("ok"),
            Err(e) => {
                self.metrics.fetch_result(e.kind());
                tracing::warn!(provider = %self.name, error = %e, "JWKS refresh failed; keeping the last good keys");
            }
        }
        result
    }

    async fn fetch_and_install(&self) -> Result<Option<Duration>, ProviderError> {
        let wrap = |source| ProviderError::Fetch {
            provider: self.cfg.name.clone(),
            source,
        };
        let configured = self.cfg.jwks_uri.clone();
        let (jwks_uri, discovery_age) = match configured {
            Some(u) => (u, None),
            None => self.fetcher.discover(&self.cfg.issuer).await.map_err(wrap)?,
        };
        let doc = self.fetcher.get(&jwks_uri).await.map_err(wrap)?;
        let now = SystemTime::now();
        let previous = self.keys.load_full();
        let set = KeySet::parse(&doc.body, &self.algorithms, Some(&previous), Some(now)).map_err(|why| {
            ProviderError::Jwks {
                provider: self.cfg.name.clone(),
                url: jwks_uri.clone(),
                why,
            }
        })?;
        if set.is_empty() {
            // An empty or all-unusable JWKS would lock everyone out: treat it as a failed fetch.
            return Err(ProviderError::Jwks {
                provider: self.cfg.name.clone(),
                url: jwks_uri,
                why: format!("no usable signing keys ({})", set.skipped.join("; ")),
            });
        }
        let changed = previous.len() != set.len() || set.kids().zip(previous.kids()).any(|(a, b)| a != b);
        if changed {
            tracing::info!(provider = %self.name, keys = set.len(), kids = ?set.kids().collect::<Vec<_>>(), "JWKS installed");
        }
        if let Ok(jwks) = serde_json::from_slice::<serde_json::Value>(&doc.body) {
            let snap = disk::Snapshot {
                issuer: self.cfg.issuer.clone(),
                jwks_uri: jwks_uri.clone(),
                fetched_at: disk::unix(now),
                jwks,
            };
            if let Err(e) = disk::store(&self.disk_file, &snap) {
                tracing::warn!(provider = %self.name, file = %self.disk_file.display(), error = %e, "cannot persist JWKS");
            }
        }
        if let Ok(mut u) = self.jwks_uri.lock() {
            *u = Some(jwks_uri);
        }
        set.revoke_missing_from(&previous);
        self.install(set);
        Ok(match (doc.max_age, discovery_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// For a token whose `kid` is unknown (or when no keys are held): refetch
    /// at most once per `unknown_kid_cooldown`, shared by all concurrent
    /// callers, so a flood of random kids cannot become a flood of fetches.
    /// Returns whether a fetch happened (successfully or not).
    pub async fn refetch_on_demand(&self) -> bool {
        let started = Instant::now();
        let mut last = self.on_demand.lock().await;
        if let Some(t) = *last {
            // A fetch that began after this caller arrived has what it needs,
            // whatever the cooldown. Checked first: when a fetch takes longer
            // than the cooldown (a slow provider), callers queued behind it
            // would otherwise each fetch again in turn, the last one waiting
            // for all of them. So a caller waits for at most two fetches: the
            // one in flight when it arrived, and its own.
            if t >= started {
                return true;
            }
            // Someone fetched recently, before this caller arrived: rate limit.
            if t.elapsed() < self.cfg.refresh.unknown_kid_cooldown {
                self.metrics.on_demand_rate_limited.inc();
                return false;
            }
        }
        *last = Some(Instant::now());
        self.metrics.on_demand.inc();
        let _ = self.refresh().await;
        true
    }

    /// The refresh interval after a fetch: the provider's max-age within bounds.
    pub fn next_interval(&self, max_age: Option<Duration>) -> Duration {
        let r = &self.cfg.refresh;
        max_age.unwrap_or(r.max_interval).clamp(r.min_interval, r.max_interval)
    }

    /// Refreshes forever: on schedule after success, with capped exponential
    /// backoff after failure. Ends when the returned future is dropped.
    pub async fn refresh_loop(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            let wait = match self.refresh().await {
                Ok(max_age) => {
                    failures = 0;
                    self.next_interval(max_age)
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_secs(1) * 2u32.saturating_pow(failures.min(8));
                    backoff.min(self.cfg.refresh.min_interval)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// The providers of the current configuration, by issuer for the request path.
#[derive(Debug, Default)]
pub struct Providers {
    by_issuer: HashMap<String, Arc<Provider>>,
    by_name: HashMap<String, Arc<Provider>>,
}

impl Providers {
    pub fn insert(&mut self, p: Arc<Provider>) {
        self.by_issuer.insert(p.cfg.issuer.clone(), p.clone());
        self.by_name.insert(p.cfg.name.clone(), p);
    }

    pub fn by_issuer(&self, iss: &str) -> Option<&Arc<Provider>> {
        self.by_issuer.get(iss)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }
}
