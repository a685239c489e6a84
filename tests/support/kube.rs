//! Shared by the pod-watch and IdentityPolicy tests (`k8s_watch.rs`,
//! `k8s_policies.rs`): a recording sink in place of the agent, a fake host
//! /proc and cgroup tree, and a harness running the watches, the controller
//! and the status writer of one "node" against the fake Kubernetes API.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use nodeward::config::Config;
use nodeward::k8s::podns::PodNsResolver;
use nodeward::k8s::{KubeMetrics, PodSink, PodWatch, PodWorkload};
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use tokio::sync::watch as channel;

pub const NODE: &str = "node-1";
pub const LABEL: (&str, &str) = ("nodeward.io/enabled", "true");
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn metrics() -> KubeMetrics {
    KubeMetrics::register(&prometheus::Registry::new()).expect("metrics")
}

pub async fn client(api: &FakeKubeApi, dir: &Path) -> kube::Client {
    let k = nodeward::config::KubernetesConfig {
        kubeconfig: Some(api.write_kubeconfig(dir)),
        ..Default::default()
    };
    nodeward::k8s::client(&k)
        .await
        .expect("client from the fake's kubeconfig")
}

/// An opted-in pod of this node, Running with `ip`.
pub fn running(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> PodBuilder {
    PodBuilder::new(ns, name)
        .node(NODE)
        .label(LABEL.0, LABEL.1)
        .labels(labels)
        .running(ip)
}

/// Polls `cond` every 20 ms until it holds, at most [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === The controller, with a recording sink ===

/// Stands in for the agent: records the pod workloads it is given.
pub struct Sink {
    pub config: Mutex<Arc<Config>>,
    pub generation: channel::Sender<u64>,
    pub applied: Mutex<Vec<PodWorkload>>,
    pub present: Mutex<HashSet<String>>,
    pub applies: Mutex<usize>,
    /// Pods the "agent" cannot enrol, and why.
    pub fail: Mutex<HashMap<String, String>>,
}

impl Sink {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config: Mutex::new(Arc::new(config)),
            generation: channel::channel(0).0,
            applied: Mutex::default(),
            present: Mutex::default(),
            applies: Mutex::default(),
            fail: Mutex::default(),
        })
    }

    pub fn pod(&self, name: &str) -> Option<PodWorkload> {
        self.applied
            .lock()
            .expect("lock")
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.applied
            .lock()
            .expect("lock")
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    pub fn reload(&self, config: Config) {
        *self.config.lock().expect("lock") = Arc::new(config);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl PodSink for Sink {
    fn config(&self) -> Arc<Config> {
        self.config.lock().expect("lock").clone()
    }

    fn config_changes(&self) -> channel::Receiver<u64> {
        self.generation.subscribe()
    }

    fn apply_pods(
        &self,
        pods: Vec<PodWorkload>,
        present: HashSet<String>,
    ) -> impl Future<Output = HashMap<String, String>> + Send {
        let fail = self.fail.lock().expect("lock").clone();
        let failures = pods
            .iter()
            .filter_map(|p| fail.get(&p.name).map(|why| (p.name.clone(), why.clone())))
            .collect();
        *self.applied.lock().expect("lock") = pods;
        *self.present.lock().expect("lock") = present;
        *self.applies.lock().expect("lock") += 1;
        std::future::ready(failures)
    }
}

pub const CONFIG: &str = r#"
policies:
  - name: orders
    selector: {app: orders}
    ports: [8080]
    rules: [{name: all, allow: anonymous}]
  - name: web
    selector: {tier: web}
    ports: [80]
    container_ports: true
    rules: [{name: all, allow: anonymous}]
kubernetes:
  enabled: true
  node_name: node-1
"#;

/// A fake host: `proc/1` (the host namespace) and pods' processes, each in
/// a namespace of its own, listed in a cgroupfs-driver tree.
pub struct FakeHost {
    dir: tempfile::TempDir,
    next_pid: Mutex<u32>,
    /// The pod's current process, by UID.
    pids: Mutex<HashMap<String, u32>>,
}

impl FakeHost {
    pub fn new() -> Self {
        let h = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            next_pid: Mutex::new(100),
            pids: Mutex::default(),
        };
        let ns = h.proc_root().join("1/ns");
        std::fs::create_dir_all(&ns).expect("proc/1");
        std::fs::write(ns.join("net"), b"").expect("host netns");
        std::fs::create_dir_all(h.cgroup_root()).expect("cgroup root");
        h
    }

    pub fn proc_root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    pub fn cgroup_root(&self) -> PathBuf {
        self.dir.path().join("cgroup")
    }

    /// Starts a "process" of the pod with `uid` in a new namespace; returns its netns path.
    pub fn start_pod(&self, uid: &str) -> PathBuf {
        self.replace_process(uid, false)
    }

    /// The pod's process exits and another one is listed in its cgroup, in
    /// the same namespace (`share`: another container) or a new one (a new
    /// sandbox). Returns the new process's netns path.
    pub fn replace_process(&self, uid: &str, share: bool) -> PathBuf {
        let pid = {
            let mut n = self.next_pid.lock().expect("lock");
            *n += 1;
            *n
        };
        let old = self.pids.lock().expect("lock").insert(uid.to_string(), pid);
        let ns = self.proc_root().join(format!("{pid}/ns"));
        std::fs::create_dir_all(&ns).expect("proc dir");
        match old {
            Some(old) if share => std::fs::hard_link(self.proc_root().join(format!("{old}/ns/net")), ns.join("net"))
                .expect("same namespace"),
            _ => std::fs::write(ns.join("net"), b"").expect("netns"),
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.proc_root().join(old.to_string())).expect("old process exits");
        }
        let cg = self.cgroup_root().join(format!("kubepods/besteffort/pod{uid}/ctr"));
        std::fs::create_dir_all(&cg).expect("cgroup");
        std::fs::write(cg.join("cgroup.procs"), format!("{pid}\n")).expect("cgroup.procs");
        ns.join("net")
    }
}

