//! Per-node vs per-pod: N simulated pods (reverse-proxy workloads, all in
//! front of the same app) served by one nodeward with N workloads, or by N
//! nodeward processes with one workload each, as sidecars would be. Same
//! dev IdP, a 5 s JWKS refresh so several intervals pass in the window, and
//! the same fixed load for both: one wrk thread and connection per pod,
//! each pausing between requests so the total is about `RATE` req/s.
//!
//! Measured over the window: total CPU of the agents, their memory (sum of
//! PSS, which splits shared pages such as the binary's text fairly between
//! copies, and sum of RSS/peak RSS, which counts them once per copy), and
//! the JWKS and discovery fetches the dev IdP served.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::env::{ConfigKnobs, IdpStats, Nodeward, Workload, free_ports, nodeward_config};
use super::procfs;
use super::wrk::{self, Load};
use super::{Bench, Settings};

/// Total request rate offered in both models.
pub const RATE: u32 = 2000;
/// The provider's refresh interval (min = max), as a config duration.
pub const REFRESH: &str = "5s";
pub const REFRESH_S: f64 = 5.0;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// One nodeward serving all N workloads.
    PerNode,
    /// N nodeward processes, one workload each.
    PerPod,
}

impl Model {
    pub fn label(self) -> &'static str {
        match self {
            Self::PerNode => "per-node",
            Self::PerPod => "per-pod",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PerNodeResult {
    pub model: Model,
    pub pods: usize,
    pub processes: usize,
    pub window_s: f64,
    pub requests: u64,
    pub rps: f64,
    pub p99_us: u64,
    pub cpu_s: f64,
    pub cpu_s_per_10k: f64,
    pub pss_kb: u64,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    /// Served by the dev IdP while the agents started (initial fetches).
    pub startup_jwks_fetches: u64,
    pub startup_discovery_fetches: u64,
    /// Served during the measured window.
    pub window_jwks_fetches: u64,
    pub window_discovery_fetches: u64,
    /// Window fetches per refresh interval: 1 is one per provider per interval.
    pub jwks_fetches_per_interval: f64,
    pub startup_s: f64,
}

pub async fn run(b: &Bench, set: &Settings, model: Model, pods: usize) -> anyhow::Result<PerNodeResult> {
    let dir = b.dir.join(format!("{}-{pods}", model.label()));
    std::fs::create_dir_all(&dir)?;
    let ports = free_ports(pods * 2 + 1)?;
    let listens: Vec<SocketAddr> = ports[..pods]
        .iter()
        .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let admins = &ports[pods..];
    let knobs = ConfigKnobs {
        cache_entries: None,
        refresh: Some(REFRESH),
    };

    let s0 = b.idp.stats(&b.http).await?;
    let started = Instant::now();
    let mut agents = Vec::new();
    let spawned: anyhow::Result<()> = async {
        match model {
            Model::PerNode => {
                let workloads: Vec<Workload> = listens.iter().map(|&listen| Workload { listen }).collect();
                let yaml = nodeward_config(
                    &b.idp.issuer,
                    b.app.addr,
                    admins[0],
                    &workloads,
                    &dir.join("state"),
                    &knobs,
                )?;
                agents.push(Nodeward::spawn(&b.bin, "node", &dir, &yaml, admins[0])?);
            }
            Model::PerPod => {
                for (i, &listen) in listens.iter().enumerate() {
                    let state = dir.join(format!("state-{i}"));
                    let yaml = nodeward_config(
                        &b.idp.issuer,
                        b.app.addr,
                        admins[i],
                        &[Workload { listen }],
                        &state,
                        &knobs,
                    )?;
                    agents.push(Nodeward::spawn(&b.bin, &format!("pod-{i}"), &dir, &yaml, admins[i])?);
                }
            }
        }
        match model {
            Model::PerNode => agents[0].wait_ready(&b.http, &listens).await?,
            Model::PerPod => {
                for (a, listen) in agents.iter_mut().zip(&listens) {
                    a.wait_ready(&b.http, std::slice::from_ref(listen)).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    let result = match spawned {
        Ok(()) => measure(b, set, model, pods, &agents, &listens, s0, started.elapsed(), &dir).await,
        Err(e) => Err(e),
    };
    stop_all(agents);
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    b: &Bench,
    set: &Settings,
    model: Model,
    pods: usize,
    agents: &[Nodeward],
    listens: &[SocketAddr],
    s0: IdpStats,
    startup: Duration,
    dir: &std::path::Path,
) -> anyhow::Result<PerNodeResult> {
    let s1 = b.idp.stats(&b.http).await?;
    // One thread and one connection per pod; each connection pauses
    // pods * 1000 / RATE ms between requests, so the offered total is about
    // RATE req/s whatever N is (a little less: response time adds up).
    let load = Load {
        method: "GET",
        path: "/",
        tokens: std::slice::from_ref(&b.reused_token),
        targets: listens,
        delay_ms: u32::try_from(pods)? * 1000 / RATE,
        host: None,
        threads: pods,
        connections: pods,
    };
    let script = dir.join("load.lua");
    std::fs::write(&script, load.script())?;
    let url = format!("http://{}/", listens[0]);
    wrk::run(&script, &url, &load, set.warmup, &dir.join("warmup.txt"), b.tick)?;

    let pids: Vec<u32> = agents.iter().map(|a| a.pid).collect();
    let cpu = |pids: &[u32]| -> u64 {
        pids.iter()
            .filter_map(|&p| procfs::stat(p).ok())
            .map(|s| s.cpu_ticks)
            .sum()
    };
    let w0 = b.idp.stats(&b.http).await?;
    let c0 = cpu(&pids);
    let t0 = Instant::now();
    let out = b.raw_dir.join(format!("{}-{pods}.txt", model.label()));
    let run = wrk::run(&script, &url, &load, set.window, &out, b.tick)?;
    let c1 = cpu(&pids);
    let window_s = t0.elapsed().as_secs_f64();
    let w1 = b.idp.stats(&b.http).await?;
    anyhow::ensure!(
        run.summary.requests > 0 && run.summary.errors.status == 0,
        "{} N={pods}: {} requests, {} with status >= 400",
        model.label(),
        run.summary.requests,
        run.summary.errors.status
    );
    let sum = |f: &dyn Fn(u32) -> anyhow::Result<u64>| -> anyhow::Result<u64> {
        pids.iter().map(|&p| f(p)).sum::<anyhow::Result<u64>>()
    };
    let pss_kb = sum(&procfs::pss_kb).context("reading PSS")?;
    let rss_kb = sum(&|p| procfs::status_kb(p, "VmRSS"))?;
    let peak_rss_kb = sum(&|p| procfs::status_kb(p, "VmHWM"))?;
    let cpu_s = (c1 - c0) as f64 * b.tick;
    let window_jwks = w1.jwks_fetches - w0.jwks_fetches;
    Ok(PerNodeResult {
        model,
        pods,
        processes: agents.len(),
        window_s,
        requests: run.summary.requests,
        rps: run.rps,
        p99_us: run.summary.latency_us.p99,
        cpu_s,
        cpu_s_per_10k: cpu_s * 10_000.0 / run.summary.requests as f64,
        pss_kb,
        rss_kb,
        peak_rss_kb,
        startup_jwks_fetches: s1.jwks_fetches - s0.jwks_fetches,
        startup_discovery_fetches: s1.discovery_fetches - s0.discovery_fetches,
        window_jwks_fetches: window_jwks,
        window_discovery_fetches: w1.discovery_fetches - w0.discovery_fetches,
        jwks_fetches_per_interval: window_jwks as f64 * REFRESH_S / window_s,
        startup_s: startup.as_secs_f64(),
    })
}

/// SIGTERM to all at once (each guard waits for its own child), so 100
/// agents draining does not take 100 times as long.
fn stop_all(agents: Vec<Nodeward>) {
    std::thread::scope(|s| {
        for a in agents {
            s.spawn(move || {
                if let Err(e) = a.stop() {
                    eprintln!("warning: stopping an agent: {e:#}");
                }
            });
        }
    });
}
