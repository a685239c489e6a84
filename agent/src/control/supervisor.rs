//! [`Control`]: applies a configuration, or a new pod set, in steps that
//! never disturb what did not change. What can fail for the whole
//! configuration (binding reverse-proxy listeners, building providers and
//! policies) happens before the switch, so such a failure leaves the running
//! configuration untouched; a steered workload that cannot be enrolled
//! (namespace gone, no capability) fails alone, loudly, and is tried again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::egress::{self, EgressEnroller};
use super::enrol::{EnrolError, Enroller};
use super::listeners::{self, ListenKey, Listener, NetnsClients, client_for};
use super::metrics::ControlMetrics;
use super::providers::{self, ProviderTask};
use crate::config::Config;
use crate::drain;
use crate::ebpf::{Counters, EgressCounters};
use crate::k8s::PodWorkload;
use crate::netns::NetnsError;
use crate::provider::{ProviderError, ProviderMetricFamilies};
use crate::proxy::{self, Context, Endpoint, upstream};
use crate::readiness::{Blocker, Readiness};
use crate::snapshot::{Snapshot, SnapshotError, WorkloadSpec};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot listen on {addr} for workload {workload}: {source}")]
    Bind {
        workload: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a steered workload is not enrolled.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum Failure {
    #[error("cannot open its network namespace: {0}")]
    Netns(Arc<NetnsError>),
    #[error(transparent)]
    Enrol(Arc<EnrolError>),
    #[error("cannot serve its listener: {0}")]
    Listener(Arc<std::io::Error>),
}

/// A steered workload that failed to enrol is tried again, unchanged, on the
/// next apply at least this long after the failure (the pod watch re-applies
/// while pods are failing; a reload does for the file's workloads).
const ENROL_RETRY: Duration = Duration::from_secs(10);

pub(super) struct Failed {
    key: ListenKey,
    pub(super) why: Failure,
    at: Instant,
    /// A static workload's failure keeps the agent not ready (a pod's is the pod's problem).
    _blocks: Option<Blocker>,
}

#[derive(Default)]
pub(super) struct State {
    providers: HashMap<String, ProviderTask>,
    pub(super) listeners: HashMap<String, Listener>,
    /// Upstream clients of steered workloads, made inside their namespaces.
    netns_clients: NetnsClients,
    pub(super) failed: HashMap<String, Failed>,
    /// The pod workloads the Kubernetes watch wants enrolled.
    pub(super) pods: Vec<PodWorkload>,
    /// Pinned egress state of a previous agent has been reconciled.
    egress_reconciled: bool,
    /// Pods of the pod watch's last list that should stay protected even
    /// when they could not be enrolled (their pins are kept).
    pub(super) present: std::collections::HashSet<String>,
}

pub struct Control {
    ctx: Arc<Context>,
    metrics: ControlMetrics,
    provider_metrics: ProviderMetricFamilies,
    readiness: Readiness,
    pub(super) state: tokio::sync::Mutex<State>,
    /// eBPF enrolment; a std mutex: its operations are short syscalls.
    pub(super) enroller: Mutex<Enroller>,
    egress: Mutex<EgressEnroller>,
    /// Last program counters seen per workload, to turn them into counter increments.
    seen: Mutex<HashMap<String, Counters>>,
    seen_egress: Mutex<HashMap<String, EgressCounters>>,
    bound: Mutex<HashMap<String, SocketAddr>>,
    host_client: Arc<upstream::Client>,
    /// Bumped after every applied configuration, so the pod watch re-binds pods.
    pub(super) config_gen: watch::Sender<u64>,
    /// The API client service-account providers fetch their keys with.
    kube: Option<kube::Client>,
    unapplied: Mutex<Option<Blocker>>,
    pub(super) unsynced: Mutex<Option<Blocker>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Control {
    pub fn new(
        ctx: Arc<Context>,
        metrics: ControlMetrics,
        provider_metrics: ProviderMetricFamilies,
        readiness: Readiness,
        config: &Config,
        kube: Option<kube::Client>,
    ) -> Self {
        let unsynced = config
            .kubernetes
            .enabled
            .then(|| readiness.block("kubernetes: first pod list not applied yet"));
        Self {
            host_client: client_for(config, None),
            metrics,
            provider_metrics,
            kube,
            state: tokio::sync::Mutex::new(State::default()),
            enroller: Mutex::new(Enroller::new(&config.ebpf.pin_dir)),
            egress: Mutex::new(EgressEnroller::new(&config.ebpf.pin_dir)),
            seen: Mutex::new(HashMap::new()),
            seen_egress: Mutex::new(HashMap::new()),
            bound: Mutex::new(HashMap::new()),
            config_gen: watch::channel(0).0,
            unapplied: Mutex::new(Some(readiness.block("configuration not applied yet"))),
            unsynced: Mutex::new(unsynced),
            readiness,
            ctx,
        }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The address a workload's listener actually bound (port 0 resolved;
    /// inside the pod's namespace for steered workloads).
    pub fn workload_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.bound).get(name).copied()
    }

    /// The configuration requests see now.
    pub fn config(&self) -> Arc<Config> {
        self.ctx.snapshot.load().config.clone()
    }

    /// Counts a reload attempt by result.
    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.metrics.config_reloads.with_label_values(&[result]).inc();
    }

    /// Refreshes the values that are read rather than counted (at scrape time).
    pub fn observe(&self) {
        let pm = &self.ctx.metrics;
        pm.token_cache_entries.set(self.ctx.cache.entries() as i64);
        for p in self.ctx.snapshot.load().providers.iter() {
            p.metrics().observe(p.keys_age().map(|a| a.as_secs_f64()), p.is_ready());
        }
        let counters = lock(&self.enroller).counters();
        self.metrics.observe_ebpf(counters, &mut lock(&self.seen));
        let counters = lock(&self.egress).counters();
        self.metrics.observe_egress(counters, &mut lock(&self.seen_egress));
        self.metrics.ready.set(i64::from(self.not_ready().is_empty()));
    }

    /// Why the agent is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut out = self.readiness.waiting_for();
        out.extend(
            self.ctx
                .snapshot
                .load()
                .providers
                .iter()
                .filter(|p| !p.is_ready())
                .map(|p| format!("provider {} has no usable keys", p.name)),
        );
        out.sort();
        out
    }

    /// Applies a validated configuration (at start and on every reload).
    pub async fn apply(&self, config: Config) -> Result<(), ControlError> {
        let mut st = self.state.lock().await;
        let current = self.config();
        if current.kubernetes != config.kubernetes && lock(&self.unapplied).is_none() {
            tracing::warn!("changes to the `kubernetes` section take effect on restart");
        }
        // With the pod watch, pinned pods are known only with its first list.
        let complete = !config.kubernetes.enabled || lock(&self.unsynced).is_none();
        self.apply_locked(&mut st, config, complete).await?;
        self.config_gen.send_modify(|g| *g += 1);
        Ok(())
    }

    /// `complete`: the workload set is whole (no pod watch, or its pod
    /// list has arrived), so pinned egress state outside it can go.
    pub(super) async fn apply_locked(
        &self,
        st: &mut State,
        config: Config,
        complete: bool,
    ) -> Result<(), ControlError> {
        if self.config().admin != config.admin && lock(&self.unapplied).is_none() {
            tracing::warn!("the admin address changes only on restart");
        }
        let specs = WorkloadSpec::all(&config, &st.pods);
        let keys: HashMap<String, ListenKey> = specs.iter().map(|s| (s.name.clone(), ListenKey::of(s))).collect();

        // 1-3: everything that can fail for the whole configuration, before the switch.
        let new_listeners = listeners::bind_new_listeners(&st.listeners, &keys).await?;
        let (providers, started) =
            providers::providers_for(&st.providers, &self.provider_metrics, &config, self.kube.as_ref())?;
        let (netns_clients, open_failed) = listeners::open_namespaces(&st.netns_clients, &keys, &config);

        // 4. Switch. Requests already running keep the snapshot they loaded.
        let steered_without_netns =
            |s: &WorkloadSpec| ListenKey::of(s).steered() && !netns_clients.contains_key(&s.name);
        let snapshot = Snapshot::build(config, &specs, providers, steered_without_netns)?;
        let providers_changed = !started.is_empty() || st.providers.len() != snapshot.config.providers.len();
        let config = snapshot.config.clone();
        self.ctx.snapshot.store(Arc::new(snapshot));
        if providers_changed {
            // Stale entries could no longer answer (the cache checks the
            // provider on every hit); clearing just frees their memory.
            self.ctx.cache.clear();
        }
        providers::restart(&mut st.providers, &self.provider_metrics, started, &config);

        // 5. Stop listeners that are gone or changed. A steered workload is
        //    un-enrolled first, so its port goes back to the app, not to a void.
        let stale: Vec<String> = st
            .listeners
            .iter()
            .filter(|(n, l)| keys.get(*n) != Some(&l.key))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(l) = st.listeners.remove(&name) {
                if l.key.steered() {
                    self.unenrol(&name);
                }
                l.drain.signal();
                lock(&self.bound).remove(&name);
            }
        }
        st.failed.retain(|n, f| keys.get(n) == Some(&f.key));
        st.netns_clients = netns_clients;

        // 6. Start new host listeners.
        for (name, (key, listener)) in new_listeners {
            let client = self.host_client.clone();
            self.start_listener(st, name, key, listener, client);
        }

        // 7. Enrol new or changed steered workloads, then their egress.
        for (name, key) in &keys {
            self.enrol_if_needed(st, &config, name, key, open_failed.get(name));
        }
        self.apply_egress(st, &specs, complete);
        self.report(st);
        lock(&self.unapplied).take();
        Ok(())
    }

    fn enrol_if_needed(
        &self,
        st: &mut State,
        config: &Config,
        name: &str,
        key: &ListenKey,
        open_failed: Option<&Failure>,
    ) {
        // No ports: an egress-only workload, nothing inbound to protect.
        let ListenKey::Netns { ips, ports, .. } = key else {
            return;
        };
        if ports.is_empty() {
            return;
        }
        let failed_recently = st
            .failed
            .get(name)
            .is_some_and(|f| f.key == *key && f.at.elapsed() < ENROL_RETRY);
        if st.listeners.contains_key(name) || failed_recently {
            return;
        }
        let failed = |why: Failure| {
            tracing::error!(workload = %name, error = %why, "workload not enrolled");
            let blocks = config
                .workloads
                .iter()
                .any(|w| w.name == name)
                .then(|| self.readiness.block(format!("workload {name} failed to enrol")));
            Failed {
                key: key.clone(),
                why,
                at: Instant::now(),
                _blocks: blocks,
            }
        };
        if let Some(why) = open_failed {
            st.failed.insert(name.to_string(), failed(why.clone()));
            return;
        }
        let Some(client) = st.netns_clients.get(name).map(|(_, c)| c.clone()) else {
            return;
        };
        let Some(ns) = client.netns() else { return };
        let began = Instant::now();
        let enrolled = lock(&self.enroller)
            .enrol(name, &ns, ips, ports)
            .map_err(|e| Failure::Enrol(Arc::new(e)))
            .and_then(|l| tokio::net::TcpListener::from_std(l).map_err(|e| Failure::Listener(Arc::new(e))));
        match enrolled {
            Ok(listener) => {
                self.metrics.enrolment_seconds.observe(began.elapsed().as_secs_f64());
                st.failed.remove(name);
                self.start_listener(st, name.to_string(), key.clone(), listener, client);
            }
            Err(why) => {
                st.failed.insert(name.to_string(), failed(why));
            }
        }
    }

    fn apply_egress(&self, st: &mut State, specs: &[WorkloadSpec], complete: bool) {
        let snapshot = self.ctx.snapshot.load();
        let desired = egress::desired(&snapshot, specs, &st.netns_clients);
        self.ctx.credentials.retain(|k| {
            snapshot
                .workloads
                .values()
                .any(|w| w.egress.iter().any(|b| b.want.key() == k))
        });
        let mut eg = lock(&self.egress);
        if complete && !st.egress_reconciled && (eg.has_pinned_state() || !desired.is_empty()) {
            // A previous agent's pins stay for every workload that still is,
            // with egress (or that could not be looked at now: its namespace
            // or the pod's not found yet): un-enrolling those would let their
            // configured egress out untouched. Only what left goes.
            let keep: std::collections::HashSet<String> = specs
                .iter()
                .filter(|s| {
                    snapshot
                        .workloads
                        .get(s.name.as_str())
                        .is_none_or(|w| !w.policy.egress.is_empty())
                })
                .map(|s| s.name.clone())
                .chain(st.present.iter().cloned())
                .collect();
            match eg.reconcile(&keep) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(
                        ?removed,
                        "un-enrolled the egress of workloads that left while the agent was down"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot adopt the pinned eBPF egress state"),
            }
            st.egress_reconciled = true;
        }
        eg.apply(&self.ctx, desired);
    }

    fn report(&self, st: &State) {
        let serving = st.listeners.values().filter(|l| !l.key.steered()).count();
        let enrolled = st.listeners.len() - serving;
        let w = &self.metrics.workloads;
        w.with_label_values(&["serving"]).set(serving as i64);
        w.with_label_values(&["enrolled"]).set(enrolled as i64);
        w.with_label_values(&["failed"]).set(st.failed.len() as i64);
    }

    fn start_listener(
        &self,
        st: &mut State,
        name: String,
        key: ListenKey,
        listener: tokio::net::TcpListener,
        client: Arc<upstream::Client>,
    ) {
        let bound = listener.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let (trigger, watch) = drain::channel();
        let endpoint = Endpoint {
            workload: name.as_str().into(),
            client,
            metrics: self.ctx.metrics.workload(&name),
        };
        let task = tokio::spawn(proxy::serve(listener, self.ctx.clone(), endpoint, watch));
        tracing::info!(workload = %name, listen = %bound, "workload serving");
        lock(&self.bound).insert(name.clone(), bound);
        st.listeners.insert(
            name,
            Listener {
                key,
                bound,
                drain: trigger,
                task,
            },
        );
    }

    fn unenrol(&self, name: &str) {
        if let Err(e) = lock(&self.enroller).unenrol(name) {
            tracing::error!(workload = %name, error = %e, "cannot un-enrol");
        }
    }

    /// Stops accepting, drains in-flight requests (bounded), stops refreshes.
    /// Steered workloads stay enrolled: their pinned entries keep the ports
    /// closed (fail closed) until an agent adopts them again.
    pub async fn shutdown(&self) {
        let mut st = self.state.lock().await;
        let listeners: Vec<Listener> = st.listeners.drain().map(|(_, l)| l).collect();
        for l in &listeners {
            l.drain.signal();
        }
        let egress = lock(&self.egress).stop_serving();
        for l in listeners {
            let _ = l.task.await;
            tracing::debug!(listen = %l.bound, "listener drained");
        }
        for task in egress {
            let _ = task.await;
        }
        providers::stop_all(&mut st.providers);
    }

    /// Un-enrols every steered workload (an operator's uninstall, or a test's cleanup).
    pub async fn unenrol_all(&self) {
        let st = self.state.lock().await;
        lock(&self.egress).unenrol_all();
        for (name, l) in &st.listeners {
            if l.key.steered() {
                self.unenrol(name);
            }
        }
    }
}
