//! OpenID providers: discovery, the shared JWKS cache (one per process, for
//! every workload), background refresh, the rate-limited refetch on an
//! unknown `kid`, stale-on-error, and the disk copy.
//!
//! Token parsing and checks live in `token.rs`; this module only answers
//! "which keys does this issuer have right now".

mod disk;
mod fetch;
mod keyset;
mod kube;
mod metrics;
pub mod oauth;

pub use fetch::{FetchError, parse_max_age};
pub use keyset::{Key, KeySet};
pub use metrics::{ProviderMetricFamilies, ProviderMetrics};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

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
    #[error("provider {provider}: hs_secret_file {path}: {why}")]
    BadSecret {
        provider: String,
        path: PathBuf,
        why: String,
    },
    #[error("provider {0}: service-account tokens need a Kubernetes API client")]
    NoKubernetes(String),
    #[error("provider {provider}: the API server's issuer is {found:?}, not the pinned {pinned:?}")]
    IssuerMismatch {
        provider: String,
        found: String,
        pinned: String,
    },
}

impl ProviderError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Fetch { source, .. } => source.kind(),
            Self::Jwks { .. } => "bad_jwks",
            Self::Secret { .. } | Self::BadSecret { .. } | Self::NoKubernetes(_) => "config",
            Self::IssuerMismatch { .. } => "bad_discovery",
        }
    }
}

/// One configured provider and its live keys.
pub struct Provider {
    pub name: Arc<str>,
    pub cfg: ProviderConfig,
    keys: ArcSwap<KeySet>,
    /// Configured shared secrets for HS* (never from the JWKS), re-read on reload.
    hs_keys: ArcSwap<Vec<Arc<Key>>>,
    /// Numbers fetches as they start; a fetch installs its keys only if no
    /// later-started fetch installed first, so a slow old answer never
    /// replaces a newer key set (and brings back a removed key).
    fetch_seq: AtomicU64,
    installed_seq: Mutex<u64>,
    fetcher: Fetcher,
    /// The issuer tokens must name: configured, or (service accounts) the
    /// API server's, known after the first discovery or from the disk copy.
    issuer: ArcSwap<String>,
    disk_file: PathBuf,
    jwks_uri: Mutex<Option<String>>,
    /// For outbound tokens (`oauth.rs`): configured, or from discovery.
    token_endpoint: Mutex<Option<String>>,
    /// Serialises fetches; holds when the last on-demand fetch started.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
    metrics: ProviderMetrics,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuer", &self.issuer())
            .finish()
    }
}

impl Provider {
    /// Builds the provider and loads its disk copy, without touching the network.
    /// `kube` is the agent's API client (needed by service-account providers).
    pub fn new(
        cfg: ProviderConfig,
        state_dir: &std::path::Path,
        metrics: ProviderMetrics,
        kube: Option<&::kube::Client>,
    ) -> Result<Self, ProviderError> {
        let name: Arc<str> = cfg.name.as_str().into();
        let fetcher = if cfg.kubernetes_service_accounts.is_some() {
            let client = kube.ok_or_else(|| ProviderError::NoKubernetes(cfg.name.clone()))?;
            let r = &cfg.refresh;
            Fetcher::Kube(kube::KubeFetcher::new(
                client.clone(),
                r.fetch_timeout,
                r.max_response_bytes,
            ))
        } else {
            Fetcher::Http(fetch::Fetcher::new(&cfg).map_err(|source| ProviderError::Fetch {
                provider: cfg.name.clone(),
                source,
            })?)
        };
        let hs_keys = read_secret(&cfg)?;
        let provider = Self {
            disk_file: disk::path(state_dir, &cfg.name),
            jwks_uri: Mutex::new(cfg.jwks_uri.clone()),
            token_endpoint: Mutex::new(cfg.token_endpoint.clone()),
            name,
            keys: ArcSwap::from_pointee(KeySet::default()),
            hs_keys: ArcSwap::from_pointee(hs_keys),
            fetch_seq: AtomicU64::new(0),
            installed_seq: Mutex::new(0),
            fetcher,
            issuer: ArcSwap::from_pointee(pinned_issuer(&cfg).unwrap_or_default().to_string()),
            on_demand: tokio::sync::Mutex::new(None),
            metrics,
            cfg,
        };
        provider.load_disk_copy();
        Ok(provider)
    }