/// One "node": a recording sink, a fake host, and the pod watch's tasks
/// (`PodWatch::start_with`: both watches, the controller, the status writer,
/// the event poster) against a shared fake API.
pub struct NodeAgent {
    pub node: String,
    pub host: FakeHost,
    pub sink: Arc<Sink>,
    pub metrics: KubeMetrics,
    _watch: PodWatch,
}

impl NodeAgent {
    pub async fn start(api: &FakeKubeApi, dir: &Path, node: &str, yaml: &str) -> Self {
        let host = FakeHost::new();
        let yaml = yaml.replace("node_name: node-1", &format!("node_name: {node}"));
        let config = Config::parse_with_env(&yaml, Path::new("test.yaml"), |_| None).expect("config");
        let sink = Sink::new(config);
        let metrics = metrics();
        let resolver = PodNsResolver::new(&host.proc_root(), &host.cgroup_root());
        let watch = PodWatch::start_with(
            sink.clone(),
            metrics.clone(),
            client(api, dir).await,
            node.into(),
            resolver,
        );
        Self {
            node: node.into(),
            host,
            sink,
            metrics,
            _watch: watch,
        }
    }

    /// The pod's reported state: the one `nodeward_kubernetes_pods` series it has.
    pub fn state(&self, ns: &str, pod: &str) -> Option<String> {
        use prometheus::core::Collector as _;
        let mut states = Vec::new();
        for family in self.metrics.pods.collect() {
            for m in family.get_metric() {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_string())
                };
                if label("namespace").as_deref() == Some(ns) && label("pod").as_deref() == Some(pod) {
                    assert_eq!(m.get_gauge().value(), 1.0);
                    states.extend(label("state"));
                }
            }
        }
        assert!(states.len() <= 1, "one state at a time: {states:?}");
        states.pop()
    }
}

/// The fake API and one node on it (more with [`NodeAgent::start`]).
pub struct Harness {
    pub api: FakeKubeApi,
    pub dir: tempfile::TempDir,
    pub node: NodeAgent,
}

impl std::ops::Deref for Harness {
    type Target = NodeAgent;
    fn deref(&self) -> &NodeAgent {
        &self.node
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(CONFIG, |_| {}).await
    }

    /// `prepare` runs against the fake before the node's watches start.
    pub async fn start_with(yaml: &str, prepare: impl FnOnce(&FakeKubeApi)) -> Self {
        let api = FakeKubeApi::start().await;
        prepare(&api);
        let dir = tempfile::tempdir().expect("temp dir");
        let node = NodeAgent::start(&api, dir.path(), NODE, yaml).await;
        Self { api, dir, node }
    }

    /// Applies `pod` to the fake and gives it a process on the fake host.
    pub fn pod_with_process(&self, pod: Pod) -> PathBuf {
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        self.api.apply_pod(pod);
        let uid = self
            .api
            .get_pod(&ns, &name)
            .and_then(|p| p.metadata.uid)
            .expect("the fake assigns a uid");
        self.node.host.start_pod(&uid)
    }

    /// Events the fake received about `pod`: (reason, type, note).
    pub fn events(&self, pod: &str) -> Vec<(String, String, String)> {
        self.api
            .events()
            .into_iter()
            .filter(|e| e["regarding"]["name"] == pod || e["involvedObject"]["name"] == pod)
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("reason"), s("type"), s("note"))
            })
            .collect()
    }

    pub async fn until_event(&self, pod: &str, reason: &str) -> (String, String, String) {
        let mut found = None;
        eventually(&format!("event {reason} on {pod}"), || {
            found = self.events(pod).into_iter().find(|e| e.0 == reason);
            found.is_some()
        })
        .await;
        found.expect("found")
    }
}
