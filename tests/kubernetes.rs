//! The pod watch end to end, as root: a "pod" in the fake Kubernetes API,
//! backed by a real network namespace with an app listening and a real
//! process listed in a cgroup tree the test builds, is found, enrolled and
//! protected by a real agent with eBPF steering; removing its opt-in label
//! lets traffic flow unprotected again; deleting it un-enrols it and
//! unpins its link; a pod naming a missing policy is enrolled deny-all; and
//! a restarted agent keeps pinned pods fail closed until the first pod list
//! says which are gone; an IdentityPolicy re-binds a steered pod live
//! (requests in flight finish), a refused update keeps its last good rules,
//! and deleting it hands the pod back to the ConfigMap's policy.
//!
//! Root only: each test fails loudly when not root. The tests share kernel
//! state and run one at a time (a process-wide lock):
//! `cargo test -p nodeward-tests --test kubernetes -- --test-threads=1`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeward::Agent;
use nodeward::k8s::PodWatch;
use nodeward::netns::listener_in;
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use nodeward_testkit::netns::{NetnsGuard, PinDir, require_root};
use nodeward_testkit::pod::PodProcess;
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, metric};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NODE: &str = "node-1";
/// Every wait here is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

/// A cgroup tree (systemd driver, cgroup v2 layout) under a temp dir, listing pods' processes.
struct Cgroups(tempfile::TempDir);

impl Cgroups {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("temp dir"))
    }

    fn add(&self, uid: &str, pid: u32) {
        let u = uid.replace('-', "_");
        let dir = self.0.path().join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-0123abcd.scope"
        ));
        std::fs::create_dir_all(&dir).expect("cgroup dir");
        std::fs::write(dir.join("cgroup.procs"), format!("{pid}\n")).expect("cgroup.procs");
    }

    fn root(&self) -> &Path {
        self.0.path()
    }
}

fn config(issuer: &str, pins: &Path, kubeconfig: &Path, cgroup_root: &Path) -> String {
    format!(
        r#"admin: 127.0.0.1:0
ebpf: {{pin_dir: {pins}}}
providers:
  - {{name: corp, issuer: "{issuer}", audiences: [orders]}}
policies:
  - name: orders
    selector: {{app: orders}}
    ports: [8080]
    rules:
      - {{name: health, paths: ["/healthz"], allow: anonymous}}
      - {{name: default, require: {{}}}}
kubernetes:
  enabled: true
  node_name: {NODE}
  kubeconfig: {kubeconfig}
  proc_root: /proc
  cgroup_root: {cgroups}
"#,
        pins = pins.display(),
        kubeconfig = kubeconfig.display(),
        cgroups = cgroup_root.display(),
    )
}

/// An app inside `ns` on 0.0.0.0:`port` echoing the headers it received.
fn echo_in(ns: &NetnsGuard, port: u16) -> EchoUpstream {
    let l = listener_in(&ns.path, SocketAddr::from(([0, 0, 0, 0], port))).expect("app listener");
    EchoUpstream::serve(tokio::net::TcpListener::from_std(l).expect("tokio listener"))
}

/// `default/NAME` on this node, opted in, Running with `ns`'s pod IP.
fn pod(name: &str, uid: &str, ns: &NetnsGuard) -> PodBuilder {
    PodBuilder::new("default", name)
        .uid(uid)
        .node(NODE)
        .label("nodeward.io/enabled", "true")
        .label("app", "orders")
        .running(&ns.pod_ip().to_string())
}

async fn get(url: String, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url).timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent plus its pod watch, as `nodeward run` wires them.
struct Running {
    agent: Arc<Agent>,
    watch: Option<PodWatch>,
}

impl Running {
    async fn start(yaml: &str, state_dir: &Path) -> Self {
        let config = TestAgent::config(yaml, state_dir);
        let agent = Arc::new(
            Agent::start(config, nodeward::Audit::tracing())
                .await
                .expect("agent starts"),
        );
        let metrics = agent.metrics().kubernetes.clone();
        let client = agent.kube().expect("the pod watch has a client").clone();
        let watch = PodWatch::start(agent.control().clone(), client, metrics)
            .await
            .expect("pod watch starts");
        Self {
            agent,
            watch: Some(watch),
        }
    }

