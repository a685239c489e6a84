//! nodeward's egress programs, attached to each enrolled pod's cgroup:
//! `cgroup/connect4` and `cgroup/connect6` send the pod's TCP connections
//! to configured destinations to the agent's egress listener inside the
//! pod's network namespace, and `sockops` records, for each steered
//! connection, where it was going, keyed as the agent will see it on
//! accept. What is configured and which listener serves it is written by
//! the loader (`nodeward::ebpf::egress`); these programs own only the
//! decision below.
//!
//! | `connect()` of a pod's socket                         | verdict              | counter               |
//! |-------------------------------------------------------|----------------------|-----------------------|
//! | not TCP, or the netns is not enrolled                 | untouched            | —                     |
//! | loopback destination, or no rule for (IP, port)       | untouched            | `passed`              |
//! | configured, listener in its `NW_EG_LISTENERS` slot    | rewritten to it      | `steered`             |
//! | configured, slot empty (agent down), fails closed     | refused (EPERM)      | `dropped_fail_closed` |
//! | configured, slot empty, `egress_fail: open`           | untouched            | `passed_fail_open`    |
//!
//! The programs run only for sockets created by processes in the pod's
//! cgroup (a socket keeps the cgroup of its creator), so the agent's own
//! upstream sockets, made inside the pod's namespace but from the agent's
//! cgroup, are never seen here.
//!
//! Built only for `bpfel-unknown-none` (by `agent/build.rs`); the host
//! build is a stub.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod shared;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock, bpf_sock_addr, bpf_sock_ops},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_map_lookup_elem, bpf_sk_release},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, SockMap, lpm_trie::Key},
    programs::{SockAddrContext, SockOpsContext},
};
use nodeward_common::MAX_WORKLOADS;
use nodeward_common::WorkloadName;
use nodeward_common::egress::{
    COUNTER_ENTRIES, Counter, DEST_FIXED_BITS, DestKey, EgressPod, FLAG_FAIL_OPEN, LISTENER_V4, LISTENER_V6,
    MAX_DESTINATIONS, MAX_IN_FLIGHT, Origin, OriginalDst, PeerKey, counter_index, listener_slot,
};
use shared::{bytes, is_loopback, is_v4_mapped, v4_mapped};

const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
/// cgroup/connect verdicts.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Enrolled pods: netns cookie → workload id and fail mode. Written by user
/// space (`EgressSteering::configure`, `unenrol`); its entry is what makes a
/// pod's connections subject to the rules. Pinned: it outlives the agent, so
/// a dead agent's pods keep failing closed.
#[map(name = "NW_EG_PODS")]
static NW_EG_PODS: HashMap<u64, EgressPod> = HashMap::pinned(MAX_WORKLOADS, BPF_F_NO_PREALLOC);

/// Configured destinations per workload, longest prefix first: data is
/// (workload id, port, address), see `DestKey`. The value is unused (0):
/// presence is the rule. Written by user space; pinned like the pods.
#[map(name = "NW_EG_DESTS")]
static NW_EG_DESTS: LpmTrie<DestKey, u32> = LpmTrie::pinned(MAX_DESTINATIONS, 0);

/// The agent's egress listeners, two slots per workload (`listener_slot`:
/// 127.0.0.1:port and [::1]:port inside the pod's namespace). A listener
/// leaves its slot by itself when its socket closes (agent killed), which is
/// how these programs know the agent is down. Pinned so a restarted agent
/// refills the same slots.
#[map(name = "NW_EG_LISTENERS")]
static NW_EG_LISTENERS: SockMap = SockMap::pinned(2 * MAX_WORKLOADS, 0);

/// Socket cookie → original destination, written at `connect` and moved to
/// `NW_EG_PEERS` by `sockops` a moment later in the same system call, when
/// the source port is known. LRU: a connect that failed in between leaves an
/// entry no later socket can match (cookies are never reused) that ages out.
#[map(name = "NW_EG_ORIGINS")]
static NW_EG_ORIGINS: LruHashMap<u64, Origin> = LruHashMap::pinned(MAX_IN_FLIGHT, 0);

/// (workload id, client address, client port) → original destination: what
/// the agent reads (and deletes) for each connection it accepts on an egress
/// listener. LRU bounds what connections that were never accepted leave.
#[map(name = "NW_EG_PEERS")]
static NW_EG_PEERS: LruHashMap<PeerKey, OriginalDst> = LruHashMap::pinned(MAX_IN_FLIGHT, 0);

/// Per-CPU counters, `COUNTER_KINDS` per workload (`counter_index`); user
/// space sums over CPUs. Pinned so counts survive an agent restart.
#[map(name = "NW_EG_COUNTERS")]
static NW_EG_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);

