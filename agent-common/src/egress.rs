//! Types shared by nodeward's egress programs (`agent-ebpf`, bin
//! `nodeward-egress`: `cgroup/connect4`, `cgroup/connect6`, `sockops`) and
//! their loader (`nodeward::ebpf::egress`): map names and sizes, keys,
//! values and the counter layout. Same rules as the crate root: `#[repr(C)]`,
//! explicit padding, addresses as 16 bytes in network order with IPv4
//! IPv4-mapped (`::ffff:a.b.c.d`), ports in host order unless named `_be`.

use crate::MAX_WORKLOADS;

/// Netns cookie (`bpf_get_netns_cookie`, `SO_NETNS_COOKIE`) → [`EgressPod`]:
/// which enrolled workload a connecting socket belongs to.
pub const PODS_MAP: &str = "NW_EG_PODS";
/// LPM trie of configured destinations, keyed by [`DestKey`].
pub const DESTS_MAP: &str = "NW_EG_DESTS";
/// SOCKMAP of the agent's egress listeners, indexed by [`listener_slot`].
pub const LISTENERS_MAP: &str = "NW_EG_LISTENERS";
/// LRU hash: socket cookie → [`Origin`], from `connect` until `sockops`
/// sees the same socket's source port.
pub const ORIGINS_MAP: &str = "NW_EG_ORIGINS";
/// LRU hash: [`PeerKey`] (the steered client as the agent's accepted socket
/// sees it) → [`OriginalDst`].
pub const PEERS_MAP: &str = "NW_EG_PEERS";
/// Per-CPU counters, indexed by [`counter_index`].
pub const COUNTERS_MAP: &str = "NW_EG_COUNTERS";
/// Workload id → name (user space only; lets a restarted agent find ids).
pub const WORKLOADS_MAP: &str = "NW_EG_WORKLOADS";

/// Program names in the object.
pub const CONNECT4_PROGRAM: &str = "nodeward_egress_connect4";
pub const CONNECT6_PROGRAM: &str = "nodeward_egress_connect6";
pub const SOCKOPS_PROGRAM: &str = "nodeward_egress_sockops";

/// Most configured destinations over all workloads.
pub const MAX_DESTINATIONS: u32 = 16 * 1024;
/// Steered connections whose original destination is held at once (LRU:
/// an entry the agent never read is evicted eventually, never leaked).
pub const MAX_IN_FLIGHT: u32 = 64 * 1024;

/// [`EgressPod::flags`]: with the agent's listener gone, let configured
/// connections go to their original destination instead of refusing them.
pub const FLAG_FAIL_OPEN: u32 = 1;

/// What the connect programs know about an enrolled pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EgressPod {
    pub workload_id: u32,
    /// [`FLAG_FAIL_OPEN`] or 0.
    pub flags: u32,
}

/// Bits of a [`DestKey`] before the address: workload id and port, always
/// matched in full.
pub const DEST_FIXED_BITS: u32 = 48;

/// A configured destination as LPM trie data: workload id and port (both big
/// endian, so the trie compares them bit by bit like the address), then the
/// address. The trie key's prefix length is [`DEST_FIXED_BITS`] plus the
/// address bits that must match: `+ 0` for "this port, any address",
/// `+ 128` for one address (IPv4: `+ 96 + 32`, the mapped prefix included).
/// One lookup then finds the most specific rule of that workload and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestKey {
    pub workload_be: [u8; 4],
    pub port_be: [u8; 2],
    pub addr: [u8; 16],
    /// Always zero; past every prefix, so never compared.
    pub _pad: [u8; 2],
}

impl DestKey {
    pub const fn new(workload_id: u32, port: u16, addr: [u8; 16]) -> Self {
        Self {
            workload_be: workload_id.to_be_bytes(),
            port_be: port.to_be_bytes(),
            addr,
            _pad: [0; 2],
        }
    }
}

/// Which of a workload's two listeners takes a connection.
pub const LISTENER_V4: u8 = 0;
pub const LISTENER_V6: u8 = 1;

