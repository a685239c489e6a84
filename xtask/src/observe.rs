//! `cargo xtask observe`: the operators' view (alerts, dashboard, metrics)
//! proven against a real Prometheus (Debian's `prometheus` package, with
//! `promtool`). Two parts, the second only when the first passed:
//!
//! 1. The files (`files`, no build, no agent): `alerts/prometheusrule.yaml`
//!    is exactly what `nodeward.rules.yaml` makes; `promtool check rules`;
//!    `promtool test rules` (every alert fires in one case and stays silent in
//!    another, and breaking any alert's expression fails the tests); the
//!    dashboard's structure (`dashboard`).
//! 2. A live run (`env`, `traffic`, `live`): a dev IdP, an echo app, the
//!    fake Kubernetes API with a few pods, and `nodeward run` (reverse-proxy
//!    workloads, one of them in front of an app that is down; as root also an
//!    enrolled and a deny-all eBPF-steered pod) under traffic of the demo's
//!    kind, scraped every second by `prometheus` on loopback with the alert
//!    rules loaded. Then, through
//!    Prometheus's HTTP API: the target is up and scraped at least twice, the
//!    expected series exist with their labels and types, `promtool check
//!    metrics` finds nothing in `/metrics`, every dashboard query answers
//!    with series, every rule evaluates, and the alerts that traffic should
//!    raise are pending or firing while the others are not. The dashboard is
//!    drawn from the same queries into a PNG (`render`).
//!
//! Missing `prometheus`/`promtool` is an error, never a skip. Every process
//! is a guard (stopped on error or panic), every wait is bounded, everything
//! listens on 127.0.0.1 and the temporary directory goes with the run.

mod checks;
mod dashboard;
mod env;
mod files;
mod live;
mod prometheus;
mod render;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask observe [--duration D] [--no-ebpf] [--screenshot PNG] [--nodeward BIN]
       cargo xtask observe --files
       cargo xtask observe --sync

  (no flag)        the file checks, then the live run against a real Prometheus
                   (root: with two eBPF-steered pods; see --no-ebpf)
  --duration D     how long the live run drives traffic (default 20s)
  --no-ebpf        no steered pods (no root needed): the eBPF panel's query is
                   then NOT checked, and the run says so
  --screenshot PNG also write the rendered dashboard there (e.g. docs/img/dashboard.png);
                   it is always written to target/observe/dashboard.png
  --nodeward BIN   run this binary instead of building one
  --files          the file checks only (rules, rule tests, dashboard structure)
  --sync           rewrite deploy/monitoring/alerts/prometheusrule.yaml from
                   nodeward.rules.yaml, then run the file checks";

const MISSING_PROMETHEUS: &str = "\
`prometheus` and `promtool` are needed and were not found on PATH.
Install Debian's package (it ships both; .ci/run does this):
    apt-get install --no-install-recommends prometheus
The package's service stays off in containers; this command starts its own
Prometheus on 127.0.0.1 with a temporary storage directory.";

const NEEDS_ROOT: &str = "\
the live run steers one pod with eBPF so that the dashboard's eBPF panel and
the program's counters are checked too: that needs root (network namespaces,
loading and pinning the program). Run it as root (`sudo -E cargo xtask
observe`), or pass --no-ebpf to check everything else without root.";

pub struct Settings {
    pub duration: Duration,
    pub ebpf: bool,
    pub screenshot: Option<PathBuf>,
    nodeward: Option<PathBuf>,
}

enum Mode {
    Full(Settings),
    Files,
    Sync,
}

fn parse(args: &[String]) -> anyhow::Result<Mode> {
    let mut s = Settings {
        duration: Duration::from_secs(20),
        ebpf: true,
        screenshot: None,
        nodeward: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--files" if args.len() == 1 => return Ok(Mode::Files),
            "--sync" if args.len() == 1 => return Ok(Mode::Sync),
            "--duration" => {
                let v = value()?;
                s.duration = humantime::parse_duration(v).with_context(|| format!("--duration {v:?}"))?;
            }
            "--no-ebpf" => s.ebpf = false,
            "--screenshot" => s.screenshot = Some(value()?.into()),
            "--nodeward" => s.nodeward = Some(value()?.into()),
            other => bail!("unknown argument {other:?} (--files and --sync stand alone)\n{USAGE}"),
        }
    }
    anyhow::ensure!(
        s.duration >= Duration::from_secs(10),
        "--duration must be at least 10s: the traffic has phases, and Prometheus needs scrapes in each"
    );
    Ok(Mode::Full(s))
}

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let mode = parse(args)?;
    require_tools()?;
    let root = crate::workspace_root();
    if matches!(mode, Mode::Sync) {
        files::sync(&root)?;
    }
    println!("== the files: rules, rule tests, dashboard");
    let failures = files::check(&root)?;
    if !failures.is_empty() {
        return Ok(verdict(&failures));
    }
    let Mode::Full(set) = mode else {
        return Ok(verdict(&[]));
    };
    if set.ebpf && !nix::unistd::geteuid().is_root() {
        eprintln!("{NEEDS_ROOT}");
        return Ok(ExitCode::FAILURE);
    }
    let bin = match &set.nodeward {
        Some(b) => std::path::absolute(b)?,
        None => crate::demo::build()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let failures = rt.block_on(async {
        // Ctrl-C ends the run through the same clean-up as an error (the
        // guards drop with the future); the default action would leave the
        // steered pods' namespaces and pins behind.
        tokio::select! {
            r = live::run(&bin, &root, &set) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    Ok(verdict(&failures))
}

fn verdict(failures: &[String]) -> ExitCode {
    if failures.is_empty() {
        println!("\nobserve: every check passed");
        return ExitCode::SUCCESS;
    }
    println!("\nobserve: {} check(s) FAILED:", failures.len());
    for f in failures {
        println!("  - {f}");
    }
    ExitCode::FAILURE
}

/// Fails loudly, with the install command, when either tool is missing.
fn require_tools() -> anyhow::Result<()> {
    for tool in ["prometheus", "promtool"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!("{tool}: not found\n{MISSING_PROMETHEUS}");
        }
    }
    Ok(())
}

/// Runs `promtool ARGS` in `dir`; its combined output, and whether it succeeded.
fn promtool(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<(bool, String)> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running promtool {}", args.join(" ")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).context("writing to promtool")?;
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// One check's result line, and the failure it adds.
fn report(failures: &mut Vec<String>, ok: bool, what: &str, detail: &str) {
    if ok {
        println!("ok   {what}");
    } else {
        println!("FAIL {what}\n{}", indent(detail));
        failures.push(what.to_owned());
    }
}

fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("       {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
