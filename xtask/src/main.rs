//! `cargo xtask`: the project's commands, in Rust so they run the same on
//! every machine with a toolchain (no Makefile, no shell quirks).
//!
//! - `demo`: the main job. Builds `nodeward`, starts a dev OpenID provider, an
//!   echo app and the agent in front of it, walks through a scripted tour of
//!   allowed and refused requests, and stops everything. Exits non-zero when
//!   any request's outcome differs from the contract, so it doubles as a
//!   smoke test.
//! - `test`: what CI runs: format check, clippy with warnings denied, and
//!   every test (installing the interop test's npm packages first if needed).
//! - `bench`: benchmarks against the field (NGINX, one proxy per pod); see
//!   `bench.rs`. `--quick` is CI's smoke test of the harness.

mod bench;
mod demo;
mod proc;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo            build nodeward, start a dev IdP + an echo app + nodeward,
                  run a scripted tour of allowed and refused requests, stop
                  everything; exits non-zero if an outcome differs from the contract
  test [ARGS..]   cargo fmt --check, cargo clippy -D warnings, cargo test
                  --workspace [ARGS..] (installs tests/interop npm packages first)
  bench [--quick] nodeward beside NGINX (bare hop, njs JWT validation) and
                  beside one agent per pod, measured with wrk on loopback;
                  prints a table, writes target/bench/ (JSON, report, PNGs)
  help            this text";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    let result = match command.as_deref() {
        Some("demo") if rest.is_empty() => demo::run(),
        Some("test") => test::run(&rest),
        Some("bench") => bench::run(&rest),
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
