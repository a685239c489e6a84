//! Wires the agent together: the shared state every request uses, the
//! provider refresh tasks, one listener per workload, the admin server, and
//! applying a new configuration (at start and on every reload) without
//! disturbing requests in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::{Config, ProviderConfig};
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};
use crate::provider::{Provider, ProviderError, Providers};
use crate::proxy::headers::RequestIds;
use crate::proxy::{self, upstream};
use crate::state::{Runtime, Source, Workload};
use crate::token_cache::TokenCache;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("workload {0}: no policy selects it")]
    NoPolicy(String),
}

/// What every connection and request shares.
pub struct Shared {
    pub metrics: Metrics,
    pub cache: TokenCache,
    pub state: ArcSwap<Runtime>,
    pub upstream: upstream::Client,
    pub request_ids: RequestIds,
}

impl Shared {
    /// Refreshes the gauges that are read rather than counted (at scrape time).
    pub fn observe(&self) {
        self.metrics.token_cache_entries.set(self.cache.entries() as i64);
        let rt = self.state.load();
        for p in rt.providers.iter() {
            p.metrics().observe(p.keys_age().map(|a| a.as_secs_f64()), p.is_ready());
        }
    }

    /// Why the agent is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let rt = self.state.load();
        let mut out: Vec<String> = rt
            .providers
            .iter()
            .filter(|p| !p.is_ready())
            .map(|p| format!("provider {} has no usable keys", p.name))
            .collect();
        out.sort();
        out
    }
}

struct ProviderTask {
    cfg: ProviderConfig,
    provider: Arc<Provider>,
    task: JoinHandle<()>,
}

struct Listener {
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Supervisor {
    providers: HashMap<String, ProviderTask>,
    listeners: HashMap<String, Listener>,
}

/// A running agent.
pub struct Agent {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
    admin_stop: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    supervisor: tokio::sync::Mutex<Supervisor>,
    bound: Mutex<HashMap<String, SocketAddr>>,
}

impl Agent {
    /// Starts everything `config` describes. Fails if a listener cannot bind.
    pub async fn start(config: Config) -> Result<Self, AppError> {
        let metrics = Metrics::new()?;
        let limits = config.limits.clone();
        let admin_listener = tokio::net::TcpListener::bind(config.admin)
            .await
            .map_err(|source| AppError::Bind {
                what: "admin".into(),
                addr: config.admin,
                source,
            })?;
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin);
        let shared = Arc::new(Shared {
            metrics,
            cache: TokenCache::new(&config.token_cache),
            state: ArcSwap::from_pointee(Runtime {
                config: Arc::new(config.clone()),
                providers: Providers::default(),
                workloads: HashMap::new(),
                token_sources: Source::compile(std::iter::empty()),
            }),
            upstream: upstream::Client::new(limits.upstream_connect_timeout, limits.upstream_timeout),
            request_ids: RequestIds::default(),
        });
        let (admin_stop, stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(admin_listener, shared.clone(), stop_rx));
        let agent = Self {
            shared,
            admin_addr,
            admin_stop,
            admin_task,
            supervisor: tokio::sync::Mutex::new(Supervisor::default()),
            bound: Mutex::new(HashMap::new()),
        };
        agent.apply(config).await?;
        tracing::info!(admin = %agent.admin_addr, "nodeward started");
        Ok(agent)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The address a workload's listener actually bound (port 0 resolved).
    pub fn workload_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound.lock().ok()?.get(name).copied()
    }

