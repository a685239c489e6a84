//! Enrolling eBPF-steered workloads: for each `netns` workload, a listener
//! inside its network namespace, its (address, port) pairs protected for
//! that listener, and the program attached to the namespace — in an order
//! that never leaves a protected port open (see `ebpf.rs`). Un-enrolling
//! reverses it. The kernel side is `ebpf.rs`; serving the listeners is the
//! proxy's; this module is the bookkeeping between them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ebpf::{Counters, EbpfError, Steering};
use crate::netns::{Netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("workload {workload}: {source}")]
    Ebpf {
        workload: String,
        #[source]
        source: EbpfError,
    },
    #[error("workload {workload}: {source}")]
    Netns {
        workload: String,
        #[source]
        source: NetnsError,
    },
    #[error("workload {workload}: no address to protect in {netns} (is the pod's interface up?)")]
    NoAddresses { workload: String, netns: PathBuf },
}

/// The steering program (loaded on first use, or adopted from its pins)
/// and the ids of the workloads this agent has enrolled.
pub struct Enroller {
    pin_dir: PathBuf,
    steering: Option<Steering>,
    enrolled: HashMap<String, u32>,
}

impl Enroller {
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            steering: None,
            enrolled: HashMap::new(),
        }
    }

    /// Whether a previous agent left pinned state to adopt.
    pub fn has_pinned_state(&self) -> bool {
        self.pin_dir.join("links").is_dir()
    }

    fn steering(&mut self) -> Result<&mut Steering, EbpfError> {
        if self.steering.is_none() {
            let mut s = Steering::load_or_adopt(&self.pin_dir)?;
            tracing::info!(
                pin_dir = %self.pin_dir.display(),
                adopted = s.adopted(),
                program_id = s.program_id(),
                "eBPF steering ready"
            );
            if let Some(logs) = s.take_logs()
                && let Ok(handle) = tokio::runtime::Handle::try_current()
            {
                handle.spawn(async move {
                    if let Err(e) = logs.forward().await {
                        tracing::debug!(error = %e, "BPF log forwarding ended");
                    }
                });
            }
            self.steering = Some(s);
        }
        self.steering.as_mut().ok_or(EbpfError::EmptyObject)
    }

    /// Un-enrols every workload a previous agent recorded that is not in `keep`
    /// (the configuration changed while the agent was down): their ports go
    /// back to the application instead of staying dropped forever.
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

    /// Enrols `workload`: returns the listener (inside its namespace) that
    /// now receives its protected connections.
    pub fn enrol(
        &mut self,
        workload: &str,
        ns: &Arc<Netns>,
        ips: &[IpAddr],
        ports: &[u16],
    ) -> Result<std::net::TcpListener, EnrolError> {
        let netns_err = |source| EnrolError::Netns {
            workload: workload.to_string(),
            source,
        };
        let ebpf_err = |source| EnrolError::Ebpf {
            workload: workload.to_string(),
            source,
        };
        let ips = if ips.is_empty() {
            ns.addresses().map_err(netns_err)?
        } else {
            ips.to_vec()
        };
        if ips.is_empty() {
            return Err(EnrolError::NoAddresses {
                workload: workload.to_string(),
                netns: ns.path().to_path_buf(),
            });
        }
        // A dual-stack socket takes both families; an IPv4 one suffices otherwise.
        let bind: SocketAddr = if ips.iter().any(|ip| ip.to_canonical().is_ipv6()) {
            "[::]:0".parse().map_err(|_| EnrolError::NoAddresses {
                workload: workload.to_string(),
                netns: ns.path().to_path_buf(),
            })?
        } else {
            SocketAddr::from(([127, 0, 0, 1], 0))
        };
        let steering = self.steering().map_err(ebpf_err)?;
        let id = steering.workload_id(workload).map_err(ebpf_err)?;
        let listener = ns.listener(bind).map_err(netns_err)?;
        let addrs: Vec<(IpAddr, u16)> = ips.iter().flat_map(|&ip| ports.iter().map(move |&p| (ip, p))).collect();
        steering.protect(id, &listener, &addrs).map_err(ebpf_err)?;
        steering.attach(workload, ns.path()).map_err(ebpf_err)?;
        self.enrolled.insert(workload.to_string(), id);
        tracing::info!(workload, netns = %ns.path().display(), protected = ?addrs, "workload enrolled");
        Ok(listener)
    }

    /// Un-enrols `workload`: its ports go straight to the application again.
    pub fn unenrol(&mut self, workload: &str) -> Result<(), EnrolError> {
        let Some(id) = self.enrolled.remove(workload) else {
            return Ok(());
        };
        let ebpf_err = |source| EnrolError::Ebpf {
            workload: workload.to_string(),
            source,
        };
        self.steering()
            .map_err(ebpf_err)?
            .unenrol(workload, id)
            .map_err(ebpf_err)?;
        tracing::info!(workload, "workload un-enrolled");
        Ok(())
    }

    /// The program's counters of every enrolled workload.
    pub fn counters(&self) -> Vec<(String, Counters)> {
        let Some(s) = &self.steering else { return Vec::new() };
        self.enrolled
            .iter()
            .filter_map(|(name, &id)| s.counters(id).ok().map(|c| (name.clone(), c)))
            .collect()
    }
}
