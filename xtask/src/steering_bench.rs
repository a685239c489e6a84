//! `cargo xtask bench-steering [--quick]` (root): what eBPF steering costs.
//!
//! - Throughput and latency of the same agent, same load, same cached token,
//!   through its eBPF-steered path (client → pod IP:8080 over a veth, steered
//!   into the agent's listener in the pod's namespace, forwarded from inside
//!   the pod) and through its reverse-proxy path (client → agent on loopback
//!   → pod IP:8081 over the veth), alternating rounds so machine drift hits
//!   both equally.
//! - Enrolment latency: from a workload appearing in the configuration to
//!   its port being protected (one at a time, median), and 100 at once.
//! - Agent RSS with 100 enrolled, idle workloads (a real `nodeward run`).
//!
//! Prints a table and writes `target/bench/steering.json`.

use std::net::SocketAddr;
use std::process::ExitCode;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nodeward::netns::listener_in;
use nodeward_testkit::netns::{NetnsGuard, PinDir};
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp};
use serde_json::json;

const CONNECTIONS: usize = 16;

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if !nix_is_root() {
        eprintln!("bench-steering needs root (network namespaces, eBPF): run it as root");
        return Ok(ExitCode::FAILURE);
    }
    // The agent runs in this process for part of the bench: measure an
    // optimised build, never a debug one.
    if cfg!(debug_assertions) {
        let status = crate::cargo()
            .args(["run", "--release", "-q", "-p", "xtask", "--", "bench-steering"])
            .args(args)
            .status()?;
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench(quick))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn config(issuer: &str, pins: &std::path::Path, workloads: &str) -> String {
    format!(
        "admin: 127.0.0.1:0\nebpf: {{pin_dir: {}}}\nproviders:\n  - {{name: corp, issuer: \"{issuer}\", audiences: [orders]}}\n\
         policies:\n  - name: p\n    selector: {{app: orders}}\n    ports: [8080]\n    rules: [{{name: all, require: {{}}}}]\n\
         workloads:\n{workloads}",
        pins.display()
    )
}

