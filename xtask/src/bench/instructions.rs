//! `cargo xtask bench --instructions`: instructions executed per request by
//! nodeward's cached path and by NGINX's bare `proxy_pass` hop, counted by
//! valgrind's callgrind (hardware counters are not available in these VMs,
//! so `perf stat -e instructions` is not an option). Instruction counts do
//! not move with the load of a shared machine, which wall-clock and CPU
//! time do: they are the figure to steer by.
//!
//! Each proxy runs under `valgrind --tool=callgrind` twice, once for
//! [`SHORT`] and once for [`LONG`] requests (sequential, one keep-alive
//! connection, the same token and path as `nodeward-cached`); the difference
//! of the two totals divided by the difference of the counts is the cost of
//! one request, with start-up and shutdown cancelled out. Each pair runs
//! [`REPEATS`] times and the median is the figure: a multi-threaded runtime's
//! count still moves a little with how its threads happen to park and wake
//! under valgrind's serialised scheduling. NGINX runs with
//! `master_process off` (one process, so everything it does is counted) and
//! nodeward with its usual runtime (all threads in one callgrind total).
//! Both log one line per request, as in the throughput scenarios.
//!
//! The cached path is also counted with the RBAC rule of
//! `nodeward-rbac-cached` in the way (the testkit's fake API server answers
//! the one SubjectAccessReview; every later request is an RBAC cache hit):
//! the difference is the instruction twin of the report's "cached RBAC
//! decision" row.
//!
//! `--miss` counts the cache-miss path instead: nodeward's cached path beside
//! `nodeward-miss-rs256`, `-es256` and `-eddsa` (the throughput scenarios'
//! configuration, `token_cache.max_entries: 0`, and their pools of fresh
//! tokens, rotated through), and the raw aws-lc-rs verify of the same pools
//! (`baseline::verify_n`, the same floor the throughput report divides by)
//! counted the same way in an optimized xtask. What a miss adds over a hit,
//! over the raw verify, is the instruction twin of the report's miss target.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;

use super::Bench;
use super::env::{ConfigKnobs, NginxRole, Workload, free_ports, nginx_conf, nodeward_config};

