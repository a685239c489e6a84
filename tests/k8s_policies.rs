//! IdentityPolicies against the fake Kubernetes API, in process (no root):
//! the policy watch, the controller binding pods to them (recording sink in
//! place of the agent, fake host /proc and cgroups), and the status writer
//! of one or two "nodes". Serving requests through them is
//! `tests/kubernetes.rs` (root, eBPF).

use std::time::Duration;

use kube::CustomResourceExt as _;
use nodeward::k8s::binding::PodPolicy;
use nodeward::k8s::crd::IdentityPolicy;
use nodeward_testkit::kubeapi::FakeKubeApi;
use serde_json::{Value, json};

#[path = "support/kube.rs"]
mod support;
use support::*;

const API_VERSION: &str = "nodeward.io/v1alpha1";

/// Creates or replaces `ns/name` with `spec`; returns its generation.
fn policy(api: &FakeKubeApi, ns: &str, name: &str, spec: Value) -> i64 {
    let o = api
        .apply(&json!({
            "apiVersion": API_VERSION, "kind": "IdentityPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }))
        .expect("IdentityPolicy applied");
    o["metadata"]["generation"].as_i64().expect("a generation")
}

fn status(api: &FakeKubeApi, ns: &str, name: &str) -> Value {
    api.get_object(API_VERSION, "IdentityPolicy", Some(ns), name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

fn accepted(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Accepted")
        .cloned()
        .unwrap_or(Value::Null)
}

fn with_crd(api: &FakeKubeApi) {
    api.apply(&IdentityPolicy::crd()).expect("the CRD");
}

/// Whether the pod is bound to IdentityPolicy `key` at `generation`.
fn bound_to(p: Option<nodeward::k8s::PodWorkload>, key: &str, generation: i64) -> bool {
    matches!(p.map(|p| p.policy), Some(PodPolicy::Resource(r)) if r.key == key && r.generation == generation)
}

/// PATCHes of IdentityPolicy status the fake received.
fn status_writes(api: &FakeKubeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.starts_with("/apis/nodeward.io/") && r.path.ends_with("/status"))
        .count()
}

fn orders(ports: &[u16]) -> Value {
    json!({"selector": {"app": "orders"}, "ports": ports, "rules": [{"name": "all", "allow": "anonymous"}]})
}

#[tokio::test]
async fn a_policy_binds_its_own_namespace_follows_updates_keeps_the_last_good_one_and_goes() {
    let h = Harness::start_with(CONFIG, with_crd).await;
    let g1 = policy(&h.api, "shop", "orders", orders(&[8080]));
    h.pod_with_process(running("shop", "a", "10.0.0.1", &[("app", "orders")]).build());
    // Same labels in another namespace: never the shop policy; the ConfigMap's `orders`.
    h.pod_with_process(running("other", "b", "10.0.0.2", &[("app", "orders")]).build());
    eventually("a bound to shop/orders", || {
        bound_to(h.sink.pod("shop/a"), "shop/orders", g1)
    })
    .await;
    eventually("b bound to the ConfigMap's orders", || {
        h.sink.pod("other/b").map(|p| p.policy) == Some(PodPolicy::Named("orders".into()))
    })
    .await;
    assert_eq!(h.sink.pod("shop/a").map(|p| p.ports), Some(vec![8080]));
    eventually("Accepted=True, one pod", || {
        let s = status(&h.api, "shop", "orders");
        accepted(&s)["status"] == "True" && s["pods"] == 1 && s["nodes"]["node-1"]["pods"] == 1
    })
    .await;
    let s = status(&h.api, "shop", "orders");
    assert_eq!(s["observedGeneration"], g1);
    assert_eq!(accepted(&s)["observedGeneration"], g1);
    let (_, _, note) = h.until_event("a", "Enrolled").await;
    assert!(note.contains("IdentityPolicy shop/orders"), "{note}");

    // An update: re-bound to the new generation, no restart.
    let g2 = policy(&h.api, "shop", "orders", orders(&[8080, 8081]));
    assert_eq!(g2, g1 + 1);
    eventually("a on generation 2", || {
        bound_to(h.sink.pod("shop/a"), "shop/orders", g2)
    })
    .await;
    assert_eq!(h.sink.pod("shop/a").map(|p| p.ports), Some(vec![8080, 8081]));
    eventually("observedGeneration 2", || {
        status(&h.api, "shop", "orders")["observedGeneration"] == g2
    })
    .await;

    // An invalid update: Accepted=False with check's message; a keeps generation 2.
    let mut broken = orders(&[9999]);
    broken["rules"] = json!([{"name": "all", "require": {"providers": ["corp"]}}]);
    let g3 = policy(&h.api, "shop", "orders", broken);
    eventually("Accepted=False", || {
        accepted(&status(&h.api, "shop", "orders"))["status"] == "False"
    })
    .await;
    let s = status(&h.api, "shop", "orders");
    let cond = accepted(&s);
    assert_eq!(cond["reason"], "Invalid");
    assert_eq!(
        cond["message"],
        "IdentityPolicy shop/orders: key `spec.rules[0].require`: a rule requires a token but no `providers` are configured"
    );
    assert_eq!(
        (s["observedGeneration"].clone(), cond["observedGeneration"].clone()),
        (json!(g3), json!(g3))
    );
    assert_eq!(
        s["nodes"]["node-1"]["observedGeneration"], g2,
        "the pods stay on the last good version"
    );
    assert!(bound_to(h.sink.pod("shop/a"), "shop/orders", g2));
    assert_eq!(h.sink.pod("shop/a").map(|p| p.ports), Some(vec![8080, 8081]));
    // A new pod it selects is not opened: deny-all, the reason in its event.
    h.pod_with_process(
        running("shop", "c", "10.0.0.3", &[("app", "orders")])
            .container_port(8080)
            .build(),
    );
    eventually("c deny-all", || {
        matches!(h.sink.pod("shop/c").map(|p| p.policy), Some(PodPolicy::NotAccepted(..)))
    })
    .await;
    let (_, kind, note) = h.until_event("c", "PolicyNotAccepted").await;
    assert_eq!(kind, "Warning");
    assert!(
        note.contains("spec.rules[0].require") && note.contains("no_policy"),
        "{note}"
    );
    assert_eq!(h.state("shop", "c").as_deref(), Some("deny_all"));

    // Fixed: both on the new generation.
    let g4 = policy(&h.api, "shop", "orders", orders(&[8080]));
    eventually("a and c on generation 4", || {
        bound_to(h.sink.pod("shop/a"), "shop/orders", g4) && bound_to(h.sink.pod("shop/c"), "shop/orders", g4)
    })
    .await;
    eventually("Accepted=True again, two pods", || {
        let s = status(&h.api, "shop", "orders");
        accepted(&s)["status"] == "True" && s["pods"] == 2 && s["observedGeneration"] == g4
    })
    .await;

    // Deleted: a falls back to the ConfigMap's policy of the same labels.
    assert!(
        h.api
            .delete_object(API_VERSION, "IdentityPolicy", Some("shop"), "orders")
    );
    eventually("a on the ConfigMap's orders", || {
        h.sink.pod("shop/a").map(|p| p.policy) == Some(PodPolicy::Named("orders".into()))
    })
    .await;
}

#[tokio::test]
async fn two_policies_on_one_pod_are_a_conflict_reported_on_both_and_the_pod_denies_all() {
    let h = Harness::start_with(CONFIG, with_crd).await;
    policy(&h.api, "shop", "x", orders(&[8080]));
    policy(
        &h.api,
        "shop",
        "y",
        json!({"selector": {}, "ports": [8080], "rules": []}),
    );
    // Another namespace's policy selecting everything changes nothing in shop.
    policy(&h.api, "other", "all", json!({"selector": {}, "ports": [8080]}));
    h.pod_with_process(
        running("shop", "a", "10.0.0.1", &[("app", "orders")])
            .container_port(8080)
            .build(),
    );
    h.pod_with_process(
        running("shop", "pinned", "10.0.0.2", &[("app", "orders")])
            .annotation("nodeward.io/policy", "x")
            .build(),
    );
    eventually("a deny-all by conflict", || {
        matches!(h.sink.pod("shop/a").map(|p| p.policy), Some(PodPolicy::Conflict(..)))
    })
    .await;
    // The annotation decides before any selector: no conflict for `pinned`.
    eventually("pinned bound to x", || bound_to(h.sink.pod("shop/pinned"), "shop/x", 1)).await;
    let (_, kind, note) = h.until_event("a", "PolicyConflict").await;
    assert_eq!(kind, "Warning");
    assert!(note.contains("shop/x, shop/y"), "{note}");
    for (name, other) in [("x", "shop/y"), ("y", "shop/x")] {
        eventually(&format!("the conflict on {name}'s status"), || {
            let s = status(&h.api, "shop", name);
            s["conflicts"] == 1
                && s["nodes"]["node-1"]["conflicts"] == json!([format!("shop/a: also selected by {other}")])
        })
        .await;
    }
    eventually("x binds pinned only", || status(&h.api, "shop", "x")["pods"] == 1).await;
    eventually("other/all binds nothing", || {
        status(&h.api, "other", "all")["pods"] == 0
    })
    .await;
    // The conflict goes when y stops selecting a.
    policy(
        &h.api,
        "shop",
        "y",
        json!({"selector": {"app": "web"}, "ports": [8080]}),
    );
    eventually("a bound to x", || bound_to(h.sink.pod("shop/a"), "shop/x", 1)).await;
    eventually("no conflict left", || {
        let (x, y) = (status(&h.api, "shop", "x"), status(&h.api, "shop", "y"));
        x["conflicts"] == 0 && y["conflicts"] == 0 && x["pods"] == 2 && y["nodes"].get("node-1").is_none()
    })
    .await;
}

/// Namespace A's policy never reaches namespace B: not by its selector (even
/// `{}`), not by an annotation naming it `A/NAME`; the pod of B that only A's
/// policy would select is deny-all, and A's own pod (the control) is bound.
#[tokio::test]
async fn a_policy_never_selects_or_is_named_by_a_pod_of_another_namespace() {
    let h = Harness::start_with(CONFIG, with_crd).await;
    let g = policy(
        &h.api,
        "team-a",
        "all",
        json!({"selector": {}, "ports": [8080], "rules": [{"name": "all", "allow": "anonymous"}]}),
    );
    h.pod_with_process(running("team-a", "mine", "10.0.1.1", &[("app", "pay")]).build());
    // Deny-all closes the pod's declared TCP ports: give them one.
    h.pod_with_process(
        running("team-b", "plain", "10.0.1.2", &[("app", "pay")])
            .container_port(8080)
            .build(),
    );
    h.pod_with_process(
        running("team-b", "named", "10.0.1.3", &[("app", "pay")])
            .container_port(8080)
            .annotation("nodeward.io/policy", "team-a/all")
            .build(),
    );
    h.pod_with_process(
        running("team-b", "by-name", "10.0.1.4", &[("app", "pay")])
            .container_port(8080)
            .annotation("nodeward.io/policy", "all")
            .build(),
    );
    eventually("team-a/mine bound to team-a/all", || {
        bound_to(h.sink.pod("team-a/mine"), "team-a/all", g)
    })
    .await;
    for pod in ["plain", "named", "by-name"] {
        eventually(&format!("team-b/{pod} deny-all"), || {
            h.state("team-b", pod).as_deref() == Some("deny_all")
        })
        .await;
        let p = h.sink.pod(&format!("team-b/{pod}")).map(|p| p.policy);
        assert!(matches!(p, Some(PodPolicy::Missing(_))), "team-b/{pod}: {p:?}");
    }
    let (_, kind, note) = h.until_event("named", "PolicyNotFound").await;
    assert_eq!(kind, "Warning");
    assert!(note.contains("no IdentityPolicy team-b/team-a/all"), "{note}");
    eventually("team-a/all counts only its own pod", || {
        let s = status(&h.api, "team-a", "all");
        s["pods"] == 1 && accepted(&s)["status"] == "True"
    })
    .await;
}

#[tokio::test]
async fn two_agents_share_one_status_without_fighting() {
    let h = Harness::start_with(CONFIG, with_crd).await;
    let node2 = NodeAgent::start(&h.api, h.dir.path(), "node-2", CONFIG).await;
    let g1 = policy(&h.api, "shop", "orders", orders(&[8080]));
    h.pod_with_process(running("shop", "a", "10.0.0.1", &[("app", "orders")]).build());
    let on_node2 = |name: &str, ip: &str| {
        nodeward_testkit::kubeapi::PodBuilder::new("shop", name)
            .node("node-2")
            .label(LABEL.0, LABEL.1)
            .label("app", "orders")
            .running(ip)
            .build()
    };
    for (name, ip) in [("b", "10.0.1.1"), ("c", "10.0.1.2")] {
        h.api.apply_pod(on_node2(name, ip));
        let uid = h.api.get_pod("shop", name).and_then(|p| p.metadata.uid).expect("uid");
        node2.host.start_pod(&uid);
    }
    let converged = |generation: i64| {
        let s = status(&h.api, "shop", "orders");
        s["pods"] == 3
            && s["nodes"]["node-1"]["pods"] == 1
            && s["nodes"]["node-2"]["pods"] == 2
            && s["nodes"]["node-1"]["observedGeneration"] == generation
            && s["nodes"]["node-2"]["observedGeneration"] == generation
            && accepted(&s)["status"] == "True"
            && s["observedGeneration"] == generation
    };
    eventually("both nodes' entries and the total", || converged(g1)).await;
    let first = status_writes(&h.api);
    // Quiet: nothing changes, nobody writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_writes(&h.api), first, "no writes while nothing changes");
    assert!(first <= 6, "{first} writes to get two nodes' views in");

    // A new generation: each node moves its own entry; Accepted once or twice, not a storm.
    let g2 = policy(&h.api, "shop", "orders", orders(&[8080, 8081]));
    eventually("both nodes on generation 2", || converged(g2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delta = status_writes(&h.api) - first;
    assert!((2..=6).contains(&delta), "{delta} writes for one update on two nodes");
    assert!(converged(g2), "{}", status(&h.api, "shop", "orders"));
    let conflicts: u64 = [&h.node.metrics, &node2.metrics]
        .iter()
        .map(|m| m.status_writes.with_label_values(&["conflict"]).get())
        .sum();
    let written: u64 = [&h.node.metrics, &node2.metrics]
        .iter()
        .map(|m| m.status_writes.with_label_values(&["written"]).get())
        .sum();
    assert_eq!(written + conflicts, status_writes(&h.api) as u64, "every write counted");
}

#[tokio::test]
async fn without_the_crd_the_configmap_policies_serve_and_the_crd_arriving_later_is_picked_up() {
    let h = Harness::start().await;
    h.pod_with_process(running("shop", "a", "10.0.0.1", &[("app", "orders")]).build());
    eventually("a on the ConfigMap's orders", || {
        h.sink.pod("shop/a").map(|p| p.policy) == Some(PodPolicy::Named("orders".into()))
    })
    .await;
    with_crd(&h.api);
    let g = policy(&h.api, "shop", "orders", orders(&[8080]));
    eventually("a on the IdentityPolicy once the CRD is there", || {
        bound_to(h.sink.pod("shop/a"), "shop/orders", g)
    })
    .await;
}
