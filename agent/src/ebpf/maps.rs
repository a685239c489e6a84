//! Typed handles on the four pinned maps (layout and meaning in
//! `agent-common` and at their declarations in `agent-ebpf`), plus an
//! in-memory index of what they hold so enrolment never scans a map.

use std::collections::{BTreeSet, HashMap};
use std::io;

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, SockMap};
use nodeward_common::{
    COUNTERS_MAP, Counter, LISTENERS_MAP, MAX_WORKLOADS, PROTECTED_MAP, ProtectedKey, ProtectedValue, WORKLOADS_MAP,
    WorkloadName, counter_index,
};

use super::EbpfError;
use super::pins::Layout;

pub(super) struct Maps {
    protected: BpfHashMap<MapData, ProtectedKey, ProtectedValue>,
    listeners: SockMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    workloads: BpfHashMap<MapData, u32, WorkloadName>,
    /// Mirror of `NW_WORKLOADS`: name → id.
    names: HashMap<String, u32>,
    /// Mirror of `NW_PROTECTED`, by workload id.
    by_id: HashMap<u32, BTreeSet<ProtectedKey>>,
    /// Kernel ids of the maps the program uses (all but `NW_WORKLOADS`), to
    /// check that a pinned program uses these very maps.
    kernel_ids: Vec<u32>,
}

fn map_error(map: &'static str, what: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map {
        map,
        what,
        source: Box::new(source),
    }
}

