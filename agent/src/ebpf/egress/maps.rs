//! Typed handles on the egress programs' pinned maps (layout in
//! `nodeward_common::egress`, meaning at their declarations in
//! `agent-ebpf/src/egress.rs`), plus in-memory mirrors of what the agent
//! wrote, so enrolment never scans a map.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::AsRawFd;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, SockMap};
use nodeward_common::egress::{
    COUNTERS_MAP, Counter, DESTS_MAP, DestKey, EgressPod, LISTENER_V4, LISTENER_V6, LISTENERS_MAP, ORIGINS_MAP, Origin,
    OriginalDst, PEERS_MAP, PODS_MAP, PeerKey, WORKLOADS_MAP, counter_index, listener_slot,
};
use nodeward_common::{MAX_WORKLOADS, WorkloadName};

use super::EbpfError;

/// A rule as the trie holds it: prefix length (fixed bits included) and data.
pub(super) type Rule = (u32, DestKey);

pub(super) struct Maps {
    pods: BpfHashMap<MapData, u64, EgressPod>,
    dests: LpmTrie<MapData, DestKey, u32>,
    listeners: SockMap<MapData>,
    origins: BpfHashMap<MapData, u64, Origin>,
    peers: BpfHashMap<MapData, PeerKey, OriginalDst>,
    counters: PerCpuArray<MapData, u64>,
    workloads: BpfHashMap<MapData, u32, WorkloadName>,
    /// Mirror of `NW_EG_WORKLOADS`: name → id.
    names: HashMap<String, u32>,
    /// Mirror of `NW_EG_PODS`: id → netns cookie.
    netns: HashMap<u32, u64>,
    /// Mirror of `NW_EG_DESTS`, by workload id.
    rules: HashMap<u32, BTreeSet<Rule>>,
    /// Kernel ids of the maps the programs use (all but the workloads map).
    kernel_ids: Vec<u32>,
}

fn map_error(map: &'static str, what: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map {
        map,
        what,
        source: Box::new(source),
    }
}

