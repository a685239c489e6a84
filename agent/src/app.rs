//! Wires the agent together: the shared state every request uses, the
//! provider refresh tasks, one listener per workload (bound on the host in
//! reverse-proxy mode, created inside the pod's namespace and fed by eBPF in
//! steering mode), the admin server, and applying a new configuration (at
//! start and on every reload) without disturbing requests in flight.
//!
//! The workloads applied are the file's static workloads plus the pods the
//! Kubernetes watch hands over ([`Agent::apply_pods`]); either side changing
//! re-applies the union, serialised by the supervisor's lock.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::{Config, Limits, ProviderConfig, WorkloadConfig, bound_policy};
use crate::enrol::Enroller;
use crate::k8s::binding::PodPolicy;
use crate::k8s::{PodSink, PodWorkload};
use crate::metrics::Metrics;
use crate::netns::Netns;
use crate::policy::{Policy, PolicyError};
use crate::provider::{Provider, ProviderError, Providers};
use crate::proxy::headers::RequestIds;
use crate::proxy::{self, upstream};
use crate::state::{Runtime, Source, Upstream, Workload};
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
    pub request_ids: RequestIds,
    /// eBPF enrolment; a std mutex: its operations are short syscalls.
    enroller: Mutex<Enroller>,
    /// Last program counters seen per workload, to turn them into counter increments.
    seen: Mutex<HashMap<String, crate::ebpf::Counters>>,
    /// Set once the first configuration is fully applied (listeners up, workloads enrolled).
    configured: AtomicBool,
    /// The pod watch is on (`kubernetes.enabled` at start) ...
    kube_enabled: AtomicBool,
    /// ... and its first full pod list has been applied.
    kube_synced: AtomicBool,
    /// Static workloads whose enrolment failed (pods' failures are theirs, not the agent's).
    static_failed: AtomicUsize,
}

