//! eBPF steering: loads nodeward's SK_LOOKUP program (`agent-ebpf`, built
//! from source by `build.rs` and embedded here), pins it and its maps under
//! a directory on bpffs, attaches it to enrolled workloads' network
//! namespaces, and keeps the maps saying which (pod IP, port) pairs go to
//! which of the agent's listeners. Egress steering (the pods' outbound
//! connections, by cgroup programs) is [`egress`]: a separate object with
//! its own pins under `<pin_dir>/egress`.
//!
//! It owns the kernel side of steering only. Creating listeners inside a
//! namespace is `netns`; accepting and proxying what they receive, and
//! surfacing [`Counters`] as metrics, belong to the agent's wiring.
//!
//! Fail closed, and restarts without an unprotected window: the protected
//! entries and the links are pinned, so they outlive the agent. While the
//! agent is down its listeners are gone from the SOCKMAP and the program
//! drops connections to protected destinations. [`Steering::load_or_adopt`]
//! in the restarted agent adopts the pinned program, maps and links as they
//! are; the agent then recreates each listener and calls
//! [`Steering::protect`] again ([`Steering::workloads`] says which workload
//! had which id), which refills the slot.
//!
//! Enrolling a workload, in an order that never lets traffic through
//! unauthenticated once it is protected:
//! 1. `id = steering.workload_id(name)`;
//! 2. a listener inside the pod's namespace (`netns::listener_in`, e.g. on
//!    `127.0.0.1:0`, or `[::]:0` when the pod has IPv6 addresses);
//! 3. `steering.protect(id, &listener, &[(pod_ip, port), ..])`;
//! 4. `steering.attach(name, netns)`.
//!
//! Un-enrolling: `steering.unenrol(name, id)`, then drop the listener.
//!
//! An agent upgrade keeps running the pinned program; a change of program or
//! map layout needs [`remove_pinned`] (or [`Steering::destroy`]) first.

pub mod egress;
mod error;
mod listener;
mod logs;
mod maps;
mod pins;

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;

use aya::programs::links::FdLink;
use aya::programs::{ProgramError, SkLookup};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use nodeward_common::{Counter, MAX_WORKLOADS, PROGRAM, ProtectedKey};

pub use self::egress::{
    Destination, EgressCounters, EgressListeners, EgressPolicy, EgressSteering, FailMode, OriginalDestinations,
};
pub use self::error::EbpfError;
use self::error::privileged;
pub use self::logs::BpfLogs;
use self::maps::Maps;
pub use self::pins::{BPFFS, ensure_bpffs};
use self::pins::{Layout, detach_and_unpin, pinned_link_target};
use crate::netns::Netns;

/// Where the agent pins its program, maps and links by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/nodeward";

/// The compiled SK_LOOKUP object (bin `nodeward-sklookup` of `agent-ebpf`).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodeward-sklookup"))
}

/// What the program did for one workload since it was enrolled, summed over
/// CPUs. One count per connection attempt (per SYN: a retransmitted SYN
/// counts again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Handed to the agent's listener.
    pub steered: u64,
    /// Let through to the application (loopback or the pod's own address).
    pub passed: u64,
    /// Dropped because the agent's listener was missing: fail closed.
    pub dropped_fail_closed: u64,
}

fn program_error(what: &'static str) -> impl FnOnce(ProgramError) -> EbpfError {
    privileged(what, move |source| EbpfError::Program {
        what,
        source: Box::new(source),
    })
}

