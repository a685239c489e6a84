//! The agent with eBPF steering, end to end, as root, in real network
//! namespaces: a simulated pod's inbound connections are steered into the
//! agent, authenticated, and forwarded with the verified identity; a killed
//! agent fails closed and a restarted one takes over the pinned state; many
//! workloads enrol and un-enrol without leaks; service-account callers and
//! RBAC (issue 12, against the fake Kubernetes API) on the steered path.
//!
//! Root only: each test fails loudly when not root. Tests in this file share
//! kernel state and run one at a time (a process-wide lock).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodeward::netns::listener_in;
use nodeward_testkit::kubeapi::FakeKubeApi;
use nodeward_testkit::netns::{NetnsGuard, PinDir, require_root};
use nodeward_testkit::resources::open_fds;
use nodeward_testkit::wire::free_port;
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, metric};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(issuer: &str, pin_dir: &std::path::Path, workloads: &str) -> String {
    format!(
        r#"admin: 127.0.0.1:0
ebpf: {{pin_dir: {}}}
providers:
  - {{name: corp, issuer: "{issuer}", audiences: [orders]}}
policies:
  - name: orders
    selector: {{app: orders}}
    ports: [8080]
    rules:
      - {{name: health, paths: ["/healthz"], allow: anonymous}}
      - {{name: default, require: {{}}}}
    forward_claims: {{x-user-email: email}}
workloads:
{workloads}"#,
        pin_dir.display()
    )
}

/// An app inside `ns` on 0.0.0.0:`port` echoing the headers it received.
fn echo_in(ns: &NetnsGuard, port: u16) -> EchoUpstream {
    let l = listener_in(&ns.path, SocketAddr::from(([0, 0, 0, 0], port))).expect("app listener");
    EchoUpstream::serve(tokio::net::TcpListener::from_std(l).expect("tokio listener"))
}

