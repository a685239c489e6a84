//! `cargo xtask demo`: the project's main job in one command. Builds the
//! `nodeward` binary, starts a dev OpenID provider, an echo app and the agent
//! as real processes, walks through a scripted tour, prints what happened to
//! each request, and stops everything. Exits non-zero when an outcome differs
//! from the contract, so CI runs it as a smoke test.
//!
//! Setup (`env`) is kept apart from the tour (`script`: what to send and
//! expect; `check`: sending and comparing) so an eBPF demo can reuse the tour
//! against workloads reached through their pod IPs.

mod check;
mod env;
mod script;

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{Context as _, bail};

use env::{ReverseProxyEnv, Target};

const HEADER: &str = "\
nodeward demo: reverse-proxy mode (no eBPF, no Kubernetes, no root)

nodeward validates the bearer JWT on requests to a workload, applies the
policy's claim rules, forwards allowed requests with the verified identity,
and explains every refusal. Here a dev OpenID provider mints tokens, an echo
app reports what it received, and nodeward sits in front of it.";

pub fn run() -> anyhow::Result<ExitCode> {
    println!("{HEADER}\n");
    let bin = build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let env = ReverseProxyEnv::start(&bin).await?;
        describe(&env);
        let tour = tour(&env.target()).await;
        if !matches!(tour, Ok(0)) {
            env.print_logs();
        }
        // Stop before reporting: a clean stop is part of the smoke test.
        let stopped = env.stop();
        let failed = tour?;
        stopped?;
        if failed > 0 {
            println!("\nFAILED: {failed} request(s) did not behave as the contract says");
            return Ok(ExitCode::FAILURE);
        }
        println!("\nevery request behaved as the contract says");
        Ok(ExitCode::SUCCESS)
    })
}

/// `cargo build --release -p nodeward`, returning the binary's path as cargo
/// reports it (so CARGO_TARGET_DIR and friends are honoured).
fn build() -> anyhow::Result<PathBuf> {
    println!("building nodeward (cargo build --release -p nodeward) ...");
    let out = crate::cargo()
        .args([
            "build",
            "--release",
            "-p",
            "nodeward",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p nodeward failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "nodeward")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not report a nodeward executable")
}

/// The policy summary mirrors `nodeward::testing::example_config`, which the
/// config is made from; the script's expectations depend on the same rules.
fn describe(env: &ReverseProxyEnv) {
    println!(
        "\nstarted:
  dev-idp            {} (trusted: provider corp, audience orders)
  untrusted-dev-idp  {} (nodeward has never heard of it)
  echo app           http://{}
  nodeward           workload orders on {} -> echo app; admin on {}
  config             {}
policy (first match wins):
  /healthz                     anonymous
  POST|DELETE /admin/**        group admins
  /audit/** (audit mode)       group auditors (a denial is logged, not enforced)
  everything else              any valid token from corp; forwards x-user-email
",
        env.idp.issuer,
        env.untrusted_idp.issuer,
        env.upstream.addr,
        env.workload_url,
        env.admin_url,
        env.config_path.display(),
    );
}

/// Mints the tokens, sends every scripted request, prints one line each and
/// the metrics excerpt. Returns how many requests differed from the contract.
async fn tour(t: &Target<'_>) -> anyhow::Result<usize> {
    let tokens = script::Tokens::mint(t).await?;
    let http = nodeward::testing::client();
    let script = script::script();
    let mut outcomes = Vec::with_capacity(script.len());
    for s in &script {
        outcomes.push(check::run(s, t, &tokens, &http).await?);
    }
    let width = outcomes.iter().map(|o| o.sent.len()).max().unwrap_or(0);
    for o in &outcomes {
        let mark = if o.mismatches.is_empty() { "ok  " } else { "FAIL" };
        println!("{mark} {:width$} -> {}", o.sent, o.got);
        if let Some(line) = &o.audit {
            println!("       audit log: {line}");
        }
        for m in &o.mismatches {
            println!("       {m}");
        }
    }
    println!("\n/metrics (excerpt):");
    for line in check::metrics_excerpt(t, &http).await? {
        println!("  {line}");
    }
    println!();
    Ok(outcomes.iter().filter(|o| !o.mismatches.is_empty()).count())
}
