//! Binding pods to policies, ports and addresses.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::config::KubernetesConfig;
use crate::k8s::catalog::Catalog;

fn policies() -> Vec<PolicyConfig> {
    serde_yaml_ng::from_str(
        r#"
- {name: orders, selector: {app: orders}, ports: [8080]}
- {name: web, selector: {tier: web}, ports: [80], container_ports: true}
- {name: portless, selector: {app: portless}}
"#,
    )
    .expect("policies")
}

fn pod(labels: serde_json::Value, annotations: serde_json::Value, status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "api-0", "namespace": "shop", "uid": "u-1", "labels": labels, "annotations": annotations},
        "spec": {"nodeName": "node-1", "containers": [
            {"name": "app", "ports": [
                {"containerPort": 8080},
                {"containerPort": 9090, "protocol": "TCP"},
                {"containerPort": 5353, "protocol": "UDP"}
            ]},
            {"name": "sidecar", "ports": [{"containerPort": 9090}, {"containerPort": 15000}]}
        ]},
        "status": status,
    }))
    .expect("pod json")
}

fn running() -> serde_json::Value {
    json!({"phase": "Running", "podIP": "10.1.0.7", "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}]})
}

fn k8s() -> KubernetesConfig {
    KubernetesConfig::default()
}

fn bound(b: Binding) -> Bound {
    match b {
        Binding::Enrol(b) => b,
        other => panic!("expected Enrol, got {other:?}"),
    }
}

#[test]
fn labels_select_the_policy_and_ips_come_from_pod_ips() {
    let p = pod(
        json!({"app": "orders", "nodeward.io/enabled": "true"}),
        json!({}),
        running(),
    );
    assert_eq!(workload_name(&p), "shop/api-0");
    let b = bound(bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None));
    assert_eq!(b.policy, PodPolicy::Named("orders".into()));
    assert_eq!(b.ports, [8080]);
    assert_eq!(
        b.ips,
        [
            "10.1.0.7".parse::<IpAddr>().expect("v4"),
            "fd00::7".parse().expect("v6")
        ]
    );
    assert_eq!(b.uid, "u-1");
    assert_eq!(b.labels.get("app").map(String::as_str), Some("orders"));
}

#[test]
fn pod_ip_is_the_fallback_when_pod_ips_is_absent() {
    let p = pod(
        json!({"app": "orders"}),
        json!({}),
        json!({"phase": "Running", "podIP": "10.1.0.8"}),
    );
    assert_eq!(
        bound(bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None)).ips,
        ["10.1.0.8".parse::<IpAddr>().expect("ip")]
    );
}

#[test]
fn the_annotation_picks_the_policy_over_the_labels() {
    let p = pod(
        json!({"app": "orders"}),
        json!({"nodeward.io/policy": "web"}),
        running(),
    );
    let b = bound(bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None));
    assert_eq!(b.policy, PodPolicy::Named("web".into()));
    // web protects its ports plus every TCP containerPort, deduplicated; UDP is left alone.
    assert_eq!(b.ports, [80, 8080, 9090, 15000]);

    // A configurable annotation key.
    let custom = KubernetesConfig {
        policy_annotation: "example.com/policy".into(),
        ..k8s()
    };
    let p = pod(json!({}), json!({"example.com/policy": "orders"}), running());
    assert_eq!(
        bound(bind_in(&p, &custom, &Catalog::new(&policies(), &custom), None)).policy,
        PodPolicy::Named("orders".into())
    );
}

#[test]
fn a_missing_policy_is_enrolled_deny_all_on_the_container_ports() {
    let p = pod(
        json!({"app": "orders"}),
        json!({"nodeward.io/policy": "ghost"}),
        running(),
    );
    let b = bound(bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None));
    match &b.policy {
        PodPolicy::Missing(why) => assert!(why.contains("\"ghost\"") && why.contains("nodeward.io/policy"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.ports, [8080, 9090, 15000]);

    let p = pod(json!({"app": "unknown"}), json!({}), running());
    let b = bound(bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None));
    assert_eq!(
        b.policy,
        PodPolicy::Missing("no policy selects the pod's labels".into())
    );
}

#[test]
fn nothing_to_protect_fails_with_the_reason() {
    let mut p = pod(json!({"app": "portless"}), json!({}), running());
    match bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None) {
        Binding::Failed(why) => assert!(why.contains("policy portless lists no `ports`"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Missing policy and no container ports: nothing can be closed.
    p.metadata.labels = None;
    if let Some(s) = p.spec.as_mut() {
        for c in &mut s.containers {
            c.ports = None;
        }
    }
    match bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None) {
        Binding::Failed(why) => assert!(why.contains("no TCP containerPort"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn not_running_or_without_ip_waits() {
    for (status, fragment) in [
        (json!({"phase": "Pending"}), "Pending"),
        (json!({"phase": "Succeeded", "podIP": "10.1.0.7"}), "Succeeded"),
        (json!({"phase": "Running"}), "no pod IP"),
        (json!({"phase": "Running", "podIP": "not-an-ip"}), "no pod IP"),
        (json!({}), "Unknown"),
    ] {
        let p = pod(json!({"app": "orders"}), json!({}), status);
        match bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None) {
            Binding::Waiting(why) => assert!(why.contains(fragment), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn host_network_pods_are_refused_even_before_running() {
    for status in [running(), json!({"phase": "Pending"})] {
        let mut p = pod(json!({"app": "orders"}), json!({}), status);
        if let Some(s) = p.spec.as_mut() {
            s.host_network = Some(true);
        }
        match bind_in(&p, &k8s(), &Catalog::new(&policies(), &k8s()), None) {
            Binding::Refused(why) => assert!(why.contains("hostNetwork"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