async fn get(url: String, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steered_requests_are_authenticated_and_carry_identity() {
    require_root("steered_requests_are_authenticated_and_carry_identity");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let enrolled = NetnsGuard::new();
    let other = NetnsGuard::new();
    let _app = echo_in(&enrolled, 8080);
    let _side = echo_in(&enrolled, 9090);
    let _other_app = echo_in(&other, 8080);
    let idp = TestIdp::start().await;
    let workloads = format!(
        "  - {{name: orders, labels: {{app: orders}}, netns: {}}}\n",
        enrolled.path.display()
    );
    let agent = TestAgent::start(&config(&idp.issuer(), &pins.path, &workloads)).await;
    agent.wait_ready().await;
    assert_eq!(pins.links().len(), 1, "one pinned link for the enrolled namespace");

    let pod = enrolled.pod_ip();
    let token = idp.token(json!({"aud": "orders", "sub": "alice", "email": "alice@example.com"}));
    let (s, body) = get(format!("http://{pod}:8080/orders"), None).await;
    assert_eq!(
        s, 401,
        "unauthenticated request to the protected port is refused by the agent: {body}"
    );
    assert_eq!(body["reason"], "missing_token");
    let (s, body) = get(format!("http://{pod}:8080/orders"), Some(&token)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["headers"]["x-nodeward-sub"], json!(["alice"]));
    assert_eq!(body["headers"]["x-user-email"], json!(["alice@example.com"]));
    assert_eq!(body["headers"]["host"], json!([format!("{pod}:8080")]));
    let (s, body) = get(format!("http://{pod}:8080/healthz"), None).await;
    assert_eq!(s, 200, "anonymous route: {body}");

    // Not protected: another port of the same pod, and a pod not enrolled.
    let (s, body) = get(format!("http://{pod}:9090/x"), None).await;
    assert_eq!(s, 200);
    assert!(body["headers"].get("x-nodeward-sub").is_none());
    let (s, _) = get(format!("http://{}:8080/x", other.pod_ip()), None).await;
    assert_eq!(s, 200, "a namespace that is not enrolled is untouched");

    // The program's counters surface as metrics: 3 steered connections (reqwest
    // may reuse one; count at least 1), none dropped.
    let m = agent.metrics().await;
    assert!(
        metric(
            &m,
            "nodeward_ebpf_connections_total{verdict=\"steered\",workload=\"orders\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "nodeward_ebpf_connections_total{verdict=\"dropped_fail_closed\",workload=\"orders\"}"
        ),
        Some(0.0)
    );
    assert_eq!(metric(&m, "nodeward_workloads{state=\"enrolled\"}"), Some(1.0));
    assert!(metric(&m, "nodeward_enrolment_duration_seconds_count").is_some_and(|n| n >= 1.0));

    agent.agent.unenrol_all_and_shutdown().await;
    assert!(pins.links().is_empty(), "un-enrolling unpins the link");
    let (s, body) = get(format!("http://{pod}:8080/orders"), None).await;
    assert_eq!(s, 200, "after un-enrolment the port goes straight to the app: {body}");
}

/// An app that counts the requests reaching it without a verified identity.
fn counting_app(ns: &NetnsGuard, port: u16) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let l = listener_in(&ns.path, SocketAddr::from(([0, 0, 0, 0], port))).expect("app listener");
    let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
    let (anon, authed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let task = tokio::spawn({
        let (anon, authed) = (anon.clone(), authed.clone());
        async move {
            while let Ok((stream, _)) = l.accept().await {
                let (anon, authed) = (anon.clone(), authed.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let counter = if req.headers().contains_key("x-nodeward-sub") {
                            &authed
                        } else {
                            &anon
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    });
    (anon, authed, task)
}

async fn wait_ready(admin: u16) -> bool {
    for _ in 0..100 {
        if let Ok(r) = client().get(format!("http://127.0.0.1:{admin}/readyz")).send().await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One raw HTTP/1.1 request without a token on a fresh connection; `None`
/// when the connection could not be made within 300 ms (dropped SYN).
async fn anonymous_request(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET /orders HTTP/1.1\r\nhost: pod\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_fails_closed_and_a_restarted_one_takes_over() {
    require_root("a_killed_agent_fails_closed_and_a_restarted_one_takes_over");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let pod = NetnsGuard::new();
    let (anon, authed, _app) = counting_app(&pod, 8080);
    let idp = TestIdp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let workloads = format!(
        "  - {{name: orders, labels: {{app: orders}}, netns: {}}}\n",
        pod.path.display()
    );
    let yaml = config(&idp.issuer(), &pins.path, &workloads).replace(
        "admin: 127.0.0.1:0",
        &format!("admin: 127.0.0.1:{admin}\nstate_dir: {}", dir.path().display()),
    );
    let file = dir.path().join("nodeward.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_nodeward-under-test"))
            .args(["run", "--config", file.to_str().expect("utf8")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nodeward")
    };
    let target = SocketAddr::new(pod.pod_ip(), 8080);
    let token = idp.token(json!({"aud": "orders", "sub": "alice"}));

    let mut agent = spawn();
    assert!(wait_ready(admin).await, "agent ready");
    assert_eq!(anonymous_request(target).await, Some(401));
    let (s, _) = get(format!("http://{target}/orders"), Some(&token)).await;
    assert_eq!(s, 200);

    // Clients keep trying without a token while the agent is SIGKILLed.
    let hammer = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && outcomes.len() < 5000 {
            outcomes.push(anonymous_request(target).await);
        }
        outcomes
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.start_kill().expect("SIGKILL");
    let _ = agent.wait().await;
    let outcomes = hammer.await.expect("join");
    assert_eq!(
        anon.load(Ordering::SeqCst),
        0,
        "no unauthenticated request reached the app"
    );
    assert!(outcomes.iter().all(|o| matches!(o, None | Some(401))), "{outcomes:?}");
    assert!(
        outcomes.iter().any(Option::is_none),
        "connections were dropped while the agent was down"
    );
    assert_eq!(pins.links().len(), 1, "the pinned link outlives the agent");

    // Restart: the new agent adopts the pinned state and serves again.
    let agent = spawn();
    assert!(wait_ready(admin).await, "restarted agent ready");
    let mut back = None;
    for _ in 0..50 {
        back = anonymous_request(target).await;
        if back.is_some() {
            break;
        }
    }
    assert_eq!(back, Some(401), "protected again, by the new agent");
    let (s, _) = get(format!("http://{target}/orders"), Some(&token)).await;
    assert_eq!(s, 200);
    assert_eq!(anon.load(Ordering::SeqCst), 0);
    assert!(authed.load(Ordering::SeqCst) >= 2);
    let m = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert_eq!(metric(&m, "nodeward_workloads{state=\"enrolled\"}"), Some(1.0), "{m}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_workloads_enrol_unenrol_and_reenrol_without_leaks() {
    require_root("one_hundred_workloads_enrol_unenrol_and_reenrol_without_leaks");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let namespaces: Vec<NetnsGuard> = (0..100).map(|_| NetnsGuard::bare()).collect();
    let idp = TestIdp::start().await;
    let workloads = |n: usize| -> String {
        namespaces
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, ns)| {
                format!(
                    "  - {{name: w{i}, labels: {{app: orders}}, netns: {}, ips: [10.251.{}.{}]}}\n",
                    ns.path.display(),
                    i / 250,
                    i % 250 + 1
                )
            })
            .collect()
    };
    let fds_before = open_fds();
    let start = Instant::now();
    let agent = TestAgent::start(&config(&idp.issuer(), &pins.path, &workloads(100))).await;
    let enrol_100 = start.elapsed();
    agent.wait_ready().await;
    assert_eq!(pins.links().len(), 100);
    assert!(enrol_100 < Duration::from_secs(10), "100 enrolments took {enrol_100:?}");

    let half = TestAgent::config(
        &config(&idp.issuer(), &pins.path, &workloads(50)),
        agent.state_dir.path(),
    );
    agent.agent.apply(half).await.expect("apply 50");
    assert_eq!(pins.links().len(), 50, "un-enrolled links are unpinned");
    let all = TestAgent::config(
        &config(&idp.issuer(), &pins.path, &workloads(100)),
        agent.state_dir.path(),
    );
    agent.agent.apply(all).await.expect("apply 100");
    assert_eq!(pins.links().len(), 100);
    let m = agent.metrics().await;
    assert_eq!(metric(&m, "nodeward_workloads{state=\"enrolled\"}"), Some(100.0));
    assert_eq!(metric(&m, "nodeward_workloads{state=\"failed\"}"), Some(0.0));

    agent.agent.unenrol_all_and_shutdown().await;
    assert!(pins.links().is_empty());
    // Listeners, namespace handles and sockets are all closed again (a few fds
    // of the runtime and the IdP may come and go: allow a small slack).
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 8,
        "fd leak: {fds_before} before, {fds_after} after"
    );
    println!("enrolled 100 workloads in {enrol_100:?}");
}

/// RBAC for the steered service-account test: the service account
/// `shop/orders` may `get` the `payments` service's proxy subresource in `shop`.
const ORDERS_MAY_CALL_PAYMENTS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: payments-caller}
rules:
  - apiGroups: [""]
    resources: ["services/proxy"]
    resourceNames: ["payments"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: payments-callers, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: payments-caller}
subjects:
  - {kind: ServiceAccount, name: orders, namespace: shop}
"#;

/// Issue 12 on the steered path: service-account tokens minted by the (fake)
/// API server, checked against its discovery and JWKS, decide by namespace
/// and by the cluster's RBAC for connections the SK_LOOKUP program steered
/// from the pod's IP into the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steered_service_account_callers_by_namespace_and_rbac() {
    require_root("steered_service_account_callers_by_namespace_and_rbac");
    let _serial = SERIAL.lock().await;
    let pins = PinDir::new();
    let payments = NetnsGuard::new();
    let _app = echo_in(&payments, 8080);
    let api = FakeKubeApi::start().await;
    api.apply_yaml(ORDERS_MAY_CALL_PAYMENTS).expect("RBAC objects");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let yaml = format!(
        r#"admin: 127.0.0.1:0
ebpf: {{pin_dir: {pins}}}
kubernetes: {{kubeconfig: {kubeconfig}}}
providers:
  - {{name: cluster, kubernetes_service_accounts: {{}}, audiences: [nodeward]}}
policies:
  - name: payments
    selector: {{app: payments}}
    ports: [8080]
    rules:
      - name: from-shop
        paths: ["/internal/**"]
        require: {{providers: [cluster], source: {{namespaces: [shop]}}}}
      - name: api-by-rbac
        paths: ["/api/**"]
        require:
          providers: [cluster]
          kubernetes_rbac:
            resource: {{group: "", resource: services, subresource: proxy, namespace: "{{namespace}}", name: "{{workload}}"}}
workloads:
  - {{name: payments, namespace: shop, labels: {{app: payments}}, netns: {netns}}}
"#,
        pins = pins.path.display(),
        kubeconfig = kubeconfig.display(),
        netns = payments.path.display(),
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    assert_eq!(pins.links().len(), 1, "one pinned link for the payments namespace");
    let pod = payments.pod_ip();
    let token =
        |ns: &str, sa: &str, aud: &str| api.service_account_token(ns, sa, None, &[aud], Duration::from_secs(3600));
    let orders = token("shop", "orders", "nodeward");

    // By namespace: shop is admitted, dev is not, another audience is no caller.
    let (s, body) = get(format!("http://{pod}:8080/internal/charge"), Some(&orders)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["headers"]["x-nodeward-sub"],
        json!(["system:serviceaccount:shop:orders"])
    );
    assert_eq!(body["headers"]["host"], json!([format!("{pod}:8080")]));
    let (s, body) = get(
        format!("http://{pod}:8080/internal/charge"),
        Some(&token("dev", "orders", "nodeward")),
    )
    .await;
    assert_eq!((s, body["reason"].as_str()), (403, Some("source_mismatch")), "{body}");
    let (s, body) = get(
        format!("http://{pod}:8080/internal/charge"),
        Some(&token("shop", "orders", "vault")),
    )
    .await;
    assert_eq!((s, body["reason"].as_str()), (401, Some("wrong_audience")), "{body}");

    // By RBAC: the bound service account is allowed (asked once, then
    // cached), another one of the same namespace is denied.
    for _ in 0..3 {
        let (s, body) = get(format!("http://{pod}:8080/api/charges"), Some(&orders)).await;
        assert_eq!(s, 200, "{body}");
    }
    let billing = token("shop", "billing", "nodeward");
    let (s, body) = get(format!("http://{pod}:8080/api/charges"), Some(&billing)).await;
    assert_eq!((s, body["reason"].as_str()), (403, Some("rbac_denied")), "{body}");
    let asked = |user: &str| {
        api.subject_access_reviews()
            .iter()
            .filter(|r| r.spec.user.as_deref() == Some(user))
            .count()
    };
    assert_eq!(
        asked("system:serviceaccount:shop:orders"),
        1,
        "one review, then the cache"
    );
    assert_eq!(asked("system:serviceaccount:shop:billing"), 1);
    let attrs = api
        .subject_access_reviews()
        .last()
        .and_then(|r| r.spec.resource_attributes.clone())
        .expect("resource attributes");
    assert_eq!(
        (attrs.namespace.as_deref(), attrs.name.as_deref(), attrs.verb.as_deref()),
        (Some("shop"), Some("payments"), Some("get")),
        "placeholders filled from the steered workload"
    );

    let m = agent.metrics().await;
    assert!(
        metric(
            &m,
            "nodeward_ebpf_connections_total{verdict=\"steered\",workload=\"payments\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the requests were steered: {m}"
    );
    assert_eq!(metric(&m, "nodeward_rbac_reviews_total{result=\"allowed\"}"), Some(1.0));
    assert_eq!(metric(&m, "nodeward_rbac_reviews_total{result=\"denied\"}"), Some(1.0));
    assert!(
        metric(&m, "nodeward_rbac_cache_hits_total").is_some_and(|n| n >= 2.0),
        "{m}"
    );

    agent.agent.unenrol_all_and_shutdown().await;
    assert!(pins.links().is_empty(), "un-enrolling unpins the link");
}