fn pin_error(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> EbpfError {
    let path = path.to_path_buf();
    move |source| EbpfError::Pin { path, what, source }
}

/// The program as this process holds it: freshly loaded from the embedded
/// object, or adopted from its pin.
enum Program {
    Loaded(Box<Ebpf>),
    Adopted(Box<SkLookup>),
}

impl Program {
    fn sk_lookup(&mut self) -> Result<&mut SkLookup, EbpfError> {
        match self {
            Self::Loaded(ebpf) => ebpf
                .program_mut(PROGRAM)
                .ok_or(EbpfError::MissingProgram)?
                .try_into()
                .map_err(|_| EbpfError::MissingProgram),
            Self::Adopted(p) => Ok(p),
        }
    }
}

/// The loaded (or adopted) program and its maps, pinned under one directory.
pub struct Steering {
    layout: Layout,
    program: Program,
    prog_id: u32,
    maps: Maps,
    logs: Option<BpfLogs>,
    adopted: bool,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("pin_dir", &self.layout.dir)
            .field("prog_id", &self.prog_id)
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

// === impl Steering ===

impl Steering {
    /// Loads the program and pins it and its maps under `pin_dir`, or adopts
    /// the program, maps and links already pinned there (after a restart),
    /// so protected entries never disappear. Mounts bpffs on `/sys/fs/bpf`
    /// when `pin_dir` is below it and it is not mounted.
    ///
    /// The program's debug events are compiled in only if `log`'s max level
    /// allows debug when it is first loaded (set up logging before).
    pub fn load_or_adopt(pin_dir: &Path) -> Result<Self, EbpfError> {
        if object().is_empty() {
            return Err(EbpfError::EmptyObject);
        }
        ensure_bpffs(pin_dir)?;
        let layout = Layout {
            dir: pin_dir.to_path_buf(),
        };
        std::fs::create_dir_all(layout.links()).map_err(privileged("creating the pin directory", {
            let path = layout.links();
            move |source| EbpfError::Pin {
                path,
                what: "creating the directory",
                source,
            }
        }))?;
        if let Some(adopted) = Self::adopt(&layout)? {
            return Ok(adopted);
        }
        Self::load(layout)
    }

    /// `None` when there is no consistent pinned state to adopt.
    fn adopt(layout: &Layout) -> Result<Option<Self>, EbpfError> {
        let prog_path = layout.program();
        if !prog_path.exists() {
            return Ok(None);
        }
        let Some(maps) = Maps::from_pins(layout)? else {
            tracing::warn!(pin = %prog_path.display(), "pinned program without its maps: loading afresh");
            return Ok(None);
        };
        let program = SkLookup::from_pin(&prog_path).map_err(program_error("opening the pinned program"))?;
        let info = program
            .info()
            .map_err(program_error("reading the pinned program's info"))?;
        let used = info
            .map_ids()
            .map_err(program_error("reading the pinned program's maps"))?
            .unwrap_or_default();
        if !maps.kernel_ids().iter().all(|id| used.contains(id)) {
            tracing::warn!(pin = %prog_path.display(), "pinned program does not use the pinned maps: loading afresh");
            return Ok(None);
        }
        let logs = match EbpfLogger::init_from_id(info.id()) {
            Ok(logger) => Some(BpfLogs::new(logger)),
            Err(error) => {
                tracing::debug!(%error, "the pinned program has no log stream");
                None
            }
        };
        tracing::info!(pin_dir = %layout.dir.display(), prog_id = info.id(), workloads = maps.workloads().count(),
            protected = maps.protected_count(), "adopted pinned eBPF steering state");
        Ok(Some(Self {
            layout: layout.clone(),
            program: Program::Adopted(Box::new(program)),
            prog_id: info.id(),
            maps,
            logs,
            adopted: true,
        }))
    }

    fn load(layout: Layout) -> Result<Self, EbpfError> {
        // log's LevelFilter and aya-log's levels share their numbering
        // (Off = 0 .. Trace = 5); a frozen level lets the verifier prune the
        // disabled log calls.
        let level = log::max_level() as u8;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&layout.dir)
            .override_global(aya_log::LEVEL, &level, false)
            .load(object())
            .map_err(privileged("loading the BPF object", |source| EbpfError::Load {
                source: Box::new(source),
            }))?;
        let maps = Maps::from_object(&mut ebpf)?;
        let logs = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(BpfLogs::new(logger)),
            Err(error) => {
                tracing::debug!(%error, "the program has no log stream");
                None
            }
        };
        let mut program = Program::Loaded(Box::new(ebpf));
        let sk_lookup = program.sk_lookup()?;
        sk_lookup
            .load()
            .map_err(program_error("loading the SK_LOOKUP program (verifier)"))?;
        let prog_path = layout.program();
        match std::fs::remove_file(&prog_path) {
            Ok(()) => tracing::warn!(pin = %prog_path.display(), "replaced an inconsistent pinned program"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_error(&prog_path, "removing a stale pin")(e)),
        }
        sk_lookup.pin(&prog_path).map_err(|source| EbpfError::PinObject {
            path: prog_path.clone(),
            source: Box::new(source),
        })?;
        let prog_id = sk_lookup
            .info()
            .map_err(program_error("reading the program's info"))?
            .id();
        tracing::info!(pin_dir = %layout.dir.display(), prog_id, "loaded the eBPF steering program");
        Ok(Self {
            layout,
            program,
            prog_id,
            maps,
            logs,
            adopted: false,
        })
    }

    /// True when this instance adopted pinned state rather than loading.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The kernel's id of the SK_LOOKUP program.
    pub fn program_id(&self) -> u32 {
        self.prog_id
    }

    /// The program's debug event stream, once; run [`BpfLogs::forward`] on
    /// the runtime to see the events in the agent's logs.
    pub fn take_logs(&mut self) -> Option<BpfLogs> {
        self.logs.take()
    }

    /// The id recorded for `workload`, or a new one (recorded in the pinned
    /// `NW_WORKLOADS` map, so a restarted agent finds it again).
    pub fn workload_id(&mut self, workload: &str) -> Result<u32, EbpfError> {
        match self.maps.id_of(workload) {
            Some(id) => Ok(id),
            None => self.maps.allocate_id(workload),
        }
    }

    /// Every recorded workload and its id, sorted by name.
    pub fn workloads(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self.maps.workloads().map(|(n, id)| (n.to_string(), id)).collect();
        out.sort();
        out
    }

    /// Attaches the program to the network namespace at `netns` and pins
    /// the link as `<pin_dir>/links/<workload>`. Idempotent: a pinned link of
    /// this workload to the same namespace and program is kept as is; one to
    /// another namespace (the pod was recreated) or program is replaced by
    /// an atomic rename.
    pub fn attach(&mut self, workload: &str, netns: &Path) -> Result<(), EbpfError> {
        let netns_error = |source| EbpfError::Netns {
            workload: workload.to_string(),
            source: Box::new(source),
        };
        let ns = Netns::open(netns).map_err(netns_error)?;
        let ino = ns.inode().map_err(netns_error)?;
        let pin = self.layout.link(workload);
        if let Some(target) = pinned_link_target(&pin)? {
            if target.netns_ino == ino && target.prog_id == self.prog_id {
                return Ok(());
            }
            tracing::info!(workload, ?target, netns_ino = ino, "replacing a stale steering link");
        }
        let program = self.program.sk_lookup()?;
        let link_id = program
            .attach(ns.file().as_fd())
            .map_err(program_error("attaching to a network namespace"))?;
        let link: FdLink = program
            .take_link(link_id)
            .map_err(program_error("taking the new link"))?
            .into();
        let staging = self.layout.link_staging(workload);
        match std::fs::remove_file(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_error(&staging, "removing a leftover")(e)),
        }
        link.pin(&staging).map_err(|source| EbpfError::PinObject {
            path: staging.clone(),
            source: Box::new(source),
        })?;
        // Replaces an old link in one step; the old one detaches when its
        // last reference (the pin) goes.
        std::fs::rename(&staging, &pin).map_err(pin_error(&pin, "renaming the new link into place"))?;
        tracing::debug!(workload, netns = %netns.display(), "attached the steering program");
        Ok(())
    }

    /// Puts `listener` (a listening TCP socket created inside the workload's
    /// namespace) in the SOCKMAP slot of workload `id`, and makes `addrs`
    /// exactly the protected destinations of that workload: new ones are
    /// added before stale ones go. An address protected for another workload
    /// is refused (un-enrol that one first).
    pub fn protect(&mut self, id: u32, listener: &impl AsFd, addrs: &[(IpAddr, u16)]) -> Result<(), EbpfError> {
        check_id(id)?;
        let keys: BTreeSet<ProtectedKey> = addrs.iter().map(|&(ip, port)| key(ip, port)).collect();
        for &(ip, port) in addrs {
            if let Some(owner) = self.maps.owner(&key(ip, port))
                && owner != id
            {
                return Err(EbpfError::AddressTaken {
                    addr: SocketAddr::new(ip, port),
                    owner,
                });
            }
        }
        listener::check(listener.as_fd(), addrs)?;
        self.maps.set_listener(id, &listener.as_fd())?;
        self.maps.set_protected(id, &keys)
    }

    /// Removes workload `workload` (id `id`): its link (unpinned, so the
    /// program detaches from its namespace), its protected entries, its
    /// SOCKMAP slot, its counters and its id record. Idempotent.
    pub fn unenrol(&mut self, workload: &str, id: u32) -> Result<(), EbpfError> {
        check_id(id)?;
        if let Some(recorded) = self.maps.id_of(workload)
            && recorded != id
        {
            return Err(EbpfError::IdMismatch {
                workload: workload.to_string(),
                recorded,
                given: id,
            });
        }
        for pin in [self.layout.link(workload), self.layout.link_staging(workload)] {
            detach_and_unpin(&pin)?;
        }
        self.maps.clear_protected(id)?;
        self.maps.clear_listener(id)?;
        self.maps.reset_counters(id)?;
        self.maps.forget_id(id)?;
        tracing::debug!(workload, id, "un-enrolled from eBPF steering");
        Ok(())
    }

    /// The counters of workload `id`, summed over CPUs.
    pub fn counters(&self, id: u32) -> Result<Counters, EbpfError> {
        check_id(id)?;
        Ok(Counters {
            steered: self.maps.counter(id, Counter::Steered)?,
            passed: self.maps.counter(id, Counter::Passed)?,
            dropped_fail_closed: self.maps.counter(id, Counter::DroppedFailClosed)?,
        })
    }

    /// Detaches everything and removes everything under the pin directory
    /// (tests and uninstall).
    pub fn destroy(self) -> Result<(), EbpfError> {
        let dir = self.layout.dir.clone();
        drop(self);
        remove_pinned(&dir)
    }
}

