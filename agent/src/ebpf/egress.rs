//! eBPF egress steering: loads nodeward's egress programs (`agent-ebpf`,
//! bin `nodeward-egress`: `cgroup/connect4`, `cgroup/connect6`, `sockops`),
//! pins them and their maps under `<pin_dir>/egress`, attaches them to
//! enrolled pods' cgroups, and keeps the maps saying which destinations of
//! which pod go to which of the agent's egress listeners. The agent reads
//! each accepted connection's original destination back with
//! [`OriginalDestinations::take`].
//!
//! It owns the kernel side only: creating the listeners inside the pod's
//! namespace is `netns`; accepting, attaching tokens and dialling the
//! original destination belong to the agent's wiring. Design, maps and the
//! decision table: ARCHITECTURE.md, "eBPF egress steering".
//!
//! Enrolling a pod, in an order that never lets a configured destination
//! through without the agent once attached:
//! 1. `id = egress.workload_id(name)`;
//! 2. listeners inside the pod's namespace on `127.0.0.1:0` and, when the
//!    pod has IPv6 loopback, `[::1]:0` (`Netns::listener`);
//! 3. `egress.configure(id, &EgressListeners::new(&v4).with_v6(&v6), &policy)`;
//! 4. `egress.attach(name, pod_cgroup_dir)`.
//!
//! Restart: [`EgressSteering::load_or_adopt`] adopts what is pinned; until
//! the agent calls `configure` again with new listeners, configured
//! destinations fail as the pod's fail mode says (refused by default).
//! Un-enrolling: `egress.unenrol(name, id)`, then drop the listeners.

mod maps;
mod original;
mod programs;
mod sock;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

use nodeward_common::egress::{Counter, DEST_FIXED_BITS, DestKey, FLAG_FAIL_OPEN};

use self::maps::{Maps, Rule};
pub use self::original::OriginalDestinations;
use self::programs::{Layout, Programs, detach_all, detach_dir};
use super::{EbpfError, check_id, ensure_bpffs, pin_error};

/// The egress object's directory under the pin directory.
pub const EGRESS_DIR: &str = "egress";

/// The compiled egress object (bin `nodeward-egress` of `agent-ebpf`).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodeward-egress"))
}

/// A destination whose connections are steered: a port, optionally only
/// to an address or network. Applications resolve host names themselves,
/// so at the socket level there are only addresses: a port alone catches
/// every address a name may resolve to (DNS changes, Service VIPs, pod
/// IPs); an address or network narrows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    net: Option<(IpAddr, u8)>,
    port: u16,
}

impl Destination {
    /// Every address, this port.
    pub const fn port(port: u16) -> Self {
        Self { net: None, port }
    }

    /// One address and port.
    pub fn addr(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_canonical();
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        Self {
            net: Some((ip, bits)),
            port: addr.port(),
        }
    }

    /// Addresses in `ip/prefix_len`, this port. Checked by
    /// [`EgressSteering::configure`].
    pub fn net(ip: IpAddr, prefix_len: u8, port: u16) -> Self {
        Self {
            net: Some((ip.to_canonical(), prefix_len)),
            port,
        }
    }

    /// The trie rule for workload `id`: the address masked to its prefix
    /// (the trie compares only prefix bits, so two unmasked addresses of one
    /// network would be one rule to the kernel and two to the mirror).
    fn rule(&self, id: u32) -> Result<Rule, EbpfError> {
        let invalid = |reason| EbpfError::InvalidDestination {
            destination: self.to_string(),
            reason,
        };
        if self.port == 0 {
            return Err(invalid("port 0"));
        }
        let Some((ip, prefix)) = self.net else {
            return Ok((DEST_FIXED_BITS, DestKey::new(id, self.port, [0; 16])));
        };
        let (bits, max) = match ip {
            IpAddr::V4(_) => (96 + u32::from(prefix), 32),
            IpAddr::V6(_) => (u32::from(prefix), 128),
        };
        if prefix > max {
            return Err(invalid("prefix longer than the address"));
        }
        let addr = u128::from(original::mapped(ip));
        let masked = if bits == 0 {
            0
        } else {
            addr & (u128::MAX << (128 - bits))
        };
        Ok((
            DEST_FIXED_BITS + bits,
            DestKey::new(id, self.port, Ipv6Addr::from(masked).octets()),
        ))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            None => write!(f, "*:{}", self.port),
            Some((IpAddr::V4(ip), prefix)) => write!(f, "{ip}/{prefix}:{}", self.port),
            Some((IpAddr::V6(ip), prefix)) => write!(f, "[{ip}/{prefix}]:{}", self.port),
        }
    }
}