/// Workload id → name. Never read here: created and pinned with the others
/// so a restarted agent learns which id each workload had.
#[map(name = "NW_EG_WORKLOADS")]
static NW_EG_WORKLOADS: HashMap<u32, WorkloadName> = HashMap::pinned(MAX_WORKLOADS, BPF_F_NO_PREALLOC);

/// The connection must not leave: refuse `connect()` with EPERM.
struct Refuse;

#[cgroup_sock_addr(connect4)]
pub fn nodeward_egress_connect4(ctx: SockAddrContext) -> i32 {
    verdict(try_connect::<false>(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn nodeward_egress_connect6(ctx: SockAddrContext) -> i32 {
    verdict(try_connect::<true>(&ctx))
}

fn verdict(result: Result<(), Refuse>) -> i32 {
    match result {
        Ok(()) => ALLOW,
        Err(Refuse) => REFUSE,
    }
}

/// One body for both programs, monomorphised per family (`V6`): every
/// context access must be at a constant offset the verifier allows for that
/// hook, and a runtime family branch let the compiler merge the two
/// families' stores into one at a computed offset ("dereference of
/// modified ctx ptr").
fn try_connect<const V6: bool>(ctx: &SockAddrContext) -> Result<(), Refuse> {
    let dst = if V6 { Dst::read6(ctx) } else { Dst::read4(ctx) };
    let Some(dst) = dst else { return Ok(()) };
    #[expect(unsafe_code, reason = "BPF helper call")]
    // SAFETY: `ctx` holds the context pointer the kernel passed.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let Some(pod) = pod(netns) else { return Ok(()) };
    let id = pod.workload_id;
    // Loopback never leaves the pod (and is where the listener itself is).
    if is_loopback(dst.addr) || !configured(id, &dst) {
        count(id, Counter::Passed);
        return Ok(());
    }
    // An IPv4 destination of a dual-stack IPv6 socket goes to the IPv4
    // listener: an IPv4-only pod may have no ::1 at all.
    let which = if !V6 || is_v4_mapped(dst.addr) {
        LISTENER_V4
    } else {
        LISTENER_V6
    };
    let Some(listener) = listener(listener_slot(id, which)) else {
        if pod.flags & FLAG_FAIL_OPEN != 0 {
            count(id, Counter::PassedFailOpen);
            return Ok(());
        }
        count(id, Counter::DroppedFailClosed);
        return Err(Refuse);
    };
    #[expect(unsafe_code, reason = "BPF helper call")]
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let origin = Origin {
        addr: bytes(dst.addr),
        port: dst.port,
        listener: which,
        _pad: 0,
        workload_id: id,
    };
    // Without the record the agent cannot tell where the connection was
    // going and would close it: refuse now, whatever the fail mode (that
    // is for the agent being down, not for this).
    if NW_EG_ORIGINS.insert(cookie, origin, u64::from(BPF_ANY)).is_err() {
        count(id, Counter::DroppedFailClosed);
        return Err(Refuse);
    }
    if V6 {
        rewrite6(ctx, which, &listener);
    } else {
        rewrite4(ctx, &listener);
    }
    count(id, Counter::Steered);
    Ok(())
}

/// The destination `connect()` was given: address as four words in network
/// order (IPv4 v4-mapped), port in host order.
struct Dst {
    addr: [u32; 4],
    port: u16,
}

impl Dst {
    /// `None` for anything but TCP. Each context field is read by its own
    /// 4-byte volatile load at a constant offset: the verifier refuses
    /// other sizes, user_ip6 in connect4 and user_ip4 in connect6.
    #[expect(unsafe_code, reason = "reads the kernel's sock_addr context")]
    fn read4(ctx: &SockAddrContext) -> Option<Self> {
        let c = ctx.sock_addr;
        // SAFETY: `c` is the context pointer the kernel passed, valid for
        // this program run; the fields read are readable in connect4.
        let (kind, protocol, ip4, port) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*c).type_),
                core::ptr::read_volatile(&raw const (*c).protocol),
                core::ptr::read_volatile(&raw const (*c).user_ip4),
                core::ptr::read_volatile(&raw const (*c).user_port),
            )
        };
        Self::tcp(kind, protocol)?;
        Some(Self {
            addr: v4_mapped(ip4),
            port: port_from_ctx(port),
        })
    }

    #[expect(unsafe_code, reason = "reads the kernel's sock_addr context")]
    fn read6(ctx: &SockAddrContext) -> Option<Self> {
        let c = ctx.sock_addr;
        // SAFETY: as in `read4`; these fields are readable in connect6.
        let (kind, protocol, ip6, port) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*c).type_),
                core::ptr::read_volatile(&raw const (*c).protocol),
                [
                    core::ptr::read_volatile(&raw const (*c).user_ip6[0]),
                    core::ptr::read_volatile(&raw const (*c).user_ip6[1]),
                    core::ptr::read_volatile(&raw const (*c).user_ip6[2]),
                    core::ptr::read_volatile(&raw const (*c).user_ip6[3]),
                ],
                core::ptr::read_volatile(&raw const (*c).user_port),
            )
        };
        Self::tcp(kind, protocol)?;
        Some(Self {
            addr: ip6,
            port: port_from_ctx(port),
        })
    }

    fn tcp(kind: u32, protocol: u32) -> Option<()> {
        (kind == SOCK_STREAM && protocol == IPPROTO_TCP).then_some(())
    }
}

