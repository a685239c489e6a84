//! nodeward's SK_LOOKUP program: attached to each enrolled pod's network
//! namespace, it decides, for every new TCP connection to a local address of
//! that pod, whether the agent's listener (which lives inside the same
//! namespace) takes it. It owns the decision table below and nothing else:
//! which destinations are protected and which listener serves them is written
//! by the user-space loader (`nodeward::ebpf`).
//!
//! | connection (TCP, to local IP:port)            | verdict | counter               |
//! |-----------------------------------------------|---------|-----------------------|
//! | not TCP, or (IP, port) not in `NW_PROTECTED`  | pass    | none                  |
//! | protected, source is loopback or the dest IP  | pass    | `passed`              |
//! | protected, listener in its `NW_LISTENERS` slot| assign  | `steered`             |
//! | protected, slot empty (agent down) or assign fails | drop | `dropped_fail_closed` |
//!
//! "pass" lets the kernel's normal lookup run (the application gets it);
//! "assign" hands the connection to the agent's listener, whose accepted
//! socket keeps the original destination as its local address; "drop"
//! makes the kernel answer the SYN as for a closed port (RST: the client
//! sees "connection refused" at once, nothing reaches the application).
//!
//! Built only for `bpfel-unknown-none` (by `agent/build.rs` through
//! aya-build); the host build is a stub so `cargo clippy --workspace` can
//! lint this code too.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod shared;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_SK_LOOKUP_F_REPLACE, sk_action},
    macros::{map, sk_lookup},
    maps::{HashMap, PerCpuArray, SockMap},
    programs::SkLookupContext,
};
use aya_log_ebpf::debug;
use nodeward_common::{
    COUNTER_KINDS, Counter, MAX_PROTECTED, MAX_WORKLOADS, ProtectedKey, ProtectedValue, WorkloadName, counter_index,
};
use shared::{bytes, is_loopback};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const ENOENT: i32 = 2;

/// Protected destinations: (local IP, local port in host order) of an
/// enrolled pod → its listener slot and workload id. Written by user space
/// (`Steering::protect`/`unenrol`); read here on every new connection.
/// Pinned, so a protected entry outlives the agent: that is what makes the
/// program fail closed while the agent is down.
#[map(name = "NW_PROTECTED")]
static NW_PROTECTED: HashMap<ProtectedKey, ProtectedValue> = HashMap::pinned(MAX_PROTECTED, 0);

/// The agent's listener per workload, indexed by slot. A listener vanishes
/// from here by itself when its socket closes (agent killed), which turns
/// steering into fail-closed drops. Pinned so a restarted agent fills the
/// same slots.
#[map(name = "NW_LISTENERS")]
static NW_LISTENERS: SockMap = SockMap::pinned(MAX_WORKLOADS, 0);

/// Per-CPU counters, `COUNTER_KINDS` per workload, indexed by
/// `counter_index(workload_id, kind)`; user space sums over CPUs. Pinned so
/// the counts survive an agent restart.
#[map(name = "NW_COUNTERS")]
static NW_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_WORKLOADS * COUNTER_KINDS, 0);

/// Workload id → workload name. Never read here: it lives in the object
/// only so it is created and pinned with the others, letting a restarted
/// agent learn which id (and so which slot and counters) each workload had.
#[map(name = "NW_WORKLOADS")]
static NW_WORKLOADS: HashMap<u32, WorkloadName> = HashMap::pinned(MAX_WORKLOADS, BPF_F_NO_PREALLOC);

/// The entry point: thin, so the logic reads as a plain function.
#[sk_lookup]
pub fn nodeward_sk_lookup(ctx: SkLookupContext) -> u32 {
    match try_nodeward_sk_lookup(&ctx) {
        Ok(verdict) => verdict,
        Err(FailClosed) => sk_action::SK_DROP,
    }
}

/// The connection must not reach the application: drop it.
struct FailClosed;

fn try_nodeward_sk_lookup(ctx: &SkLookupContext) -> Result<u32, FailClosed> {
    let Some(conn) = Conn::read(ctx) else {
        return Ok(sk_action::SK_PASS);
    };
    let key = ProtectedKey::new(bytes(conn.local), conn.local_port);
    let Some(entry) = protected(&key) else {
        return Ok(sk_action::SK_PASS);
    };
    if is_loopback(conn.remote) || conn.remote == conn.local {
        count(entry.workload_id, Counter::Passed);
        debug!(
            ctx,
            "pass {:i}:{} (local source) workload {}", key.addr, key.port, entry.workload_id
        );
        return Ok(sk_action::SK_PASS);
    }
    // REPLACE: if another program already chose a socket for this
    // connection, ours wins for a protected destination.
    match NW_LISTENERS.redirect_sk_lookup(ctx, entry.slot, u64::from(BPF_SK_LOOKUP_F_REPLACE)) {
        Ok(()) => {
            count(entry.workload_id, Counter::Steered);
            debug!(
                ctx,
                "steer {:i}:{} to slot {} workload {}", key.addr, key.port, entry.slot, entry.workload_id
            );
            Ok(sk_action::SK_PASS)
        }
        Err(err) => {
            count(entry.workload_id, Counter::DroppedFailClosed);
            if err == -ENOENT {
                debug!(
                    ctx,
                    "drop {:i}:{}: no listener in slot {} (agent down) workload {}",
                    key.addr,
                    key.port,
                    entry.slot,
                    entry.workload_id
                );
            } else {
                debug!(
                    ctx,
                    "drop {:i}:{}: assign to slot {} failed ({}) workload {}",
                    key.addr,
                    key.port,
                    entry.slot,
                    err,
                    entry.workload_id
                );
            }
            Err(FailClosed)
        }
    }
}

