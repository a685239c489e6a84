//! The control plane's listeners: what a workload's listener is made from
//! ([`ListenKey`]: a change means a new listener), binding reverse-proxy
//! listeners, and the upstream clients of steered workloads (made inside
//! their namespaces).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::supervisor::{ControlError, Failure};
use crate::config::Config;
use crate::drain;
use crate::netns::Netns;
use crate::proxy::{self, upstream};
use crate::snapshot::{SpecKind, WorkloadSpec};

/// What a listener was made from; a change means a new listener.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ListenKey {
    Addr(SocketAddr),
    Netns {
        path: PathBuf,
        ips: Vec<IpAddr>,
        ports: Vec<u16>,
    },
}

impl ListenKey {
    pub(super) fn of(spec: &WorkloadSpec) -> Self {
        match &spec.kind {
            SpecKind::Listen { listen, .. } => Self::Addr(*listen),
            SpecKind::Netns { path, ips, ports } => Self::Netns {
                path: path.clone(),
                ips: ips.clone(),
                ports: ports.clone(),
            },
        }
    }

    pub(super) fn steered(&self) -> bool {
        matches!(self, Self::Netns { .. })
    }
}

pub(super) struct Listener {
    pub key: ListenKey,
    pub bound: SocketAddr,
    pub drain: drain::Trigger,
    pub task: JoinHandle<()>,
}

pub(super) fn client_for(config: &Config, netns: Option<Arc<Netns>>) -> Arc<upstream::Client> {
    let l = &config.limits;
    Arc::new(upstream::Client::new(
        netns,
        l.upstream_connect_timeout,
        l.upstream_timeout,
    ))
}

/// Host listeners for new or moved reverse-proxy workloads.
pub(super) async fn bind_new_listeners(
    current: &HashMap<String, Listener>,
    keys: &HashMap<String, ListenKey>,
) -> Result<HashMap<String, (ListenKey, tokio::net::TcpListener)>, ControlError> {
    let mut out = HashMap::new();
    for (name, key) in keys {
        let ListenKey::Addr(listen) = key else { continue };
        if current.get(name).is_some_and(|l| l.key == *key) {
            continue;
        }
        let l = proxy::bind(*listen).await.map_err(|source| ControlError::Bind {
            workload: name.clone(),
            addr: *listen,
            source,
        })?;
        out.insert(name.clone(), (key.clone(), l));
    }
    Ok(out)
}

pub(super) type NetnsClients = HashMap<String, (ListenKey, Arc<upstream::Client>)>;

/// One upstream client per steered workload, connecting from inside its
/// namespace; kept when the workload did not change.
pub(super) fn open_namespaces(
    current: &NetnsClients,
    keys: &HashMap<String, ListenKey>,
    config: &Config,
) -> (NetnsClients, HashMap<String, Failure>) {
    let mut clients = HashMap::new();
    let mut failed = HashMap::new();
    for (name, key) in keys {
        let ListenKey::Netns { path, .. } = key else { continue };
        match current.get(name) {
            Some((k, c)) if k == key => {
                clients.insert(name.clone(), (key.clone(), c.clone()));
            }
            _ => match Netns::open(path) {
                Ok(ns) => {
                    clients.insert(name.clone(), (key.clone(), client_for(config, Some(Arc::new(ns)))));
                }
                Err(e) => {
                    failed.insert(name.clone(), Failure::Netns(Arc::new(e)));
                }
            },
        }
    }
    (clients, failed)
}