/// `user_port` holds the port in network order in its first two bytes.
fn port_from_ctx(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

fn port_to_ctx(port: u16) -> u32 {
    u32::from(port.to_be())
}

/// Where the agent's listener is bound (127.0.0.1:port or [::1]:port).
struct Listener {
    ip4: u32,
    ip6: [u32; 4],
    port: u16,
}

/// The socket in `slot`, if the agent's listener is there.
#[expect(unsafe_code, reason = "looks a socket up in a SOCKMAP and releases it")]
fn listener(slot: u32) -> Option<Listener> {
    // aya-ebpf's SockMap offers no lookup; its map definition is its only
    // field (`repr(transparent)`), so the static's address is the map
    // pointer the loader relocates, as aya's own helpers pass it.
    let map = (&raw const NW_EG_LISTENERS).cast_mut().cast::<c_void>();
    // SAFETY: `map` is a SOCKMAP and `slot` a u32 key of it; the kernel
    // returns a referenced socket or null.
    let sk = unsafe { bpf_map_lookup_elem(map, (&raw const slot).cast()) }.cast::<bpf_sock>();
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is a non-null socket from the lookup, valid until the
    // release below; each field is read by one 4-byte load, as the
    // verifier requires of `struct bpf_sock`.
    let l = unsafe {
        Listener {
            ip4: core::ptr::read_volatile(&raw const (*sk).src_ip4),
            ip6: [
                core::ptr::read_volatile(&raw const (*sk).src_ip6[0]),
                core::ptr::read_volatile(&raw const (*sk).src_ip6[1]),
                core::ptr::read_volatile(&raw const (*sk).src_ip6[2]),
                core::ptr::read_volatile(&raw const (*sk).src_ip6[3]),
            ],
            port: core::ptr::read_volatile(&raw const (*sk).src_port) as u16,
        }
    };
    // SAFETY: releases the reference the lookup took, once.
    unsafe { bpf_sk_release(sk.cast()) };
    Some(l)
}

/// Points connect4's `connect()` at the listener.
#[expect(unsafe_code, reason = "writes the kernel's sock_addr context")]
fn rewrite4(ctx: &SockAddrContext, l: &Listener) {
    let c: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `c` is the context pointer; connect4 may write user_ip4 and
    // user_port, each by a 4-byte store.
    unsafe {
        core::ptr::write_volatile(&raw mut (*c).user_ip4, l.ip4);
        core::ptr::write_volatile(&raw mut (*c).user_port, port_to_ctx(l.port));
    }
}

/// Points connect6's `connect()` at the IPv6 listener, or at the IPv4 one
/// as `::ffff:127.0.0.1` (the kernel then connects over IPv4).
#[expect(unsafe_code, reason = "writes the kernel's sock_addr context")]
fn rewrite6(ctx: &SockAddrContext, which: u8, l: &Listener) {
    let c: *mut bpf_sock_addr = ctx.sock_addr;
    let to = if which == LISTENER_V4 { v4_mapped(l.ip4) } else { l.ip6 };
    // SAFETY: `c` is the context pointer; connect6 may write user_ip6 and
    // user_port, each by a 4-byte store.
    unsafe {
        core::ptr::write_volatile(&raw mut (*c).user_ip6[0], to[0]);
        core::ptr::write_volatile(&raw mut (*c).user_ip6[1], to[1]);
        core::ptr::write_volatile(&raw mut (*c).user_ip6[2], to[2]);
        core::ptr::write_volatile(&raw mut (*c).user_ip6[3], to[3]);
        core::ptr::write_volatile(&raw mut (*c).user_port, port_to_ctx(l.port));
    }
}

fn pod(netns: u64) -> Option<EgressPod> {
    let p = NW_EG_PODS.get_ptr(netns)?;
    #[expect(unsafe_code, reason = "reads a map value by pointer")]
    // SAFETY: a non-null pointer from bpf_map_lookup_elem points at a value
    // of the map's type, valid for this program run; copied out at once.
    let p = unsafe { *p };
    Some(p)
}

fn configured(workload_id: u32, dst: &Dst) -> bool {
    let key = Key::new(
        DEST_FIXED_BITS + 128,
        DestKey::new(workload_id, dst.port, bytes(dst.addr)),
    );
    NW_EG_DESTS.get(key).is_some()
}

fn count(workload_id: u32, counter: Counter) {
    if let Some(slot) = NW_EG_COUNTERS.get_ptr_mut(counter_index(workload_id, counter)) {
        #[expect(unsafe_code, reason = "increments a map value by pointer")]
        // SAFETY: the pointer is this CPU's copy of the array element, not
        // shared with other CPUs; cgroup programs run with migration
        // disabled, so a plain increment is not torn.
        unsafe {
            *slot += 1;
        }
    }
}

/// Records where each steered connection was going, keyed by its source
/// address and port, once `connect()` has chosen them.
#[sock_ops]
pub fn nodeward_egress_sockops(ctx: SockOpsContext) -> u32 {
    try_sockops(&ctx);
    // sockops' return value is ignored for the callbacks used here.
    1
}

fn try_sockops(ctx: &SockOpsContext) {
    let s = SockFields::read(ctx);
    if s.op != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return;
    }
    // The callback runs in tcp_connect(), after the source address and port
    // are set and before the SYN leaves: the record exists before the
    // agent can accept the connection.
    #[expect(unsafe_code, reason = "BPF helper call")]
    // SAFETY: `ctx.ops` is the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let local4 = bytes(v4_mapped(s.local_ip4));
    let local6 = bytes(s.local_ip6);
    if let Some(origin) = origin(cookie) {
        let addr = if origin.listener == LISTENER_V6 { local6 } else { local4 };
        let key = PeerKey::new(origin.workload_id, s.local_port, addr);
        let dst = OriginalDst {
            addr: origin.addr,
            port: origin.port,
            _pad: [0; 2],
        };
        // A failed insert leaves no record: the agent closes the
        // connection (fail closed).
        let _ = NW_EG_PEERS.insert(key, dst, u64::from(BPF_ANY));
        let _ = NW_EG_ORIGINS.remove(cookie);
        return;
    }
    // Not steered: drop any record under this socket's source, so a
    // connection made straight to the listener can never inherit the
    // original destination of an earlier one from the same port.
    #[expect(unsafe_code, reason = "BPF helper call")]
    // SAFETY: `ctx.ops` is the context the kernel passed.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    let Some(pod) = pod(netns) else { return };
    let _ = NW_EG_PEERS.remove(PeerKey::new(pod.workload_id, s.local_port, local4));
    if s.family == AF_INET6 {
        let _ = NW_EG_PEERS.remove(PeerKey::new(pod.workload_id, s.local_port, local6));
    }
}

