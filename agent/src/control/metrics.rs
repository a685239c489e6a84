//! Metrics owned by the control plane: workloads by state, configuration
//! reloads, enrolment latency, and the eBPF program's per-workload counters
//! (read from its maps at scrape time).

use std::collections::HashMap;

use prometheus::{HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::ebpf::{Counters, EgressCounters};

#[derive(Clone)]
pub struct ControlMetrics {
    pub workloads: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub ebpf_connections: IntCounterVec,
    pub egress_connections: IntCounterVec,
    pub enrolment_seconds: prometheus::Histogram,
    /// `/readyz` as a number, set at scrape time: an alert needs a series, not an HTTP status.
    pub ready: prometheus::IntGauge,
}

impl ControlMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let workloads = IntGaugeVec::new(Opts::new("nodeward_workloads", "Workloads by state"), &["state"])?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "nodeward_config_reloads_total",
                "Configuration reloads by result (ok, rejected)",
            ),
            &["result"],
        )?;
        let ebpf_connections = IntCounterVec::new(
            Opts::new(
                "nodeward_ebpf_connections_total",
                "Connections to protected destinations seen by the SK_LOOKUP program, by workload and verdict (steered, passed, dropped_fail_closed)",
            ),
            &["workload", "verdict"],
        )?;
        let egress_connections = IntCounterVec::new(
            Opts::new(
                "nodeward_ebpf_egress_connections_total",
                "TCP connect() calls of enrolled workloads seen by the egress programs, by workload and verdict (steered, passed, dropped_fail_closed, passed_fail_open)",
            ),
            &["workload", "verdict"],
        )?;
        let enrolment_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "nodeward_enrolment_duration_seconds",
                "Time to enrol a steered workload (listener, protect, attach)",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0]),
        )?;
        let ready = prometheus::IntGauge::new(
            "nodeward_ready",
            "1 when the agent is ready (/readyz answers 200), else 0",
        )?;
        r.register(Box::new(ready.clone()))?;
        r.register(Box::new(workloads.clone()))?;
        r.register(Box::new(config_reloads.clone()))?;
        r.register(Box::new(ebpf_connections.clone()))?;
        r.register(Box::new(egress_connections.clone()))?;
        r.register(Box::new(enrolment_seconds.clone()))?;
        Ok(Self {
            workloads,
            config_reloads,
            ebpf_connections,
            egress_connections,
            enrolment_seconds,
            ready,
        })
    }

    /// Turns the program's absolute counters into counter increments since
    /// the last scrape (`seen` remembers them per workload).
    pub fn observe_ebpf(&self, now: Vec<(String, Counters)>, seen: &mut HashMap<String, Counters>) {
        for (name, now) in now {
            let before = seen.get(&name).copied().unwrap_or_default();
            let m = &self.ebpf_connections;
            let delta = |a: u64, b: u64| a.saturating_sub(b);
            m.with_label_values(&[&name, "steered"])
                .inc_by(delta(now.steered, before.steered));
            m.with_label_values(&[&name, "passed"])
                .inc_by(delta(now.passed, before.passed));
            m.with_label_values(&[&name, "dropped_fail_closed"])
                .inc_by(delta(now.dropped_fail_closed, before.dropped_fail_closed));
            seen.insert(name, now);
        }
    }

    /// The egress programs' counters, as [`Self::observe_ebpf`] does.
    pub fn observe_egress(&self, now: Vec<(String, EgressCounters)>, seen: &mut HashMap<String, EgressCounters>) {
        for (name, now) in now {
            let before = seen.get(&name).copied().unwrap_or_default();
            let m = &self.egress_connections;
            for (verdict, a, b) in [
                ("steered", now.steered, before.steered),
                ("passed", now.passed, before.passed),
                (
                    "dropped_fail_closed",
                    now.dropped_fail_closed,
                    before.dropped_fail_closed,
                ),
                ("passed_fail_open", now.passed_fail_open, before.passed_fail_open),
            ] {
                m.with_label_values(&[&name, verdict]).inc_by(a.saturating_sub(b));
            }
            seen.insert(name, now);
        }
    }
}