impl Shared {
    /// Refreshes the values that are read rather than counted (at scrape time).
    pub fn observe(&self) {
        self.metrics.token_cache_entries.set(self.cache.entries() as i64);
        self.metrics.ready.set(i64::from(self.not_ready().is_empty()));
        self.metrics.audit.observe();
        let rt = self.state.load();
        for p in rt.providers.iter() {
            p.metrics().observe(p.keys_age().map(|a| a.as_secs_f64()), p.is_ready());
        }
        let counters = self.enroller.lock().map(|e| e.counters()).unwrap_or_default();
        if let Ok(mut seen) = self.seen.lock() {
            for (name, now) in counters {
                let before = seen.get(&name).copied().unwrap_or_default();
                let m = &self.metrics.ebpf_connections;
                let delta = |a: u64, b: u64| a.saturating_sub(b);
                m.with_label_values(&[&name, "steered"])
                    .inc_by(delta(now.steered, before.steered));
                m.with_label_values(&[&name, "passed"])
                    .inc_by(delta(now.passed, before.passed));
                m.with_label_values(&[&name, "dropped_fail_closed"])
                    .inc_by(delta(now.dropped_fail_closed, before.dropped_fail_closed));
                seen.insert(name, now);
            }
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
        if !self.configured.load(Ordering::Acquire) {
            out.push("configuration not applied yet".to_string());
        }
        // Only the first list: a later API outage leaves pods as they are, and the agent ready.
        if self.kube_enabled.load(Ordering::Acquire) && !self.kube_synced.load(Ordering::Acquire) {
            out.push("kubernetes: first pod list not applied yet".to_string());
        }
        let failed = self.static_failed.load(Ordering::Acquire);
        if failed > 0 {
            out.push(format!("{failed} workload(s) failed to enrol"));
        }
        out.sort();
        out
    }
}

struct ProviderTask {
    cfg: ProviderConfig,
    provider: Arc<Provider>,
    task: JoinHandle<()>,
}

/// What a listener was made from; a change means a new listener.
#[derive(Clone, PartialEq)]
enum ListenKey {
    Addr(SocketAddr),
    Netns {
        path: PathBuf,
        ips: Vec<IpAddr>,
        ports: Vec<u16>,
    },
}

struct Listener {
    key: ListenKey,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Supervisor {
    providers: HashMap<String, ProviderTask>,
    listeners: HashMap<String, Listener>,
    /// Upstream clients of steered workloads, by workload, with the key they were made for.
    netns_clients: HashMap<String, (ListenKey, Arc<upstream::Client>)>,
    /// Steered workloads whose enrolment failed, by name, with their key, why,
    /// and when (tried again with the same key after [`ENROL_RETRY`]).
    failed: HashMap<String, (ListenKey, String, Instant)>,
    /// The pod workloads the Kubernetes watch wants enrolled.
    pods: Vec<PodWorkload>,
}

/// A running agent.
pub struct Agent {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
    admin_stop: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    supervisor: tokio::sync::Mutex<Supervisor>,
    bound: Mutex<HashMap<String, SocketAddr>>,
    host_client: Arc<upstream::Client>,
    /// Bumped after every applied configuration, so the pod watch re-binds pods.
    config_gen: watch::Sender<u64>,
}

/// A steered workload that failed to enrol is tried again, unchanged, on the
/// next apply at least this long after the failure (the pod watch re-applies
/// while pods are failing; a reload does for the file's workloads).
const ENROL_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// One workload as `apply` sees it: a static workload of the file, or a pod.
pub struct WorkloadSpec {
    pub name: String,
    key: Option<ListenKey>,
    /// The bound policy's name, or why there is none.
    policy: Result<String, String>,
    /// A missing policy means deny-all (pods) rather than an error (the file's workloads).
    fail_closed: bool,
    upstream: Option<SocketAddr>,
    steered: bool,
}

impl WorkloadSpec {
    fn from_static(w: &WorkloadConfig, config: &Config) -> Self {
        let policy = bound_policy(config, w);
        let key = match (w.listen, &w.netns) {
            (Some(addr), _) => Some(ListenKey::Addr(addr)),
            (None, Some(path)) => Some(ListenKey::Netns {
                path: path.clone(),
                ips: w.ips.clone(),
                ports: policy.map(|p| p.ports.clone()).unwrap_or_default(),
            }),
            (None, None) => None,
        };
        Self {
            name: w.name.clone(),
            key,
            policy: policy
                .map(|p| p.name.clone())
                .ok_or_else(|| "no policy selects it".into()),
            fail_closed: false,
            upstream: w.upstream,
            steered: w.netns.is_some(),
        }
    }

    fn from_pod(p: &PodWorkload, config: &Config) -> Self {
        let policy = match &p.policy {
            PodPolicy::Named(n) if config.policies.iter().any(|q| &q.name == n) => Ok(n.clone()),
            PodPolicy::Named(n) => Err(format!("policy {n:?} does not exist")),
            PodPolicy::Missing(why) => Err(why.clone()),
        };
        Self {
            name: p.name.clone(),
            key: Some(ListenKey::Netns {
                path: p.netns.clone(),
                ips: p.ips.clone(),
                ports: p.ports.clone(),
            }),
            policy,
            fail_closed: true,
            upstream: None,
            steered: true,
        }
    }

