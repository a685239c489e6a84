//! Outbound enrolment: for each steered workload whose policy has `egress`
//! rules, listeners inside its network namespace (`127.0.0.1:0`, and
//! `[::1]:0` when the pod has IPv6 loopback), the egress programs
//! configured with its destinations and fail mode and attached to its
//! cgroup, and one serving task per listener (`proxy::outbound`).
//!
//! Order (see `ebpf/egress.rs`): listeners → `configure` → `attach`, so no
//! configured destination is ever steered to nothing; un-enrolling detaches
//! and clears the maps before the listeners close. A change of only the
//! destinations or the fail mode re-configures in place (the kept listeners
//! refill their slots); a new namespace or cgroup re-enrols. Shutdown
//! leaves the pins: the listeners close with the process, their slots
//! empty, and configured egress fails closed until an agent adopts them.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::drain;
use crate::ebpf::{Destination, EbpfError, EgressCounters, EgressListeners, EgressPolicy, EgressSteering, FailMode};
use crate::netns::{Netns, NetnsError};
use crate::policy::egress::EgressRules;
use crate::proxy::outbound::{EgressEndpoint, serve_egress};
use crate::proxy::{Context, upstream};

#[derive(Debug, thiserror::Error)]
pub enum EgressEnrolError {
    #[error("workload {workload}: egress steering: {source}")]
    Ebpf {
        workload: String,
        #[source]
        source: EbpfError,
    },
    #[error("workload {workload}: egress listener: {source}")]
    Netns {
        workload: String,
        #[source]
        source: NetnsError,
    },
    #[error("workload {workload}: egress listener: {source}")]
    Listener {
        workload: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "workload {0}: its policy has `egress` rules but its cgroup is unknown (pods: not found under kubernetes.cgroup_root; static workloads: set `cgroup`)"
    )]
    NoCgroup(String),
}

/// A failed enrolment is tried again, unchanged, after this long.
const RETRY: Duration = Duration::from_secs(10);

/// What a workload's egress enrolment was made from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EgressKey {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub policy: EgressPolicy,
}

impl EgressKey {
    /// The enrolment `rules` ask for, for a workload in `netns` and `cgroup`.
    pub fn new(netns: &Path, cgroup: &Path, rules: &EgressRules) -> Self {
        let destinations = rules
            .destinations()
            .into_iter()
            .map(|(net, port)| match net {
                None => Destination::port(port),
                Some(n) => Destination::net(n.addr(), n.prefix_len(), port),
            })
            .collect();
        let fail = match rules.fail {
            crate::config::EgressFail::Closed => FailMode::Closed,
            crate::config::EgressFail::Open => FailMode::Open,
        };
        Self {
            netns: netns.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
            policy: EgressPolicy { destinations, fail },
        }
    }
}

/// What `apply` needs per workload that should have egress.
pub(super) struct Desired {
    pub key: Result<EgressKey, EgressEnrolError>,
    pub netns: Arc<Netns>,
    pub client: Arc<upstream::Client>,
}

struct Enrolled {
    key: EgressKey,
    id: u32,
    /// Duplicates of the served listeners, for re-configuring their slots.
    listeners: Vec<TcpListener>,
    serving: Vec<(drain::Trigger, JoinHandle<()>)>,
}

/// The egress programs (loaded on first use, or adopted) and the workloads
/// this agent has enrolled for egress.
pub(super) struct EgressEnroller {
    pin_dir: PathBuf,
    steering: Option<EgressSteering>,
    enrolled: HashMap<String, Enrolled>,
    failed: HashMap<String, (Option<EgressKey>, Instant)>,
}

impl EgressEnroller {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            steering: None,
            enrolled: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    /// Whether a previous agent left pinned egress state to adopt.
    pub fn has_pinned_state(&self) -> bool {
        self.pin_dir
            .join(crate::ebpf::egress::EGRESS_DIR)
            .join("links")
            .is_dir()
    }

    fn steering(&mut self) -> Result<&mut EgressSteering, EbpfError> {
        if self.steering.is_none() {
            let s = EgressSteering::load_or_adopt(&self.pin_dir)?;
            tracing::info!(dir = %s.dir().display(), adopted = s.adopted(), "eBPF egress steering ready");
            self.steering = Some(s);
        }
        self.steering.as_mut().ok_or(EbpfError::EmptyObject)
    }