/// What happens to connections to configured destinations while the
/// agent's listener is gone (agent down or restarting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Refused (`connect()` fails with EPERM): never sent without the
    /// identity it was configured to carry.
    #[default]
    Closed,
    /// Sent to the original destination, untouched.
    Open,
}

/// One pod's egress steering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub destinations: Vec<Destination>,
    pub fail: FailMode,
}

/// The agent's egress listeners of one pod, created inside its network
/// namespace: IPv4 on 127.0.0.0/8 and, optionally, IPv6 on ::1. Without an
/// IPv6 listener, configured IPv6 destinations are treated as "agent down"
/// (the fail mode decides); IPv4 destinations of dual-stack sockets still
/// go to the IPv4 listener.
#[derive(Clone, Copy, Debug)]
pub struct EgressListeners<'a> {
    v4: BorrowedFd<'a>,
    v6: Option<BorrowedFd<'a>>,
}

impl<'a> EgressListeners<'a> {
    pub fn new(v4: &'a impl AsFd) -> Self {
        Self {
            v4: v4.as_fd(),
            v6: None,
        }
    }

    pub fn with_v6(self, v6: &'a impl AsFd) -> Self {
        Self {
            v6: Some(v6.as_fd()),
            ..self
        }
    }
}

/// What the connect programs did for one workload since it was enrolled,
/// summed over CPUs: one count per TCP `connect()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressCounters {
    /// Sent to the agent's egress listener.
    pub steered: u64,
    /// Not configured (or loopback): untouched.
    pub passed: u64,
    /// Configured, agent's listener gone: refused.
    pub dropped_fail_closed: u64,
    /// Configured, agent's listener gone, fail mode open: untouched.
    pub passed_fail_open: u64,
}

/// The loaded (or adopted) egress programs and maps, pinned under
/// `<pin_dir>/egress`.
pub struct EgressSteering {
    layout: Layout,
    programs: Programs,
    maps: Maps,
    original: Arc<OriginalDestinations>,
    adopted: bool,
}

impl fmt::Debug for EgressSteering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressSteering")
            .field("dir", &self.layout.dir)
            .field("program_ids", &self.programs.ids())
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

// === impl EgressSteering ===

impl EgressSteering {
    /// Loads the egress programs and pins them and their maps under
    /// `<pin_dir>/egress`, or adopts what a previous agent pinned there, so
    /// enrolled pods never lose their rules. Mounts bpffs like
    /// [`super::Steering::load_or_adopt`].
    pub fn load_or_adopt(pin_dir: &Path) -> Result<Self, EbpfError> {
        if object().is_empty() {
            return Err(EbpfError::EmptyObject);
        }
        ensure_bpffs(pin_dir)?;
        let layout = Layout {
            dir: pin_dir.join(EGRESS_DIR),
        };
        let links = layout.links();
        std::fs::create_dir_all(&links).map_err(super::error::privileged("creating the pin directory", {
            let path = links.clone();
            move |source| EbpfError::Pin {
                path,
                what: "creating the directory",
                source,
            }
        }))?;
        if let Some(adopted) = Self::adopt(&layout, true)? {
            return Ok(adopted);
        }
        Programs::load_and_pin(&layout, object())?;
        let loaded = Self::adopt(&layout, false)?.ok_or(EbpfError::MissingEgressProgram {
            program: "(pinned just now)",
        })?;
        tracing::info!(dir = %layout.dir.display(), program_ids = ?loaded.programs.ids(), "loaded the eBPF egress programs");
        Ok(loaded)
    }

