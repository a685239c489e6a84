//! `cargo xtask bench [--quick]`: nodeward beside NGINX and beside the
//! sidecar model, measured in one run on loopback (issue 5).
//!
//! Everything is started here as separate processes: a dev IdP, the app
//! (NGINX answering `return 200`, the same for every scenario), the proxy
//! under test (none, NGINX, NGINX + njs, nodeward), and Debian's `wrk` with
//! one generated Lua script shape for all scenarios. Each run of a scenario
//! starts a fresh proxy, checks one request, warms up, then measures req/s
//! and latency percentiles (wrk), CPU time of the proxy and the app
//! (/proc/PID/stat before and after), and peak RSS (VmHWM). Scenarios run in
//! alternating order over the repeats (reversed every other repeat) so that
//! drift on a shared machine hits all of them; the report gives min, median
//! and max. Then per-node vs per-pod (`pernode`).
//!
//! Output: a table on stdout; every figure in `target/bench/results.json`;
//! wrk's own output per run in `target/bench/raw/`; the Markdown report
//! (`report.md`, pasted into docs/benchmarks.md) and two PNG charts.
//!
//! `--quick` (CI's smoke test) runs each scenario once, briefly, and N = 10
//! only, and asserts only that every scenario produced numbers with the
//! expected statuses — never timings.

mod baseline;
pub(crate) mod chart;
mod egress;
pub(crate) mod env;
mod instructions;
mod pernode;
mod procfs;
mod report;
mod scenarios;
mod wrk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use env::{Idp, Nginx, NginxRole};
use pernode::Model;

