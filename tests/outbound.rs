//! Outbound identity end to end, as root (issue 16): two pods on one node,
//! each a real network namespace with a process in a real cgroup v2 tree
//! laid out as the kubelet lays it out, known to the agent through the
//! fake Kubernetes API's pod list. Pod A's application is plain `curl`
//! (run inside A's namespace and cgroup); it calls `http://payments:8080/`
//! (resolved to pod B's address) and changes nothing. The agent steers the
//! connection to its egress listener in A, attaches a TokenRequest token for
//! A's service account bound to A, and B's own nodeward policy (inbound,
//! steered too) admits exactly that pod. A destination that is not
//! configured goes out untouched; a host no rule names gets no token; the
//! application's own `Authorization` is kept; a SIGKILLed agent leaves the
//! configured destination refused, not reached without identity; a
//! restarted one adopts the pins and serves again. Many pods with egress
//! enrol and un-enrol without leaking descriptors or links.
//!
//! Root only: each test fails loudly when not root. The tests share kernel
//! state and run one at a time (a process-wide lock):
//! `cargo test -p nodeward-tests --test outbound -- --test-threads=1`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nodeward::netns::listener_in;
use nodeward_testkit::cgroup::CgroupGuard;
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use nodeward_testkit::netns::{NetnsGuard, NetnsLink, PinDir, require_root};
use nodeward_testkit::pod::{PodCgroups, PodProcess};
use nodeward_testkit::resources::open_fds;
use nodeward_testkit::wire::free_port;
use nodeward_testkit::{EchoUpstream, TestAgent, client, metric};
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(20);
const UID_A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const UID_B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";

/// An app inside `ns` on 0.0.0.0:`port` echoing the headers it received.
fn echo_in(ns: &NetnsGuard, port: u16) -> EchoUpstream {
    let l = listener_in(&ns.path, SocketAddr::from(([0, 0, 0, 0], port))).expect("app listener");
    EchoUpstream::serve(tokio::net::TcpListener::from_std(l).expect("tokio listener"))
}

/// What `curl` in the pod got: its exit code, the status and the body.
#[derive(Debug)]
struct Curl {
    #[expect(dead_code, reason = "read through Debug, in failure messages")]
    stderr: String,
    exit: i32,
    status: u16,
    body: Value,
    took: Duration,
}

/// Runs `curl URL` as pod A's application: inside `ns`, in the pod's
/// `cgroup` (joined before curl opens any socket), with `host` resolved
/// to `ip` (as cluster DNS would), plus `extra` arguments.
async fn curl(ns: &NetnsGuard, cgroup: &Path, host: &str, ip: IpAddr, url: &str, extra: &[&str]) -> Curl {
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or("80");
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-m".into(),
        "5".into(),
        "--resolve".into(),
        format!("{host}:{port}:{ip}"),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(url.into());
    // Into the cgroup first, then into the namespace with nsenter (not
    // `ip netns exec`, which remounts /sys and hides the cgroup tree).
    let script = format!(
        "echo $$ > {} && exec nsenter --net={} -- curl \"$@\"",
        cgroup.join("cgroup.procs").display(),
        ns.path.display()
    );
    let started = Instant::now();
    let out = tokio::process::Command::new("sh")
        .stderr(Stdio::piped())
        .args(["-c", &script, "curl"])
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running curl in the pod");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl {
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
        took,
    }
}

fn config(pins: &Path, kubeconfig: &Path, cgroups: &Path, admin: u16, state: &Path) -> String {
    format!(
        r#"admin: 127.0.0.1:{admin}
state_dir: {state}
ebpf: {{pin_dir: {pins}}}
providers:
  - {{name: cluster, kubernetes_service_accounts: {{}}, audiences: [payments]}}
policies:
  - name: orders
    selector: {{app: orders}}
    egress:
      - name: payments
        to: {{hosts: [payments, payments.shop.svc.cluster.local], ports: [8080]}}
        token: {{service_account: {{audience: payments}}}}
  - name: payments
    selector: {{app: payments}}
    ports: [8080]
    rules:
      - name: orders-pod
        require: {{providers: [cluster], source: {{pods: [shop/orders-0]}}}}
kubernetes:
  enabled: true
  node_name: {NODE}
  kubeconfig: {kubeconfig}
  proc_root: /proc
  cgroup_root: {cgroups}
"#,
        pins = pins.display(),
        kubeconfig = kubeconfig.display(),
        cgroups = cgroups.display(),
        state = state.display(),
    )
}

fn pod(name: &str, uid: &str, app: &str, ip: IpAddr) -> PodBuilder {
    PodBuilder::new("shop", name)
        .uid(uid)
        .node(NODE)
        .service_account(app)
        .label("nodeward.io/enabled", "true")
        .label("app", app)
        .running(&ip.to_string())
}

