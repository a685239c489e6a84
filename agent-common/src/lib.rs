//! Types shared by nodeward's eBPF programs (`agent-ebpf`) and their
//! user-space loader (`nodeward::ebpf`): the keys and values of the maps, the
//! map names and sizes, and the counter layout. The crate root holds the
//! inbound SK_LOOKUP program's; [`egress`] the egress programs'. Every type
//! is `#[repr(C)]` with explicit padding so both sides agree byte for byte;
//! nothing here decides policy.
//!
//! Addresses are always 16 bytes in network order: an IPv4 address is stored
//! IPv4-mapped (`::ffff:a.b.c.d`), so one key type serves both families. A
//! v4-mapped key cannot collide with a real IPv6 destination because the
//! kernel presents IPv4-mapped traffic to SK_LOOKUP as IPv4 (family AF_INET).
#![cfg_attr(not(test), no_std)]

pub mod egress;

/// Name of the map of protected (local IP, local port) pairs:
/// `HashMap<ProtectedKey, ProtectedValue>`.
pub const PROTECTED_MAP: &str = "NW_PROTECTED";
/// Name of the SOCKMAP holding each workload's listener, indexed by slot.
pub const LISTENERS_MAP: &str = "NW_LISTENERS";
/// Name of the per-CPU counter array, indexed by [`counter_index`].
pub const COUNTERS_MAP: &str = "NW_COUNTERS";
/// Name of the map from workload id to workload name (user space only; it
/// lets a restarted agent find which id belongs to which workload).
pub const WORKLOADS_MAP: &str = "NW_WORKLOADS";
/// Name of the SK_LOOKUP program in the object.
pub const PROGRAM: &str = "nodeward_sk_lookup";

/// Most workloads one node can enrol: workload ids and listener slots are
/// `0..MAX_WORKLOADS`. A node runs a few hundred pods at most.
pub const MAX_WORKLOADS: u32 = 1024;
/// Most protected (IP, port) pairs over all workloads.
pub const MAX_PROTECTED: u32 = 16 * 1024;

/// A protected destination: a local address of an enrolled pod and a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtectedKey {
    /// The IP address in network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// The port in host order (as SK_LOOKUP's `local_port`).
    pub port: u16,
    /// Always zero: the kernel hashes every byte of a key.
    pub _pad: [u8; 2],
}

impl ProtectedKey {
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port,
            _pad: [0; 2],
        }
    }

    /// The key for an IPv4 address given as its four bytes in network order.
    pub const fn v4(octets: [u8; 4], port: u16) -> Self {
        let [a, b, c, d] = octets;
        Self::new([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d], port)
    }
}

/// Where a protected destination's connections go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProtectedValue {
    /// Index into [`LISTENERS_MAP`]: the workload's listener.
    pub slot: u32,
    /// The workload's id, for its counters.
    pub workload_id: u32,
}

/// What the program did with one connection (one SYN) to a protected
/// destination.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Assigned to the agent's listener.
    Steered = 0,
    /// Let through to the application: loopback source or the pod's own
    /// address (the agent's upstream path, in-pod traffic).
    Passed = 1,
    /// Dropped because the workload's listener is gone (agent down) or could
    /// not take the connection: fail closed.
    DroppedFailClosed = 2,
}

/// Counters per workload in [`COUNTERS_MAP`].
pub const COUNTER_KINDS: u32 = 3;

/// The index of `counter` for `workload_id` in [`COUNTERS_MAP`], whose size
/// is `MAX_WORKLOADS * COUNTER_KINDS`.
pub const fn counter_index(workload_id: u32, counter: Counter) -> u32 {
    workload_id * COUNTER_KINDS + counter as u32
}

/// Longest workload name [`WorkloadName`] holds (a Kubernetes
/// `namespace/name` is at most 63 + 1 + 253 bytes).
pub const MAX_NAME_LEN: usize = 508;

/// A workload's name as stored in [`WORKLOADS_MAP`]: length-prefixed UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadName {
    pub len: u32,
    pub bytes: [u8; MAX_NAME_LEN],
}

impl WorkloadName {
    /// `None` when `name` is longer than [`MAX_NAME_LEN`].
    pub fn new(name: &str) -> Option<Self> {
        let src = name.as_bytes();
        let mut bytes = [0; MAX_NAME_LEN];
        bytes.get_mut(..src.len())?.copy_from_slice(src);
        Some(Self {
            len: src.len() as u32,
            bytes,
        })
    }

    /// The name, or `None` when the stored bytes are not a valid name.
    pub fn as_str(&self) -> Option<&str> {
        let bytes = self.bytes.get(..self.len as usize)?;
        core::str::from_utf8(bytes).ok()
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (for each impl): `#[repr(C)]`, only integer fields and arrays of
    // them, no implicit padding (explicit `_pad` fields), so every bit
    // pattern is a valid value and no byte is uninitialised.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::ProtectedKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::ProtectedValue {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::WorkloadName {}
}

// The kernel sees these sizes; a change here is a change of the pinned maps'
// layout (an agent upgrade across it must `destroy` the old pins).
const _: () = assert!(core::mem::size_of::<ProtectedKey>() == 20);
const _: () = assert!(core::mem::size_of::<ProtectedValue>() == 8);
const _: () = assert!(core::mem::size_of::<WorkloadName>() == 512);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_keys_are_v4_mapped() {
        let k = ProtectedKey::v4([10, 1, 2, 3], 8080);
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(k.port, 8080);
    }

    #[test]
    fn names_round_trip_and_are_bounded() {
        let n = WorkloadName::new("default/orders").expect("fits");
        assert_eq!(n.as_str(), Some("default/orders"));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(WorkloadName::new(&long).is_none());
    }

    #[test]
    fn counter_indices_do_not_overlap() {
        assert_eq!(counter_index(0, Counter::DroppedFailClosed), 2);
        assert_eq!(counter_index(1, Counter::Steered), 3);
        assert_eq!(
            counter_index(MAX_WORKLOADS - 1, Counter::DroppedFailClosed),
            MAX_WORKLOADS * COUNTER_KINDS - 1
        );
    }
}
