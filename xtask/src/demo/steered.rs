//! `cargo xtask demo` (root): nodeward steering a simulated node's pods with
//! eBPF. Four pods (`node`), each a network namespace running an echo app
//! on its pod IP; `orders` and `billing` enrolled with different policies,
//! `web` not, `shop` a Kubernetes pod of the fake API bound later by an
//! IdentityPolicy (`policies`). A dev IdP and `nodeward run` as child processes; the tour of
//! `steered_script` from the host and from inside `web`; the program's
//! counters checked against the traffic sent; then the agent stopped (its
//! pins stay, so the protected ports fail closed, which the demo shows) and
//! every namespace, veth and pin removed.
//!
//! Cleanup does not depend on reaching the end: the child processes, the
//! pins and the node are guards, dropped in that order on an error or a
//! panic (the runtime, which holds the apps' sockets inside the pods, goes
//! before the namespaces).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nodeward::netns::listener_in;
use nodeward_testkit::{EchoUpstream, metric};

use super::check;
use super::env::{Target, wait_ready};
use super::node::{Node, Pins};
use super::outbound;
use super::policies;
use super::script::Tokens;
use super::steered_script::{self, APP_PORT, SIDE_PORT};
use crate::proc::DevIdp;
use crate::proc::{ChildProc, free_ports};

const NEEDS_ROOT: &str = "\
the eBPF demo needs root: it creates network namespaces, veths and a bridge,
loads an eBPF program and pins it under /sys/fs/bpf. Run it as root
(`sudo -E cargo xtask demo`), or run `cargo xtask demo --reverse-proxy` for
the no-root demo.";

const HEADER: &str = "\
nodeward demo: eBPF steering on a simulated node

One nodeward agent owns the inbound traffic of every enrolled pod on the node.
An SK_LOOKUP eBPF program attached to each enrolled pod's network namespace
hands new connections to the pod's protected ports to the agent's listener
inside that namespace; the agent validates the bearer JWT, applies that pod's
policy and forwards allowed requests to the app with the verified identity.
Here four pods are network namespaces on a bridge, each running an echo app
that reports what it received; two are enrolled, with different policies, and
the fourth is later bound by an app team's IdentityPolicy.";

/// The pods, in address order; `web` is never enrolled; `shop` is a
/// Kubernetes pod of the fake API, bound by an IdentityPolicy (`policies`).
const PODS: [&str; 4] = ["orders", "billing", "web", policies::POD];
/// Local connects take milliseconds; a second tells an answered SYN from a
/// lost one.
const DROP_WAIT: Duration = Duration::from_secs(1);