/// Deleting what is not there is success: every removal is idempotent.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Maps {
    /// Opens the pinned maps in `dir`; `Ok(None)` when one is not pinned.
    pub fn from_pins(dir: &std::path::Path) -> Result<Option<Self>, EbpfError> {
        let open = |name: &'static str| -> Result<Option<(Map, u32)>, EbpfError> {
            let path = dir.join(name);
            if !path.exists() {
                return Ok(None);
            }
            let data = MapData::from_pin(&path).map_err(map_error(name, "opening the pin"))?;
            let id = data.info().map_err(map_error(name, "reading its info"))?.id();
            let map = Map::from_map_data(data).map_err(map_error(name, "opening the pin"))?;
            Ok(Some((map, id)))
        };
        let (Some(pods), Some(dests), Some(listeners), Some(origins), Some(peers), Some(counters), Some(workloads)) = (
            open(PODS_MAP)?,
            open(DESTS_MAP)?,
            open(LISTENERS_MAP)?,
            open(ORIGINS_MAP)?,
            open(PEERS_MAP)?,
            open(COUNTERS_MAP)?,
            open(WORKLOADS_MAP)?,
        ) else {
            return Ok(None);
        };
        let kernel_ids = vec![pods.1, dests.1, listeners.1, origins.1, peers.1, counters.1];
        let mut maps = Self {
            pods: typed(pods.0, PODS_MAP)?,
            dests: typed(dests.0, DESTS_MAP)?,
            listeners: typed(listeners.0, LISTENERS_MAP)?,
            origins: typed(origins.0, ORIGINS_MAP)?,
            peers: typed(peers.0, PEERS_MAP)?,
            counters: typed(counters.0, COUNTERS_MAP)?,
            workloads: typed(workloads.0, WORKLOADS_MAP)?,
            names: HashMap::new(),
            netns: HashMap::new(),
            rules: HashMap::new(),
            kernel_ids,
        };
        maps.reindex()?;
        Ok(Some(maps))
    }

    /// Rebuilds the mirrors from the maps (after a restart).
    fn reindex(&mut self) -> Result<(), EbpfError> {
        for entry in self.workloads.iter() {
            let (id, name) = entry.map_err(map_error(WORKLOADS_MAP, "listing entries"))?;
            if let Some(name) = name.as_str() {
                self.names.insert(name.to_string(), id);
            }
        }
        for entry in self.pods.iter() {
            let (cookie, pod) = entry.map_err(map_error(PODS_MAP, "listing entries"))?;
            self.netns.insert(pod.workload_id, cookie);
        }
        for key in self.dests.keys() {
            let key = key.map_err(map_error(DESTS_MAP, "listing entries"))?;
            let data = key.data();
            let id = u32::from_be_bytes(data.workload_be);
            self.rules.entry(id).or_default().insert((key.prefix_len(), data));
        }
        Ok(())
    }

    pub fn kernel_ids(&self) -> &[u32] {
        &self.kernel_ids
    }

    pub fn workloads(&self) -> impl Iterator<Item = (&str, u32)> {
        self.names.iter().map(|(n, id)| (n.as_str(), *id))
    }

    pub fn id_of(&self, workload: &str) -> Option<u32> {
        self.names.get(workload).copied()
    }

    /// Records a new id for `workload`: the smallest one nothing uses.
    pub fn allocate_id(&mut self, workload: &str) -> Result<u32, EbpfError> {
        let name = WorkloadName::new(workload).ok_or_else(|| EbpfError::NameTooLong {
            workload: workload.to_string(),
        })?;
        let used: BTreeSet<u32> = self
            .names
            .values()
            .chain(self.netns.keys())
            .chain(self.rules.keys())
            .copied()
            .collect();
        let id = (0..MAX_WORKLOADS)
            .find(|id| !used.contains(id))
            .ok_or(EbpfError::TooManyWorkloads { max: MAX_WORKLOADS })?;
        self.workloads
            .insert(id, name, 0)
            .map_err(map_error(WORKLOADS_MAP, "recording a workload"))?;
        self.names.insert(workload.to_string(), id);
        Ok(id)
    }

    pub fn forget_id(&mut self, id: u32) -> Result<(), EbpfError> {
        ignore_missing(self.workloads.remove(&id)).map_err(map_error(WORKLOADS_MAP, "removing a workload"))?;
        self.names.retain(|_, v| *v != id);
        Ok(())
    }

    /// The workload whose pod has netns `cookie`, if any.
    pub fn netns_owner(&self, cookie: u64) -> Option<u32> {
        self.netns.iter().find_map(|(id, c)| (*c == cookie).then_some(*id))
    }

    pub fn netns_of(&self, id: u32) -> Option<u64> {
        self.netns.get(&id).copied()
    }

    /// Makes `cookie` the netns of workload `id`, with `flags`; the old
    /// netns entry of `id` (a recreated pod) goes after the new one is in.
    pub fn set_pod(&mut self, id: u32, cookie: u64, flags: u32) -> Result<(), EbpfError> {
        let pod = EgressPod { workload_id: id, flags };
        self.pods
            .insert(cookie, pod, 0)
            .map_err(map_error(PODS_MAP, "enrolling a pod"))?;
        if let Some(old) = self.netns.insert(id, cookie)
            && old != cookie
        {
            ignore_missing(self.pods.remove(&old)).map_err(map_error(PODS_MAP, "removing a stale pod"))?;
        }
        Ok(())
    }

    pub fn clear_pod(&mut self, id: u32) -> Result<(), EbpfError> {
        if let Some(cookie) = self.netns.remove(&id) {
            ignore_missing(self.pods.remove(&cookie)).map_err(map_error(PODS_MAP, "removing a pod"))?;
        }
        Ok(())
    }

    /// Makes `rules` exactly the rules of workload `id`: new ones first,
    /// then stale ones removed, so a destination kept is never unsteered in
    /// between.
    pub fn set_rules(&mut self, id: u32, rules: &BTreeSet<Rule>) -> Result<(), EbpfError> {
        for &(prefix, data) in rules {
            self.dests
                .insert(&Key::new(prefix, data), 0, 0)
                .map_err(map_error(DESTS_MAP, "adding a destination"))?;
            self.rules.entry(id).or_default().insert((prefix, data));
        }
        let stale: Vec<Rule> = self
            .rules
            .get(&id)
            .map(|have| have.difference(rules).copied().collect())
            .unwrap_or_default();
        for rule in stale {
            self.remove_rule(id, rule)?;
        }
        Ok(())
    }

    pub fn clear_rules(&mut self, id: u32) -> Result<(), EbpfError> {
        let rules: Vec<Rule> = self.rules.get(&id).into_iter().flatten().copied().collect();
        for rule in rules {
            self.remove_rule(id, rule)?;
        }
        self.rules.remove(&id);
        Ok(())
    }

    fn remove_rule(&mut self, id: u32, (prefix, data): Rule) -> Result<(), EbpfError> {
        ignore_missing(self.dests.remove(&Key::new(prefix, data)))
            .map_err(map_error(DESTS_MAP, "removing a destination"))?;
        if let Some(rules) = self.rules.get_mut(&id) {
            rules.remove(&(prefix, data));
        }
        Ok(())
    }

    pub fn rule_count(&self) -> usize {
        self.rules.values().map(BTreeSet::len).sum()
    }

    /// Puts `v4` (and `v6`, or clears its slot) in workload `id`'s slots.
    pub fn set_listeners(&mut self, id: u32, v4: &impl AsRawFd, v6: Option<&impl AsRawFd>) -> Result<(), EbpfError> {
        let slot = listener_slot(id, LISTENER_V4);
        self.listeners.set(slot, v4, 0).map_err(|source| EbpfError::Listener {
            slot,
            source: Box::new(source),
        })?;
        let slot = listener_slot(id, LISTENER_V6);
        match v6 {
            Some(v6) => self.listeners.set(slot, v6, 0).map_err(|source| EbpfError::Listener {
                slot,
                source: Box::new(source),
            }),
            None => self.clear_slot(slot),
        }
    }

    pub fn clear_listeners(&mut self, id: u32) -> Result<(), EbpfError> {
        self.clear_slot(listener_slot(id, LISTENER_V4))?;
        self.clear_slot(listener_slot(id, LISTENER_V6))
    }

    fn clear_slot(&mut self, slot: u32) -> Result<(), EbpfError> {
        match self.listeners.clear_index(&slot) {
            // The kernel answers EINVAL for an empty SOCKMAP slot.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::EINVAL) => Ok(()),
            other => ignore_missing(other).map_err(map_error(LISTENERS_MAP, "clearing a slot")),
        }
    }

    /// Deletes the in-flight records of workload `id` (un-enrolment, so a
    /// reused id never sees another pod's connections).
    pub fn clear_in_flight(&mut self, id: u32) -> Result<(), EbpfError> {
        let peers: Vec<PeerKey> = self
            .peers
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.workload_id == id)
            .collect();
        for key in peers {
            ignore_missing(self.peers.remove(&key)).map_err(map_error(PEERS_MAP, "removing a record"))?;
        }
        let origins: Vec<u64> = self
            .origins
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, o)| o.workload_id == id)
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in origins {
            ignore_missing(self.origins.remove(&cookie)).map_err(map_error(ORIGINS_MAP, "removing a record"))?;
        }
        Ok(())
    }

    /// One counter of workload `id`, summed over CPUs.
    pub fn counter(&self, id: u32, counter: Counter) -> Result<u64, EbpfError> {
        let values = self
            .counters
            .get(&counter_index(id, counter), 0)
            .map_err(map_error(COUNTERS_MAP, "reading a counter"))?;
        Ok(values.iter().sum())
    }

    /// Zeroes the counters of workload `id` (before its id is reused).
    pub fn reset_counters(&mut self, id: u32) -> Result<(), EbpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| EbpfError::Cpus { what, source })?;
        for counter in [
            Counter::Steered,
            Counter::Passed,
            Counter::DroppedFailClosed,
            Counter::PassedFailOpen,
        ] {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|source| EbpfError::Cpus {
                what: "per-CPU values",
                source,
            })?;
            self.counters
                .set(counter_index(id, counter), zeros, 0)
                .map_err(map_error(COUNTERS_MAP, "resetting a counter"))?;
        }
        Ok(())
    }
}

fn typed<T>(map: Map, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(map_error(name, "checking its type"))
}