    fn metrics(&self) -> String {
        String::from_utf8_lossy(&self.agent.metrics().render()).into_owned()
    }

    fn pod_state(&self, pod: &str, state: &str) -> bool {
        let series = format!("nodeward_kubernetes_pods{{namespace=\"default\",pod=\"{pod}\",state=\"{state}\"}}");
        metric(&self.metrics(), &series) == Some(1.0)
    }

    /// Stops the watch; pods stay enrolled (`unenrol`: false) as on a
    /// normal shutdown, or are released as on an uninstall.
    async fn stop(mut self, unenrol: bool) {
        if let Some(w) = self.watch.take() {
            w.stop().await;
        }
        let Ok(agent) = Arc::try_unwrap(self.agent) else {
            panic!("the agent is still shared after the watch stopped");
        };
        if unenrol {
            agent.unenrol_all_and_shutdown().await;
        } else {
            agent.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_enrolled_relabelled_deleted_and_a_missing_policy_denies_all() {
    require_root("a_pod_is_enrolled_relabelled_deleted_and_a_missing_policy_denies_all");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let ns = NetnsGuard::new();
    let _app = echo_in(&ns, 8080);
    let process = PodProcess::start(&ns);
    let cgroups = Cgroups::new();
    let uid = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b";
    cgroups.add(uid, process.pid());
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let idp = TestIdp::start().await;
    let yaml = config(&idp.issuer(), &pins.path, &kubeconfig, cgroups.root());

    api.apply_pod(pod("orders-0", uid, &ns).build());
    let run = Running::start(&yaml, dir.path()).await;
    eventually("ready after the first pod list", || run.agent.not_ready().is_empty()).await;
    eventually("orders-0 enrolled", || run.pod_state("orders-0", "enrolled")).await;
    assert_eq!(pins.links().len(), 1, "one pinned link: {:?}", pins.links());
    let m = run.metrics();
    assert_eq!(metric(&m, "nodeward_kubernetes_synced"), Some(1.0));
    assert_eq!(metric(&m, "nodeward_workloads{state=\"enrolled\"}"), Some(1.0));

    let url = format!("http://{}:8080/orders", ns.pod_ip());
    let token = idp.token(json!({"aud": "orders", "sub": "alice"}));
    let (s, body) = get(url.clone(), None).await;
    assert_eq!((s, &body["reason"]), (401, &json!("missing_token")), "{body}");
    let (s, body) = get(url.clone(), Some(&token)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["headers"]["x-nodeward-sub"], json!(["alice"]));
    eventually("an Enrolled event", || {
        api.events().iter().any(|e| e["reason"] == "Enrolled")
    })
    .await;

    // The opt-in label removed: un-enrolled, traffic goes straight to the app.
    api.apply_pod(pod("orders-0", uid, &ns).label("nodeward.io/enabled", "false").build());
    eventually("the link unpinned", || pins.links().is_empty()).await;
    let (s, body) = get(url.clone(), None).await;
    assert_eq!(s, 200, "unprotected again: {body}");
    assert!(body["headers"].get("x-nodeward-sub").is_none(), "{body}");
    eventually("an Unenrolled event", || {
        api.events().iter().any(|e| e["reason"] == "Unenrolled")
    })
    .await;

    // Opted in again, then deleted.
    api.apply_pod(pod("orders-0", uid, &ns).build());
    eventually("re-enrolled", || {
        pins.links().len() == 1 && run.pod_state("orders-0", "enrolled")
    })
    .await;
    assert_eq!(get(url.clone(), None).await.0, 401);
    assert!(api.delete_pod("default", "orders-0"));
    eventually("un-enrolled after deletion", || pins.links().is_empty()).await;
    eventually("the pod's series removed", || {
        !run.metrics().contains("pod=\"orders-0\"")
    })
    .await;
    assert_eq!(get(url.clone(), Some(&token)).await.0, 200);

    // A pod naming a policy that does not exist: enrolled, deny-all, on its containerPort.
    let mut ghost = pod("ghost-0", uid, &ns)
        .annotation("nodeward.io/policy", "ghost")
        .build();
    if let Some(spec) = ghost.spec.as_mut() {
        spec.containers[0].ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            container_port: 8080,
            ..Default::default()
        }]);
    }
    api.apply_pod(ghost);
    eventually("ghost-0 deny-all", || run.pod_state("ghost-0", "deny_all")).await;
    assert_eq!(pins.links().len(), 1);
    let (s, body) = get(url.clone(), Some(&token)).await;
    assert_eq!((s, &body["reason"]), (403, &json!("no_policy")), "{body}");
    let (s, body) = get(format!("http://{}:8080/healthz", ns.pod_ip()), None).await;
    assert_eq!(
        (s, &body["reason"]),
        (403, &json!("no_policy")),
        "no route is open: {body}"
    );
    let m = run.metrics();
    assert!(
        metric(
            &m,
            "nodeward_requests_total{decision=\"deny\",reason=\"no_policy\",workload=\"default/ghost-0\"}"
        ) >= Some(2.0),
        "{m}"
    );
    eventually("a PolicyNotFound event", || {
        api.events()
            .iter()
            .any(|e| e["reason"] == "PolicyNotFound" && e["type"] == "Warning" && e["regarding"]["name"] == "ghost-0")
    })
    .await;