    /// Opens the pinned programs and maps; `None` when something is missing
    /// or the programs do not use these maps.
    fn adopt(layout: &Layout, adopted: bool) -> Result<Option<Self>, EbpfError> {
        let Some(programs) = Programs::from_pins(layout)? else {
            return Ok(None);
        };
        let Some(maps) = Maps::from_pins(&layout.dir)? else {
            tracing::warn!(dir = %layout.dir.display(), "pinned egress programs without their maps: loading afresh");
            return Ok(None);
        };
        let used = programs.map_ids()?;
        if !maps.kernel_ids().iter().all(|id| used.contains(id)) {
            tracing::warn!(dir = %layout.dir.display(), "pinned egress programs do not use the pinned maps: loading afresh");
            return Ok(None);
        }
        let original = Arc::new(OriginalDestinations::open(&layout.dir)?);
        if adopted {
            tracing::info!(dir = %layout.dir.display(), program_ids = ?programs.ids(),
                workloads = maps.workloads().count(), destinations = maps.rule_count(),
                "adopted pinned eBPF egress state");
        }
        Ok(Some(Self {
            layout: layout.clone(),
            programs,
            maps,
            original,
            adopted,
        }))
    }

    /// True when this instance adopted pinned state rather than loading.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// `<pin_dir>/egress`.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Kernel ids of the sockops, connect6 and connect4 programs.
    pub fn program_ids(&self) -> [u32; 3] {
        self.programs.ids()
    }

    /// The handle the accept path uses to learn each connection's original
    /// destination; cheap to clone, independent of `self`'s lock.
    pub fn original_destinations(&self) -> Arc<OriginalDestinations> {
        self.original.clone()
    }

    /// The id recorded for `workload`, or a new one (recorded in the pinned
    /// `NW_EG_WORKLOADS`, so a restarted agent finds it again). Egress ids
    /// are their own numbering, separate from the inbound program's.
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

    /// Makes `policy` the egress of workload `id`, served by `listeners`
    /// (checked: listening, on loopback, in one namespace, which becomes
    /// the pod's). Listeners go in first, then new destinations, then stale
    /// ones go, then the pod's entry with its fail mode: a destination kept
    /// across an update is never unsteered in between. Call it again after
    /// a restart with the new listeners to refill their slots.
    pub fn configure(
        &mut self,
        id: u32,
        listeners: &EgressListeners<'_>,
        policy: &EgressPolicy,
    ) -> Result<(), EbpfError> {
        check_id(id)?;
        let cookie = sock::check(listeners)?;
        if let Some(owner) = self.maps.netns_owner(cookie)
            && owner != id
        {
            return Err(EbpfError::NetnsTaken { owner });
        }
        let rules = policy
            .destinations
            .iter()
            .map(|d| d.rule(id))
            .collect::<Result<BTreeSet<Rule>, _>>()?;
        self.maps.set_listeners(id, &listeners.v4, listeners.v6.as_ref())?;
        self.maps.set_rules(id, &rules)?;
        let flags = match policy.fail {
            FailMode::Closed => 0,
            FailMode::Open => FLAG_FAIL_OPEN,
        };
        self.maps.set_pod(id, cookie, flags)
    }

    /// Attaches the programs to the pod's cgroup (a cgroup v2 directory,
    /// e.g. the pod's `kubepods-…-pod<uid>.slice`: its containers' cgroups
    /// below it are covered) and pins the links as
    /// `<pin_dir>/egress/links/<workload>/`. Idempotent; a recreated pod's
    /// new cgroup replaces the old links.
    pub fn attach(&mut self, workload: &str, cgroup: &Path) -> Result<(), EbpfError> {
        self.programs.attach(&self.layout.link_dir(workload), cgroup)?;
        tracing::debug!(workload, cgroup = %cgroup.display(), "attached the egress programs");
        Ok(())
    }

