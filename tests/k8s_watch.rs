//! The pod watch against the fake Kubernetes API over real HTTP on loopback
//! (no root): kube-rs's watcher → complete pod snapshots (`k8s::watch`), and
//! the controller that binds, resolves and reports pods (`k8s::Controller`)
//! with a recording sink in place of the agent and a fake host /proc and
//! cgroup tree. Enrolling for real is `tests/kubernetes.rs` (root).

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ContainerPort;
use nodeward::config::Config;
use nodeward::k8s::binding::PodPolicy;
use nodeward::k8s::watch::{self, PodSet, WatchTarget};
use nodeward::k8s::{KubeMetrics, PodWorkload};
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use tokio::sync::watch as channel;

#[path = "support/kube.rs"]
mod support;
use support::*;

struct Watch {
    rx: channel::Receiver<Option<Arc<PodSet>>>,
    metrics: KubeMetrics,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    async fn start(api: &FakeKubeApi, dir: &Path) -> Self {
        let metrics = metrics();
        let (tx, rx) = channel::channel(None);
        let target = WatchTarget {
            node: NODE.into(),
            label: format!("{}={}", LABEL.0, LABEL.1),
        };
        let task = tokio::spawn(watch::run(client(api, dir).await, target, metrics.clone(), tx));
        Self { rx, metrics, task }
    }

    fn names(&self) -> Option<BTreeSet<String>> {
        self.rx.borrow().as_ref().map(|s| s.keys().cloned().collect())
    }

    async fn until(&self, what: &str, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        eventually(what, || self.names().as_ref() == Some(&want)).await;
    }

    fn events(&self, t: &str) -> u64 {
        self.metrics.watch_events.with_label_values(&[t]).get()
    }
}

#[tokio::test]
async fn pre_existing_pods_of_this_node_only_then_add_relabel_delete() {
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    api.apply_pod(running("shop", "a", "10.0.0.1", &[("app", "orders")]).build());
    api.apply_pod(
        PodBuilder::new("shop", "pending")
            .node(NODE)
            .label(LABEL.0, LABEL.1)
            .build(),
    );
    // Another node's pod, and one of ours without the opt-in label.
    api.apply_pod(
        PodBuilder::new("shop", "elsewhere")
            .node("node-2")
            .label(LABEL.0, LABEL.1)
            .running("10.0.1.1")
            .build(),
    );
    api.apply_pod(PodBuilder::new("shop", "plain").node(NODE).running("10.0.0.9").build());
    api.apply_pod(
        PodBuilder::new("shop", "opted-out")
            .node(NODE)
            .label(LABEL.0, "false")
            .running("10.0.0.8")
            .build(),
    );

    let w = Watch::start(&api, dir.path()).await;
    w.until("the pre-existing pods", &["shop/a", "shop/pending"]).await;
    assert_eq!(w.events("restarted"), 1);

    // Every list and watch carried both selectors: other nodes' pods never reach the agent.
    let pod_requests: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect();
    assert!(!pod_requests.is_empty());
    for r in &pod_requests {
        assert_eq!(r.param("fieldSelector"), Some("spec.nodeName=node-1"), "{r:?}");
        assert_eq!(r.param("labelSelector"), Some("nodeward.io/enabled=true"), "{r:?}");
    }

    api.apply_pod(running("shop", "b", "10.0.0.2", &[]).build());
    w.until("an added pod", &["shop/a", "shop/b", "shop/pending"]).await;

    // Another label changes: still watched, with the new labels.
    api.apply_pod(running("shop", "b", "10.0.0.2", &[("tier", "web")]).build());
    eventually("the relabelled pod", || {
        w.rx.borrow()
            .as_ref()
            .and_then(|s| s.get("shop/b").cloned())
            .is_some_and(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("tier"))
                    .map(String::as_str)
                    == Some("web")
            })
    })
    .await;

    // The opt-in label goes: the pod leaves the set.
    api.apply_pod(PodBuilder::new("shop", "b").node(NODE).running("10.0.0.2").build());
    w.until("the opted-out pod gone", &["shop/a", "shop/pending"]).await;

    assert!(api.delete_pod("shop", "a"));
    w.until("the deleted pod gone", &["shop/pending"]).await;
    // Added, relabelled; the opt-in label removal arrives as DELETED, as from the apiserver.
    assert!(w.events("applied") >= 2, "{}", w.events("applied"));
    assert!(w.events("deleted") >= 2, "{}", w.events("deleted"));
    assert_eq!(w.metrics.api_errors.get(), 0);
}