    /// The issuer this provider's tokens name (empty: a service-account
    /// provider that has not heard from the API server yet).
    pub fn issuer(&self) -> Arc<String> {
        self.issuer.load_full()
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

    /// The shared-secret keys (one per configured HS algorithm).
    pub fn hs_keys(&self) -> Arc<Vec<Arc<Key>>> {
        self.hs_keys.load_full()
    }

    /// Re-reads `hs_secret_file` (on reload: SIGHUP or a change of the file).
    /// Returns whether the secret changed; tokens verified with the old one
    /// stop counting as cache hits ([`Provider::still_trusts`]).
    pub fn reload_secret(&self) -> Result<bool, ProviderError> {
        if self.cfg.hs_secret_file.is_none() {
            return Ok(false);
        }
        let fresh = read_secret(&self.cfg)?;
        let current = self.hs_keys.load();
        let same = fresh.len() == current.len() && fresh.iter().zip(current.iter()).all(|(a, b)| a.same_key(b));
        if !same {
            tracing::info!(provider = %self.name, "hs_secret_file changed: the new secret verifies from now on");
            self.hs_keys.store(Arc::new(fresh));
        }
        Ok(!same)
    }

    /// Whether `key` would verify a token of this provider right now: it is
    /// one of the current secrets, or in the current, not-too-stale key set.
    /// A cached verification counts only while this holds.
    pub fn still_trusts(&self, key: &Arc<Key>) -> bool {
        if key.alg.is_hmac() {
            return self.hs_keys.load().iter().any(|k| Arc::ptr_eq(k, key));
        }
        let keys = self.keys();
        match &key.kid {
            Some(kid) => keys.by_kid(kid).is_some_and(|k| Arc::ptr_eq(k, key)),
            None => keys.for_alg(key.alg).any(|k| Arc::ptr_eq(k, key)),
        }
    }

    /// Ready means this provider can verify tokens now.
    pub fn is_ready(&self) -> bool {
        !self.keys().is_empty() || !self.hs_keys.load().is_empty()
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
        if pinned_issuer(&self.cfg).is_some_and(|p| p != snap.issuer) {
            tracing::info!(provider = %self.name, "JWKS disk copy belongs to another issuer; ignoring it");
            return;
        }
        if age(snap.fetched_at()) > self.cfg.refresh.max_staleness {
            tracing::info!(provider = %self.name, "JWKS disk copy is older than max_staleness; ignoring it");
            return;
        }
        let doc = snap.jwks.to_string();
        match KeySet::parse(doc.as_bytes(), &self.cfg.algorithms, None, Some(snap.fetched_at())) {
            Ok(set) => {
                tracing::info!(provider = %self.name, keys = set.len(), age_s = age(snap.fetched_at()).as_secs(), "loaded JWKS from disk");
                self.issuer.store(Arc::new(snap.issuer.clone()));
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

    /// Installs the key set of fetch number `seq` unless a fetch that started
    /// later already installed its own. Returns whether it was installed.
    fn install_fetched(&self, seq: u64, set: KeySet) -> bool {
        let Ok(mut last) = self.installed_seq.lock() else {
            return false;
        };
        if seq < *last {
            tracing::debug!(provider = %self.name, seq, newer = *last, "an older JWKS fetch finished last; not installed");
            return false;
        }
        *last = seq;
        // Against what is installed now, not what the fetch started from.
        set.revoke_missing_from(&self.keys.load());
        self.install(set);
        true
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
        let seq = self.fetch_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (jwks_uri, discovery_age, doc) = match &self.fetcher {
            Fetcher::Http(f) => {
                let (uri, age) = match self.cfg.jwks_uri.clone() {
                    Some(u) => (u, None),
                    None => {
                        let d = f.discover(&self.cfg.issuer).await.map_err(wrap)?;
                        self.learn_token_endpoint(d.token_endpoint);
                        (d.jwks_uri, d.max_age)
                    }
                };
                let doc = f.get(&uri).await.map_err(wrap)?;
                (uri, age, doc)
            }
            Fetcher::Kube(f) => {
                let (issuer, age) = f.discover().await.map_err(wrap)?;
                if let Some(pinned) = pinned_issuer(&self.cfg)
                    && pinned != issuer
                {
                    return Err(ProviderError::IssuerMismatch {
                        provider: self.cfg.name.clone(),
                        found: issuer,
                        pinned: pinned.to_string(),
                    });
                }
                let doc = f.get(kube::JWKS_PATH).await.map_err(wrap)?;
                self.issuer.store(Arc::new(issuer));
                (kube::JWKS_PATH.to_string(), age, doc)
            }
        };
        let now = SystemTime::now();
        let previous = self.keys.load_full();
        let set = KeySet::parse(&doc.body, &self.cfg.algorithms, Some(&previous), Some(now)).map_err(|why| {
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
        let kids: Vec<String> = set.kids().map(String::from).collect();
        let max_age = match (doc.max_age, discovery_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !self.install_fetched(seq, set) {
            return Ok(max_age);
        }
        if changed {
            tracing::info!(provider = %self.name, keys = kids.len(), ?kids, "JWKS installed");
        }
        if let Ok(jwks) = serde_json::from_slice::<serde_json::Value>(&doc.body) {
            let snap = disk::Snapshot {
                issuer: self.issuer().to_string(),
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
        Ok(max_age)
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

/// Where a provider's discovery document and keys come from.
enum Fetcher {
    Http(fetch::Fetcher),
    Kube(kube::KubeFetcher),
}

/// The issuer `cfg` insists on, if any.
fn pinned_issuer(cfg: &ProviderConfig) -> Option<&str> {
    match &cfg.kubernetes_service_accounts {
        Some(sa) => sa.issuer.as_deref(),
        None => Some(cfg.issuer.as_str()),
    }
}

/// The shared-secret keys of `cfg`: one per configured HS algorithm.
fn read_secret(cfg: &ProviderConfig) -> Result<Vec<Arc<Key>>, ProviderError> {
    let Some(path) = &cfg.hs_secret_file else {
        return Ok(Vec::new());
    };
    let secret = std::fs::read(path).map_err(|source| ProviderError::Secret {
        provider: cfg.name.clone(),
        path: path.clone(),
        source,
    })?;
    let secret = secret.trim_ascii();
    cfg.algorithms
        .iter()
        .filter(|a| a.is_hmac())
        .map(|alg| {
            Key::from_secret(secret, *alg)
                .map(Arc::new)
                .map_err(|why| ProviderError::BadSecret {
                    provider: cfg.name.clone(),
                    path: path.clone(),
                    why,
                })
        })
        .collect()
}

fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// The providers of the current configuration.
#[derive(Debug, Default)]
pub struct Providers {
    /// Looked up on every request: foldhash, seeded per process.
    by_name: foldhash::HashMap<String, Arc<Provider>>,
}

impl Providers {
    pub fn insert(&mut self, p: Arc<Provider>) {
        self.by_name.insert(p.cfg.name.clone(), p);
    }

    /// The provider whose issuer is exactly `iss`. A scan (a node has a
    /// handful of providers): a service-account provider learns its issuer
    /// from the API server, so the issuers are not all known when the
    /// snapshot is built. Called on cache misses only.
    pub fn by_issuer(&self, iss: &str) -> Option<&Arc<Provider>> {
        self.by_name.values().find(|p| {
            let i = p.issuer();
            !i.is_empty() && i.as_str() == iss
        })
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }
}
