//! `cargo xtask`: the project's commands, in Rust so they run the same on
//! every machine with a toolchain (no Makefile, no shell quirks).
//!
//! - `demo`: the main job (root). Builds `nodeward` (and the BPF toolchain
//!   when missing), makes a simulated node of pod namespaces, steers two of
//!   them into the agent with eBPF, walks through a scripted tour of allowed
//!   and refused requests, and removes everything. Exits non-zero when any
//!   outcome differs from the contract, so it doubles as a smoke test.
//!   `demo --reverse-proxy` is the same tour without eBPF or root.
//! - `test`: what CI runs: format check, clippy with warnings denied, and
//!   every test (installing the interop test's npm packages first if needed).
//! - `dist`: the agent as it ships, built with PGO; see `dist.rs`.
//! - `bench`: benchmarks against the field (NGINX, one proxy per pod); see
//!   `bench.rs`. `--quick` is CI's smoke test of the harness.
//! - `soak`: a bounded soak with reloads and key rotations; see `soak.rs`.
//! - `crds`: the IdentityPolicy CRD from the agent's types; see `crds.rs`.
//! - `observe`: alerts, dashboard and metrics against a real Prometheus; see `observe.rs`.

mod bench;
mod crds;
mod demo;
mod dist;
mod observe;
mod proc;
mod soak;
mod steering_bench;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo [--reverse-proxy]
                  (root) build nodeward, make pod namespaces, steer two into
                  the agent with eBPF, run a scripted tour of allowed and
                  refused requests, remove everything; exits non-zero if an
                  outcome differs from the contract. --reverse-proxy: no eBPF,
                  no root
  test [ARGS..]   cargo fmt --check, cargo clippy -D warnings, cargo test
                  [ARGS..] (installs tests/interop npm packages first; the
                  root-only eBPF tests fail loudly when not root)
  dist [--profile P]
                  the agent as it ships: the dist profile (fat LTO) built
                  again with the profile of a checked training run (PGO);
                  writes target/pgo/P/nodeward (the Dockerfile's build)
  bench [--quick] nodeward beside NGINX (bare hop, njs JWT validation) and
                  beside one agent per pod, measured with wrk on loopback;
                  prints a table, writes target/bench/ (JSON, report, PNGs)
  bench-steering [--quick]
                  (root) eBPF-steered vs reverse-proxy path of one agent,
                  enrolment latency, RSS with 100 enrolled workloads
  soak [--duration D]
                  a bounded soak (default 10m) of one nodeward process: mixed
                  valid/invalid/anonymous traffic over h1 and h2c, config
                  reloads and key rotations; fails on any wrong decision,
                  lost request or memory growth (CI runs --duration 45s)
  crds [--check]  write the IdentityPolicy CRD generated from the Rust types
                  to deploy/base/crds/ (--check: fail when the committed file
                  differs)
  observe [--duration D] [--no-ebpf] [--screenshot PNG] | --files | --sync
                  (root) the alert rules (promtool check/test rules), the
                  dashboard, and a live run: nodeward under traffic scraped by
                  a real Prometheus; checks series, promtool check metrics,
                  every dashboard query and the alerts; renders the dashboard
  help            this text";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        Some("demo") => demo::run(),
        Some("dist") => dist::run(&rest),
        Some("test") => test::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("bench-steering") => steering_bench::run(&rest),
        Some("soak") => soak::run(&rest),
        Some("crds") => crds::run(&rest),
        Some("observe") => observe::run(&rest),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}

/// The workspace root, whatever directory `cargo xtask` was run from.
fn workspace_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map_or(xtask.clone(), PathBuf::from)
}

/// The cargo that runs us (rustup sets `CARGO`), so nested builds use the same toolchain.
fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