/// What the program needs of a TCP connection: addresses as four 32-bit
/// words in network order (IPv4 as `::ffff:a.b.c.d`), local port in host
/// order.
struct Conn {
    local: [u32; 4],
    remote: [u32; 4],
    local_port: u16,
}

impl Conn {
    /// `None` for anything but TCP over IPv4/IPv6.
    fn read(ctx: &SkLookupContext) -> Option<Self> {
        let f = Fields::read(ctx);
        if f.protocol != IPPROTO_TCP {
            return None;
        }
        let v4_mapped = u32::to_be(0xffff);
        let (local, remote) = match f.family {
            AF_INET => ([0, 0, v4_mapped, f.local_ip4], [0, 0, v4_mapped, f.remote_ip4]),
            AF_INET6 => (f.local_ip6, f.remote_ip6),
            _ => return None,
        };
        Some(Self {
            local,
            remote,
            local_port: f.local_port as u16,
        })
    }
}

/// The context fields, each read once.
struct Fields {
    family: u32,
    protocol: u32,
    local_ip4: u32,
    remote_ip4: u32,
    local_ip6: [u32; 4],
    remote_ip6: [u32; 4],
    local_port: u32,
}

impl Fields {
    #[expect(unsafe_code, reason = "reads the kernel's sk_lookup context")]
    fn read(ctx: &SkLookupContext) -> Self {
        let l = ctx.lookup;
        // SAFETY: `l` is the context pointer the kernel passed to this
        // program, valid for its whole run. The verifier only accepts
        // context loads at constant offsets of the field's size, so every
        // field is read unconditionally, each by its own volatile 4-byte
        // load: loads in different branches were merged into one load at a
        // computed offset, which the verifier refuses ("dereference of
        // modified ctx ptr").
        unsafe {
            Self {
                family: core::ptr::read_volatile(&raw const (*l).family),
                protocol: core::ptr::read_volatile(&raw const (*l).protocol),
                local_ip4: core::ptr::read_volatile(&raw const (*l).local_ip4),
                remote_ip4: core::ptr::read_volatile(&raw const (*l).remote_ip4),
                local_ip6: [
                    core::ptr::read_volatile(&raw const (*l).local_ip6[0]),
                    core::ptr::read_volatile(&raw const (*l).local_ip6[1]),
                    core::ptr::read_volatile(&raw const (*l).local_ip6[2]),
                    core::ptr::read_volatile(&raw const (*l).local_ip6[3]),
                ],
                remote_ip6: [
                    core::ptr::read_volatile(&raw const (*l).remote_ip6[0]),
                    core::ptr::read_volatile(&raw const (*l).remote_ip6[1]),
                    core::ptr::read_volatile(&raw const (*l).remote_ip6[2]),
                    core::ptr::read_volatile(&raw const (*l).remote_ip6[3]),
                ],
                local_port: core::ptr::read_volatile(&raw const (*l).local_port),
            }
        }
    }
}

fn protected(key: &ProtectedKey) -> Option<ProtectedValue> {
    let entry = NW_PROTECTED.get_ptr(key)?;
    #[expect(unsafe_code, reason = "reads a map value by pointer")]
    // SAFETY: a non-null pointer from bpf_map_lookup_elem points at a value
    // of the map's value type, valid for this program run (RCU); copied out
    // at once.
    let entry = unsafe { *entry };
    Some(entry)
}

fn count(workload_id: u32, counter: Counter) {
    if let Some(slot) = NW_COUNTERS.get_ptr_mut(counter_index(workload_id, counter)) {
        #[expect(unsafe_code, reason = "increments a map value by pointer")]
        // SAFETY: the pointer is this CPU's copy of the array element;
        // per-CPU values are not shared with other CPUs, and SK_LOOKUP runs
        // with preemption disabled, so a plain increment is not torn.
        unsafe {
            *slot += 1;
        }
    }
}

/// Host builds (clippy, `cargo build --workspace`) get a stub binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
