//! The live run: start the node (`env`) and Prometheus, drive the traffic,
//! wait until Prometheus has scraped its end, run the checks, render the
//! dashboard, and stop everything, also when a step fails.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::checks::{self, Checks};
use super::dashboard::{self, Intervals};
use super::env::Env;
use super::files::{ALERTS_DIR, DASHBOARD, RULES, alert_names};
use super::prometheus::{JOB, Prometheus};
use super::{Settings, render, traffic};

/// Two scrapes at one per second, plus slack for a loaded machine.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(15);
const PNG: &str = "target/observe/dashboard.png";

pub async fn run(bin: &Path, root: &Path, set: &Settings) -> anyhow::Result<Vec<String>> {
    println!("\n== the live run: nodeward under traffic, scraped by Prometheus");
    let mut env = Env::start(bin, set.ebpf).await?;
    let rules = root.join(ALERTS_DIR).join(RULES);
    let prom = match Prometheus::start(env.dir.path(), &env.admin_addr, &rules).await {
        Ok(p) => p,
        Err(e) => {
            let _ = env.stop();
            return Err(e);
        }
    };
    println!(
        "started: nodeward (admin {}; workloads orders -> echo app, billing -> a closed port{}), \
         the fake Kubernetes API with {} pods, prometheus {} (scrape and rule evaluation every 1s)",
        env.admin_addr,
        if env.steered.is_some() {
            "; 2 eBPF-steered pods"
        } else {
            ""
        },
        if env.steered.is_some() { 5 } else { 3 },
        prom.url,
    );
    let result = observe(&mut env, &prom, root, set).await;
    if !matches!(&result, Ok(f) if f.is_empty()) {
        eprintln!("--- nodeward stderr (last lines) ---\n{}", env.agent_stderr(20));
        eprintln!("--- prometheus stderr (last lines) ---\n{}", prom.stderr_tail(20));
    }
    let prom_stopped = prom.stop();
    let env_stopped = env.stop();
    let failures = result?;
    prom_stopped?;
    env_stopped?;
    println!(
        "stopped: nodeward (clean exit), prometheus, the IdPs, the apps, the fake API; temporary directory removed"
    );
    Ok(failures)
}

async fn observe(env: &mut Env, prom: &Prometheus, root: &Path, set: &Settings) -> anyhow::Result<Vec<String>> {
    // Prometheus hands new targets to its scrapers every 5 s: traffic starts
    // once the agent has been scraped, so every panel covers all of it.
    wait_scraped(prom, 0.0).await?;
    println!("traffic for {} ...", humantime::format_duration(set.duration));
    let traffic = traffic::drive(env, set.duration).await?;
    for (kind, (ok, wrong)) in &traffic.by_kind {
        println!(
            "     {kind:<15} {ok:>6} as expected{}",
            if *wrong > 0 {
                format!(", {wrong} WRONG")
            } else {
                String::new()
            }
        );
    }
    let mut failures = Vec::new();
    super::report(
        &mut failures,
        traffic.wrong.is_empty(),
        &format!("{} requests, every one answered as the contract says", traffic.sent()),
        &traffic.wrong.join("\n"),
    );
    let last = wait_scraped(prom, traffic.end).await?;

    let exposition = checks::exposition(env).await?;
    let d = dashboard::load(&root.join(DASHBOARD))?;
    let rules_text = std::fs::read_to_string(root.join(ALERTS_DIR).join(RULES))?;
    let alerts = alert_names(&rules_text)?;
    let mut c = Checks { prom, env, failures };
    c.target().await?;
    c.series().await?;
    c.values(&traffic).await?;
    c.metadata(&exposition).await?;
    c.promtool_metrics(&exposition, env.dir.path())?;
    let mut texts: Vec<String> = d.queries().map(|(_, t)| t.expr.clone()).collect();
    texts.push(rules_text);
    c.names_exist(&exposition, &texts);
    let span = (last - traffic.start).ceil() as u64 + 5;
    let iv = Intervals {
        rate: "15s".into(),
        range: format!("{span}s"),
        interval: "1s".into(),
    };
    let all = c.dashboard(&d, &iv, last).await?;
    c.rules(&alerts).await?;
    c.alerts(&alerts).await?;
    let mut failures = c.failures;

    let png = root.join(PNG);
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let caption = format!(
        "nodeward dashboard rendered by `cargo xtask observe` (not by Grafana) from its panel queries against a live Prometheus \
         scraping a real agent; {} of traffic{}",
        humantime::format_duration(set.duration),
        if env.steered.is_some() {
            ", with eBPF-steered pods"
        } else {
            ", without eBPF (--no-ebpf)"
        }
    );
    let drawn = render::dashboard(prom, &d, &all, &iv, traffic.start, last, &png, &caption).await;
    super::report(
        &mut failures,
        drawn.is_ok(),
        &format!("rendered every panel from its queries into {PNG}"),
        &drawn.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default(),
    );
    if let (Ok(()), Some(shot)) = (&drawn, &set.screenshot) {
        std::fs::copy(&png, shot).with_context(|| format!("copying the PNG to {}", shot.display()))?;
        println!("     copied to {}", shot.display());
    }
    Ok(failures)
}

/// Waits (bounded) for a scrape that began after `after` (Unix seconds): at
/// the end of the traffic, so the final counters are in Prometheus. Returns
/// that scrape's time.
async fn wait_scraped(prom: &Prometheus, after: f64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let q = format!("timestamp(up{{job=\"{JOB}\"}})");
    loop {
        let last = prom
            .query(&q, None)
            .await?
            .first()
            .and_then(|s| s.points.first())
            .map(|p| p.1);
        if let Some(t) = last
            && t > after
        {
            return Ok(t);
        }
        if Instant::now() >= deadline {
            bail!(
                "Prometheus has not scraped the agent after {after:.3} within {SCRAPE_TIMEOUT:?} (last scrape {last:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
