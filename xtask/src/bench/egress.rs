//! The egress scenarios (issue 16): a pod's own outbound calls through the
//! agent. wrk runs as pod A's application (inside A's namespace and
//! cgroup) and calls pod B's app (the same nginx `return 200`) at B's
//! address; the cgroup `connect4` program steers every connection to the
//! agent's egress listener inside A, which forwards from inside A.
//!
//! - `nodeward-egress-plain`: `Host: other`, which no rule names: the
//!   request goes through the agent's egress path unchanged (no token);
//! - `nodeward-egress-token`: `Host: payments`: the rule's service-account
//!   token (a TokenRequest of the testkit's fake API, once; then held) is
//!   attached to every request.
//!
//! Same agent, config, pods and load: the paired difference of agent CPU
//! per request is what attaching a held token costs. Root only.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use nodeward_testkit::cgroup::CgroupGuard;
use nodeward_testkit::kubeapi::FakeKubeApi;
use nodeward_testkit::netns::{NetnsGuard, NetnsLink, PinDir};

use super::Bench;
use super::env::{Nginx, NginxRole, Nodeward};
use super::wrk::Within;

/// B's app port, the rule's port.
const PORT: u16 = 8080;
/// The host the token rule names, and one it does not.
pub const TOKEN_HOST: &str = "payments";
pub const PLAIN_HOST: &str = "other";

/// The running egress setup. Fields drop in order after `stop`: the agent
/// and app are stopped first, then the pins, the cgroup, the link and the
/// namespaces go.
pub struct Egress {
    pub agent: Nodeward,
    pub app: Nginx,
    pub host: &'static str,
    _api: Box<FakeKubeApi>,
    _pins: PinDir,
    cgroup: CgroupGuard,
    _link: NetnsLink,
    a: NetnsGuard,
    _b: NetnsGuard,
}

impl Egress {
    pub fn within(&self) -> Within<'_> {
        Within {
            netns: &self.a.path,
            cgroup: &self.cgroup.path,
        }
    }

    pub fn stop(self) -> anyhow::Result<()> {
        let agent = self.agent.stop();
        let app = self.app.stop();
        agent.and(app)
    }
}

/// The agent's config: the bench's provider (so readiness means what it
/// means in every scenario), and pod A's egress rule.
fn config(
    issuer: &str,
    admin: u16,
    state: &Path,
    pins: &Path,
    kubeconfig: &Path,
    netns: &Path,
    cgroup: &Path,
) -> String {
    format!(
        r#"admin: 127.0.0.1:{admin}
state_dir: {state}
ebpf: {{pin_dir: {pins}}}
kubernetes: {{kubeconfig: {kubeconfig}}}
providers:
  - {{name: corp, issuer: "{issuer}", audiences: [orders]}}
policies:
  - name: caller
    selector: {{app: caller}}
    egress:
      - name: payments
        to: {{hosts: [{TOKEN_HOST}], ports: [{PORT}]}}
        token: {{service_account: {{audience: payments}}}}
workloads:
  - {{name: caller, namespace: bench, service_account: caller, labels: {{app: caller}}, netns: {netns}, cgroup: {cgroup}}}
"#,
        state = state.display(),
        pins = pins.display(),
        kubeconfig = kubeconfig.display(),
        netns = netns.display(),
        cgroup = cgroup.display(),
    )
}

/// Pods A and B, B's app, the fake API and the agent; returns once a
/// request from A with `host` comes back through the agent's egress path.
pub async fn start(
    b: &Bench,
    name: &str,
    dir: &Path,
    admin: u16,
    host: &'static str,
) -> anyhow::Result<(Egress, SocketAddr)> {
    // Guards first: whatever fails below, drop removes them.
    let pins = PinDir::new();
    let a = NetnsGuard::bare();
    let pod_b = NetnsGuard::bare();
    let link = NetnsLink::new(&a, &pod_b);
    let cgroup = CgroupGuard::new();
    let target = SocketAddr::new(link.b(), PORT);
    let app = Nginx::start_at(
        &format!("{name}-app"),
        &NginxRole::Upstream,
        target,
        Some(&pod_b.name),
        dir,
    )
    .await?;
    let api = FakeKubeApi::start().await;
    api.apply_service_account("bench", "caller");
    let kubeconfig = api.write_kubeconfig(dir);
    let state = dir.join(name);
    std::fs::create_dir_all(&state)?;
    let yaml = config(
        &b.idp.issuer,
        admin,
        &state,
        &pins.path,
        &kubeconfig,
        &a.path,
        &cgroup.path,
    );
    let agent = match Nodeward::spawn(&b.bin, name, dir, &yaml, admin) {
        Ok(agent) => agent,
        Err(e) => {
            let _ = app.stop();
            return Err(e);
        }
    };
    let mut running = Egress {
        agent,
        app,
        host,
        _api: Box::new(api),
        _pins: pins,
        cgroup,
        _link: link,
        a,
        _b: pod_b,
    };
    let ready = match running.agent.wait_ready(&b.http, &[]).await {
        Ok(()) => wait_enrolled(&running, target).await,
        Err(e) => Err(e),
    };
    match ready {
        Ok(()) => Ok((running, target)),
        Err(e) => {
            let _ = running.stop();
            Err(e)
        }
    }
}

/// One request from inside A (curl, as wrk will send it), until it comes
/// back with the agent's `x-request-id` (before the egress programs attach
/// it goes straight to B) and, for the token host, with the token's effect
/// visible in the agent's metrics.
async fn wait_enrolled(e: &Egress, target: SocketAddr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut last = String::from("no answer yet");
    while std::time::Instant::now() < deadline {
        match preflight(e, target).await {
            Ok(()) => return Ok(()),
            Err(err) => last = format!("{err:#}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("{target} was not reached through the agent's egress within 15 s (last: {last})")
}

/// One request the way wrk sends it, from inside the pod: 200, answered
/// through the agent (it adds `x-request-id`).
pub async fn preflight(e: &Egress, target: SocketAddr) -> anyhow::Result<()> {
    let w = e.within();
    let script = format!(
        "echo $$ > '{}' && exec nsenter --net='{}' -- curl -sS -m 5 -o /dev/null -D - -H 'Host: {}' http://{target}/",
        w.cgroup.join("cgroup.procs").display(),
        w.netns.display(),
        e.host
    );
    let out = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .await
        .context("running curl in the pod (needs curl and nsenter)")?;
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    if !out.status.success() || !head.starts_with("http/1.1 200") {
        bail!(
            "curl from the pod: {} {}",
            head.lines().next().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !head.contains("\nx-request-id:") {
        bail!("answered without x-request-id: not through the agent yet");
    }
    Ok(())
}