#[tokio::test]
async fn an_api_outage_keeps_the_pods_and_recovery_resyncs() {
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    api.apply_pod(running("shop", "a", "10.0.0.1", &[]).build());
    api.apply_pod(running("shop", "b", "10.0.0.2", &[]).build());
    let w = Watch::start(&api, dir.path()).await;
    w.until("the first list", &["shop/a", "shop/b"]).await;

    for status in [503, 500] {
        let before = w.names();
        api.set_failing(Some(status));
        eventually("API errors counted", || w.metrics.api_errors.get() >= 2).await;
        // Nothing was un-enrolled: the last complete set stands.
        assert_eq!(w.names(), before, "during a {status} outage");
        // Changes during the outage: one pod deleted, one added.
        if status == 503 {
            assert!(api.delete_pod("shop", "a"));
            api.apply_pod(running("shop", "c", "10.0.0.3", &[]).build());
        }
        api.set_failing(None);
        w.until("the resync after the outage", &["shop/b", "shop/c"]).await;
        w.metrics.api_errors.reset();
    }
}

#[tokio::test]
async fn expired_watch_relists_and_bookmarks_are_harmless() {
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    api.apply_pod(running("shop", "a", "10.0.0.1", &[]).build());
    let w = Watch::start(&api, dir.path()).await;
    w.until("the first list", &["shop/a"]).await;
    eventually("an open watch", || api.open_watches() > 0).await;

    assert!(
        api.requests()
            .iter()
            .filter(|r| r.is_watch())
            .all(|r| r.param("allowWatchBookmarks") == Some("true")),
        "the watch asks for bookmarks"
    );
    api.bookmark();
    api.apply_pod(running("shop", "b", "10.0.0.2", &[]).build());
    w.until("a change after a bookmark", &["shop/a", "shop/b"]).await;

    // History compacted: the open watch gets 410 Gone and the watcher re-lists.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .count();
    api.compact();
    api.delete_pod("shop", "a");
    api.apply_pod(running("shop", "c", "10.0.0.3", &[]).build());
    w.until("the set after the re-list", &["shop/b", "shop/c"]).await;
    eventually("a re-list", || w.events("restarted") >= 2).await;
    let lists_after = api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .count();
    assert!(lists_after > lists_before, "410 Gone must cause a new list");
}

#[tokio::test]
async fn slow_api_responses_still_converge() {
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    api.set_latency(Duration::from_millis(400));
    api.apply_pod(running("shop", "a", "10.0.0.1", &[]).build());
    let w = Watch::start(&api, dir.path()).await;
    // No complete list yet means no snapshot at all, never an empty one.
    assert_eq!(w.names(), None);
    w.until("the first list, slowly", &["shop/a"]).await;
    api.apply_pod(running("shop", "b", "10.0.0.2", &[]).build());
    w.until("a change, slowly", &["shop/a", "shop/b"]).await;
}