    /// Un-enrols pinned egress workloads (a previous agent's) not in `keep`.
    pub fn reconcile(&mut self, keep: &HashSet<String>) -> Result<Vec<String>, EbpfError> {
        let steering = self.steering()?;
        let mut removed = Vec::new();
        for (name, id) in steering.workloads() {
            if !keep.contains(&name) {
                steering.unenrol(&name, id)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Makes the enrolled set `desired`: un-enrols what left or changed
    /// namespace or cgroup, re-configures what changed only its
    /// destinations, enrols what is new. Failures are logged and retried
    /// after [`RETRY`]; the rest goes on.
    pub fn apply(&mut self, ctx: &Arc<Context>, desired: HashMap<String, Desired>) {
        let gone: Vec<String> = self
            .enrolled
            .iter()
            .filter(|(n, e)| {
                desired
                    .get(*n)
                    .and_then(|d| d.key.as_ref().ok())
                    .is_none_or(|k| k.netns != e.key.netns || k.cgroup != e.key.cgroup)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.unenrol(&name);
        }
        self.failed.retain(|n, _| desired.contains_key(n));
        for (name, d) in desired {
            let key = match d.key {
                Ok(k) => k,
                Err(e) => {
                    if self.failed.get(&name).is_none_or(|(k, _)| k.is_some()) {
                        tracing::error!(workload = %name, error = %e, "egress not enrolled");
                        self.failed.insert(name, (None, Instant::now()));
                    }
                    continue;
                }
            };
            if let Some(e) = self.enrolled.get(&name) {
                if e.key != key
                    && let Err(err) = self.reconfigure(&name, key)
                {
                    tracing::error!(workload = %name, error = %err, "egress rules not updated; un-enrolling");
                    self.unenrol(&name);
                }
                continue;
            }
            if self
                .failed
                .get(&name)
                .is_some_and(|(k, at)| k.as_ref() == Some(&key) && at.elapsed() < RETRY)
            {
                continue;
            }
            match self.enrol(ctx, &name, key.clone(), &d.netns, d.client) {
                Ok(()) => {
                    self.failed.remove(&name);
                }
                Err(e) => {
                    tracing::error!(workload = %name, error = %e, "egress not enrolled");
                    self.failed.insert(name, (Some(key), Instant::now()));
                }
            }
        }
    }

    fn enrol(
        &mut self,
        ctx: &Arc<Context>,
        name: &str,
        key: EgressKey,
        ns: &Arc<Netns>,
        client: Arc<upstream::Client>,
    ) -> Result<(), EgressEnrolError> {
        let ebpf = |source| EgressEnrolError::Ebpf {
            workload: name.to_string(),
            source,
        };
        let v4 = ns
            .listener(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|source| EgressEnrolError::Netns {
                workload: name.to_string(),
                source,
            })?;
        // A pod without IPv6 loopback has no ::1: its IPv6 destinations
        // then fail as its fail mode says (the programs see no listener).
        let v6 = ns
            .listener("[::1]:0".parse().unwrap_or(SocketAddr::from(([0; 16], 0))))
            .ok();
        let steering = self.steering().map_err(ebpf)?;
        let id = steering.workload_id(name).map_err(ebpf)?;
        let listeners = match &v6 {
            Some(v6) => EgressListeners::new(&v4).with_v6(v6),
            None => EgressListeners::new(&v4),
        };
        steering.configure(id, &listeners, &key.policy).map_err(ebpf)?;
        steering.attach(name, &key.cgroup).map_err(ebpf)?;
        let original = steering.original_destinations();
        let mut kept = Vec::new();
        let mut serving = Vec::new();
        for l in [Some(v4), v6].into_iter().flatten() {
            let dup = l.try_clone().map_err(|source| EgressEnrolError::Listener {
                workload: name.to_string(),
                source,
            })?;
            let listener = tokio::net::TcpListener::from_std(l).map_err(|source| EgressEnrolError::Listener {
                workload: name.to_string(),
                source,
            })?;
            let (trigger, watch) = drain::channel();
            let endpoint = EgressEndpoint {
                workload: name.into(),
                id,
                original: original.clone(),
                client: client.clone(),
                metrics: ctx.metrics.egress(name),
            };
            serving.push((
                trigger,
                tokio::spawn(serve_egress(listener, ctx.clone(), endpoint, watch)),
            ));
            kept.push(dup);
        }
        tracing::info!(workload = name, cgroup = %key.cgroup.display(),
            destinations = ?key.policy.destinations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            fail = ?key.policy.fail, "egress enrolled");
        self.enrolled.insert(
            name.to_string(),
            Enrolled {
                key,
                id,
                listeners: kept,
                serving,
            },
        );
        Ok(())
    }

    /// New destinations or fail mode for an enrolled workload, in place.
    fn reconfigure(&mut self, name: &str, key: EgressKey) -> Result<(), EbpfError> {
        let Some(e) = self.enrolled.remove(name) else {
            return Ok(());
        };
        let result = (|| {
            let steering = self.steering()?;
            let listeners = match e.listeners.as_slice() {
                [v4, v6] => EgressListeners::new(v4).with_v6(v6),
                [v4] => EgressListeners::new(v4),
                _ => return Err(EbpfError::EmptyObject),
            };
            steering.configure(e.id, &listeners, &key.policy)
        })();
        tracing::info!(workload = name, ok = result.is_ok(), "egress destinations updated");
        self.enrolled.insert(name.to_string(), Enrolled { key, ..e });
        result
    }

    /// Detaches and clears the workload's egress state, then stops its
    /// listeners: its connections go straight out again.
    pub fn unenrol(&mut self, name: &str) {
        let Some(e) = self.enrolled.remove(name) else {
            return;
        };
        match self.steering() {
            Ok(s) => {
                if let Err(err) = s.unenrol(name, e.id) {
                    tracing::error!(workload = name, error = %err, "cannot un-enrol egress");
                }
            }
            Err(err) => tracing::error!(workload = name, error = %err, "cannot un-enrol egress"),
        }
        for (trigger, _) in &e.serving {
            trigger.signal();
        }
        tracing::info!(workload = name, "egress un-enrolled");
    }

    /// Stops serving (agent shutdown); the pins stay, so the workloads'
    /// configured egress fails closed until an agent adopts them.
    pub fn stop_serving(&mut self) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (_, e) in self.enrolled.drain() {
            for (trigger, task) in e.serving {
                trigger.signal();
                tasks.push(task);
            }
        }
        tasks
    }

    /// Un-enrols every workload (uninstall, tests).
    pub fn unenrol_all(&mut self) {
        let names: Vec<String> = self.enrolled.keys().cloned().collect();
        for n in names {
            self.unenrol(&n);
        }
    }

    /// The programs' counters of every enrolled workload.
    pub fn counters(&self) -> Vec<(String, EgressCounters)> {
        let Some(s) = &self.steering else { return Vec::new() };
        self.enrolled
            .iter()
            .filter_map(|(name, e)| s.counters(e.id).ok().map(|c| (name.clone(), c)))
            .collect()
    }
}

/// The workloads that should have egress now: steered ones (their
/// namespace open) whose policy has `egress` rules, with their cgroup.
pub(super) fn desired(
    snapshot: &crate::snapshot::Snapshot,
    specs: &[crate::snapshot::WorkloadSpec],
    clients: &super::listeners::NetnsClients,
) -> HashMap<String, Desired> {
    let mut out = HashMap::new();
    for spec in specs {
        let crate::snapshot::SpecKind::Netns { path, .. } = &spec.kind else {
            continue;
        };
        let Some(wl) = snapshot.workloads.get(spec.name.as_str()) else {
            continue;
        };
        let rules = &wl.policy.egress;
        if rules.is_empty() {
            continue;
        }
        let Some((_, client)) = clients.get(&spec.name) else {
            continue;
        };
        let Some(netns) = client.netns() else { continue };
        let key = match &spec.cgroup {
            Some(cgroup) => Ok(EgressKey::new(path, cgroup, rules)),
            None => Err(EgressEnrolError::NoCgroup(spec.name.clone())),
        };
        out.insert(
            spec.name.clone(),
            Desired {
                key,
                netns,
                client: client.clone(),
            },
        );
    }
    out
}