const USAGE: &str = "\
usage: cargo xtask bench [--quick] [--scenarios NAME,NAME..] [--no-pernode | --pods N,N..]
                         [--keep] [--nodeward BIN] [--out DIR]
       cargo xtask bench --instructions [--miss] [--nodeward BIN] [--out DIR]

  --quick          one short repeat, N = 10 only (CI's smoke test)
  --scenarios      run only these scenarios (names as in the table)
  --no-pernode     skip per-node vs per-pod
  --pods N,N..     per-node vs per-pod at these N instead (default 10,50,100; --quick 10)
  --pace MS        each wrk connection waits MS ms between requests (default: none, flat out):
                   scenarios that keep up run at the same request rate, so a cache miss is
                   compared with a hit under the same load, not at twice its rate
  --keep           keep the temporary directory (configs, stderr of every process)
  --nodeward BIN   measure this nodeward binary instead of building what ships
                   (cargo xtask dist: ~35 min on 2 cores) or, with --quick, a release build
  --out DIR        write results there instead of target/bench
  --instructions   instead of the throughput scenarios: instructions per request of
                   nodeward's cached path and NGINX's bare hop under valgrind's callgrind
                   (immune to a shared machine's noise; writes instructions.{json,md})
  --miss           with --instructions: nodeward's cached path beside its cache-miss paths
                   (RS256, ES256, EdDSA; token_cache.max_entries 0, a pool of fresh tokens)
                   and the raw aws-lc-rs verify of the same tokens";

/// How long and how hard.
pub struct Settings {
    pub quick: bool,
    pub repeats: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
    pub connections: usize,
    /// Tokens per algorithm in the cache-miss pools.
    pub pool: usize,
    /// N for per-node vs per-pod.
    pub pods: Vec<usize>,
    /// Measured window of per-node vs per-pod.
    pub window: Duration,
    pub only: Option<Vec<String>>,
    /// `--pace`: wrk's delay between requests per connection, ms (0: none).
    pub pace_ms: u32,
    pub keep: bool,
    pub nodeward: Option<PathBuf>,
    pub out: Option<PathBuf>,
}

impl Settings {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut s = if quick {
            Self {
                quick,
                repeats: 1,
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(3),
                threads: 2,
                connections: 50,
                pool: 200,
                pods: vec![10],
                window: Duration::from_secs(10),
                only: None,
                pace_ms: 0,
                keep: false,
                nodeward: None,
                out: None,
            }
        } else {
            Self {
                quick,
                repeats: 3,
                warmup: Duration::from_secs(2),
                duration: Duration::from_secs(10),
                threads: 2,
                connections: 50,
                pool: 1000,
                pods: vec![10, 50, 100],
                window: Duration::from_secs(15),
                only: None,
                pace_ms: 0,
                keep: false,
                nodeward: None,
                out: None,
            }
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" | "--instructions" | "--miss" => {}
                "--no-pernode" => s.pods.clear(),
                "--pods" => {
                    let list = it.next().context("--pods needs a comma-separated list of N")?;
                    s.pods = list
                        .split(',')
                        .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n > 0))
                        .collect::<Option<Vec<_>>>()
                        .with_context(|| format!("--pods {list:?}: expected positive integers like 10,50,100"))?;
                }
                "--keep" => s.keep = true,
                "--pace" => {
                    let ms = it.next().context("--pace needs milliseconds")?;
                    s.pace_ms = ms
                        .parse()
                        .with_context(|| format!("--pace {ms:?}: expected milliseconds"))?;
                }
                "--nodeward" => s.nodeward = Some(it.next().context("--nodeward needs a path")?.into()),
                "--out" => s.out = Some(it.next().context("--out needs a directory")?.into()),
                "--scenarios" => {
                    let list = it.next().context("--scenarios needs a comma-separated list")?;
                    s.only = Some(list.split(',').map(str::to_owned).collect());
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        Ok(s)
    }

    fn describe(&self) -> String {
        format!(
            "nodeward {}; wrk -t{} -c{} (keep-alive{}), {} s measured after {} s warm-up per run, fresh proxy \
             process per run, {} repeat(s) in alternating order; cache-miss pools of {} tokens per algorithm with \
             token_cache.max_entries 0; per-node vs per-pod: N = {:?}, {} s window at ~{} req/s offered in total, \
             JWKS refresh {}",
            match (&self.nodeward, self.quick) {
                (Some(bin), _) => format!("binary {}", bin.display()),
                (None, true) => "built with --release".to_string(),
                (None, false) => "built by cargo xtask dist (the dist profile with PGO, as shipped)".to_string(),
            },
            self.threads,
            self.connections,
            match self.pace_ms {
                0 => String::new(),
                ms => format!(", each connection pausing {ms} ms between requests"),
            },
            self.duration.as_secs(),
            self.warmup.as_secs(),
            self.repeats,
            self.pool,
            self.pods,
            self.window.as_secs(),
            pernode::RATE,
            pernode::REFRESH,
        )
    }
}

/// What every scenario shares.
pub struct Bench {
    pub bin: PathBuf,
    /// An optimized xtask for the crypto floor (see `baseline`), full runs only.
    pub release_xtask: Option<PathBuf>,
    pub dir: PathBuf,
    pub raw_dir: PathBuf,
    pub http: reqwest::Client,
    pub idp: Idp,
    pub app: Nginx,
    /// One RS256 token every route accepts (and the admin route denies).
    pub reused_token: String,
    pub pools: HashMap<&'static str, Vec<String>>,
    pub rs256_spki: String,
    pub rs256_kid: String,
    /// The dev IdP's JWKS, as fetched at setup.
    pub jwks: serde_json::Value,
    /// Seconds per /proc clock tick.
    pub tick: f64,
}

const ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    // Internal: the optimized child that measures the crypto floor.
    if let [flag, file] = args
        && flag == "--floor"
    {
        baseline::floor_main(Path::new(file))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Internal: `n` raw verifies, run under callgrind by `--instructions --miss`.
    if let [flag, file, n] = args
        && flag == "--floor-count"
    {
        baseline::count_main(Path::new(file), n.parse().context("--floor-count FILE N")?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let set = Settings::parse(args)?;
    if args.iter().any(|a| a == "--instructions") {
        return count_instructions(set, args.iter().any(|a| a == "--miss"));
    }
    let started = Instant::now();
    let machine = procfs::machine();
    for (tool, hint) in [("wrk", "wrk"), ("nginx", "nginx libnginx-mod-http-js")] {
        let found = Command::new(tool)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            bail!("`{tool}` is not installed (Debian: apt-get install {hint}; .ci/run installs it)");
        }
    }
    chart::load_font()?;
    let out = set.out.clone().unwrap_or_else(|| target_dir().join("bench"));
    let raw_dir = out.join("raw");
    let _ = std::fs::remove_dir_all(&raw_dir);
    std::fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;
    let bin = match &set.nodeward {
        Some(bin) => std::path::absolute(bin)?,
        // A full run measures what ships (`cargo xtask dist`: fat LTO and
        // PGO); the quick smoke run saves CI the longer build.
        None if set.quick => env::build_release("nodeward")?,
        None => crate::dist::build("dist", crate::dist::TRAINING)?,
    };
    let release_xtask = if set.quick || !cfg!(debug_assertions) {
        None
    } else {
        Some(env::build_release("xtask")?)
    };
    let tmp = tempfile::Builder::new()
        .prefix("nodeward-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let tmp_path = tmp.path().to_owned();
    if set.keep {
        println!("keeping {}", tmp.keep().display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (scenarios, unavailable): (Vec<_>, Vec<_>) = scenarios::all()
        .into_iter()
        .filter(|s| set.only.as_ref().is_none_or(|o| o.iter().any(|n| n == s.name)))
        .partition(|s| s.proxy.unavailable().is_none());
    if let Some(only) = &set.only {
        for name in only {
            anyhow::ensure!(
                scenarios.iter().chain(&unavailable).any(|s| s.name == name),
                "no scenario named {name:?}"
            );
        }
    }
    let skipped: Vec<(String, String)> = unavailable
        .iter()
        .map(|s| (s.name.to_owned(), s.proxy.unavailable().unwrap_or_default().to_owned()))
        .collect();
    for (name, why) in &skipped {
        println!("skipping {name}: {why}");
    }

    let (runs, pernode, (baseline, floor_optimized)) = rt.block_on(async {
        let b = setup(bin, release_xtask, &set, &tmp_path, raw_dir.clone()).await?;
        let result = measure_all(&b, &set, &scenarios).await;
        let Bench { app, idp, .. } = b;
        let _ = app.stop();
        let _ = idp.stop();
        result
    })?;

    let sums = report::summarize(&scenarios, &runs);
    let targets = report::targets(&runs, &sums, &baseline, &pernode);
    let command = format!(
        "cargo xtask bench{}",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let command = command.as_str();
    let loadavg_after = procfs::loadavg();
    let settings = set.describe();
    let cx = report::Context {
        machine: &machine,
        loadavg_after: &loadavg_after,
        command,
        settings: &settings,
        baseline: &baseline,
        floor_optimized,
        wall_s: started.elapsed().as_secs_f64(),
        skipped: &skipped,
    };
    let md = report::markdown(&cx, &sums, &pernode, &targets);
    println!("\n{md}");

    let results = json!({
        "command": command,
        "machine": machine,
        "loadavg_after": loadavg_after,
        "settings": settings,
        "wall_s": cx.wall_s,
        "raw_verify_us": baseline.iter().map(|(a, us)| (a.clone(), json!(us))).collect::<serde_json::Map<_, _>>(),
        "scenarios": sums,
        "runs": runs,
        "pernode": pernode,
        "targets": targets,
        "skipped": skipped,
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(out.join("report.md"), &md)?;
    let title = format!("nodeward bench: {} CPUs, {} ({command})", machine.cpus, machine.model);
    chart::scenarios(&out.join("scenarios.png"), &sums, &title)?;
    if !pernode.is_empty() {
        chart::pernode(
            &out.join("pernode.png"),
            &pernode,
            &format!("per-node vs per-pod ({command})"),
        )?;
    }
    println!(
        "wrote {} (every figure), {}/report.md, {}/scenarios.png{}, raw wrk output in {}",
        json_path.display(),
        out.display(),
        out.display(),
        if pernode.is_empty() { "" } else { ", pernode.png" },
        raw_dir.display()
    );
    // Every scenario ran and produced numbers (errors above would have
    // stopped us): that is all a run asserts; targets are reported, not enforced.
    anyhow::ensure!(
        sums.len() == scenarios.len() && sums.iter().all(|s| s.runs == set.repeats && s.rps.min > 0.0),
        "some scenario produced no numbers"
    );
    Ok(ExitCode::SUCCESS)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace_root().join("target"), PathBuf::from)
}

async fn setup(
    bin: PathBuf,
    release_xtask: Option<PathBuf>,
    set: &Settings,
    dir: &Path,
    raw_dir: PathBuf,
) -> anyhow::Result<Bench> {
    let http = nodeward_testkit::client();
    let idp = Idp::start("dev-idp", dir).await?;
    let [app_port] = crate::proc::free_ports()?;
    let app = Nginx::start("app", &NginxRole::Upstream, app_port, dir).await?;
    println!("dev IdP {}; app (nginx, return 200) on {}", idp.url, app.addr);

    let reused_token = env::mint(&http, &idp.url, "RS256", claims("reused")).await?;
    let mut pools = HashMap::new();
    for alg in ALGS {
        let t = Instant::now();
        pools.insert(alg, mint_pool(&http, &idp.url, alg, set.pool).await?);
        println!("minted {} {alg} tokens in {:.1} s", set.pool, t.elapsed().as_secs_f64());
    }
    let jwks = idp.get_json(&http, "/jwks").await?;
    let rs = baseline::jwk(&jwks, "RS256")?;
    let rs256_spki = baseline::rsa_spki_b64(rs)?;
    let rs256_kid = rs["kid"].as_str().context("RS256 JWK without kid")?.to_owned();
    Ok(Bench {
        bin,
        release_xtask,
        dir: dir.to_owned(),
        raw_dir,
        http,
        idp,
        app,
        reused_token,
        pools,
        rs256_spki,
        rs256_kid,
        jwks,
        tick: procfs::tick_seconds()?,
    })
}

fn claims(jti: &str) -> serde_json::Value {
    // jti makes every token distinct (RS256 and EdDSA signatures are
    // deterministic: same claims in the same second, same token).
    json!({"aud": env::AUDIENCE, "email": "bench@example.com", "groups": ["users"], "jti": jti})
}

async fn mint_pool(http: &reqwest::Client, url: &str, alg: &'static str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let (http, url) = (http.clone(), url.to_owned());
            set.spawn(async move { (i, env::mint(&http, &url, alg, claims(&format!("{alg}-{i}"))).await) });
        }
        let mut got: Vec<(usize, String)> = Vec::with_capacity(chunk.len());
        while let Some(r) = set.join_next().await {
            let (i, t) = r?;
            got.push((i, t?));
        }
        got.sort_by_key(|(i, _)| *i);
        out.extend(got.into_iter().map(|(_, t)| t));
    }
    Ok(out)
}

/// Runs, per-node results, and the crypto floor (with whether it was optimized).
type Measured = (
    Vec<scenarios::RunResult>,
    Vec<pernode::PerNodeResult>,
    (Vec<(String, f64)>, bool),
);

async fn measure_all(b: &Bench, set: &Settings, list: &[scenarios::Scenario]) -> anyhow::Result<Measured> {
    let jwks = b.idp.get_json(&b.http, "/jwks").await?;
    let (baseline, optimized) = baseline::floor(&jwks, &b.pools, b.release_xtask.as_deref(), &b.dir)?;
    for (alg, us) in &baseline {
        let note = if optimized {
            ""
        } else {
            " (unoptimized xtask build: indicative only)"
        };
        println!("raw aws-lc-rs {alg} verify: {us:.1} µs CPU{note}");
    }

    let mut runs = Vec::new();
    let total = set.repeats * list.len();
    for r in 0..set.repeats {
        let order: Vec<&scenarios::Scenario> = if r % 2 == 1 {
            list.iter().rev().collect()
        } else {
            list.iter().collect()
        };
        for s in order {
            let res = scenarios::run_one(b, set, s, r).await?;
            println!(
                "[{:>2}/{total}] repeat {} {:<20} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  proxy CPU {} s/10k  other CPU {:.1} s",
                runs.len() + 1,
                r + 1,
                s.name,
                res.wrk.rps,
                res.wrk.summary.latency_us.p50 as f64 / 1e3,
                res.wrk.summary.latency_us.p99 as f64 / 1e3,
                res.wrk.summary.latency_us.p999 as f64 / 1e3,
                res.proxy
                    .as_ref()
                    .map_or("–".into(), |p| format!("{:.3}", p.cpu_s_per_10k)),
                res.other_cpu_s,
            );
            runs.push(res);
        }
    }

    let mut pernode = Vec::new();
    for (k, &n) in set.pods.iter().enumerate() {
        let models = if k % 2 == 0 {
            [Model::PerNode, Model::PerPod]
        } else {
            [Model::PerPod, Model::PerNode]
        };
        for m in models {
            let res = pernode::run(b, set, m, n).await?;
            println!(
                "N={n:<3} {:<8} {} process(es): {:>6.0} req/s, CPU {:.2} s, PSS {:.1} MiB, RSS {:.1} MiB, JWKS fetches: {} at start, {} in {:.1} s",
                m.label(),
                res.processes,
                res.rps,
                res.cpu_s,
                res.pss_kb as f64 / 1024.0,
                res.rss_kb as f64 / 1024.0,
                res.startup_jwks_fetches,
                res.window_jwks_fetches,
                res.window_s,
            );
            pernode.push(res);
        }
    }
    Ok((runs, pernode, (baseline, optimized)))
}

/// `--instructions`: callgrind counts instead of the throughput scenarios.
fn count_instructions(mut set: Settings, miss: bool) -> anyhow::Result<ExitCode> {
    let out = set.out.clone().unwrap_or_else(|| target_dir().join("bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin = match &set.nodeward {
        Some(bin) => std::path::absolute(bin)?,
        None => crate::dist::build("dist", crate::dist::TRAINING)?,
    };
    // Only the reused token is needed, or (--miss) the pools: every token
    // of a pool comes back after `pool` requests, long after a cache of
    // capacity 0 let it go (each run checks that no request was a hit).
    set.pool = if miss { 1000 } else { 1 };
    let release_xtask = match (miss, cfg!(debug_assertions)) {
        (false, _) => None,
        (true, true) => Some(env::build_release("xtask")?),
        (true, false) => Some(std::env::current_exe()?),
    };
    let tmp = tempfile::Builder::new()
        .prefix("nodeward-instructions-")
        .tempdir()
        .context("creating a temporary directory")?;
    let tmp_path = tmp.path().to_owned();
    if set.keep {
        // The callgrind-*/callgrind.out files, for callgrind_annotate.
        println!("keeping {}", tmp.keep().display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let counts = rt.block_on(async {
        let b = setup(bin.clone(), release_xtask, &set, &tmp_path, out.join("raw")).await?;
        let counts = instructions::run(&b, miss).await;
        let Bench { app, idp, .. } = b;
        let _ = app.stop();
        let _ = idp.stop();
        counts
    })?;
    let md = instructions::markdown(&counts, &bin);
    println!("\n{md}");
    let stem = if miss { "instructions-miss" } else { "instructions" };
    std::fs::write(out.join(format!("{stem}.md")), &md)?;
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json!({"nodeward": bin, "counts": counts}))?,
    )?;
    println!("wrote {}/{stem}.md and {stem}.json", out.display());
    Ok(ExitCode::SUCCESS)
}
