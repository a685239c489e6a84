//! The live run's node: a dev IdP (`corp`) and a stranger IdP, an echo app,
//! the fake Kubernetes API, and `nodeward run` as a child process with
//!
//! - two reverse-proxy workloads: `orders` in front of the echo app, and
//!   `billing` in front of a port nobody listens on (upstream errors);
//! - the pod watch on, with pods that cannot be enrolled without a node
//!   (Pending: `waiting`; hostNetwork: `refused`; Running but without a cgroup
//!   to find its namespace in: `failed`);
//! - as root, two pods that are enrolled with eBPF steering, each a network
//!   namespace with an app and a process listed in a cgroup tree made here:
//!   one bound to policy `orders`, one naming a policy that does not exist
//!   (`deny_all`).
//!
//! The pods come from the fake API in `nodeward_testkit` because there is
//! no cluster here; everything else is the real thing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nodeward::netns::listener_in;
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use nodeward_testkit::netns::{NetnsGuard, PinDir};
use nodeward_testkit::{EchoUpstream, TestIdp, example_config};
use serde_json::json;

use crate::proc::{ChildProc, free_ports};

pub const NODE: &str = "observe-node";
pub const NAMESPACE: &str = "shop";
/// The steered pods' app port: policy `orders` protects it, and the deny-all
/// pod declares it as its containerPort.
const APP_PORT: u16 = 8080;
const STEER_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Env {
    // Dropped first: the agent goes before what it talks to and before the pins.
    agent: ChildProc,
    pub admin_addr: String,
    pub orders_url: String,
    pub billing_url: String,
    pub steered: Option<Steered>,
    pub idp: TestIdp,
    pub stranger: TestIdp,
    pub config_path: PathBuf,
    pub config: String,
    _upstream: EchoUpstream,
    _kube: FakeKubeApi,
    pub dir: tempfile::TempDir,
}

/// The eBPF-steered pods (root only).
pub struct Steered {
    /// `http://<pod IP>:8080` of the pod under policy `orders`, and of the deny-all pod.
    pub orders_url: String,
    pub ghost_url: String,
    /// The `orders-steered` pod's namespace and address, for its own calls
    /// to itself (the program passes those).
    pub orders_netns: PathBuf,
    pub orders_addr: SocketAddr,
    // Drop order: apps and processes, then the pins, then the namespaces.
    _apps: Vec<EchoUpstream>,
    _processes: Vec<PodProcess>,
    pins: PinDir,
    _cgroups: tempfile::TempDir,
    _netns: Vec<NetnsGuard>,
}

impl Env {
    pub async fn start(bin: &Path, ebpf: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nodeward-observe-")
            .tempdir()
            .context("creating a temporary directory")?;
        let idp = TestIdp::start().await;
        let stranger = TestIdp::start().await;
        let upstream = EchoUpstream::start().await;
        let kube = FakeKubeApi::start().await;
        let kubeconfig = kube.write_kubeconfig(dir.path());
        // An empty cgroup tree: no pod's namespace can be found in it.
        let no_cgroups = dir.path().join("no-cgroups");
        std::fs::create_dir_all(&no_cgroups)?;
        let steered = if ebpf { Some(Steered::start(&kube)?) } else { None };
        let cgroup_root = steered.as_ref().map_or(no_cgroups.as_path(), |s| s._cgroups.path());
        unenrollable_pods(&kube);

        let [admin, orders, billing, dead] = free_ports()?;
        let config = config(&Settings {
            issuer: &idp.issuer(),
            upstream: upstream.addr,
            admin,
            orders,
            billing,
            dead,
            state_dir: &dir.path().join("state"),
            pins: steered.as_ref().map(|s| s.pins.path.as_path()),
            kubeconfig: &kubeconfig,
            cgroup_root,
        })?;
        let config_path = dir.path().join("nodeward.yaml");
        std::fs::write(&config_path, &config).with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--reload-interval")
            .arg("200ms")
            .arg("--config")
            .arg(&config_path);
        let mut agent = ChildProc::spawn("nodeward", &mut cmd, &dir.path().join("nodeward.stderr"))?;
        let admin_url = format!("http://127.0.0.1:{admin}");
        if let Err(e) = crate::demo::env::wait_ready(&mut agent, &admin_url).await {
            bail!("{e:#}\nnodeward's stderr ends with:\n{}", agent.stderr_tail(30));
        }
        let env = Self {
            agent,
            admin_addr: format!("127.0.0.1:{admin}"),
            orders_url: format!("http://127.0.0.1:{orders}"),
            billing_url: format!("http://127.0.0.1:{billing}"),
            steered,
            idp,
            stranger,
            config_path,
            config,
            _upstream: upstream,
            _kube: kube,
            dir,
        };
        if let Some(s) = &env.steered {
            s.wait_enrolled(&env).await?;
        }
        Ok(env)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn agent_stderr(&self, n: usize) -> String {
        self.agent.stderr_tail(n)
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.agent.check_running()
    }

    /// Stops the agent (SIGTERM: it drains and exits 0), then removes the
    /// steered pods' pins and namespaces. Fails if the agent did not exit cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.agent.stop()?;
        anyhow::ensure!(
            status.success(),
            "nodeward did not exit cleanly on SIGTERM ({status}):\n{}",
            self.agent.stderr_tail(20)
        );
        if let Some(s) = self.steered.take() {
            let pins = s.pins.path.clone();
            drop(s);
            anyhow::ensure!(!pins.exists(), "{} is still there", pins.display());
        }
        Ok(())
    }
}