/// Detaches every pinned link (the inbound netns links and the egress
/// cgroup links), then removes the pin directory and everything in it,
/// which frees the programs and maps once no process holds them. Refuses a
/// directory that is not on bpffs; a missing one is fine.
pub fn remove_pinned(pin_dir: &Path) -> Result<(), EbpfError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let fs = nix::sys::statfs::statfs(pin_dir).map_err(|source| EbpfError::Statfs {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
        return Err(EbpfError::NotBpffs {
            path: pin_dir.to_path_buf(),
            checked: pin_dir.to_path_buf(),
        });
    }
    let links = pin_dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            detach_and_unpin(&entry.path())?;
        }
    }
    egress::remove_pinned(&pin_dir.join(egress::EGRESS_DIR))?;
    std::fs::remove_dir_all(pin_dir).map_err(pin_error(pin_dir, "removing the pin directory"))
}

fn check_id(id: u32) -> Result<(), EbpfError> {
    if id < MAX_WORKLOADS {
        Ok(())
    } else {
        Err(EbpfError::IdOutOfRange { id })
    }
}

/// IPv4 addresses are keyed IPv4-mapped, as the program builds them.
fn key(ip: IpAddr, port: u16) -> ProtectedKey {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ProtectedKey::new(v6.octets(), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_is_embedded() {
        // build.rs built the program from source (unless AYA_BUILD_SKIP).
        assert!(object().len() > 1024, "BPF object is {} bytes", object().len());
        assert_eq!(&object()[..4], b"\x7fELF");
    }

    #[test]
    fn keys_match_the_programs_layout() {
        let k = key("10.1.2.3".parse().expect("ip"), 8080);
        assert_eq!(k, ProtectedKey::v4([10, 1, 2, 3], 8080));
        let mapped = key("::ffff:10.1.2.3".parse().expect("ip"), 8080);
        assert_eq!(mapped, k);
        let v6 = key("fd00::1".parse().expect("ip"), 443);
        assert_eq!(v6.addr[0], 0xfd);
        assert_eq!(v6.addr[15], 1);
    }

    #[test]
    fn ids_are_bounded() {
        assert!(check_id(MAX_WORKLOADS - 1).is_ok());
        assert!(matches!(check_id(MAX_WORKLOADS), Err(EbpfError::IdOutOfRange { .. })));
    }

    #[test]
    fn removing_pins_refuses_a_directory_off_bpffs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = remove_pinned(dir.path()).expect_err("not bpffs");
        assert!(matches!(err, EbpfError::NotBpffs { .. }), "{err:?}");
        assert!(dir.path().exists(), "nothing was removed");
    }
}
#[cfg(test)]
mod error_size {
    /// Callers wrap this error in their own; keep it small (clippy's
    /// result_large_err).
    #[test]
    fn the_error_stays_small() {
        assert!(size_of::<super::EbpfError>() <= 64, "{}", size_of::<super::EbpfError>());
    }
}
