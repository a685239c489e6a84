//! The control plane: turning a configuration (at start and on every
//! reload) and the pod watch's pod set into running state — provider refresh
//! tasks, one listener per workload (bound on the host in reverse-proxy mode,
//! created inside the pod's namespace and fed by eBPF in steering mode), the
//! snapshot requests see — without disturbing requests in flight.
//!
//! - `supervisor.rs`: [`Control`], applying one configuration in steps;
//! - `listeners.rs`: what a listener is made from, binding, per-namespace clients;
//! - `providers.rs`: provider refresh tasks across reloads;
//! - `enrol.rs`: eBPF enrolment bookkeeping between `ebpf` and the listeners;
//! - `egress.rs`: outbound enrolment (egress listeners, programs, serving);
//! - `metrics.rs`: workloads by state, reloads, enrolment latency, eBPF counters.
//!
//! It serves nothing itself: listeners run `proxy::serve`.

mod egress;
mod enrol;
mod listeners;
mod metrics;
mod pods;
mod providers;
mod supervisor;

pub use metrics::ControlMetrics;
pub use supervisor::{Control, ControlError};