    run.stop(true).await;
    assert!(pins.links().is_empty(), "uninstall un-enrols everything");
    assert_eq!(get(url, None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_pods_closed_until_the_first_pod_list() {
    require_root("a_restarted_agent_keeps_pods_closed_until_the_first_pod_list");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let (ns_a, ns_b) = (NetnsGuard::new(), NetnsGuard::new());
    let (_app_a, _app_b) = (echo_in(&ns_a, 8080), echo_in(&ns_b, 8080));
    let (proc_a, proc_b) = (PodProcess::start(&ns_a), PodProcess::start(&ns_b));
    let cgroups = Cgroups::new();
    let (uid_a, uid_b) = (
        "aaaaaaaa-0000-4000-8000-000000000001",
        "bbbbbbbb-0000-4000-8000-000000000002",
    );
    cgroups.add(uid_a, proc_a.pid());
    cgroups.add(uid_b, proc_b.pid());
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let idp = TestIdp::start().await;
    let yaml = config(&idp.issuer(), &pins.path, &kubeconfig, cgroups.root());
    api.apply_pod(pod("a", uid_a, &ns_a).build());
    api.apply_pod(pod("b", uid_b, &ns_b).build());

    let first = Running::start(&yaml, dir.path()).await;
    eventually("both enrolled", || {
        first.pod_state("a", "enrolled") && first.pod_state("b", "enrolled")
    })
    .await;
    first.stop(false).await;
    assert_eq!(
        pins.links().len(),
        2,
        "a stopped agent leaves its pods pinned (fail closed)"
    );

    // While the agent is down, b is deleted; and the API is down when it comes back.
    assert!(api.delete_pod("default", "b"));
    api.set_failing(Some(503));
    let second = Running::start(&yaml, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        second
            .agent
            .not_ready()
            .iter()
            .any(|r| r.contains("first pod list not applied yet")),
        "{:?}",
        second.agent.not_ready()
    );
    assert_eq!(pins.links().len(), 2, "nothing is released before the first pod list");
    let url_a = format!("http://{}:8080/x", ns_a.pod_ip());
    let url_b = format!("http://{}:8080/x", ns_b.pod_ip());
    let closed = client()
        .get(url_a.clone())
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(
        closed.is_err(),
        "a pinned pod without a listener is dropped, not opened: {closed:?}"
    );

    api.set_failing(None);
    eventually("ready after the first list", || second.agent.not_ready().is_empty()).await;
    eventually("b released, a re-enrolled", || {
        pins.links().len() == 1 && second.pod_state("a", "enrolled")
    })
    .await;
    assert_eq!(get(url_a.clone(), None).await.0, 401, "a is protected again");
    let (s, body) = get(url_b, None).await;
    assert_eq!(s, 200, "b, deleted while the agent was down, is open again: {body}");
    second.stop(true).await;
    assert!(pins.links().is_empty());
}

/// An IdentityPolicy in the pod's namespace (the CRD in the fake).
fn identity_policy(api: &FakeKubeApi, spec: Value) -> i64 {
    let o = api
        .apply(&json!({
            "apiVersion": "nodeward.io/v1alpha1", "kind": "IdentityPolicy",
            "metadata": {"name": "orders", "namespace": "default"}, "spec": spec,
        }))
        .expect("IdentityPolicy applied");
    o["metadata"]["generation"].as_i64().expect("generation")
}

fn accepted(api: &FakeKubeApi) -> Value {
    let o = api
        .get_object("nodeward.io/v1alpha1", "IdentityPolicy", Some("default"), "orders")
        .unwrap_or(Value::Null);
    o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Accepted")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_policy_rebinds_a_steered_pod_live_and_a_bad_update_keeps_its_rules() {
    require_root("an_identity_policy_rebinds_a_steered_pod_live_and_a_bad_update_keeps_its_rules");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let ns = NetnsGuard::new();
    let _app = echo_in(&ns, 8080);
    let process = PodProcess::start(&ns);
    let cgroups = Cgroups::new();
    let uid = "c0ffee00-0000-4000-8000-000000000003";
    cgroups.add(uid, process.pid());
    let api = FakeKubeApi::start().await;
    api.apply(&<nodeward::k8s::crd::IdentityPolicy as kube::CustomResourceExt>::crd())
        .expect("the CRD");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let idp = TestIdp::start().await;
    let yaml = config(&idp.issuer(), &pins.path, &kubeconfig, cgroups.root());
    let rules = |open: &str| {
        json!({"selector": {"app": "orders"}, "ports": [8080], "rules": [
            {"name": "open", "paths": [open], "allow": "anonymous"},
            {"name": "default", "require": {"providers": ["corp"]}},
        ]})
    };
    let g1 = identity_policy(&api, rules("/v1/**"));
    api.apply_pod(pod("orders-0", uid, &ns).build());
    let run = Running::start(&yaml, dir.path()).await;
    eventually("orders-0 enrolled", || run.pod_state("orders-0", "enrolled")).await;
    let base = format!("http://{}:8080", ns.pod_ip());
    let token = idp.token(json!({"aud": "orders", "sub": "alice"}));
    assert_eq!(
        get(format!("{base}/v1/x"), None).await.0,
        200,
        "the IdentityPolicy's rules"
    );
    assert_eq!(get(format!("{base}/v2/x"), None).await.0, 401);
    let listener = run.agent.workload_addr("default/orders-0");

    // A request in flight while the policy changes finishes normally.
    let slow = tokio::spawn({
        let (url, token) = (format!("{base}/slow/1500"), token.clone());
        async move { get(url, Some(&token)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let g2 = identity_policy(&api, rules("/v2/**"));
    assert_eq!(g2, g1 + 1);
    let start = Instant::now();
    while get(format!("{base}/v2/x"), None).await.0 != 200 {
        assert!(start.elapsed() < WAIT, "generation 2 never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(format!("{base}/v1/x"), None).await.0, 401);
    assert_eq!(
        slow.await.expect("in-flight request").0,
        200,
        "in flight across the update"
    );
    assert_eq!(
        run.agent.workload_addr("default/orders-0"),
        listener,
        "re-bound, not re-enrolled"
    );
    assert_eq!(pins.links().len(), 1);

    // A broken update: refused with its reason; the pod keeps generation 2's rules.
    let mut broken = rules("/v3/**");
    broken["rules"][1]["require"]["providers"] = json!(["nope"]);
    identity_policy(&api, broken);
    eventually("Accepted=False", || accepted(&api)["status"] == "False").await;
    assert!(
        accepted(&api)["message"].as_str().is_some_and(
            |m| m.contains("spec.rules[1].require.providers[0]") && m.contains("no provider named \"nope\"")
        ),
        "{}",
        accepted(&api)
    );
    assert_eq!(
        get(format!("{base}/v2/x"), None).await.0,
        200,
        "the last good rules still serve"
    );
    assert_eq!(get(format!("{base}/v3/x"), None).await.0, 401);

    // Deleted: the ConfigMap's policy of the same labels takes over.
    assert!(api.delete_object("nodeward.io/v1alpha1", "IdentityPolicy", Some("default"), "orders"));
    let start = Instant::now();
    while get(format!("{base}/v2/x"), None).await.0 != 401 {
        assert!(start.elapsed() < WAIT, "the ConfigMap policy never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(format!("{base}/healthz"), None).await.0, 200);
    run.stop(true).await;
    assert!(pins.links().is_empty());
}