    /// Applies a validated configuration. Everything that can fail (binding
    /// new listeners, building providers and policies) happens before the
    /// switch, so a failure leaves the running configuration untouched.
    pub async fn apply(&self, config: Config) -> Result<(), AppError> {
        let mut sup = self.supervisor.lock().await;
        let current = self.shared.state.load_full();
        if current.config.admin != config.admin && !current.workloads.is_empty() {
            tracing::warn!("the admin address changes only on restart");
        }

        // 1. Listeners for new or moved workloads.
        let mut new_listeners = HashMap::new();
        for w in &config.workloads {
            let Some(listen) = w.listen else { continue };
            if sup.listeners.get(&w.name).is_some_and(|l| l.configured == listen) {
                continue;
            }
            let l = proxy::bind(listen).await.map_err(|source| AppError::Bind {
                what: format!("workload {}", w.name),
                addr: listen,
                source,
            })?;
            new_listeners.insert(w.name.clone(), (listen, l));
        }

        // 2. Providers: unchanged ones keep their keys and refresh task.
        let mut providers = Providers::default();
        let mut started = Vec::new();
        for p in &config.providers {
            match sup.providers.get(&p.name) {
                Some(t) if t.cfg == *p => providers.insert(t.provider.clone()),
                _ => {
                    let metrics = self.shared.metrics.providers.for_provider(&p.name);
                    let provider = Arc::new(Provider::new(p.clone(), &config.state_dir, metrics)?);
                    providers.insert(provider.clone());
                    started.push(provider);
                }
            }
        }

        // 3. Policies and workloads.
        let providers_changed = !started.is_empty() || sup.providers.len() != config.providers.len();
        let runtime = build_runtime(config, providers)?;

        // 4. Switch. Requests already running keep the snapshot they loaded.
        let config = runtime.config.clone();
        self.shared.state.store(Arc::new(runtime));
        if providers_changed {
            // Audiences, issuers or keys may differ: earlier verifications no longer apply.
            self.shared.cache.clear();
        }

        for p in started {
            let task = tokio::spawn(p.clone().refresh_loop());
            if let Some(old) = sup.providers.insert(
                p.cfg.name.clone(),
                ProviderTask {
                    cfg: p.cfg.clone(),
                    provider: p,
                    task,
                },
            ) {
                old.task.abort();
            }
        }
        let gone: Vec<String> = sup
            .providers
            .keys()
            .filter(|n| !config.providers.iter().any(|p| &p.name == *n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(t) = sup.providers.remove(&name) {
                t.task.abort();
                self.shared.metrics.providers.forget(&name);
            }
        }

        // 5. Listeners: stop the removed and moved, start the new.
        let removed: Vec<String> = sup
            .listeners
            .keys()
            .filter(|n| new_listeners.contains_key(*n) || !config.workloads.iter().any(|w| &w.name == *n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(l) = sup.listeners.remove(&name) {
                let _ = l.stop.send(true);
                drop(l.task);
                if let Ok(mut b) = self.bound.lock() {
                    b.remove(&name);
                }
            }
        }
        for (name, (configured, listener)) in new_listeners {
            let bound = listener.local_addr().unwrap_or(configured);
            let (stop, rx) = watch::channel(false);
            let task = tokio::spawn(proxy::serve(listener, name.as_str().into(), self.shared.clone(), rx));
            tracing::info!(workload = %name, listen = %bound, "workload serving");
            if let Ok(mut b) = self.bound.lock() {
                b.insert(name.clone(), bound);
            }
            sup.listeners.insert(
                name,
                Listener {
                    configured,
                    bound,
                    stop,
                    task,
                },
            );
        }
        self.shared
            .metrics
            .workloads
            .with_label_values(&["serving"])
            .set(sup.listeners.len() as i64);
        Ok(())
    }

    /// Stops accepting, drains in-flight requests (bounded), stops refreshes.
    pub async fn shutdown(self) {
        let mut sup = self.supervisor.lock().await;
        let listeners: Vec<Listener> = sup.listeners.drain().map(|(_, l)| l).collect();
        for l in &listeners {
            let _ = l.stop.send(true);
        }
        for l in listeners {
            let _ = l.task.await;
            tracing::debug!(listen = %l.bound, "listener drained");
        }
        for (_, t) in sup.providers.drain() {
            t.task.abort();
        }
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
    }
}

/// Compiles policies and binds each workload to the one policy its labels select.
pub fn build_runtime(config: Config, providers: Providers) -> Result<Runtime, AppError> {
    let mut policies = HashMap::new();
    for p in &config.policies {
        policies.insert(p.name.clone(), Arc::new(Policy::compile(p)?));
    }
    let mut workloads = HashMap::new();
    for w in &config.workloads {
        let policy = config
            .policies
            .iter()
            .find(|p| p.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .and_then(|p| policies.get(&p.name).cloned())
            .ok_or_else(|| AppError::NoPolicy(w.name.clone()))?;
        let Some(upstream) = w.upstream else { continue };
        let Ok(upstream_authority) = upstream.to_string().parse() else {
            continue;
        };
        workloads.insert(
            w.name.clone(),
            Workload {
                name: w.name.as_str().into(),
                policy,
                upstream,
                upstream_authority,
            },
        );
    }
    Ok(Runtime {
        token_sources: Source::compile(config.providers.iter().map(|p| p.token_from.clone())),
        config: Arc::new(config),
        providers,
        workloads,
    })
}
