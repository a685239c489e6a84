//! The demo's environment in reverse-proxy mode: two dev IdPs (one the agent
//! trusts, one it does not), an echo app, and `nodeward run` listening on a
//! loopback port in front of the app. No eBPF, no Kubernetes, no root.
//!
//! The tour only sees a [`Target`]; the eBPF demo (`steered`) builds one per
//! request from its simulated node and reuses [`wait_ready`].

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nodeward_testkit::{EchoUpstream, client, example_config};

use crate::proc::{ChildProc, DevIdp, free_ports};

/// Startup of a local agent with a local IdP takes well under a second; ten
/// means something is wrong, and the demo should say so rather than hang.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the tour needs from an environment.
pub struct Target<'a> {
    /// Base URL at which clients reach the workload.
    pub workload: &'a str,
    /// The workload's name, as the agent's audit lines give it.
    pub name: &'a str,
    /// The network namespace the request is sent from; `None`: the host's.
    pub from: Option<&'a Path>,
    /// Base URL of the agent's admin listener (/metrics, /readyz).
    pub admin: &'a str,
    /// The dev IdP the agent trusts (provider `corp`): URL and issuer.
    pub idp: &'a DevIdp,
    /// A dev IdP the agent has never heard of, with its own keys.
    pub untrusted_idp: &'a DevIdp,
    /// The agent process, whose stdout is the audit log.
    pub agent: &'a ChildProc,
}

/// Everything the reverse-proxy demo started. Dropping it stops all of it
/// (each child has its own guard); [`ReverseProxyEnv::stop`] does the same
/// but reports how the agent exited.
pub struct ReverseProxyEnv {
    // Declared (and so dropped) before the IdPs it fetches keys from, and
    // before the directory holding its state and logs.
    agent: ChildProc,
    pub idp: DevIdp,
    pub untrusted_idp: DevIdp,
    pub upstream: EchoUpstream,
    pub workload_url: String,
    pub admin_url: String,
    pub config_path: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl ReverseProxyEnv {
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nodeward-demo-")
            .tempdir()
            .context("creating a temporary directory")?;
        let idp = DevIdp::start("dev-idp", dir.path()).await?;
        let untrusted_idp = DevIdp::start("untrusted-dev-idp", dir.path()).await?;
        let upstream = EchoUpstream::start().await;

        let [admin, listen] = free_ports()?;
        let config = demo_config(&idp.issuer, upstream.addr, admin, listen, &dir.path().join("state"))?;
        let config_path = dir.path().join("nodeward.yaml");
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;

        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--config").arg(&config_path);
        let mut agent = ChildProc::spawn("nodeward", &mut cmd, &dir.path().join("nodeward.stderr"))?;
        let admin_url = format!("http://127.0.0.1:{admin}");
        if let Err(e) = wait_ready(&mut agent, &admin_url).await {
            bail!("{e:#}\nnodeward's stderr ends with:\n{}", agent.stderr_tail(20));
        }
        Ok(Self {
            agent,
            idp,
            untrusted_idp,
            upstream,
            workload_url: format!("http://127.0.0.1:{listen}"),
            admin_url,
            config_path,
            dir,
        })
    }

    pub fn target(&self) -> Target<'_> {
        Target {
            workload: &self.workload_url,
            name: "orders",
            from: None,
            admin: &self.admin_url,
            idp: &self.idp,
            untrusted_idp: &self.untrusted_idp,
            agent: &self.agent,
        }
    }

    /// The tail of every child's stderr, for when the tour went wrong.
    pub fn print_logs(&self) {
        for p in [&self.agent, &self.idp.proc, &self.untrusted_idp.proc] {
            eprintln!("--- {} stderr (last lines) ---\n{}", p.name(), p.stderr_tail(20));
        }
    }

    /// Stops the agent (SIGTERM: it drains and exits 0), then the IdPs.
    /// Fails if the agent did not exit cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let agent = self.agent.stop()?;
        let idp = self.idp.proc.stop()?;
        let untrusted = self.untrusted_idp.proc.stop()?;
        println!("stopped: nodeward ({agent}), dev-idp ({idp}), untrusted-dev-idp ({untrusted}), echo app");
        if !agent.success() {
            self.print_logs();
            bail!("nodeward did not exit cleanly on SIGTERM ({agent})");
        }
        // Keep the directory alive until every child is gone.
        drop(self.dir);
        Ok(())
    }
}

/// The contract's example config (shared with the tests) on fixed ports,
/// with the disk cache in the demo's directory.
fn demo_config(
    issuer: &str,
    upstream: std::net::SocketAddr,
    admin: u16,
    listen: u16,
    state_dir: &Path,
) -> anyhow::Result<String> {
    let mut yaml = example_config(issuer, upstream);
    // The example uses port 0 (tests ask the in-process agent for the bound
    // port); a separate process has to be told fixed ports.
    for (key, port) in [("admin", admin), ("listen", listen)] {
        let from = format!("{key}: 127.0.0.1:0\n");
        anyhow::ensure!(
            yaml.matches(&from).count() == 1,
            "nodeward_testkit::example_config no longer has exactly one `{}`",
            from.trim()
        );
        yaml = yaml.replace(&from, &format!("{key}: 127.0.0.1:{port}\n"));
    }
    // A JSON string is a valid YAML double-quoted scalar: safe for any path.
    let state_dir = serde_json::to_string(&state_dir.to_string_lossy())?;
    Ok(format!("state_dir: {state_dir}\n{yaml}"))
}

/// Polls /readyz (config loaded, provider keys fetched, listener up).
pub async fn wait_ready(agent: &mut ChildProc, admin_url: &str) -> anyhow::Result<()> {
    let http = client();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        agent.check_running()?;
        match http.get(format!("{admin_url}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default().trim()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nodeward not ready after {READY_TIMEOUT:?} (last /readyz: {last})")
}