/// The SOCKMAP slot of workload `id`'s IPv4 (`LISTENER_V4`) or IPv6
/// listener; the map has `2 * MAX_WORKLOADS` slots.
pub const fn listener_slot(workload_id: u32, listener: u8) -> u32 {
    workload_id * 2 + listener as u32
}

/// A steered socket's original destination, recorded at `connect`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub addr: [u8; 16],
    pub port: u16,
    /// `LISTENER_V4` or `LISTENER_V6`: which local address field `sockops`
    /// must read (a dual-stack socket steered to the IPv4 listener has its
    /// IPv4 source in `local_ip4` only).
    pub listener: u8,
    pub _pad: u8,
    pub workload_id: u32,
}

/// The steered client as the agent sees it on accept: its workload (which
/// listener accepted) and the peer address and port. Unique while the
/// connection lives: every steered connection of a pod goes to the same
/// listener address, so the peer's source address and port tell them apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey {
    pub workload_id: u32,
    pub port: u16,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}

impl PeerKey {
    pub const fn new(workload_id: u32, port: u16, addr: [u8; 16]) -> Self {
        Self {
            workload_id,
            port,
            _pad: [0; 2],
            addr,
        }
    }
}

/// Where a steered connection was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OriginalDst {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 2],
}

/// What the connect programs did with one TCP `connect()` of an enrolled
/// pod.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Rewritten to the agent's egress listener.
    Steered = 0,
    /// Not a configured destination (or loopback): untouched.
    Passed = 1,
    /// Configured, but the agent's listener is gone: refused (EPERM).
    DroppedFailClosed = 2,
    /// Configured, the listener is gone, the pod fails open: untouched.
    PassedFailOpen = 3,
}

/// Counters per workload in [`COUNTERS_MAP`].
pub const COUNTER_KINDS: u32 = 4;

/// The index of `counter` for `workload_id` in [`COUNTERS_MAP`], whose size
/// is `MAX_WORKLOADS * COUNTER_KINDS`.
pub const fn counter_index(workload_id: u32, counter: Counter) -> u32 {
    workload_id * COUNTER_KINDS + counter as u32
}

/// Size of [`COUNTERS_MAP`].
pub const COUNTER_ENTRIES: u32 = MAX_WORKLOADS * COUNTER_KINDS;

#[cfg(feature = "user")]
mod user {
    // SAFETY (for each impl): `#[repr(C)]`, only integer fields and arrays of
    // them, no implicit padding (explicit `_pad` fields), so every bit
    // pattern is a valid value and no byte is uninitialised.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::EgressPod {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::DestKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Origin {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::PeerKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::OriginalDst {}
}

// The kernel sees these sizes: a change is a change of the pinned maps'
// layout (see the crate root).
const _: () = assert!(core::mem::size_of::<EgressPod>() == 8);
const _: () = assert!(core::mem::size_of::<DestKey>() == 24);
const _: () = assert!(core::mem::align_of::<DestKey>() == 1);
const _: () = assert!(core::mem::size_of::<Origin>() == 24);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 24);
const _: () = assert!(core::mem::size_of::<OriginalDst>() == 20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_keys_put_workload_and_port_first_in_network_order() {
        let k = DestKey::new(0x0102_0304, 8080, [7; 16]);
        assert_eq!(k.workload_be, [1, 2, 3, 4]);
        assert_eq!(k.port_be, [0x1f, 0x90]);
        assert_eq!(DEST_FIXED_BITS as usize, (k.workload_be.len() + k.port_be.len()) * 8);
    }

    #[test]
    fn slots_and_counters_do_not_overlap() {
        assert_eq!(listener_slot(0, LISTENER_V6), 1);
        assert_eq!(listener_slot(1, LISTENER_V4), 2);
        assert_eq!(listener_slot(MAX_WORKLOADS - 1, LISTENER_V6), 2 * MAX_WORKLOADS - 1);
        assert_eq!(counter_index(1, Counter::Steered), 4);
        assert_eq!(
            counter_index(MAX_WORKLOADS - 1, Counter::PassedFailOpen),
            COUNTER_ENTRIES - 1
        );
    }
}