    /// Whether connections to this workload are steered by eBPF (else a reverse-proxy listener).
    pub fn steered(&self) -> bool {
        self.steered
    }
}

/// The effective workloads: the file's, then the pods whose names they do not take.
fn specs(config: &Config, pods: &[PodWorkload]) -> Vec<WorkloadSpec> {
    let mut out: Vec<WorkloadSpec> = config
        .workloads
        .iter()
        .map(|w| WorkloadSpec::from_static(w, config))
        .collect();
    for p in pods {
        if config.workloads.iter().any(|w| w.name == p.name) {
            continue;
        }
        out.push(WorkloadSpec::from_pod(p, config));
    }
    out
}

fn client_for(limits: &Limits, netns: Option<Arc<Netns>>) -> Arc<upstream::Client> {
    Arc::new(upstream::Client::new(
        netns,
        limits.upstream_connect_timeout,
        limits.upstream_timeout,
    ))
}

impl Agent {
    /// Starts everything `config` describes. Fails if a listener cannot bind.
    pub async fn start(config: Config) -> Result<Self, AppError> {
        let metrics = Metrics::new()?;
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
            request_ids: RequestIds::default(),
            enroller: Mutex::new(Enroller::new(&config.ebpf.pin_dir)),
            seen: Mutex::new(HashMap::new()),
            configured: AtomicBool::new(false),
            kube_enabled: AtomicBool::new(config.kubernetes.enabled),
            kube_synced: AtomicBool::new(false),
            static_failed: AtomicUsize::new(0),
        });
        let (admin_stop, stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(admin_listener, shared.clone(), stop_rx));
        let agent = Self {
            host_client: client_for(&config.limits, None),
            shared,
            admin_addr,
            admin_stop,
            admin_task,
            supervisor: tokio::sync::Mutex::new(Supervisor::default()),
            bound: Mutex::new(HashMap::new()),
            config_gen: watch::channel(0).0,
        };
        agent.adopt_pinned_state(&config);
        agent.apply(config).await?;
        tracing::info!(admin = %agent.admin_addr, "nodeward started");
        Ok(agent)
    }

    /// After a restart: un-enrol what a previous agent protected that this
    /// configuration no longer has. What it still has stays protected (and
    /// dropped, fail closed) until `apply` gives it a listener again.
    ///
    /// With the pod watch on, pinned pods cannot be told from gone ones until
    /// the first full pod list: nothing is un-enrolled here, and
    /// [`Agent::apply_pods`] does it when that list arrives.
    fn adopt_pinned_state(&self, config: &Config) {
        if config.kubernetes.enabled {
            tracing::info!("pinned eBPF state is reconciled when the first pod list arrives");
            return;
        }
        let keep: HashSet<String> = config
            .workloads
            .iter()
            .filter(|w| w.netns.is_some())
            .map(|w| w.name.clone())
            .collect();
        self.forget_pinned(&keep);
    }

