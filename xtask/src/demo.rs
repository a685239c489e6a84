//! `cargo xtask demo`: the project's main job in one command. As root it
//! builds everything (the BPF toolchain too, when missing), simulates a node
//! with four pods in network namespaces, runs a dev OpenID provider and
//! `nodeward run` steering two of the pods' ports into itself with eBPF,
//! walks through a scripted tour from the host and from inside a pod, prints
//! what happened to each request and a /metrics excerpt, binds the fourth
//! pod through an IdentityPolicy of a fake Kubernetes API and shows its
//! status and a refused one (`policies`), shows the `web` pod calling
//! `orders` with an identity it never had to fetch (`outbound`), and removes
//! every namespace, veth, cgroup and pinned object it made (`steered`).
//!
//! `cargo xtask demo --reverse-proxy` is the same idea without root: the
//! agent as a plain reverse proxy on loopback in front of an echo app
//! (`reverse_proxy`).
//!
//! Both end with an AI agent calling an MCP tool behind nodeward (`agents`:
//! the official MCP SDK's client and server, panva's oidc-provider; Node.js).
//!
//! Both exit non-zero when an outcome differs from the contract, so CI runs
//! them as smoke tests. Setup (`env`, `node`) is kept apart from the tours
//! (`script`, `steered_script`: what to send and expect) and from sending and
//! comparing (`check`), which both demos share.

mod agents;
mod check;
pub(crate) mod env;
mod node;
mod outbound;
mod policies;
mod reverse_proxy;
mod script;
mod steered;
mod steered_script;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};

const USAGE: &str = "usage: cargo xtask demo [--reverse-proxy]
  (no flag)        the eBPF demo: a simulated node with pods in network namespaces (root)
  --reverse-proxy  the agent as a reverse proxy on loopback (no root, no eBPF)";

pub fn run() -> anyhow::Result<ExitCode> {
    // main.rs passes no arguments to us: read our own, after `demo`.
    let args: Vec<String> = std::env::args().skip(2).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => steered::run(),
        ["--reverse-proxy"] => reverse_proxy::run(),
        ["-h" | "--help"] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

/// `cargo build --release -p nodeward`, returning the binary's path as cargo
/// reports it (so CARGO_TARGET_DIR and friends are honoured). The agent's
/// build script compiles the BPF program from source, so the toolchain for
/// it comes first.
pub(crate) fn build() -> anyhow::Result<PathBuf> {
    ensure_bpf_toolchain()?;
    crate::bench::env::build_release("nodeward")
}

/// Runs `scripts/bpf-toolchain.sh` (nightly rust-src, bpf-linker) when
/// `bpf-linker` is not there yet, so a fresh machine needs one command.
fn ensure_bpf_toolchain() -> anyhow::Result<()> {
    let present = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    println!(
        "installing the BPF toolchain (bash scripts/bpf-toolchain.sh: nightly rust-src + bpf-linker; once, a few minutes) ..."
    );
    let status = Command::new("bash")
        .arg("scripts/bpf-toolchain.sh")
        .current_dir(crate::workspace_root())
        .status()
        .context("running bash scripts/bpf-toolchain.sh")?;
    if !status.success() {
        bail!("scripts/bpf-toolchain.sh failed ({status}); see ../shared/notes/ebpf-toolchain.md");
    }
    Ok(())
}

/// A multi-threaded runtime: the demo's apps, clients and child watchers.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Prints one line per request (and what differed); returns how many differed.
fn report(outcomes: &[check::Outcome]) -> usize {
    let width = outcomes.iter().map(|o| o.sent.len()).max().unwrap_or(0);
    for o in outcomes {
        let mark = if o.mismatches.is_empty() { "ok  " } else { "FAIL" };
        println!("{mark} {:width$} -> {}", o.sent, o.got);
        if let Some(line) = &o.audit {
            println!("       audit log: {line}");
        }
        for m in &o.mismatches {
            println!("       {m}");
        }
    }
    outcomes.iter().filter(|o| !o.mismatches.is_empty()).count()
}

/// The closing verdict, as an exit code.
fn verdict(failed: usize) -> ExitCode {
    if failed > 0 {
        println!("\nFAILED: {failed} check(s) did not behave as the contract says");
        return ExitCode::FAILURE;
    }
    println!("\nevery request behaved as the contract says");
    ExitCode::SUCCESS
}