#[tokio::test]
async fn pods_are_bound_resolved_and_reported() {
    let h = Harness::start().await;
    let ns_a = h.pod_with_process(running("shop", "a", "10.0.0.1", &[("app", "orders")]).build());
    let mut web = running("shop", "w", "10.0.0.2", &[("tier", "web")]).build();
    if let Some(spec) = web.spec.as_mut() {
        spec.containers[0].ports = Some(vec![
            ContainerPort {
                container_port: 9000,
                ..Default::default()
            },
            ContainerPort {
                container_port: 53,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
        ]);
    }
    let ns_w = h.pod_with_process(web);
    eventually("both pods enrolled", || h.sink.names().len() == 2).await;
    assert!(h.metrics.synced.get() == 1);

    let a = h.sink.pod("shop/a").expect("a");
    assert_eq!(a.policy, PodPolicy::Named("orders".into()));
    assert_eq!(
        (a.ports.as_slice(), a.netns.as_path()),
        ([8080].as_slice(), ns_a.as_path())
    );
    assert_eq!(a.ips, ["10.0.0.1".parse::<std::net::IpAddr>().expect("ip")]);
    let w = h.sink.pod("shop/w").expect("w");
    assert_eq!(
        (w.policy.clone(), w.ports.clone()),
        (PodPolicy::Named("web".into()), vec![80, 9000])
    );
    assert_eq!(w.netns, ns_w);
    eventually("states in metrics", || {
        h.state("shop", "a").as_deref() == Some("enrolled") && h.state("shop", "w").as_deref() == Some("enrolled")
    })
    .await;
    let (_, kind, note) = h.until_event("a", "Enrolled").await;
    assert_eq!(kind, "Normal");
    assert!(note.contains("policy orders"), "{note}");

    // Relabelled: rebound to the other policy, same namespace, no new process needed.
    h.api
        .apply_pod(running("shop", "a", "10.0.0.1", &[("tier", "web")]).build());
    eventually("rebinding to web", || {
        h.sink
            .pod("shop/a")
            .is_some_and(|p| p.policy == PodPolicy::Named("web".into()))
    })
    .await;

    // Label removed: un-enrolled, its series gone, an Unenrolled event.
    h.api
        .apply_pod(PodBuilder::new("shop", "a").node(NODE).running("10.0.0.1").build());
    eventually("a un-enrolled", || h.sink.pod("shop/a").is_none()).await;
    h.until_event("a", "Unenrolled").await;
    eventually("a's series removed", || h.state("shop", "a").is_none()).await;

    // A reload that removes `web`: w falls back to deny-all, on its container ports.
    let without_web = CONFIG.replace(
        "  - name: web\n    selector: {tier: web}\n    ports: [80]\n    container_ports: true\n    rules: [{name: all, allow: anonymous}]\n",
        "",
    );
    assert_ne!(without_web, CONFIG);
    h.sink
        .reload(Config::parse_with_env(&without_web, Path::new("t.yaml"), |_| None).expect("config"));
    eventually("deny-all after the reload", || {
        h.sink
            .pod("shop/w")
            .is_some_and(|p| matches!(p.policy, PodPolicy::Missing(_)) && p.ports == [9000])
    })
    .await;
    let (_, kind, note) = h.until_event("w", "PolicyNotFound").await;
    assert_eq!(kind, "Warning");
    assert!(note.contains("no policy selects"), "{note}");
    eventually("deny_all state", || h.state("shop", "w").as_deref() == Some("deny_all")).await;

    // Deleted.
    assert!(h.api.delete_pod("shop", "w"));
    eventually("w un-enrolled", || h.sink.names().is_empty()).await;
    h.until_event("w", "Unenrolled").await;
}

#[tokio::test]
async fn failures_are_reported_as_events_and_retried() {
    let h = Harness::start().await;
    // Annotated with a policy that does not exist: deny-all, on its containerPorts.
    let mut ghost = running("shop", "ghost", "10.0.0.5", &[("app", "orders")])
        .annotation("nodeward.io/policy", "nope")
        .build();
    if let Some(spec) = ghost.spec.as_mut() {
        spec.containers[0].ports = Some(vec![ContainerPort {
            container_port: 8443,
            ..Default::default()
        }]);
    }
    h.pod_with_process(ghost);
    // hostNetwork: refused.
    h.api.apply_pod(
        running("shop", "hostnet", "192.168.1.10", &[("app", "orders")])
            .host_network(true)
            .build(),
    );
    // Running but its cgroup is not there yet: failed, then retried.
    h.api
        .apply_pod(running("shop", "late", "10.0.0.6", &[("app", "orders")]).build());
    // Not running yet: waiting, no event.
    h.api.apply_pod(
        PodBuilder::new("shop", "pending")
            .node(NODE)
            .label(LABEL.0, LABEL.1)
            .build(),
    );

    let (_, kind, note) = h.until_event("ghost", "PolicyNotFound").await;
    assert_eq!(kind, "Warning");
    assert!(note.contains("\"nope\"") && note.contains("no_policy"), "{note}");
    let g = h.sink.pod("shop/ghost").expect("ghost enrolled deny-all");
    assert!(matches!(g.policy, PodPolicy::Missing(_)));
    assert_eq!(g.ports, [8443]);

    let (_, kind, note) = h.until_event("hostnet", "HostNetworkRefused").await;
    assert_eq!(kind, "Warning");
    assert!(note.contains("hostNetwork"), "{note}");
    assert_eq!(h.state("shop", "hostnet").as_deref(), Some("refused"));

    let (_, _, note) = h.until_event("late", "EnrolmentFailed").await;
    assert!(note.contains("network namespace not found"), "{note}");
    assert_eq!(h.state("shop", "late").as_deref(), Some("failed"));
    // Still protected-in-waiting: its pinned state, if any, is kept.
    assert!(h.sink.present.lock().expect("lock").contains("shop/late"));
    let uid = h.api.get_pod("shop", "late").and_then(|p| p.metadata.uid).expect("uid");
    let ns = h.host.start_pod(&uid);
    eventually("the retry finds the namespace", || {
        h.sink.pod("shop/late").is_some_and(|p| p.netns == ns)
    })
    .await;
    eventually("late enrolled", || {
        h.state("shop", "late").as_deref() == Some("enrolled")
    })
    .await;

    eventually("pending waiting", || {
        h.state("shop", "pending").as_deref() == Some("waiting")
    })
    .await;
    assert!(h.events("pending").is_empty());

    // The agent cannot enrol a pod (eBPF error...): EnrolmentFailed with its reason.
    h.sink.fail.lock().expect("lock").insert(
        "shop/crash".into(),
        "eBPF: attaching to a network namespace: EPERM".into(),
    );
    h.pod_with_process(running("shop", "crash", "10.0.0.7", &[("app", "orders")]).build());
    let (_, _, note) = h.until_event("crash", "EnrolmentFailed").await;
    assert!(note.contains("EPERM"), "{note}");
    assert_eq!(h.state("shop", "crash").as_deref(), Some("failed"));
    // Events are posted once per change of state, not on every pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let failed_events = h.events("crash").iter().filter(|e| e.0 == "EnrolmentFailed").count();
    assert_eq!(failed_events, 1);
    // The cause goes away (nothing about the pod or the config changes): the
    // controller keeps coming back while a pod is failing, so it gets enrolled.
    h.sink.fail.lock().expect("lock").clear();
    eventually("crash enrolled once the agent can", || {
        h.state("shop", "crash").as_deref() == Some("enrolled")
    })
    .await;
    h.until_event("crash", "Enrolled").await;
}

#[tokio::test]
async fn events_never_block_enrolment_during_an_outage() {
    let h = Harness::start().await;
    h.pod_with_process(running("shop", "a", "10.0.0.1", &[("app", "orders")]).build());
    eventually("a enrolled", || h.sink.pod("shop/a").is_some()).await;
    h.until_event("a", "Enrolled").await;

    // The API is down: the watch keeps the pods, and a config reload still
    // re-applies at once even though every event post now fails.
    h.api.set_failing(Some(503));
    let applies = *h.sink.applies.lock().expect("lock");
    h.sink.reload(
        Config::parse_with_env(
            &CONFIG.replace("ports: [8080]", "ports: [8080, 8081]"),
            Path::new("t.yaml"),
            |_| None,
        )
        .expect("config"),
    );
    eventually("re-applied with the new ports", || {
        h.sink.pod("shop/a").is_some_and(|p| p.ports == [8080, 8081])
    })
    .await;
    assert!(*h.sink.applies.lock().expect("lock") > applies);
    eventually("API errors counted", || h.metrics.api_errors.get() >= 1).await;
    assert!(h.sink.pod("shop/a").is_some(), "an outage un-enrols nothing");
    h.api.set_failing(None);
}

#[tokio::test]
async fn a_pods_namespace_path_stays_while_its_namespace_does() {
    let h = Harness::start().await;
    let first = h.pod_with_process(running("shop", "a", "10.0.0.1", &[("app", "orders")]).build());
    eventually("a enrolled", || h.sink.pod("shop/a").is_some_and(|p| p.netns == first)).await;
    let uid = h.api.get_pod("shop", "a").and_then(|p| p.metadata.uid).expect("uid");

    // The process it was found through exits; another container's process
    // is in the same namespace: the path (and so the enrolment) is kept.
    let second = h.host.replace_process(&uid, true);
    assert!(!first.exists());
    h.api
        .apply_pod(running("shop", "a", "10.0.0.1", &[("app", "orders"), ("v", "2")]).build());
    eventually("the relabelled pod re-bound", || {
        h.sink
            .pod("shop/a")
            .is_some_and(|p| p.labels.get("v").map(String::as_str) == Some("2"))
    })
    .await;
    assert_eq!(h.sink.pod("shop/a").map(|p| p.netns), Some(first.clone()));

    // A new sandbox (a namespace of its own): the new path.
    let third = h.host.replace_process(&uid, false);
    assert_ne!(second, third);
    h.api
        .apply_pod(running("shop", "a", "10.0.0.1", &[("app", "orders"), ("v", "3")]).build());
    eventually("the new namespace", || {
        h.sink.pod("shop/a").is_some_and(|p| p.netns == third)
    })
    .await;
}

#[tokio::test]
async fn the_agent_reports_pods_it_cannot_enrol_and_waits_for_the_first_list() {
    // The real agent as the sink, without root: nothing here reaches eBPF
    // (and its pin directory is its own, never the machine's).
    // With `kubernetes.enabled` and no credentials the agent refuses to
    // start, so it gets the fake API's kubeconfig (which it never lists:
    // the pod watch is main's, not `Agent::start`'s).
    let state = tempfile::tempdir().expect("temp dir");
    let api = FakeKubeApi::start().await;
    let kubeconfig = api.write_kubeconfig(state.path());
    let yaml = format!(
        "admin: 127.0.0.1:0\nstate_dir: {0}\nebpf: {{pin_dir: {0}/pins}}\n{1}  kubeconfig: {2}\nworkloads:\n  - {{name: shop/a, labels: {{app: orders}}, listen: '127.0.0.1:0', upstream: '127.0.0.1:9'}}\n",
        state.path().display(),
        CONFIG,
        kubeconfig.display()
    );
    let config = Config::parse_with_env(&yaml, Path::new("t.yaml"), |_| None).expect("config");
    let agent = nodeward::Agent::start(config, nodeward::Audit::tracing())
        .await
        .expect("agent");
    assert_eq!(
        agent.not_ready(),
        ["kubernetes: first pod list not applied yet"],
        "not ready before the first pod list"
    );
    let pod = |name: &str, netns: &str| PodWorkload {
        name: name.into(),
        labels: [("app".to_string(), "orders".to_string())].into(),
        policy: PodPolicy::Named("orders".into()),
        ips: vec!["10.0.0.1".parse().expect("ip")],
        ports: vec![8080],
        netns: netns.into(),
        uid: format!("uid-{name}"),
        service_account: "default".into(),
        cgroup: None,
    };
    let failures = agent
        .control()
        .apply_pods(
            vec![pod("shop/a", "/proc/1/ns/net"), pod("shop/gone", "/nonexistent/ns/net")],
            HashSet::new(),
        )
        .await;
    assert!(
        failures.get("shop/a").is_some_and(|w| w.contains("static workload")),
        "{failures:?}"
    );
    assert!(
        failures.get("shop/gone").is_some_and(|w| w.contains("not found")),
        "{failures:?}"
    );
    assert!(
        agent.not_ready().is_empty(),
        "a pod's failure is the pod's, not the agent's: {:?}",
        agent.not_ready()
    );
    assert!(
        agent.workload_addr("shop/a").is_some(),
        "the static workload still serves"
    );
    agent.shutdown().await;
}