impl Maps {
    /// Takes the maps out of a freshly loaded object (aya created or reused
    /// their pins).
    pub fn from_object(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        let mut take = |name: &'static str| {
            let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap { map: name })?;
            let id = map_data(&map).and_then(|d| d.info().ok()).map(|i| i.id());
            Ok::<_, EbpfError>((map, id))
        };
        let (protected, p) = take(PROTECTED_MAP)?;
        let (listeners, l) = take(LISTENERS_MAP)?;
        let (counters, c) = take(COUNTERS_MAP)?;
        let (workloads, _) = take(WORKLOADS_MAP)?;
        Self::new(
            [protected, listeners, counters, workloads],
            [p, l, c].into_iter().flatten().collect(),
        )
    }

    /// Opens the pinned maps; `Ok(None)` when one of them is not pinned.
    pub fn from_pins(layout: &Layout) -> Result<Option<Self>, EbpfError> {
        let open = |name: &'static str| -> Result<Option<(Map, u32)>, EbpfError> {
            let path = layout.map(name);
            if !path.exists() {
                return Ok(None);
            }
            let data = MapData::from_pin(&path).map_err(map_error(name, "opening the pin"))?;
            let id = data.info().map_err(map_error(name, "reading its info"))?.id();
            let map = Map::from_map_data(data).map_err(map_error(name, "opening the pin"))?;
            Ok(Some((map, id)))
        };
        let (Some(p), Some(l), Some(c), Some(w)) = (
            open(PROTECTED_MAP)?,
            open(LISTENERS_MAP)?,
            open(COUNTERS_MAP)?,
            open(WORKLOADS_MAP)?,
        ) else {
            return Ok(None);
        };
        Self::new([p.0, l.0, c.0, w.0], vec![p.1, l.1, c.1]).map(Some)
    }

    fn new(maps: [Map; 4], kernel_ids: Vec<u32>) -> Result<Self, EbpfError> {
        let [protected, listeners, counters, workloads] = maps;
        let mut maps = Self {
            protected: protected
                .try_into()
                .map_err(map_error(PROTECTED_MAP, "checking its type"))?,
            listeners: listeners
                .try_into()
                .map_err(map_error(LISTENERS_MAP, "checking its type"))?,
            counters: counters
                .try_into()
                .map_err(map_error(COUNTERS_MAP, "checking its type"))?,
            workloads: workloads
                .try_into()
                .map_err(map_error(WORKLOADS_MAP, "checking its type"))?,
            names: HashMap::new(),
            by_id: HashMap::new(),
            kernel_ids,
        };
        maps.reindex()?;
        Ok(maps)
    }

    /// Rebuilds the in-memory mirrors from the maps (after a restart).
    fn reindex(&mut self) -> Result<(), EbpfError> {
        for entry in self.workloads.iter() {
            let (id, name) = entry.map_err(map_error(WORKLOADS_MAP, "listing entries"))?;
            if let Some(name) = name.as_str() {
                self.names.insert(name.to_string(), id);
            }
        }
        for entry in self.protected.iter() {
            let (key, value) = entry.map_err(map_error(PROTECTED_MAP, "listing entries"))?;
            self.by_id.entry(value.workload_id).or_default().insert(key);
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

    /// Records a new id for `workload`: the smallest one no workload and no
    /// protected entry uses.
    pub fn allocate_id(&mut self, workload: &str) -> Result<u32, EbpfError> {
        let name = WorkloadName::new(workload).ok_or_else(|| EbpfError::NameTooLong {
            workload: workload.to_string(),
        })?;
        let used: BTreeSet<u32> = self.names.values().chain(self.by_id.keys()).copied().collect();
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

    pub fn set_listener(&mut self, slot: u32, listener: &impl std::os::fd::AsRawFd) -> Result<(), EbpfError> {
        self.listeners
            .set(slot, listener, 0)
            .map_err(|source| EbpfError::Listener {
                slot,
                source: Box::new(source),
            })
    }

    pub fn clear_listener(&mut self, slot: u32) -> Result<(), EbpfError> {
        match self.listeners.clear_index(&slot) {
            // The kernel answers EINVAL for an empty SOCKMAP slot.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::EINVAL) => Ok(()),
            other => ignore_missing(other).map_err(map_error(LISTENERS_MAP, "clearing a slot")),
        }
    }

    /// Who protects `key`, if anyone.
    pub fn owner(&self, key: &ProtectedKey) -> Option<u32> {
        self.by_id
            .iter()
            .find_map(|(id, keys)| keys.contains(key).then_some(*id))
    }

    /// Makes `keys` exactly the protected set of workload `id`: new ones
    /// first, then stale ones removed, so no address it keeps is ever
    /// unprotected in between.
    pub fn set_protected(&mut self, id: u32, keys: &BTreeSet<ProtectedKey>) -> Result<(), EbpfError> {
        let value = ProtectedValue {
            slot: id,
            workload_id: id,
        };
        for key in keys {
            self.protected
                .insert(*key, value, 0)
                .map_err(map_error(PROTECTED_MAP, "protecting an address"))?;
            self.by_id.entry(id).or_default().insert(*key);
        }
        let stale: Vec<ProtectedKey> = self
            .by_id
            .get(&id)
            .map(|have| have.difference(keys).copied().collect())
            .unwrap_or_default();
        for key in stale {
            self.unprotect(id, &key)?;
        }
        Ok(())
    }

    pub fn clear_protected(&mut self, id: u32) -> Result<(), EbpfError> {
        let keys: Vec<ProtectedKey> = self.by_id.get(&id).into_iter().flatten().copied().collect();
        for key in keys {
            self.unprotect(id, &key)?;
        }
        self.by_id.remove(&id);
        Ok(())
    }

    fn unprotect(&mut self, id: u32, key: &ProtectedKey) -> Result<(), EbpfError> {
        ignore_missing(self.protected.remove(key)).map_err(map_error(PROTECTED_MAP, "unprotecting an address"))?;
        if let Some(keys) = self.by_id.get_mut(&id) {
            keys.remove(key);
        }
        Ok(())
    }

    pub fn protected_count(&self) -> usize {
        self.by_id.values().map(BTreeSet::len).sum()
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
        for counter in [Counter::Steered, Counter::Passed, Counter::DroppedFailClosed] {
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

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(d) | Map::SockMap(d) | Map::PerCpuArray(d) => Some(d),
        _ => None,
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
