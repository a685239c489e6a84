//! `cargo xtask dist [--profile P]`: the agent binary as it ships, built
//! with profile-guided optimisation (PGO) from a training run that needs
//! nothing but this workspace (no NGINX, no wrk: it runs in the image build).
//!
//! 1. an instrumented build (`-Cprofile-generate`) of profile P (default
//!    `dist`, fat LTO) in its own target directory, `target/pgo/P/build`;
//! 2. training: [`crate::soak::train`], the soak's agent, dev IdP and echo
//!    upstream with a node's usual mix (mostly cached tokens over kept-alive
//!    HTTP/1.1, with h2c, bodies, refusals, anonymous routes and misses of
//!    each key type), every answer checked;
//! 3. the agent's profiles merged with the toolchain's own `llvm-profdata`
//!    (rustup component `llvm-tools`: the profile format follows rustc's
//!    LLVM), and checked to have counted at least the requests answered;
//! 4. the same profile built again with `-Cprofile-use`: `target/pgo/P/nodeward`,
//!    whose answers to the same mix are checked in a short run of its own.
//!
//! The flags go to the host target only (`CARGO_TARGET_<host>_RUSTFLAGS`),
//! so the eBPF program that agent/build.rs compiles for the BPF target is
//! not instrumented. Build scripts are (their profiles are left out of the
//! merge). The measured gain is in docs/benchmarks.md ("Issue 14: PGO as
//! shipped"); why PGO ships, and why the training mix is what it is, in
//! ARCHITECTURE.md (Performance).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

const USAGE: &str = "\
usage: cargo xtask dist [--profile P] [--training D]

  --profile P     the cargo profile to build twice (default dist: fat LTO, as
                  shipped; CI proves the pipeline with release)
  --training D    how long the training run drives the agent (default 30s)

writes target/pgo/P/nodeward and prints its path on the last line";

/// Long enough for every class of the mix to be counted thousands of
/// times, and for the soak's reloads and key rotations to happen.
pub const TRAINING: Duration = Duration::from_secs(30);
/// The optimised build's own checked run: enough for reloads (every 5 s).
const CHECK: Duration = Duration::from_secs(6);

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut profile = "dist".to_owned();
    let mut training = TRAINING;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--profile" => profile = value()?.clone(),
            "--training" => {
                let v = value()?;
                training = humantime::parse_duration(v).with_context(|| format!("--training {v:?}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let bin = build(&profile, training)?;
    println!("{}", bin.display());
    Ok(ExitCode::SUCCESS)
}

/// Builds the PGO binary of `profile` and returns its path.
pub fn build(profile: &str, training: Duration) -> anyhow::Result<PathBuf> {
    let out = crate::workspace_root().join("target/pgo").join(profile);
    let raw = out.join("raw");
    let _ = std::fs::remove_dir_all(&raw);
    std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    let profdata = llvm_profdata()?;
    let target_dir = out.join("build");

    println!("dist: 1/4 the instrumented build (cargo build --profile {profile}, -Cprofile-generate)");
    let instrumented = out.join("nodeward-instrumented");
    let built = cargo_build(profile, &target_dir, &format!("-Cprofile-generate={}", raw.display()))?;
    // The optimised build overwrites it in the same target directory.
    std::fs::copy(&built, &instrumented).with_context(|| format!("copying {}", built.display()))?;

    println!("dist: 2/4 training the instrumented agent for {training:?}");
    let answered = crate::soak::train(&instrumented, Some(&raw.join("agent-%p-%m.profraw")), training)?;

    println!("dist: 3/4 merging the agent's profiles");
    let profiles: Vec<PathBuf> = std::fs::read_dir(&raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("agent-")))
        .collect();
    ensure!(
        !profiles.is_empty(),
        "the instrumented agent wrote no profile to {}",
        raw.display()
    );
    let merged = out.join("agent.profdata");
    let status = std::process::Command::new(&profdata)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .args(&profiles)
        .status()
        .context("running llvm-profdata merge")?;
    ensure!(status.success(), "llvm-profdata merge failed ({status})");
    let max = max_function_count(&profdata, &merged)?;
    // Some function runs once per request at least (the request handler):
    // fewer counts would mean the profile is not this training's.
    ensure!(
        max >= answered,
        "the merged profile's highest function count ({max}) is below the {answered} requests answered"
    );
    println!(
        "dist: {} profile(s), {answered} requests, highest function count {max}",
        profiles.len()
    );

    println!("dist: 4/4 the optimised build (cargo build --profile {profile}, -Cprofile-use)");
    let built = cargo_build(profile, &target_dir, &format!("-Cprofile-use={}", merged.display()))?;
    let bin = out.join("nodeward");
    std::fs::copy(&built, &bin).with_context(|| format!("copying {}", built.display()))?;
    println!("dist: checking the optimised agent's answers ({CHECK:?} of the same mix)");
    crate::soak::train(&bin, None, CHECK)?;
    Ok(bin)
}

/// `cargo build --locked --profile P -p nodeward` into `target_dir` with
/// `flags` for the host target; the executable's path.
fn cargo_build(profile: &str, target_dir: &Path, flags: &str) -> anyhow::Result<PathBuf> {
    // Either would win over the target's flags, and the build would be
    // neither instrumented nor optimised, without a word from cargo.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        ensure!(
            std::env::var_os(var).is_none(),
            "{var} is set: cargo would use it instead of the PGO flags; unset it for cargo xtask dist"
        );
    }
    let host = host_triple()?;
    let var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        host.to_uppercase().replace(['-', '.'], "_")
    );
    let out = crate::cargo()
        .args(["build", "--locked", "--profile", profile, "-p", "nodeward"])
        .arg("--message-format=json-render-diagnostics")
        .env("CARGO_TARGET_DIR", target_dir)
        .env(&var, flags)
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    ensure!(
        out.status.success(),
        "cargo build --profile {profile} ({var}={flags}) failed ({})",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "nodeward")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not report a nodeward executable")
}

fn host_triple() -> anyhow::Result<String> {
    let out = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host")
}

/// The toolchain's `llvm-profdata`, installing the `llvm-tools` component
/// when it is missing.
fn llvm_profdata() -> anyhow::Result<PathBuf> {
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let tool = sysroot
        .join("lib/rustlib")
        .join(host_triple()?)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        println!("dist: rustup component add llvm-tools");
        let status = std::process::Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .status()
            .context("running rustup component add llvm-tools")?;
        ensure!(status.success(), "rustup component add llvm-tools failed ({status})");
    }
    ensure!(
        tool.exists(),
        "{} is missing after installing llvm-tools",
        tool.display()
    );
    Ok(tool)
}

/// `llvm-profdata show`'s "Maximum function count".
fn max_function_count(profdata: &Path, merged: &Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new(profdata)
        .arg("show")
        .arg(merged)
        .output()
        .context("running llvm-profdata show")?;
    ensure!(out.status.success(), "llvm-profdata show failed ({})", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Maximum function count:"))
        .and_then(|v| v.trim().parse().ok())
        .context("llvm-profdata show printed no maximum function count")
}