    /// Un-enrols pinned workloads (a previous agent's, or pods this one
    /// could not enrol) that are not in `keep`.
    fn forget_pinned(&self, keep: &HashSet<String>) {
        let Ok(mut e) = self.shared.enroller.lock() else { return };
        if !e.has_pinned_state() {
            return;
        }
        match e.reconcile(keep) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    ?removed,
                    "un-enrolled workloads that left the configuration while the agent was down"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "cannot adopt the pinned eBPF state"),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The address a workload's listener actually bound (port 0 resolved;
    /// inside the pod's namespace for steered workloads).
    pub fn workload_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound.lock().ok()?.get(name).copied()
    }

    /// Applies a validated configuration. What can fail for the whole
    /// configuration (binding reverse-proxy listeners, building providers and
    /// policies) happens before the switch, so such a failure leaves the
    /// running configuration untouched. A steered workload that cannot be
    /// enrolled (namespace gone, no capability) fails alone, loudly.
    pub async fn apply(&self, config: Config) -> Result<(), AppError> {
        let mut sup = self.supervisor.lock().await;
        let current = self.shared.state.load_full();
        if current.config.kubernetes != config.kubernetes && self.shared.configured.load(Ordering::Acquire) {
            tracing::warn!("changes to the `kubernetes` section take effect on restart");
        }
        self.apply_locked(&mut sup, config).await?;
        self.config_gen.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Makes `pods` the pod workloads (the Kubernetes watch's complete set)
    /// and re-applies the running configuration with them. Pinned state of
    /// workloads neither configured, in `present`, nor in `pods` is
    /// un-enrolled: after a restart, pods deleted while the agent was down
    /// are released only now that the full list is known. Returns, per pod
    /// that is not enrolled, why.
    pub async fn apply_pods(&self, pods: Vec<PodWorkload>, present: HashSet<String>) -> HashMap<String, String> {
        let mut sup = self.supervisor.lock().await;
        let config = (*self.shared.state.load().config).clone();
        let mut out = HashMap::new();
        for p in &pods {
            if config.workloads.iter().any(|w| w.name == p.name) {
                out.insert(
                    p.name.clone(),
                    "a static workload of the configuration file has the same name".to_string(),
                );
            }
        }
        let mut keep: HashSet<String> = config
            .workloads
            .iter()
            .filter(|w| w.netns.is_some())
            .map(|w| w.name.clone())
            .collect();
        keep.extend(present);
        keep.extend(pods.iter().map(|p| p.name.clone()));
        keep.extend(sup.listeners.keys().cloned());
        self.forget_pinned(&keep);
        sup.pods = pods;
        match self.apply_locked(&mut sup, config).await {
            Ok(()) => {
                for p in &sup.pods {
                    if let Some((_, why, _)) = sup.failed.get(&p.name) {
                        out.entry(p.name.clone()).or_insert_with(|| why.clone());
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot apply the pod set");
                for p in &sup.pods {
                    out.entry(p.name.clone()).or_insert_with(|| e.to_string());
                }
            }
        }
        self.shared.kube_synced.store(true, Ordering::Release);
        out
    }

    async fn apply_locked(&self, sup: &mut Supervisor, config: Config) -> Result<(), AppError> {
        let current = self.shared.state.load_full();
        if current.config.admin != config.admin && !current.workloads.is_empty() {
            tracing::warn!("the admin address changes only on restart");
        }
        let specs = specs(&config, &sup.pods);
        let keys: HashMap<String, ListenKey> = specs
            .iter()
            .filter_map(|s| s.key.clone().map(|k| (s.name.clone(), k)))
            .collect();

        // 1. Host listeners for new or moved reverse-proxy workloads.
        let mut new_listeners = HashMap::new();
        for (name, key) in &keys {
            let ListenKey::Addr(listen) = key else { continue };
            if sup.listeners.get(name).is_some_and(|l| l.key == *key) {
                continue;
            }
            let l = proxy::bind(*listen).await.map_err(|source| AppError::Bind {
                what: format!("workload {name}"),
                addr: *listen,
                source,
            })?;
            new_listeners.insert(name.clone(), (key.clone(), l));
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

        // 3. Upstream clients: one per steered workload, made inside its namespace.
        let mut netns_clients = HashMap::new();
        let mut open_failed = HashMap::new();
        for (name, key) in &keys {
            let ListenKey::Netns { path, .. } = key else { continue };
            match sup.netns_clients.get(name) {
                Some((k, c)) if k == key => {
                    netns_clients.insert(name.clone(), (key.clone(), c.clone()));
                }
                _ => match Netns::open(path) {
                    Ok(ns) => {
                        let client = client_for(&config.limits, Some(Arc::new(ns)));
                        netns_clients.insert(name.clone(), (key.clone(), client));
                    }
                    Err(e) => {
                        open_failed.insert(name.clone(), e.to_string());
                    }
                },
            }
        }
        let host = self.host_client.clone();
        let runtime = build_runtime_for(config, &specs, providers, |w| match netns_clients.get(&w.name) {
            Some((_, c)) => Some(c.clone()),
            None if w.steered => None,
            None => Some(host.clone()),
        })?;
        let providers_changed = !started.is_empty() || sup.providers.len() != runtime.config.providers.len();

        // 4. Switch. Requests already running keep the snapshot they loaded.
        let config = runtime.config.clone();
        self.shared.state.store(Arc::new(runtime));
        if providers_changed {
            // Audiences, issuers or keys may differ: earlier verifications no longer apply.
            self.shared.cache.clear();
        }
        self.restart_providers(sup, started, &config);

        // 5. Stop listeners that are gone or changed. A steered workload is
        //    un-enrolled first, so its port goes back to the app, not to a void.
        let stale: Vec<String> = sup
            .listeners
            .iter()
            .filter(|(n, l)| keys.get(*n) != Some(&l.key))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(l) = sup.listeners.remove(&name) {
                if matches!(l.key, ListenKey::Netns { .. }) {
                    self.unenrol(&name);
                }
                let _ = l.stop.send(true);
                if let Ok(mut b) = self.bound.lock() {
                    b.remove(&name);
                }
            }
        }
        sup.failed.retain(|n, (k, _, _)| keys.get(n) == Some(k));
        sup.netns_clients = netns_clients;

        // 6. Start new host listeners.
        for (name, (key, listener)) in new_listeners {
            let bound = listener.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            self.start_listener(sup, name, key, listener, bound);
        }

        // 7. Enrol new or changed steered workloads.
        for (name, key) in &keys {
            let ListenKey::Netns { ips, ports, .. } = key else {
                continue;
            };
            let failed_recently = sup
                .failed
                .get(name)
                .is_some_and(|(k, _, at)| k == key && at.elapsed() < ENROL_RETRY);
            if sup.listeners.contains_key(name) || failed_recently {
                continue;
            }
            if let Some(why) = open_failed.get(name) {
                tracing::error!(workload = %name, error = %why, "workload not enrolled");
                sup.failed
                    .insert(name.clone(), (key.clone(), why.clone(), Instant::now()));
                continue;
            }
            let Some(ns) = sup.netns_clients.get(name).and_then(|(_, c)| c.netns()) else {
                continue;
            };
            let began = Instant::now();
            let enrolled = self
                .shared
                .enroller
                .lock()
                .map_err(|_| "enroller lock poisoned".to_string())
                .and_then(|mut e| e.enrol(name, &ns, ips, ports).map_err(|e| e.to_string()));
            match enrolled.and_then(|l| tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())) {
                Ok(listener) => {
                    self.shared
                        .metrics
                        .enrolment_seconds
                        .observe(began.elapsed().as_secs_f64());
                    let bound = listener.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                    self.start_listener(sup, name.clone(), key.clone(), listener, bound);
                }
                Err(why) => {
                    tracing::error!(workload = %name, error = %why, "workload not enrolled");
                    sup.failed.insert(name.clone(), (key.clone(), why, Instant::now()));
                }
            }
        }

        let serving = sup
            .listeners
            .values()
            .filter(|l| matches!(l.key, ListenKey::Addr(_)))
            .count();
        let enrolled = sup.listeners.len() - serving;
        let w = &self.shared.metrics.workloads;
        w.with_label_values(&["serving"]).set(serving as i64);
        w.with_label_values(&["enrolled"]).set(enrolled as i64);
        w.with_label_values(&["failed"]).set(sup.failed.len() as i64);
        let static_failed = sup
            .failed
            .keys()
            .filter(|n| runtime_config_has(&self.shared, n))
            .count();
        self.shared.static_failed.store(static_failed, Ordering::Release);
        self.shared.configured.store(true, Ordering::Release);
        Ok(())
    }

    fn restart_providers(&self, sup: &mut Supervisor, started: Vec<Arc<Provider>>, config: &Config) {
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
    }

    fn start_listener(
        &self,
        sup: &mut Supervisor,
        name: String,
        key: ListenKey,
        listener: tokio::net::TcpListener,
        bound: SocketAddr,
    ) {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(proxy::serve(listener, name.as_str().into(), self.shared.clone(), rx));
        tracing::info!(workload = %name, listen = %bound, "workload serving");
        if let Ok(mut b) = self.bound.lock() {
            b.insert(name.clone(), bound);
        }
        sup.listeners.insert(name, Listener { key, bound, stop, task });
    }

    fn unenrol(&self, name: &str) {
        let result = self.shared.enroller.lock().map(|mut e| e.unenrol(name));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(workload = %name, error = %e, "cannot un-enrol"),
            Err(_) => tracing::error!(workload = %name, "enroller lock poisoned"),
        }
    }

    /// Stops accepting, drains in-flight requests (bounded), stops refreshes.
    /// Steered workloads stay enrolled: their pinned entries keep the ports
    /// closed (fail closed) until an agent adopts them again.
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

    /// Un-enrols every steered workload (an operator's uninstall, or a test's
    /// cleanup), then shuts down.
    pub async fn unenrol_all_and_shutdown(self) {
        {
            let sup = self.supervisor.lock().await;
            for (name, l) in &sup.listeners {
                if matches!(l.key, ListenKey::Netns { .. }) {
                    self.unenrol(name);
                }
            }
        }
        self.shutdown().await;
    }
}

/// Whether `name` is one of the running configuration's static workloads.
fn runtime_config_has(shared: &Shared, name: &str) -> bool {
    shared.state.load().config.workloads.iter().any(|w| w.name == name)
}

/// Compiles policies and binds each of the configuration's static workloads
/// to its policy and to its upstream client (`client` returns `None` for a
/// steered workload whose namespace could not be opened; it is left out).
pub fn build_runtime(
    config: Config,
    providers: Providers,
    client: impl Fn(&WorkloadSpec) -> Option<Arc<upstream::Client>>,
) -> Result<Runtime, AppError> {
    let specs = specs(&config, &[]);
    build_runtime_for(config, &specs, providers, client)
}

/// [`build_runtime`] with pod workloads besides the file's (as the agent binds them).
pub fn build_runtime_with_pods(
    config: Config,
    pods: &[PodWorkload],
    providers: Providers,
    client: impl Fn(&WorkloadSpec) -> Option<Arc<upstream::Client>>,
) -> Result<Runtime, AppError> {
    let specs = specs(&config, pods);
    build_runtime_for(config, &specs, providers, client)
}

/// [`build_runtime`] for the given workloads (the file's and the pods').
/// A pod without its policy gets a deny-all stand-in: enrolled, fail closed.
fn build_runtime_for(
    config: Config,
    specs: &[WorkloadSpec],
    providers: Providers,
    client: impl Fn(&WorkloadSpec) -> Option<Arc<upstream::Client>>,
) -> Result<Runtime, AppError> {
    let mut policies = HashMap::new();
    for p in &config.policies {
        policies.insert(p.name.clone(), Arc::new(Policy::compile(p)?));
    }
    let mut workloads = HashMap::new();
    for w in specs {
        let policy = match (&w.policy, w.fail_closed) {
            (Ok(name), _) => policies.get(name).cloned(),
            (Err(why), true) => Some(Arc::new(Policy::deny_all(
                "(none)",
                format!("workload {} has no policy: {why}", w.name),
            ))),
            (Err(_), false) => None,
        }
        .ok_or_else(|| AppError::NoPolicy(w.name.clone()))?;
        let upstream = match w.upstream {
            Some(addr) => match addr.to_string().parse() {
                Ok(a) => Upstream::Fixed(a),
                Err(_) => continue,
            },
            None => Upstream::OriginalDestination,
        };
        let Some(client) = client(w) else { continue };
        workloads.insert(
            w.name.clone(),
            Workload {
                name: w.name.as_str().into(),
                policy,
                upstream,
                client,
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

impl PodSink for Agent {
    fn config(&self) -> Arc<Config> {
        self.shared.state.load().config.clone()
    }

    fn config_changes(&self) -> watch::Receiver<u64> {
        self.config_gen.subscribe()
    }

    fn apply_pods(
        &self,
        pods: Vec<PodWorkload>,
        present: HashSet<String>,
    ) -> impl std::future::Future<Output = HashMap<String, String>> + Send {
        Agent::apply_pods(self, pods, present)
    }
}