struct Load {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

/// `CONNECTIONS` keep-alive connections sending GETs with `token` for `secs`.
async fn load(url: &str, token: &str, secs: Duration) -> anyhow::Result<Load> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONNECTIONS)
        .build_http();
    let auth = format!("Bearer {token}");
    let deadline = Instant::now() + secs;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, url, auth) = (client.clone(), url.to_string(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let req = http::Request::get(&url)
                    .header("authorization", &auth)
                    .body(Empty::new())
                    .expect("request");
                let t = Instant::now();
                let resp = client.request(req).await?;
                let ok = resp.status() == 200;
                resp.into_body().collect().await?;
                if !ok {
                    bail!("non-200 during the load");
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Load {
        rps: all.len() as f64 / secs.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

async fn bench(quick: bool) -> anyhow::Result<ExitCode> {
    let (rounds, secs) = if quick {
        (1, Duration::from_secs(2))
    } else {
        (3, Duration::from_secs(5))
    };
    let idp = TestIdp::start().await;
    let token = idp.token(json!({"aud": "orders", "exp": 4_000_000_000u64}));

    eprintln!("bench-steering: steered vs reverse-proxy path ...");
    // 1. Steered vs reverse-proxy path, one agent, one pod.
    let pins = PinDir::new();
    let pod = NetnsGuard::new();
    let pod_ip = pod.pod_ip();
    let mut apps = Vec::new();
    for port in [8080, 8081] {
        let l = listener_in(&pod.path, SocketAddr::new(pod_ip, port)).context("app listener")?;
        apps.push(EchoUpstream::serve(tokio::net::TcpListener::from_std(l)?));
    }
    let workloads = format!(
        "  - {{name: steered, labels: {{app: orders}}, netns: {}}}\n  - {{name: proxied, labels: {{app: orders}}, listen: 127.0.0.1:0, upstream: \"{pod_ip}:8081\"}}\n",
        pod.path.display()
    );
    let agent = TestAgent::start(&config(&idp.issuer(), &pins.path, &workloads)).await;
    agent.wait_ready().await;
    let steered_url = format!("http://{pod_ip}:8080/x");
    let proxied_url = format!("{}/x", agent.url("proxied"));
    load(&steered_url, &token, Duration::from_millis(500)).await?; // warm-up
    load(&proxied_url, &token, Duration::from_millis(500)).await?;
    let (mut steered, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        steered.push(load(&steered_url, &token, secs).await?);
        proxied.push(load(&proxied_url, &token, secs).await?);
    }
    agent.agent.unenrol_all_and_shutdown().await;

    eprintln!("bench-steering: enrolment latency ...");
    // 2. Enrolment latency: one workload at a time, then 100 at once.
    let namespaces: Vec<NetnsGuard> = (0..100).map(|_| NetnsGuard::bare()).collect();
    let entry = |i: usize, ns: &NetnsGuard| {
        format!(
            "  - {{name: w{i}, labels: {{app: orders}}, netns: {}, ips: [10.252.{}.{}]}}\n",
            ns.path.display(),
            i / 250,
            i % 250 + 1
        )
    };
    let pins2 = PinDir::new();
    let agent = TestAgent::start(&config(&idp.issuer(), &pins2.path, "")).await;
    let mut singles = Vec::new();
    let mut text = String::new();
    for (i, ns) in namespaces.iter().take(20).enumerate() {
        text.push_str(&entry(i, ns));
        let cfg = TestAgent::config(&config(&idp.issuer(), &pins2.path, &text), agent.state_dir.path());
        let t = Instant::now();
        agent.agent.apply(cfg).await?;
        singles.push(t.elapsed());
    }
    singles.sort();
    let median_single = singles[singles.len() / 2];
    agent.agent.unenrol_all_and_shutdown().await;
    let all: String = namespaces.iter().enumerate().map(|(i, ns)| entry(i, ns)).collect();
    let pins3 = PinDir::new();
    let t = Instant::now();
    let agent = TestAgent::start(&config(&idp.issuer(), &pins3.path, &all)).await;
    let hundred = t.elapsed();
    agent.agent.unenrol_all_and_shutdown().await;

    eprintln!("bench-steering: RSS with 100 enrolled workloads ...");
    // 3. RSS of a real agent process with 100 enrolled, idle workloads.
    let rss_kib = rss_with_100(&idp, &namespaces, &entry).await?;

    let median = |v: &[Load], f: fn(&Load) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (s_rps, p_rps) = (median(&steered, |l| l.rps), median(&proxied, |l| l.rps));
    let (s_p50, p_p50) = (
        median(&steered, |l| l.p50_us as f64),
        median(&proxied, |l| l.p50_us as f64),
    );
    let (s_p99, p_p99) = (
        median(&steered, |l| l.p99_us as f64),
        median(&proxied, |l| l.p99_us as f64),
    );
    println!(
        "\nnodeward eBPF steering ({rounds} alternating round(s) of {secs:?}, {CONNECTIONS} connections, cached token)\n"
    );
    println!("| path | req/s (median) | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    println!("| eBPF-steered (pod IP:8080) | {s_rps:.0} | {s_p50:.0} | {s_p99:.0} |");
    println!("| reverse proxy (loopback → pod IP:8081) | {p_rps:.0} | {p_p50:.0} | {p_p99:.0} |");
    println!("| steered / proxied | {:.3}× | | |", s_rps / p_rps);
    println!();
    println!("| enrolment | value | target |");
    println!("|---|---|---|");
    println!(
        "| one workload, median of 20 | {:.2} ms | < 20 ms |",
        median_single.as_secs_f64() * 1e3
    );
    println!(
        "| 100 workloads at start | {:.0} ms | < 2000 ms |",
        hundred.as_secs_f64() * 1e3
    );
    println!(
        "| agent RSS, 100 enrolled idle workloads | {:.1} MiB | < 40 MiB |",
        rss_kib as f64 / 1024.0
    );
    let out = json!({
        "rounds": rounds, "seconds": secs.as_secs_f64(), "connections": CONNECTIONS,
        "steered": steered.iter().map(|l| json!({"rps": l.rps, "p50_us": l.p50_us, "p99_us": l.p99_us})).collect::<Vec<_>>(),
        "proxied": proxied.iter().map(|l| json!({"rps": l.rps, "p50_us": l.p50_us, "p99_us": l.p99_us})).collect::<Vec<_>>(),
        "ratio_rps": s_rps / p_rps,
        "enrol_single_ms": singles.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        "enrol_100_ms": hundred.as_secs_f64() * 1e3,
        "rss_100_idle_kib": rss_kib,
    });
    let dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("steering.json"), serde_json::to_vec_pretty(&out)?)?;
    drop(apps);
    Ok(ExitCode::SUCCESS)
}

async fn rss_with_100(
    idp: &TestIdp,
    namespaces: &[NetnsGuard],
    entry: &dyn Fn(usize, &NetnsGuard) -> String,
) -> anyhow::Result<u64> {
    let status = crate::cargo()
        .args(["build", "--release", "-q", "-p", "nodeward"])
        .status()?;
    if !status.success() {
        bail!("building nodeward failed");
    }
    let bin = crate::workspace_root().join("target/release/nodeward");
    let dir = tempfile::tempdir()?;
    let pins = PinDir::new();
    let all: String = namespaces.iter().enumerate().map(|(i, ns)| entry(i, ns)).collect();
    let yaml = format!(
        "state_dir: {}\n{}",
        dir.path().display(),
        config(&idp.issuer(), &pins.path, &all)
    );
    let file = dir.path().join("nodeward.yaml");
    std::fs::write(&file, yaml)?;
    let mut child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let links = |p: &PinDir| p.links().len();
    let start = Instant::now();
    while links(&pins) < 100 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>())
        })
        .context("no VmRSS")??;
    let _ = child.kill();
    let _ = child.wait();
    let enrolled = links(&pins);
    if enrolled < 100 {
        bail!("only {enrolled} of 100 workloads enrolled in the agent process");
    }
    Ok(rss)
}