struct Settings<'a> {
    issuer: &'a str,
    upstream: SocketAddr,
    admin: u16,
    orders: u16,
    billing: u16,
    /// A port nothing listens on: `billing`'s upstream.
    dead: u16,
    state_dir: &'a Path,
    pins: Option<&'a Path>,
    kubeconfig: &'a Path,
    cgroup_root: &'a Path,
}

/// The contract's example config (shared with the tests and the demo) on
/// fixed ports, with a second workload whose app is down, a one-second kid
/// cooldown (so a flood is visible within the run), and the pod watch.
fn config(s: &Settings<'_>) -> anyhow::Result<String> {
    let q = |p: &Path| serde_json::to_string(&p.to_string_lossy());
    let mut yaml = example_config(s.issuer, s.upstream);
    for (from, to) in [
        ("admin: 127.0.0.1:0\n", format!("admin: 127.0.0.1:{}\n", s.admin)),
        ("listen: 127.0.0.1:0\n", format!("listen: 127.0.0.1:{}\n", s.orders)),
        (
            "    audiences: [orders]\n",
            "    audiences: [orders]\n    refresh: {min_interval: 5s, max_interval: 5m, unknown_kid_cooldown: 1s, fetch_timeout: 1s}\n"
                .to_owned(),
        ),
    ] {
        anyhow::ensure!(
            yaml.matches(from).count() == 1,
            "nodeward_testkit::example_config no longer has exactly one {from:?}"
        );
        yaml = yaml.replace(from, &to);
    }
    yaml.push_str(&format!(
        "  - name: billing\n    labels: {{app: orders}}\n    listen: 127.0.0.1:{}\n    upstream: 127.0.0.1:{}\n",
        s.billing, s.dead
    ));
    let mut head = format!("state_dir: {}\n", q(s.state_dir)?);
    if let Some(pins) = s.pins {
        head.push_str(&format!("ebpf: {{pin_dir: {}}}\n", q(pins)?));
    }
    yaml.push_str(&format!(
        "kubernetes:\n  enabled: true\n  node_name: {NODE}\n  kubeconfig: {}\n  proc_root: /proc\n  cgroup_root: {}\n",
        q(s.kubeconfig)?,
        q(s.cgroup_root)?
    ));
    Ok(head + &yaml)
}

/// Opted-in pods of this node that the agent cannot (or must not) enrol.
fn unenrollable_pods(kube: &FakeKubeApi) {
    let opted_in = |name: &str| {
        PodBuilder::new(NAMESPACE, name)
            .node(NODE)
            .label("nodeward.io/enabled", "true")
            .label("app", "orders")
    };
    kube.apply_pod(opted_in("orders-pending").build());
    kube.apply_pod(opted_in("node-exporter").host_network(true).running("10.0.0.2").build());
    // Running, but there is no cgroup to find its namespace through.
    kube.apply_pod(
        opted_in("orders-lost")
            .uid("0badc0de-0000-4000-8000-000000000001")
            .running("10.0.0.3")
            .build(),
    );
}

