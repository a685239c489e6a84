//! From raw runs to what people read: min/median/max over repeats, the
//! tables (terminal and Markdown), the targets with met/missed, and
//! the JSON that holds every figure.

use std::fmt::Write as _;

use serde::Serialize;

use super::pernode::{Model, PerNodeResult, REFRESH_S};
use super::procfs::Machine;
use super::scenarios::{RunResult, Scenario};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Self {
            min: v[0],
            median,
            max: v[v.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub what: String,
    pub runs: usize,
    pub rps: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub proxy_cpu_s_per_10k: Option<Spread>,
    pub proxy_peak_rss_mb: Option<Spread>,
    pub app_cpu_s_per_10k: Spread,
    /// Token-cache hits / (hits + misses) over all measured windows.
    pub cache_hit_ratio: Option<f64>,
    /// Share of the machine's busy CPU time that was not ours (wrk, proxy, app).
    pub other_cpu_share: Spread,
}

pub fn summarize(scenarios: &[Scenario], runs: &[RunResult]) -> Vec<ScenarioSummary> {
    scenarios
        .iter()
        .filter_map(|s| {
            let rs: Vec<&RunResult> = runs.iter().filter(|r| r.scenario == s.name).collect();
            let f = |g: &dyn Fn(&RunResult) -> f64| Spread::of(rs.iter().map(|r| g(r)).collect());
            let fo = |g: &dyn Fn(&RunResult) -> Option<f64>| Spread::of(rs.iter().filter_map(|r| g(r)).collect());
            let (hits, misses) = rs
                .iter()
                .filter_map(|r| r.cache.as_ref())
                .fold((0.0, 0.0), |(h, m), c| (h + c.hits, m + c.misses));
            Some(ScenarioSummary {
                name: s.name.to_owned(),
                what: s.what.to_owned(),
                runs: rs.len(),
                rps: f(&|r| r.wrk.rps)?,
                p50_ms: f(&|r| r.wrk.summary.latency_us.p50 as f64 / 1e3)?,
                p99_ms: f(&|r| r.wrk.summary.latency_us.p99 as f64 / 1e3)?,
                p999_ms: f(&|r| r.wrk.summary.latency_us.p999 as f64 / 1e3)?,
                proxy_cpu_s_per_10k: fo(&|r| r.proxy.as_ref().map(|p| p.cpu_s_per_10k)),
                proxy_peak_rss_mb: fo(&|r| r.proxy.as_ref().map(|p| p.peak_rss_kb as f64 / 1024.0)),
                app_cpu_s_per_10k: f(&|r| r.app.cpu_s_per_10k)?,
                cache_hit_ratio: (hits + misses > 0.0).then(|| hits / (hits + misses)),
                other_cpu_share: f(&|r| {
                    if r.machine_busy_s > 0.0 {
                        r.other_cpu_s / r.machine_busy_s
                    } else {
                        0.0
                    }
                })?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Ratios are computed per repeat (runs of the same repeat ran back to back,
/// so drift hits both alike); the verdict uses the median.
fn paired_ratio(runs: &[RunResult], a: &str, b: &str, f: &dyn Fn(&RunResult) -> f64) -> Option<Spread> {
    let ratios = runs
        .iter()
        .filter(|r| r.scenario == a)
        .filter_map(|ra| {
            let rb = runs.iter().find(|r| r.scenario == b && r.repeat == ra.repeat)?;
            let d = f(rb);
            (d > 0.0).then(|| f(ra) / d)
        })
        .collect();
    Spread::of(ratios)
}

/// `a - b` per repeat, like [`paired_ratio`].
fn paired_diff(runs: &[RunResult], a: &str, b: &str, f: &dyn Fn(&RunResult) -> Option<f64>) -> Option<Spread> {
    let diffs = runs
        .iter()
        .filter(|r| r.scenario == a)
        .filter_map(|ra| {
            let rb = runs.iter().find(|r| r.scenario == b && r.repeat == ra.repeat)?;
            Some(f(ra)? - f(rb)?)
        })
        .collect();
    Spread::of(diffs)
}

fn spread_x(s: &Spread) -> String {
    format!("{:.2}× (min {:.2}, max {:.2})", s.median, s.min, s.max)
}

/// A target that is the ratio of one scenario's measure to another's,
/// paired by repeat.
struct Ratio<'a> {
    scenario: &'a str,
    against: &'a str,
    measure: &'a dyn Fn(&RunResult) -> f64,
    target: &'a str,
    /// What the report says when either scenario did not run.
    name: &'a str,
    met: fn(f64) -> bool,
}

/// The targets of issue 14 (and the earlier ones still held). `raw`: the
/// crypto floor per algorithm, µs.
pub fn targets(
    runs: &[RunResult],
    sums: &[ScenarioSummary],
    raw: &[(String, f64)],
    pernode: &[PerNodeResult],
) -> Vec<Target> {
    let mut t = Vec::new();
    let rps = |r: &RunResult| r.wrk.rps;
    let p99 = |r: &RunResult| r.wrk.summary.latency_us.p99 as f64;
    let proxy_cpu = |r: &RunResult| r.proxy.as_ref().map_or(0.0, |p| p.cpu_s_per_10k);
    for r in [
        Ratio {
            scenario: "nodeward-cached",
            against: "nginx-proxy",
            measure: &proxy_cpu,
            target: "cached token: agent CPU per request ≤ 1.2× the bare NGINX hop's",
            name: "cached token vs bare NGINX hop, CPU per request",
            met: |x| x <= 1.2,
        },
        Ratio {
            scenario: "nodeward-cached",
            against: "nginx-proxy",
            measure: &rps,
            target: "cached token: throughput ≥ 0.85× the bare NGINX hop",
            name: "cached token vs bare NGINX hop, throughput",
            met: |x| x >= 0.85,
        },
        Ratio {
            scenario: "nodeward-cached",
            against: "nginx-proxy",
            measure: &p99,
            target: "cached token: p99 ≤ 1.0× the bare NGINX hop",
            name: "cached token vs bare NGINX hop, p99",
            met: |x| x <= 1.0,
        },
        Ratio {
            scenario: "nodeward-steered-cached",
            against: "nodeward-cached",
            measure: &rps,
            target: "eBPF-steered cached path: throughput ≥ 0.95× the reverse-proxy cached path",
            name: "eBPF-steered vs reverse-proxy cached path (root only)",
            met: |x| x >= 0.95,
        },
        Ratio {
            scenario: "nodeward-cached",
            against: "nginx-njs-rs256",
            measure: &rps,
            target: "cached token: throughput ≥ 3× NGINX+njs RS256",
            name: "cached token vs NGINX+njs",
            met: |x| x >= 3.0,
        },
    ] {
        t.push(match paired_ratio(runs, r.scenario, r.against, r.measure) {
            Some(s) => Target {
                target: r.target.into(),
                measured: spread_x(&s),
                met: Some((r.met)(s.median)),
            },
            None => missing(r.name),
        });
    }
    let cpu_us = |name: &str| {
        sums.iter()
            .find(|s| s.name == name)
            .and_then(|s| s.proxy_cpu_s_per_10k)
            .map(|c| c.median * 100.0)
    };
    for (alg, scenario) in [
        ("RS256", "nodeward-miss-rs256"),
        ("ES256", "nodeward-miss-es256"),
        ("EdDSA", "nodeward-miss-eddsa"),
    ] {
        let floor = raw.iter().find(|(a, _)| a == alg).map_or(0.0, |(_, us)| *us);
        match (cpu_us(scenario), cpu_us("nodeward-cached")) {
            (Some(miss), Some(hit)) if floor > 0.0 => {
                let extra = miss - hit;
                let ratio = extra / floor;
                t.push(Target {
                    target: format!("cache-miss {alg}: what a miss adds ≤ 1.2× the raw signature verify"),
                    measured: format!(
                        "{ratio:.2}×: nodeward CPU {miss:.1} µs/request on a miss vs {hit:.1} µs on a hit = \
                         {extra:.1} µs added; raw aws-lc-rs {alg} verify {floor:.1} µs (same run)"
                    ),
                    met: Some(ratio <= 1.2),
                });
            }
            _ => t.push(missing(&format!("cache-miss {alg} vs raw verify"))),
        }
    }
    // CPU s per 10k requests × 100 = µs per request.
    let cpu_us_of = |r: &RunResult| r.proxy.as_ref().map(|p| p.cpu_s_per_10k * 100.0);
    match (
        paired_diff(runs, "nodeward-rbac-cached", "nodeward-cached", &cpu_us_of),
        cpu_us("nodeward-rbac-cached"),
        cpu_us("nodeward-cached"),
    ) {
        (Some(d), Some(rbac), Some(plain)) => t.push(Target {
            target: "cached RBAC decision: ≤ 1 µs of agent CPU per request over the same request without the rule"
                .into(),
            measured: format!(
                "{:+.2} µs/request (paired per repeat: min {:+.2}, max {:+.2}); nodeward CPU {rbac:.2} µs/request \
                 with the rule vs {plain:.2} µs without (medians)",
                d.median, d.min, d.max
            ),
            met: Some(d.median <= 1.0),
        }),
        _ => t.push(missing("cached RBAC decision vs the same request without the rule")),
    }
    match (
        paired_diff(runs, "nodeward-egress-token", "nodeward-egress-plain", &cpu_us_of),
        cpu_us("nodeward-egress-token"),
        cpu_us("nodeward-egress-plain"),
    ) {
        (Some(d), Some(token), Some(plain)) => t.push(Target {
            target:
                "egress: attaching a held token ≤ 5 µs of agent CPU per request over plain egress through the agent"
                    .into(),
            measured: format!(
                "{:+.2} µs/request (paired per repeat: min {:+.2}, max {:+.2}); nodeward CPU {token:.2} µs/request \
                 with the token vs {plain:.2} µs without (medians)",
                d.median, d.min, d.max
            ),
            met: Some(d.median <= 5.0),
        }),
        _ => t.push(missing("egress with a held token vs plain egress")),
    }
    let largest = pernode.iter().map(|p| p.pods).max();
    let pick = |m: Model| largest.and_then(|n| pernode.iter().find(|p| p.model == m && p.pods == n));
    match (pick(Model::PerNode), pick(Model::PerPod)) {
        (Some(node), Some(pod)) => {
            let n = node.pods;
            let pss = pod.pss_kb as f64 / node.pss_kb.max(1) as f64;
            let rss = pod.rss_kb as f64 / node.rss_kb.max(1) as f64;
            t.push(Target {
                target: format!("N = {n}: agent PSS ≤ 12 MiB"),
                measured: format!("{:.1} MiB", node.pss_kb as f64 / 1024.0),
                met: Some(node.pss_kb as f64 / 1024.0 <= 12.0),
            });
            t.push(Target {
                target: format!("N = {n}: per-node uses ≥ 20× less total memory than per-pod"),
                measured: format!(
                    "{pss:.1}× by PSS ({:.1} MiB vs {:.1} MiB); {rss:.1}× by RSS ({:.1} MiB vs {:.1} MiB)",
                    node.pss_kb as f64 / 1024.0,
                    pod.pss_kb as f64 / 1024.0,
                    node.rss_kb as f64 / 1024.0,
                    pod.rss_kb as f64 / 1024.0
                ),
                met: Some(pss >= 20.0),
            });
            let intervals = node.window_s / REFRESH_S;
            t.push(Target {
                target: format!("N = {n}: one JWKS fetch per provider per refresh interval, not N"),
                measured: format!(
                    "per-node {} fetches in {:.1} s ({:.2} per {REFRESH_S} s interval); per-pod {} ({:.1} per interval)",
                    node.window_jwks_fetches,
                    node.window_s,
                    node.jwks_fetches_per_interval,
                    pod.window_jwks_fetches,
                    pod.jwks_fetches_per_interval
                ),
                // The window need not start on an interval boundary: ⌈W/I⌉ fetches is still one per interval.
                met: Some(
                    node.window_jwks_fetches >= 1 && node.window_jwks_fetches as f64 <= intervals.ceil(),
                ),
            });
        }
        _ => t.push(missing("per-node vs per-pod")),
    }
    t
}

fn missing(what: &str) -> Target {
    Target {
        target: what.to_owned(),
        measured: "not measured in this run".into(),
        met: None,
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

fn mb(v: Option<Spread>) -> String {
    v.map_or("–".into(), |s| format!("{:.1}", s.median))
}

fn cpu(v: Option<Spread>) -> String {
    v.map_or("–".into(), |s| format!("{:.3}", s.median))
}

/// The scenario table in Markdown (also readable in a terminal).
pub fn scenario_table(sums: &[ScenarioSummary]) -> String {
    let mut s = String::from(
        "| scenario | req/s median [min–max] | p50 ms | p99 ms median [min–max] | p99.9 ms | proxy CPU s/10k req | proxy peak RSS MiB | app CPU s/10k req | cache hits |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for x in sums {
        let _ = writeln!(
            s,
            "| {} | {:.0} [{:.0}–{:.0}] | {:.2} | {:.2} [{:.2}–{:.2}] | {:.2} | {} | {} | {:.3} | {} |",
            x.name,
            x.rps.median,
            x.rps.min,
            x.rps.max,
            x.p50_ms.median,
            x.p99_ms.median,
            x.p99_ms.min,
            x.p99_ms.max,
            x.p999_ms.median,
            cpu(x.proxy_cpu_s_per_10k),
            mb(x.proxy_peak_rss_mb),
            x.app_cpu_s_per_10k.median,
            x.cache_hit_ratio.map_or("–".into(), |h| format!("{:.1} %", h * 100.0)),
        );
    }
    s
}

pub fn pernode_table(p: &[PerNodeResult]) -> String {
    let mut s = String::from(
        "| N pods | model | processes | req/s | p99 ms | agents' CPU s | CPU s/10k req | PSS MiB | RSS MiB | peak RSS MiB | JWKS fetches at start | JWKS fetches in window (per 5 s) | discovery in window |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in p {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.1} | {:.1} | {:.1} | {} | {} ({:.2}) | {} |",
            r.pods,
            r.model.label(),
            r.processes,
            r.rps,
            r.p99_us as f64 / 1e3,
            r.cpu_s,
            r.cpu_s_per_10k,
            r.pss_kb as f64 / 1024.0,
            r.rss_kb as f64 / 1024.0,
            r.peak_rss_kb as f64 / 1024.0,
            r.startup_jwks_fetches,
            r.window_jwks_fetches,
            r.jwks_fetches_per_interval,
            r.window_discovery_fetches,
        );
    }
    s
}

pub fn targets_table(t: &[Target]) -> String {
    let mut s = String::from("| target | measured | verdict |\n|---|---|---|\n");
    for x in t {
        let _ = writeln!(s, "| {} | {} | {} |", x.target, x.measured, verdict(x.met));
    }
    s
}

pub struct Context<'a> {
    pub machine: &'a Machine,
    pub loadavg_after: &'a str,
    pub command: &'a str,
    pub settings: &'a str,
    pub baseline: &'a [(String, f64)],
    /// Whether the floor was measured in optimized code.
    pub floor_optimized: bool,
    pub wall_s: f64,
    /// Scenarios that could not run here, with why.
    pub skipped: &'a [(String, String)],
}

/// The whole report in Markdown: docs/benchmarks.md embeds it.
pub fn markdown(cx: &Context<'_>, sums: &[ScenarioSummary], pernode: &[PerNodeResult], targets: &[Target]) -> String {
    let m = cx.machine;
    let mut s = String::new();
    let _ = writeln!(s, "Command: `{}` ({:.0} s wall)\n", cx.command, cx.wall_s);
    let _ = writeln!(
        s,
        "Machine: {} CPUs, {}, {:.1} GiB RAM, kernel {}, {}. Load average (1/5/15 min) {} before, {} after.\n",
        m.cpus, m.model, m.mem_total_gib, m.kernel, m.os, m.loadavg_before, cx.loadavg_after
    );
    let _ = writeln!(s, "Settings: {}\n", cx.settings);
    let base: Vec<String> = cx.baseline.iter().map(|(a, us)| format!("{a} {us:.1} µs")).collect();
    let _ = writeln!(
        s,
        "Raw aws-lc-rs verify in this run (CPU time, best of 5 batches of 0.1 s){}: {}\n",
        if cx.floor_optimized {
            ""
        } else {
            " — unoptimized build, indicative only"
        },
        base.join(", ")
    );
    let _ = writeln!(s, "### Scenarios\n\n{}", scenario_table(sums));
    for (name, why) in cx.skipped {
        let _ = writeln!(s, "Not measured in this run: `{name}` ({why}).\n");
    }
    let noise: Vec<String> = sums
        .iter()
        .map(|x| format!("{} {:.0} %", x.name, x.other_cpu_share.median * 100.0))
        .collect();
    let _ = writeln!(
        s,
        "Share of the machine's busy CPU time used by other processes (not wrk, the proxy or the app) during the measured windows, median: {}.\n",
        noise.join(", ")
    );
    if !pernode.is_empty() {
        let _ = writeln!(s, "### Per-node vs per-pod\n\n{}", pernode_table(pernode));
    }
    let _ = writeln!(s, "### Targets\n\n{}", targets_table(targets));
    s
}