/// What runs under callgrind.
#[derive(Debug, Clone, Copy)]
enum Subject {
    /// NGINX's bare hop.
    Nginx,
    /// nodeward: the reused token (cached path), or a pool's tokens with
    /// `token_cache.max_entries: 0` (every request a miss).
    Nodeward { pool: Option<&'static str> },
    /// nodeward's cached path with `nodeward-rbac-cached`'s rule: a cached
    /// SubjectAccessReview answer per request.
    NodewardRbac,
    /// The raw aws-lc-rs verify of a pool (an optimized xtask, `--floor-count`).
    Raw(&'static str),
}

impl Subject {
    fn name(self) -> String {
        match self {
            Self::Nginx => "nginx-proxy".into(),
            Self::Nodeward { pool: None } => "nodeward-cached".into(),
            Self::NodewardRbac => "nodeward-rbac-cached".into(),
            Self::Nodeward { pool: Some(alg) } => format!("nodeward-miss-{}", alg.to_ascii_lowercase()),
            Self::Raw(alg) => format!("raw-verify-{}", alg.to_ascii_lowercase()),
        }
    }
}

/// The subjects of a run: the cached path against NGINX and with the RBAC
/// rule, or (`--miss`) the cached path, the three miss paths and their raw
/// verifies.
fn subjects(miss: bool) -> Vec<Subject> {
    if !miss {
        return vec![Subject::Nginx, Subject::Nodeward { pool: None }, Subject::NodewardRbac];
    }
    let mut v = vec![Subject::Nodeward { pool: None }];
    for alg in super::ALGS {
        v.push(Subject::Nodeward { pool: Some(alg) });
        v.push(Subject::Raw(alg));
    }
    v
}

/// Requests of the short and the long run.
pub const SHORT: u64 = 500;
pub const LONG: u64 = 2500;
/// Pairs of runs per proxy; the median per-request figure is reported.
pub const REPEATS: usize = 3;
/// Start-up under valgrind is slow (tens of times native).
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub proxy: String,
    /// The totals of the median pair.
    pub short_total: u64,
    pub long_total: u64,
    /// The median over the pairs.
    pub per_request: f64,
    /// Every pair's figure, in run order.
    pub samples: Vec<f64>,
    /// The median without nodeward's audit writer thread (the same as
    /// `per_request` for NGINX). That thread wakes once per 5 ms batch:
    /// under valgrind a request takes milliseconds, so it runs about once
    /// per request and with the machine's load, where natively one write
    /// carries hundreds of lines. The steadier figure to compare builds by.
    pub per_request_without_writer: f64,
}

/// One run's instructions: every thread, and the audit writer thread's.
#[derive(Debug, Clone, Copy)]
struct Totals {
    all: u64,
    writer: u64,
}

/// Counts nginx's bare hop and the nodeward binary of `b`, or (`miss`) the
/// nodeward binary's cached and miss paths and the raw verifies, the latter
/// in `release_xtask` (an optimized build of this program).
pub async fn run(b: &Bench, miss: bool) -> anyhow::Result<Vec<Count>> {
    let valgrind = Command::new("valgrind").arg("--version").output();
    ensure!(
        valgrind.is_ok_and(|o| o.status.success()),
        "valgrind is not installed (Debian: apt-get install valgrind; .ci/run installs it)"
    );
    let mut out = Vec::new();
    for subject in subjects(miss) {
        let proxy = subject.name();
        let mut pairs = Vec::new();
        for repeat in 0..REPEATS {
            let mut totals = [Totals { all: 0, writer: 0 }; 2];
            for (i, n) in [SHORT, LONG].into_iter().enumerate() {
                totals[i] = match subject {
                    Subject::Raw(alg) => count_raw(b, alg, n, repeat),
                    _ => count(b, subject, n, repeat).await,
                }
                .with_context(|| format!("{proxy}, {n} requests under callgrind"))?;
                println!("{proxy}: {n} requests → {} instructions in all", totals[i].all);
            }
            ensure!(
                totals[1].all > totals[0].all,
                "{proxy}: the long run executed fewer instructions than the short one"
            );
            pairs.push(totals);
        }
        let per = |t: &[Totals; 2]| (t[1].all - t[0].all) as f64 / (LONG - SHORT) as f64;
        let without = |t: &[Totals; 2]| {
            let (a, b) = (t[0].all - t[0].writer, t[1].all - t[1].writer);
            b.saturating_sub(a) as f64 / (LONG - SHORT) as f64
        };
        let samples: Vec<f64> = pairs.iter().map(per).collect();
        let mut sorted = pairs.clone();
        sorted.sort_by(|a, b| per(a).total_cmp(&per(b)));
        let median = sorted[sorted.len() / 2];
        let mut steady: Vec<f64> = pairs.iter().map(without).collect();
        steady.sort_by(f64::total_cmp);
        out.push(Count {
            proxy: proxy.to_string(),
            short_total: median[0].all,
            long_total: median[1].all,
            per_request: per(&median),
            samples,
            per_request_without_writer: steady[steady.len() / 2],
        });
    }
    Ok(out)
}

/// `n` raw verifies of `alg`'s pool in an optimized xtask under callgrind.
fn count_raw(b: &Bench, alg: &str, n: u64, repeat: usize) -> anyhow::Result<Totals> {
    let exe = b
        .release_xtask
        .as_deref()
        .context("the raw verify is counted in an optimized xtask, and there is none")?;
    let dir = b.dir.join(format!("callgrind-raw-{alg}-{n}-{repeat}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let input = dir.join("floor-input.json");
    std::fs::write(&input, super::baseline::floor_input(b, alg)?)?;
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet", "--separate-threads=yes"])
        .arg(format!("--callgrind-out-file={}", dir.join("callgrind.out").display()))
        .arg(exe)
        .args(["bench", "--floor-count"])
        .arg(&input)
        .arg(n.to_string())
        .output()
        .context("running the floor under valgrind")?;
    ensure!(
        out.status.success(),
        "{} bench --floor-count: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    thread_totals(&dir)
}

/// One run of `subject` under callgrind answering `n` requests; its total Ir.
async fn count(b: &Bench, subject: Subject, n: u64, repeat: usize) -> anyhow::Result<Totals> {
    let proxy = subject.name();
    let dir = b.dir.join(format!("callgrind-{proxy}-{n}-{repeat}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let [port, admin] = <[u16; 2]>::try_from(free_ports(2)?).map_err(|_| anyhow::anyhow!("port count"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let outfile = dir.join("callgrind.out");
    let mut cmd = Command::new("valgrind");
    // One file per thread (callgrind.out-01, -02, ...), to tell the audit writer apart.
    cmd.args(["--tool=callgrind", "--quiet", "--separate-threads=yes"])
        .arg(format!("--callgrind-out-file={}", outfile.display()));
    let pool = match subject {
        Subject::Nodeward { pool: Some(alg) } => b.pools.get(alg).map(Vec::as_slice),
        _ => None,
    };
    // The fake API server of the RBAC subject lives as long as its agent.
    let mut api = None;
    if matches!(subject, Subject::Nginx) {
        let conf = dir.join("nginx.conf");
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::write(
            &conf,
            nginx_conf(&NginxRole::Proxy { upstream: b.app.addr }, addr, &dir)?,
        )?;
        cmd.arg("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off; master_process off;"]);
    } else {
        let workloads = [Workload { listen: addr }];
        let mut yaml = nodeward_config(
            &b.idp.issuer,
            b.app.addr,
            admin,
            &workloads,
            &dir.join("state"),
            &ConfigKnobs {
                cache_entries: pool.map(|_| 0),
                ..ConfigKnobs::default()
            },
        )?;
        if matches!(subject, Subject::NodewardRbac) {
            let (server, with_rule) = super::scenarios::with_rbac(&yaml, &dir).await?;
            api = Some(server);
            yaml = with_rule;
        }
        let config = dir.join("nodeward.yaml");
        std::fs::write(&config, yaml)?;
        cmd.arg(&b.bin).args(["run", "--config"]).arg(&config);
    }
    let stderr = std::fs::File::create(dir.join("stderr"))?;
    let mut child = Guard(
        cmd.stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting valgrind")?,
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("http://{addr}/");
    wait_answering(&client, &url, &b.reused_token, &mut child.0, &dir).await?;
    // The readiness probe above is one request; the count is the rest.
    for i in 1..n {
        let token = match pool {
            Some(p) if !p.is_empty() => &p[i as usize % p.len()],
            _ => &b.reused_token,
        };
        let resp = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("request {i}"))?;
        let status = resp.status();
        // Read to the end: a response dropped before its body arrived takes
        // its connection with it, and the next request would pay a new one
        // (how often depends on timing: that was most of this count's noise).
        resp.bytes().await.with_context(|| format!("request {i}: body"))?;
        ensure!(status == 200, "request {i}: status {status}");
    }
    if pool.is_some() {
        misses_only(b, admin, n).await?;
    }
    if api.is_some() {
        rbac_hits_only(b, admin, n).await?;
    }
    // SIGTERM: nginx exits at once, nodeward drains and exits; callgrind
    // writes its totals at exit.
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.0.try_wait()? {
            ensure!(
                status.success() || matches!(subject, Subject::Nginx),
                "exited with {status}: {}",
                tail(&dir.join("stderr"))
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("did not exit within {START_TIMEOUT:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    thread_totals(&dir)
}

/// The Ir of every thread's file in `dir`, and of the audit writer's (the
/// thread that ran `nodeward::audit::Sink::run`).
fn thread_totals(dir: &Path) -> anyhow::Result<Totals> {
    let mut t = Totals { all: 0, writer: 0 };
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("callgrind.out-"))
        {
            // (`callgrind.out` itself stays empty with one file per thread.)
            continue;
        }
        let ir = total_ir(&path)?;
        t.all += ir;
        if std::fs::read_to_string(&path)?.contains("nodeward::audit::Sink::run") {
            t.writer += ir;
        }
    }
    ensure!(t.all > 0, "{}: no callgrind output", dir.display());
    Ok(t)
}

/// A miss run's every request was a miss: no cache hit at all.
async fn misses_only(b: &Bench, admin: u16, n: u64) -> anyhow::Result<()> {
    let (hits, misses) = hits_and_misses(b, admin, "token").await?;
    ensure!(
        hits == 0.0 && misses >= (n - 1) as f64,
        "a miss run had {hits} cache hits and {misses} misses for {n} requests"
    );
    Ok(())
}

/// Checks (on `/metrics`) that the RBAC run asked one SubjectAccessReview
/// and answered every other request from its cache.
async fn rbac_hits_only(b: &Bench, admin: u16, n: u64) -> anyhow::Result<()> {
    let (hits, misses) = hits_and_misses(b, admin, "rbac").await?;
    ensure!(
        misses == 1.0 && hits == (n - 1) as f64,
        "the RBAC run had {hits} RBAC cache hits and {misses} misses for {n} requests"
    );
    Ok(())
}

/// `nodeward_{cache}_cache_hits_total` and `..._misses_total` on the
/// agent's `/metrics`, each summed over its series.
async fn hits_and_misses(b: &Bench, admin: u16, cache: &str) -> anyhow::Result<(f64, f64)> {
    let text = b
        .http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((
        value(&format!("nodeward_{cache}_cache_hits_total")),
        value(&format!("nodeward_{cache}_cache_misses_total")),
    ))
}

/// Polls until the proxy answers a request with 200 (bounded).
async fn wait_answering(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    child: &mut Child,
    dir: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited early ({status}): {}", tail(&dir.join("stderr")));
        }
        if let Ok(r) = client.get(url).bearer_auth(token).send().await
            && r.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no 200 within {START_TIMEOUT:?}: {}", tail(&dir.join("stderr")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `summary:` (or `totals:`) line of a callgrind output file: Ir of the
/// whole run, every thread included.
pub fn total_ir(file: &PathBuf) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{}: no summary line", file.display()))
}

fn tail(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Kills the child if a run fails midway.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The markdown table of a run.
pub fn markdown(counts: &[Count], bin: &Path) -> String {
    let mut md = format!(
        "### Instructions per request (callgrind, {SHORT} vs {LONG} sequential requests on one connection)\n\n\
         nodeward binary: `{}`; median of {REPEATS} pairs of runs\n\n| proxy | Ir, {SHORT} requests | Ir, {LONG} requests | instructions per request (median) | every pair | without the audit writer thread (median) |\n|---|---|---|---|---|---|\n",
        bin.display()
    );
    for c in counts {
        let samples: Vec<String> = c.samples.iter().map(|s| format!("{s:.0}")).collect();
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {:.0} |\n",
            c.proxy,
            c.short_total,
            c.long_total,
            c.per_request,
            samples.join(", "),
            c.per_request_without_writer,
        ));
    }
    let by = |name: &str| counts.iter().find(|c| c.proxy == name);
    if let (Some(nginx), Some(nodeward)) = (by("nginx-proxy"), by("nodeward-cached")) {
        md.push_str(&format!(
            "\nnodeward's cached path / NGINX's bare hop: **{:.2}×** instructions per request\n",
            nodeward.per_request / nginx.per_request
        ));
    }
    if let (Some(plain), Some(rbac)) = (by("nodeward-cached"), by("nodeward-rbac-cached")) {
        md.push_str(&format!(
            "\nthe cached RBAC decision: **{:+.0}** instructions per request over the cached path without the rule\n",
            rbac.per_request - plain.per_request
        ));
    }
    if let Some(hit) = by("nodeward-cached") {
        for alg in super::ALGS {
            let lower = alg.to_ascii_lowercase();
            if let (Some(miss), Some(raw)) = (
                by(&format!("nodeward-miss-{lower}")),
                by(&format!("raw-verify-{lower}")),
            ) {
                let added = miss.per_request - hit.per_request;
                md.push_str(&format!(
                    "\n{alg} miss: {:.0} − {:.0} = {added:.0} instructions added over a hit; raw verify {:.0}: **{:.2}×**, \
                     {:.0} beside the signature\n",
                    miss.per_request,
                    hit.per_request,
                    raw.per_request,
                    added / raw.per_request,
                    added - raw.per_request,
                ));
            }
        }
    }
    md
}