impl Steered {
    fn start(kube: &FakeKubeApi) -> anyhow::Result<Self> {
        let cgroups = tempfile::Builder::new()
            .prefix("nodeward-observe-cgroups-")
            .tempdir()
            .context("creating the cgroup tree")?;
        let mut s = Self {
            orders_url: String::new(),
            ghost_url: String::new(),
            orders_netns: PathBuf::new(),
            orders_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            _apps: Vec::new(),
            _processes: Vec::new(),
            pins: PinDir::new(),
            _cgroups: cgroups,
            _netns: Vec::new(),
        };
        for (name, uid) in [
            ("orders-steered", "0badc0de-0000-4000-8000-000000000010"),
            ("ghost", "0badc0de-0000-4000-8000-000000000011"),
        ] {
            let ns = NetnsGuard::new();
            let ip = ns.pod_ip();
            let listener = listener_in(&ns.path, SocketAddr::new(ip, APP_PORT))
                .with_context(|| format!("the app of pod {name}"))?;
            s._apps
                .push(EchoUpstream::serve(tokio::net::TcpListener::from_std(listener)?));
            let process = PodProcess::start(&ns)?;
            // The kubelet's layout for a burstable pod, systemd driver, cgroup v2.
            let scope = s._cgroups.path().join(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0123abcd.scope",
                uid.replace('-', "_")
            ));
            std::fs::create_dir_all(&scope)?;
            std::fs::write(scope.join("cgroup.procs"), format!("{}\n", process.0.id()))?;
            s._processes.push(process);
            let url = format!("http://{ip}:{APP_PORT}");
            let mut pod = PodBuilder::new(NAMESPACE, name)
                .uid(uid)
                .node(NODE)
                .label("nodeward.io/enabled", "true")
                .running(&ip.to_string());
            if name == "ghost" {
                // A policy that does not exist: enrolled deny-all on its containerPort.
                pod = pod.annotation("nodeward.io/policy", "ghost");
                s.ghost_url = url;
            } else {
                pod = pod.label("app", "orders");
                s.orders_url = url;
                s.orders_netns = ns.path.clone();
                s.orders_addr = SocketAddr::new(ip, APP_PORT);
            }
            let mut pod = pod.build();
            if let Some(spec) = pod.spec.as_mut() {
                spec.containers[0].ports =
                    serde_json::from_value(json!([{"containerPort": APP_PORT, "protocol": "TCP"}]))?;
            }
            kube.apply_pod(pod);
            s._netns.push(ns);
        }
        Ok(s)
    }

    /// Bounded: both pods' pinned links exist (enrolled, deny-all included).
    async fn wait_enrolled(&self, env: &Env) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEER_TIMEOUT;
        while self.pins.links().len() < 2 {
            if Instant::now() >= deadline {
                bail!(
                    "the steered pods were not enrolled within {STEER_TIMEOUT:?} (links: {:?})\nnodeward's stderr:\n{}",
                    self.pins.links(),
                    env.agent_stderr(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// A pod's "container": `ip netns exec NS sleep 600`, killed and reaped on drop.
struct PodProcess(Child);

impl PodProcess {
    fn start(ns: &NetnsGuard) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("ip netns exec sleep")?;
        let p = Self(child);
        // `ip netns exec` enters the namespace, then execs: wait until it has,
        // or the agent would find the host's namespace through this pid.
        use std::os::unix::fs::MetadataExt as _;
        let want = std::fs::metadata(&ns.path)?.ino();
        let deadline = Instant::now() + STEER_TIMEOUT;
        while std::fs::metadata(format!("/proc/{}/ns/net", p.0.id()))
            .map(|m| m.ino())
            .ok()
            != Some(want)
        {
            anyhow::ensure!(Instant::now() < deadline, "the pod process never entered {}", ns.name);
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(p)
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
