//! `cargo xtask demo --reverse-proxy`: the demo without root or eBPF. A dev
//! OpenID provider, an echo app and `nodeward run` in front of it on
//! loopback, the contract's example policy, the scripted tour of `script`.

use std::process::ExitCode;

use super::check;
use super::env::{ReverseProxyEnv, Target};
use super::script;

const HEADER: &str = "\
nodeward demo: reverse-proxy mode (no eBPF, no Kubernetes, no root)

nodeward validates the bearer JWT on requests to a workload, applies the
policy's claim rules, forwards allowed requests with the verified identity,
and explains every refusal. Here a dev OpenID provider mints tokens, an echo
app reports what it received, and nodeward sits in front of it.";

pub fn run() -> anyhow::Result<ExitCode> {
    println!("{HEADER}\n");
    let bin = super::build()?;
    super::runtime()?.block_on(async {
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
        let failed = failed + super::agents::tour(&bin).await?;
        Ok(super::verdict(failed))
    })
}

/// The policy summary mirrors `nodeward_testkit::example_config`, which the
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
    let tokens = script::Tokens::mint(t.idp, t.untrusted_idp).await?;
    let mut outcomes = Vec::new();
    for s in &script::script() {
        outcomes.push(check::run(s, t, &tokens, "").await?);
    }
    let failed = super::report(&outcomes);
    println!("\n/metrics (excerpt):");
    let metrics = check::metrics(t.admin).await?;
    let shown = [
        "nodeward_requests_total",
        "nodeward_token_cache_",
        "nodeward_jwks_",
        "nodeward_decision_duration_seconds_count",
    ];
    for line in check::excerpt(&metrics, &shown)? {
        println!("  {line}");
    }
    println!();
    Ok(failed)
}