fn origin(cookie: u64) -> Option<Origin> {
    let p = NW_EG_ORIGINS.get_ptr(cookie)?;
    #[expect(unsafe_code, reason = "reads a map value by pointer")]
    // SAFETY: as in `pod`.
    let p = unsafe { *p };
    Some(p)
}

/// The sock_ops fields, each read once.
struct SockFields {
    op: u32,
    family: u32,
    local_ip4: u32,
    local_ip6: [u32; 4],
    local_port: u16,
}

impl SockFields {
    #[expect(unsafe_code, reason = "reads the kernel's sock_ops context")]
    fn read(ctx: &SockOpsContext) -> Self {
        let o: *mut bpf_sock_ops = ctx.ops;
        // SAFETY: `o` is the context pointer the kernel passed, valid for
        // this run; every field is read unconditionally by its own 4-byte
        // volatile load (see the SK_LOOKUP program for why).
        unsafe {
            Self {
                op: core::ptr::read_volatile(&raw const (*o).op),
                family: core::ptr::read_volatile(&raw const (*o).family),
                local_ip4: core::ptr::read_volatile(&raw const (*o).local_ip4),
                local_ip6: [
                    core::ptr::read_volatile(&raw const (*o).local_ip6[0]),
                    core::ptr::read_volatile(&raw const (*o).local_ip6[1]),
                    core::ptr::read_volatile(&raw const (*o).local_ip6[2]),
                    core::ptr::read_volatile(&raw const (*o).local_ip6[3]),
                ],
                // Host order in sock_ops (remote_port is network order).
                local_port: core::ptr::read_volatile(&raw const (*o).local_port) as u16,
            }
        }
    }
}

/// Host builds (clippy, `cargo build --workspace`) get a stub binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
