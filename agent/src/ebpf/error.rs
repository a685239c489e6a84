//! The steering module's error: every variant says what was being done
//! and on which object, and permission failures name the capabilities.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use aya::programs::ProgramError;
use nodeward_common::{MAX_WORKLOADS, PROGRAM};

use super::BPFFS;
use crate::netns::NetnsError;

/// Why steering could not be set up or changed. Each variant says what was
/// being done and on which object.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "the embedded BPF object is empty (built with AYA_BUILD_SKIP?): rebuild with the BPF toolchain \
         (scripts/bpf-toolchain.sh)"
    )]
    EmptyObject,
    #[error(
        "{what}: permission denied: eBPF steering needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN \
         (effective uid {euid}); run as root or grant the capabilities: {source}"
    )]
    NotPermitted {
        what: &'static str,
        euid: u32,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path} is not on a bpffs (checked {checked}); mount one: `mount -t bpf bpf {BPFFS}`")]
    NotBpffs { path: PathBuf, checked: PathBuf },
    #[error("mounting bpffs on {BPFFS}: {source}")]
    MountBpffs { source: nix::Error },
    #[error("checking the file system of {path}: {source}")]
    Statfs { path: PathBuf, source: nix::Error },
    #[error("loading the BPF object: {source}")]
    Load { source: Box<aya::EbpfError> },
    #[error("the BPF object has no program {PROGRAM} of type SK_LOOKUP")]
    MissingProgram,
    #[error("the BPF object has no map {map}")]
    MissingMap { map: &'static str },
    #[error("BPF program: {what}: {source}")]
    Program {
        what: &'static str,
        source: Box<ProgramError>,
    },
    #[error("map {map}: {what}: {source}")]
    Map {
        map: &'static str,
        what: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("pin {path}: {what}: {source}")]
    Pin {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("pinning {path}: {source}")]
    PinObject {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("workload {workload}: {source}")]
    Netns { workload: String, source: Box<NetnsError> },
    #[error("workload id {id} is out of range (at most {max} workloads)", max = MAX_WORKLOADS)]
    IdOutOfRange { id: u32 },
    #[error("workload {workload} has id {recorded}, not {given}")]
    IdMismatch {
        workload: String,
        recorded: u32,
        given: u32,
    },
    #[error("no free workload id: at most {max} workloads per node")]
    TooManyWorkloads { max: u32 },
    #[error("workload name {workload:?} is longer than {max} bytes", max = nodeward_common::MAX_NAME_LEN)]
    NameTooLong { workload: String },
    #[error("{addr} is already protected for workload id {owner}")]
    AddressTaken { addr: SocketAddr, owner: u32 },
    #[error("the listener is not a listening TCP socket")]
    NotListening,
    #[error("inspecting the listener: {source}")]
    ListenerCheck { source: nix::Error },
    #[error("an {listener} listener cannot take connections to {addr}; listen on [::]:0 (dual-stack) instead")]
    ListenerFamily { listener: &'static str, addr: IpAddr },
    #[error("listener slot {slot}: the kernel refused the socket (it must be a listening TCP socket): {source}")]
    Listener {
        slot: u32,
        source: Box<aya::maps::MapError>,
    },
    #[error("counting CPUs ({what}): {source}")]
    Cpus { what: &'static str, source: io::Error },
    #[error("the egress BPF object has no program {program} of the expected type")]
    MissingEgressProgram { program: &'static str },
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("{path} is not a cgroup v2 directory (egress steering attaches to the pod's cgroup v2 directory)")]
    NotCgroup2 { path: PathBuf },
    #[error("the kernel gave no bpf_link for a cgroup attachment: egress steering needs Linux 5.7 or newer")]
    LinkUnsupported,
    #[error(
        "egress listener on {addr}: it must listen on {want} inside the pod, or other pods could reach it and \
         borrow this pod's identity"
    )]
    EgressListenerAddr { addr: SocketAddr, want: &'static str },
    #[error("the IPv4 and IPv6 egress listeners are in different network namespaces")]
    EgressListenersApart,
    #[error("reading the listener's network namespace cookie (SO_NETNS_COOKIE, Linux 5.14): {source}")]
    NetnsCookie { source: io::Error },
    #[error("this network namespace is already enrolled for egress as workload id {owner}")]
    NetnsTaken { owner: u32 },
    #[error("egress destination {destination}: {reason}")]
    InvalidDestination { destination: String, reason: &'static str },
}

/// Turns a permission failure anywhere in `source`'s chain into the
/// capability error; anything else goes through `other`.
pub(super) fn privileged<E>(what: &'static str, other: impl FnOnce(E) -> EbpfError) -> impl FnOnce(E) -> EbpfError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        while let Some(e) = cur {
            // EPERM only: the verifier's refusal is EACCES, a different
            // story told by its log.
            if e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(nix::libc::EPERM))
            {
                return EbpfError::NotPermitted {
                    what,
                    euid: nix::unistd::geteuid().as_raw(),
                    source: Box::new(source),
                };
            }
            cur = e.source();
        }
        other(source)
    }
}