pub fn run() -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{NEEDS_ROOT}");
        return Ok(ExitCode::FAILURE);
    }
    println!("{HEADER}\n");
    let bin = super::build()?;
    for stale in super::node::clean_stale() {
        println!("removed a leftover of an earlier demo that was killed: {stale}");
    }
    // Declared in this order so they drop in reverse: runtime (the apps'
    // sockets in the pods), pins, then the node itself.
    let node = Node::create(&PODS)?;
    let pins = Pins::new();
    let rt = super::runtime()?;
    let result = rt.block_on(async {
        // Ctrl-C ends the demo through the same clean-up as an error;
        // without this the default action would kill us before any Drop.
        tokio::select! {
            r = demo(&bin, &node, &pins) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    drop(rt);
    let cleaned = clean_up(node, &pins);
    let failed = result?;
    cleaned?;
    Ok(super::verdict(failed))
}

/// Everything between building the node and tearing it down; returns how
/// many checks failed.
async fn demo(bin: &Path, node: &Node, pins: &Pins) -> anyhow::Result<usize> {
    let dir = tempfile::Builder::new()
        .prefix("nodeward-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let _apps = start_apps(node)?;
    let mut idp = DevIdp::start("dev-idp", dir.path()).await?;
    let mut untrusted = DevIdp::start("untrusted-dev-idp", dir.path()).await?;
    let [admin_port] = free_ports()?;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let config_path = dir.path().join("nodeward.yaml");
    let cluster = policies::Cluster::start(node).await?;
    let caller = outbound::Caller::new(&cluster.api);
    let mut config = config(
        &idp.issuer,
        admin_port,
        &dir.path().join("state"),
        &pins.path,
        node,
        &caller,
    )?;
    config.push_str(&cluster.config(dir.path())?);
    std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;

    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(&config_path);
    let mut agent = ChildProc::spawn("nodeward", &mut cmd, &dir.path().join("nodeward.stderr"))?;
    if let Err(e) = wait_ready(&mut agent, &admin).await {
        bail!("{e:#}\nnodeward's stderr ends with:\n{}", agent.stderr_tail(20));
    }
    describe(node, pins, &idp, &untrusted, &admin, &config_path);

    let tour = match tour(node, &admin, &idp, &untrusted, &agent).await {
        Ok(failed) => cluster.tour(node, &idp).await.map(|f| f + failed),
        e => e,
    };
    let tour = match tour {
        Ok(failed) => caller.tour(node, pins, &cluster.api).await.map(|f| f + failed),
        e => e,
    };
    if !matches!(tour, Ok(0)) {
        for p in [&agent, &idp.proc, &untrusted.proc] {
            eprintln!("--- {} stderr (last lines) ---\n{}", p.name(), p.stderr_tail(20));
        }
    }
    // Stop before the verdict: a clean stop is part of the smoke test.
    let status = agent.stop()?;
    let (idp_status, untrusted_status) = (idp.proc.stop()?, untrusted.proc.stop()?);
    println!("stopped: nodeward ({status}), dev-idp ({idp_status}), untrusted-dev-idp ({untrusted_status})");
    let mut failed = tour?;
    if !status.success() {
        bail!("nodeward did not exit cleanly on SIGTERM ({status})");
    }
    failed += fail_closed(node, pins).await;
    failed += caller.fail_closed(node).await?;
    failed += super::agents::tour(bin).await?;
    Ok(failed)
}

/// An echo app on each pod's IP, port 8080, and on 9090 in `orders`. Bound
/// to the pod IP, as a pod's app would be: the agent forwards to the
/// original destination from inside the pod.
fn start_apps(node: &Node) -> anyhow::Result<Vec<EchoUpstream>> {
    let mut apps = Vec::new();
    for pod in &node.pods {
        let ports: &[u16] = if pod.name == "orders" {
            &[APP_PORT, SIDE_PORT]
        } else {
            &[APP_PORT]
        };
        for port in ports {
            let addr = SocketAddr::new(pod.ip.into(), *port);
            let listener = listener_in(&pod.path, addr).with_context(|| format!("app of pod {}", pod.name))?;
            apps.push(EchoUpstream::serve(tokio::net::TcpListener::from_std(listener)?));
        }
    }
    Ok(apps)
}

/// The agent's config: one provider, a policy per enrolled pod, the two
/// enrolled pods by namespace, pins in the demo's own directory.
fn config(
    issuer: &str,
    admin: u16,
    state_dir: &Path,
    pin_dir: &Path,
    node: &Node,
    caller: &outbound::Caller,
) -> anyhow::Result<String> {
    // JSON strings are valid YAML double-quoted scalars: safe for any path.
    let q = |p: &Path| serde_json::to_string(&p.to_string_lossy());
    let (state_dir, pin_dir) = (q(state_dir)?, q(pin_dir)?);
    let (orders, billing) = (q(&node.pod("orders").path)?, q(&node.pod("billing").path)?);
    let issuer = serde_json::to_string(issuer)?;
    Ok(format!(
        r#"admin: 127.0.0.1:{admin}
state_dir: {state_dir}
ebpf: {{pin_dir: {pin_dir}}}
providers:
  - name: corp
    issuer: {issuer}
    audiences: [orders, billing]
    # For `kubernetes_rbac` rules: the corporate user as a Kubernetes user.
    claim_mappings:
      username: {{claim: email, prefix: "oidc:"}}
      groups: {{claim: groups, prefix: "oidc:"}}
  # The cluster's service-account tokens (the fake API's issuer, `policies`);
  # policies that accept them name their own audiences.
  - {{name: cluster, kubernetes_service_accounts: {{}}, audiences: [nodeward]}}
policies:
  - name: orders
    selector: {{app: orders}}
    ports: [{APP_PORT}]
    rules:
      - {{name: health, paths: ["/healthz"], allow: anonymous}}
      - name: admin
        paths: ["/admin/**"]
        methods: [POST, DELETE]
        require: {{providers: [corp], claims: {{groups: {{any_of: [admins]}}}}}}
      - name: internal
        paths: ["/internal/**"]
        require: {{providers: [cluster], source: {{service_accounts: [shop/{caller_sa}]}}}}
      - {{name: default, require: {{providers: [corp]}}}}
    forward_claims: {{x-user-email: email}}
  - name: billing
    selector: {{app: billing}}
    ports: [{APP_PORT}]
    rules:
      - {{name: health, paths: ["/healthz"], allow: anonymous}}
      - name: finance
        require: {{providers: [corp], claims: {{groups: {{any_of: [finance]}}}}}}
    forward_claims: {{x-user-email: email}}
{caller_policy}workloads:
  - {{name: orders, labels: {{app: orders}}, netns: {orders}}}
  - {{name: billing, labels: {{app: billing}}, netns: {billing}}}
{caller_workload}"#,
        caller_sa = outbound::CALLER,
        caller_policy = caller.policy(),
        caller_workload = caller.workload(node)?,
    ))
}

fn describe(node: &Node, pins: &Pins, idp: &DevIdp, untrusted: &DevIdp, admin: &str, config: &Path) {
    println!(
        "\nsimulated node: bridge {} ({}/24 on the host)",
        node.bridge, node.host_ip
    );
    for pod in &node.pods {
        let (ports, role) = match pod.name {
            "orders" => (":8080 (protected) :9090", "enrolled, policy orders"),
            "billing" => (":8080 (protected)", "enrolled, policy billing"),
            policies::POD => (":8080", "a Kubernetes pod (fake API), enrolled later"),
            outbound::CALLER => (":8080", "not enrolled inbound; its calls to orders carry its identity"),
            _ => (":8080", "not enrolled"),
        };
        println!(
            "  pod {:<8} {:<12} netns {:<22} veth {:<10} app on {ports:<24} {role}",
            pod.name, pod.ip, pod.netns, pod.host_if
        );
    }
    println!(
        "started:
  dev-idp            {} (trusted: provider corp)
  untrusted-dev-idp  {} (nodeward has never heard of it)
  nodeward           admin on {admin}; pins in {} (links: {})
  config             {}
policies (first match wins):
  orders   /healthz anonymous; POST|DELETE /admin/** group admins; /internal/** service account shop/web; else any valid token from corp
  billing  /healthz anonymous; else group finance
  both forward x-user-email; the app also gets x-nodeward-sub and x-nodeward-iss
",
        idp.issuer,
        untrusted.issuer,
        pins.path.display(),
        pins.links().join(" "),
        config.display()
    );
}

/// Sends every scripted request, prints the outcomes and a /metrics
/// excerpt, and checks the program's counters against what was sent.
async fn tour(node: &Node, admin: &str, idp: &DevIdp, untrusted: &DevIdp, agent: &ChildProc) -> anyhow::Result<usize> {
    let tokens = Tokens::mint(idp, untrusted).await?;
    let script = steered_script::script();
    let mut outcomes = Vec::new();
    for s in &script {
        let (to, port) = s.route.to.context("every eBPF scenario names its pod")?;
        let url = format!("http://{}:{port}", node.pod(to).ip);
        let from = s.route.from.map(|p| node.pod(p).path.as_path());
        let label = format!("{:<6} -> {to}:{port}  ", s.route.from.unwrap_or("host"));
        let t = Target {
            workload: &url,
            name: to,
            from,
            admin,
            idp,
            untrusted_idp: untrusted,
            agent,
        };
        outcomes.push(check::run(s, &t, &tokens, &label).await?);
    }
    let mut failed = super::report(&outcomes);

    let metrics = check::metrics(admin).await?;
    println!("\n/metrics (excerpt):");
    let shown = [
        "nodeward_ebpf_connections_total",
        "nodeward_workloads",
        "nodeward_enrolment_duration_seconds_sum",
        "nodeward_enrolment_duration_seconds_count",
        "nodeward_requests_total",
    ];
    for line in check::excerpt(&metrics, &shown)? {
        println!("  {line}");
    }
    println!("\nthe eBPF program's counters against the traffic sent:");
    let mut expect = vec![
        ("nodeward_workloads{state=\"enrolled\"}".to_owned(), 2),
        ("nodeward_workloads{state=\"failed\"}".to_owned(), 0),
    ];
    for w in ["orders", "billing"] {
        let series = |verdict| format!("nodeward_ebpf_connections_total{{verdict=\"{verdict}\",workload=\"{w}\"}}");
        expect.push((series("steered"), steered_script::steered(&script, w)));
        expect.push((series("dropped_fail_closed"), 0));
    }
    for (series, want) in expect {
        let got = metric(&metrics, &series);
        let ok = got == Some(want as f64);
        failed += usize::from(!ok);
        let got = got.map_or_else(|| "nothing".to_owned(), |g| g.to_string());
        println!(
            "{} {series} = {got} (expected {want})",
            if ok { "ok  " } else { "FAIL" }
        );
    }
    println!();
    Ok(failed)
}

/// With the agent stopped its pins stay, so a protected port must refuse
/// new connections instead of letting them reach the app, while the pod's
/// unprotected port still answers (the app is up). Returns the failures.
async fn fail_closed(node: &Node, pins: &Pins) -> usize {
    println!(
        "\nnodeward is down; its pins stay on purpose (links: {})",
        pins.links().join(" ")
    );
    let orders = node.pod("orders").ip;
    let mut failed = 0;
    for (port, want_open) in [(APP_PORT, false), (SIDE_PORT, true)] {
        let connect = tokio::net::TcpStream::connect(SocketAddr::new(orders.into(), port));
        let (ok, got) = match (tokio::time::timeout(DROP_WAIT, connect).await, want_open) {
            (Ok(Ok(_)), true) => (true, "connected: the app is up".to_owned()),
            (Ok(Ok(_)), false) => (false, "connected: the app is reachable without the agent".to_owned()),
            // SK_DROP makes the kernel's socket lookup fail, so TCP answers
            // the SYN with a reset: the client sees "connection refused".
            (Ok(Err(e)), false) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                (true, "refused: dropped by the eBPF program (fail closed)".to_owned())
            }
            (Err(_), false) => (true, "no answer: dropped by the eBPF program (fail closed)".to_owned()),
            (Ok(Err(e)), _) => (false, e.to_string()),
            (Err(_), true) => (false, format!("no answer within {DROP_WAIT:?}")),
        };
        failed += usize::from(!ok);
        let mark = if ok { "ok  " } else { "FAIL" };
        println!("{mark} host   -> orders:{port}  connect while nodeward is down -> {got}");
    }
    failed
}

/// Removes the pins (only now that the agent is gone) and the node, and
/// says what was removed; fails if anything is left.
fn clean_up(node: Node, pins: &Pins) -> anyhow::Result<()> {
    let pinned = pins.remove();
    let removed = node.remove();
    pinned?;
    println!("removed: pins {}, {}", pins.path.display(), removed?);
    Ok(())
}