async fn scrape(admin: u16) -> Option<String> {
    let r = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

async fn wait_ready(admin: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Ok(r) = client().get(format!("http://127.0.0.1:{admin}/readyz")).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The egress audit lines the agent wrote, once there are `n` (the writer
/// batches for a few milliseconds), or what there is after a while.
async fn egress_lines(audit: &Path, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["direction"] == "egress")
            .collect();
        if lines.len() >= n || start.elapsed() > Duration::from_secs(5) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_plain_calls_carry_its_identity_and_fail_closed_without_the_agent() {
    require_root("a_pods_plain_calls_carry_its_identity_and_fail_closed_without_the_agent");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let a = NetnsGuard::bare();
    let b = NetnsGuard::bare();
    let link = NetnsLink::new(&a, &b);
    let payments = echo_in(&b, 8080);
    let unprotected = echo_in(&b, 9090);
    let (proc_a, proc_b) = (PodProcess::start(&a), PodProcess::start(&b));
    let mut cgroups = PodCgroups::new();
    cgroups.add(UID_A, proc_a.pid());
    cgroups.add(UID_B, proc_b.pid());
    let cgroup_a = cgroups.pod(UID_A);

    let api = FakeKubeApi::start().await;
    api.apply_node(NODE);
    api.apply_service_account("shop", "orders");
    api.apply_service_account("shop", "payments");
    api.apply_pod(pod("orders-0", UID_A, "orders", link.a()).build());
    api.apply_pod(pod("payments-0", UID_B, "payments", link.b()).build());

    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let admin = free_port();
    let file = dir.path().join("nodeward.yaml");
    std::fs::write(
        &file,
        config(&pins.path, &kubeconfig, cgroups.root(), admin, dir.path()),
    )
    .expect("config");
    let audit = dir.path().join("audit.log");
    let spawn = || {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&audit)
            .expect("audit file");
        let err = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nodeward-under-test"))
            .args(["run", "--config", file.to_str().expect("utf8")])
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nodeward")
    };
    let mut agent = spawn();
    assert!(wait_ready(admin).await, "agent ready");
    let egress_enrolled = || pins.egress_links().iter().any(|(w, _)| w.contains("orders-0"));
    let start = Instant::now();
    while !egress_enrolled() {
        assert!(
            start.elapsed() < WAIT,
            "pod A's egress never enrolled: {:?}",
            pins.egress_links()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = |host: &'static str, port: u16, extra: &'static [&'static str]| {
        let url = format!("http://{host}:{port}/charge?amount=5");
        let (a, cgroup_a, ip) = (&a, &cgroup_a, link.b());
        async move { curl(a, cgroup_a, host, ip, &url, extra).await }
    };

    // A's plain call arrives at B with A's identity, which B's policy admits.
    for i in 0..5 {
        let r = call("payments", 8080, &[]).await;
        assert_eq!((r.exit, r.status), (0, 200), "call {i}: {r:?}");
        assert_eq!(
            r.body["headers"]["x-nodeward-sub"][0], "system:serviceaccount:shop:orders",
            "{r:?}"
        );
        assert_eq!(r.body["path"], "/charge");
        assert_eq!(r.body["query"], "amount=5");
        assert_eq!(r.body["headers"]["host"][0], "payments:8080", "the Host the app wrote");
        assert!(
            r.body["headers"].get("authorization").is_none(),
            "B's agent does not pass the token on"
        );
    }
    assert_eq!(
        api.token_requests().get(&("shop".to_string(), "orders".to_string())),
        Some(&1),
        "five calls, one TokenRequest: {:?}",
        api.token_requests()
    );

    // A destination that is not configured goes out untouched.
    let r = call("payments", 9090, &[]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    assert!(r.body["headers"].get("authorization").is_none(), "{r:?}");
    assert_eq!(unprotected.requests(), 1);
    // A host no rule names, on a steered port: sent without a token (B refuses it).
    let r = call("other", 8080, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body["reason"], "missing_token");
    // The application's own Authorization is kept (replace_existing: false).
    let r = call("payments", 8080, &["-H", "Authorization: Bearer app-own-token"]).await;
    assert_eq!(r.status, 401, "the app's token reached B's agent: {r:?}");
    assert_eq!(r.body["error"], "invalid_token", "{r:?}");

    let lines = egress_lines(&audit, 7).await;
    let outcomes: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["host"].as_str().unwrap_or(""), l["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        outcomes,
        [
            vec![("payments", "sent"); 5],
            vec![("other", "passthrough"), ("payments", "sent_app_token")]
        ]
        .concat(),
        "{lines:?}"
    );
    assert_eq!(lines[0]["workload"], "shop/orders-0");
    assert_eq!(lines[0]["rule"], "payments");
    assert_eq!(lines[0]["token"], "service_account");
    assert_eq!(lines[0]["destination"], format!("{}:8080", link.b()));
    let m = scrape(admin).await.expect("metrics");
    let series = |s: &str| metric(&m, s).unwrap_or(0.0);
    assert_eq!(
        series("nodeward_egress_requests_total{outcome=\"sent\",workload=\"shop/orders-0\"}"),
        5.0,
        "{m}"
    );
    assert_eq!(
        series("nodeward_egress_token_fetches_total{kind=\"service_account\",result=\"ok\"}"),
        1.0
    );
    assert!(series("nodeward_egress_token_cache_hits_total") >= 4.0, "{m}");
    assert!(
        series("nodeward_ebpf_egress_connections_total{verdict=\"passed\",workload=\"shop/orders-0\"}") >= 1.0,
        "the 9090 call was seen and passed: {m}"
    );

    // SIGKILL: the configured destination is refused at connect(), nothing
    // reaches B; the unconfigured one still works.
    let before = payments.requests();
    agent.start_kill().expect("SIGKILL");
    let _ = agent.wait().await;
    for _ in 0..3 {
        let r = call("payments", 8080, &[]).await;
        assert_eq!(r.exit, 7, "curl could not connect: {r:?}");
        assert!(r.took < Duration::from_secs(3), "refused at once, not timed out: {r:?}");
    }
    assert_eq!(payments.requests(), before, "nothing reached B without the agent");
    let r = call("payments", 9090, &[]).await;
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    assert_eq!(pins.egress_links().len(), 1, "the pins outlive the agent");

    // Restart: adopted, works again.
    let agent = spawn();
    assert!(wait_ready(admin).await, "restarted agent ready");
    let start = Instant::now();
    loop {
        let r = call("payments", 8080, &[]).await;
        if r.status == 200 {
            assert_eq!(
                r.body["headers"]["x-nodeward-sub"][0],
                "system:serviceaccount:shop:orders"
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "egress never came back: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = scrape(admin).await.expect("metrics");
    assert!(
        metric(
            &m,
            "nodeward_ebpf_egress_connections_total{verdict=\"dropped_fail_closed\",workload=\"shop/orders-0\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "the refused connects were counted by the pinned programs: {m}"
    );
    let logs = std::fs::read_to_string(&audit).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert!(!logs.contains("eyJ"), "no token in the agent's output");
    drop(agent);
}

/// A pod-like workload of the configuration file: a bare namespace, its cgroup.
struct StaticPod {
    ns: NetnsGuard,
    cgroup: CgroupGuard,
}

fn many_pods_config(pins: &Path, kubeconfig: &Path, pods: &[StaticPod]) -> String {
    let mut yaml = format!(
        r#"admin: 127.0.0.1:0
ebpf: {{pin_dir: {pins}}}
kubernetes: {{kubeconfig: {kubeconfig}}}
policies:
  - name: callers
    selector: {{app: caller}}
    egress:
      - name: payments
        to: {{hosts: [payments], ports: [8080]}}
        token: {{service_account: {{audience: payments}}}}
workloads:
"#,
        pins = pins.display(),
        kubeconfig = kubeconfig.display(),
    );
    for (i, p) in pods.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{name: caller-{i}, namespace: shop, service_account: caller, labels: {{app: caller}}, netns: {}, cgroup: {}}}\n",
            p.ns.path.display(),
            p.cgroup.path.display()
        ));
    }
    if pods.is_empty() {
        yaml = yaml.replace("workloads:\n", "workloads: []\n");
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pods_enrol_and_unenrol_egress_without_leaks() {
    require_root("a_hundred_pods_enrol_and_unenrol_egress_without_leaks");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let pods: Vec<StaticPod> = (0..100)
        .map(|_| StaticPod {
            ns: NetnsGuard::bare(),
            cgroup: CgroupGuard::new(),
        })
        .collect();
    let agent = TestAgent::start(&many_pods_config(&pins.path, &kubeconfig, &[])).await;
    agent.wait_ready().await;
    // The first round loads the egress programs and maps (held from then
    // on); later rounds must come back to what the first left.
    let mut baseline = None;
    for round in 0..3 {
        let config = TestAgent::config(&many_pods_config(&pins.path, &kubeconfig, &pods), dir.path());
        let began = Instant::now();
        agent.agent.apply(config).await.expect("100 workloads with egress");
        let enrolled = began.elapsed();
        assert_eq!(pins.egress_links().len(), 100, "round {round}: one link set per pod");
        assert!(
            pins.egress_links().iter().all(|(_, links)| links.len() == 3),
            "sockops, connect4, connect6 per pod"
        );
        let config = TestAgent::config(&many_pods_config(&pins.path, &kubeconfig, &[]), dir.path());
        agent.agent.apply(config).await.expect("none");
        assert!(
            pins.egress_links().is_empty(),
            "round {round}: un-enrolled: {:?}",
            pins.egress_links()
        );
        // Listeners close once their drained tasks end.
        let start = Instant::now();
        while baseline.is_some_and(|b| open_fds() > b) {
            assert!(
                start.elapsed() < WAIT,
                "round {round}: descriptors leak: {} now, {baseline:?} after the first round (enrolling took {enrolled:?})",
                open_fds()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if baseline.is_none() {
            // Let the first round's listeners close too.
            tokio::time::sleep(Duration::from_millis(500)).await;
            baseline = Some(open_fds());
        }
    }
    let m = agent.metrics().await;
    assert_eq!(
        metric(&m, "nodeward_egress_tokens"),
        Some(0.0),
        "no tokens kept for gone pods: {m}"
    );
    agent.agent.unenrol_all_and_shutdown().await;
    drop(pods);
}