    /// Removes workload `workload` (id `id`): its links (detached at once),
    /// its pod entry, destinations, listener slots, in-flight records,
    /// counters and id. Idempotent.
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
        detach_dir(&self.layout.link_dir(workload))?;
        self.maps.clear_pod(id)?;
        self.maps.clear_rules(id)?;
        self.maps.clear_listeners(id)?;
        self.maps.clear_in_flight(id)?;
        self.maps.reset_counters(id)?;
        self.maps.forget_id(id)?;
        tracing::debug!(workload, id, "un-enrolled from eBPF egress steering");
        Ok(())
    }

    /// Whether workload `id` has a pod entry (it was configured).
    pub fn is_configured(&self, id: u32) -> bool {
        self.maps.netns_of(id).is_some()
    }

    /// The counters of workload `id`, summed over CPUs.
    pub fn counters(&self, id: u32) -> Result<EgressCounters, EbpfError> {
        check_id(id)?;
        Ok(EgressCounters {
            steered: self.maps.counter(id, Counter::Steered)?,
            passed: self.maps.counter(id, Counter::Passed)?,
            dropped_fail_closed: self.maps.counter(id, Counter::DroppedFailClosed)?,
            passed_fail_open: self.maps.counter(id, Counter::PassedFailOpen)?,
        })
    }

    /// Detaches every egress link and removes `<pin_dir>/egress` (tests and
    /// uninstall); the inbound pins beside it stay.
    pub fn destroy(self) -> Result<(), EbpfError> {
        let dir = self.layout.dir.clone();
        drop(self);
        remove_pinned(&dir)
    }
}

/// Detaches every workload's egress links under `dir` (`<pin_dir>/egress`)
/// and removes the directory. A missing one is fine.
pub(super) fn remove_pinned(dir: &Path) -> Result<(), EbpfError> {
    if !dir.exists() {
        return Ok(());
    }
    detach_all(&dir.join("links"))?;
    std::fs::remove_dir_all(dir).map_err(pin_error(dir, "removing the egress pin directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_is_embedded() {
        assert!(object().len() > 1024, "BPF object is {} bytes", object().len());
        assert_eq!(&object()[..4], b"\x7fELF");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn rules_cover_port_address_and_network() {
        let (prefix, key) = Destination::port(8080).rule(7).expect("port");
        assert_eq!(prefix, DEST_FIXED_BITS);
        assert_eq!(key, DestKey::new(7, 8080, [0; 16]));

        let (prefix, key) = Destination::addr("10.1.2.3:443".parse().expect("addr"))
            .rule(7)
            .expect("addr");
        assert_eq!(prefix, DEST_FIXED_BITS + 128);
        assert_eq!(key.addr, std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets());

        // Masked to the prefix: one rule per network, whatever host bits.
        let a = Destination::net(ip("10.1.2.3"), 16, 80).rule(1).expect("net");
        let b = Destination::net(ip("10.1.9.9"), 16, 80).rule(1).expect("net");
        assert_eq!(a, b);
        assert_eq!(a.0, DEST_FIXED_BITS + 96 + 16);
        assert_eq!(&a.1.addr[10..], &[0xff, 0xff, 10, 1, 0, 0]);

        let v6 = Destination::net(ip("fd00:1:2:3::9"), 64, 80).rule(1).expect("v6 net");
        assert_eq!(v6.0, DEST_FIXED_BITS + 64);
        assert_eq!(IpAddr::V6(Ipv6Addr::from(v6.1.addr)), ip("fd00:1:2:3::"));

        // A v4-mapped address is the IPv4 address.
        assert_eq!(
            Destination::addr("[::ffff:10.1.2.3]:443".parse().expect("addr")),
            Destination::addr("10.1.2.3:443".parse().expect("addr"))
        );
        // /0 of either family is every address: the port rule.
        assert_eq!(
            Destination::net(ip("::"), 0, 80).rule(1).expect("::/0").0,
            DEST_FIXED_BITS
        );
    }

    #[test]
    fn bad_destinations_are_named() {
        let err = Destination::net(ip("10.0.0.0"), 33, 80).rule(1).expect_err("/33");
        assert!(err.to_string().contains("10.0.0.0/33:80"), "{err}");
        let err = Destination::port(0).rule(1).expect_err("port 0");
        assert!(err.to_string().contains("port 0"), "{err}");
    }
}
