//! The binding rules over the file's policies and IdentityPolicies.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::k8s::policies::PolicyObject;

fn config() -> Arc<Config> {
    let yaml = r#"
providers: [{name: corp, issuer: "https://idp.example", audiences: [api]}]
policies:
  - {name: orders, selector: {app: orders}, ports: [8080], rules: [{name: all, allow: anonymous}]}
  - {name: web, selector: {tier: web}, ports: [80]}
"#;
    Arc::new(Config::parse_with_env(yaml, Path::new("t.yaml"), |_| None).expect("config"))
}

fn object(ns: &str, name: &str, generation: i64, spec: Value) -> (String, Arc<PolicyObject>) {
    let o = PolicyObject {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{ns}-{name}"),
        generation,
        resource_version: generation.to_string(),
        spec,
        status: Default::default(),
    };
    (o.key(), Arc::new(o))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn key_of(p: &PodPolicy) -> Option<(&str, i64)> {
    match p {
        PodPolicy::Resource(r) => Some((r.key.as_str(), r.generation)),
        _ => None,
    }
}

#[test]
fn namespaced_first_by_annotation_then_selector_never_across_namespaces() {
    let config = config();
    let objects: PolicyObjects = [
        object(
            "shop",
            "orders",
            1,
            json!({"selector": {"app": "orders"}, "ports": [8080]}),
        ),
        object("shop", "web", 1, json!({"selector": {"tier": "web"}, "ports": [80]})),
        object("other", "everything", 1, json!({"ports": [9000]})),
    ]
    .into();
    let catalog = Compiler::default().catalog(&config, &objects);
    let orders = labels(&[("app", "orders")]);
    // The annotation names the namespace's IdentityPolicy before the file's policy of that name.
    let (p, c) = catalog.choose("shop", &orders, Some("orders"), None);
    assert_eq!(key_of(&p), Some(("shop/orders", 1)));
    assert_eq!(c.map(|c| c.name.clone()).as_deref(), Some("shop/orders"));
    // Another namespace has no IdentityPolicy `orders`: the file's.
    let (p, _) = catalog.choose("payments", &orders, Some("orders"), None);
    assert_eq!(p, PodPolicy::Named("orders".into()));
    // No annotation: the namespace's selector; `other/everything` never reaches shop.
    assert_eq!(
        key_of(&catalog.choose("shop", &orders, None, None).0),
        Some(("shop/orders", 1))
    );
    assert_eq!(
        key_of(&catalog.choose("other", &orders, None, None).0),
        Some(("other/everything", 1))
    );
    // No IdentityPolicy in the namespace: the file's selectors.
    assert_eq!(
        catalog.choose("payments", &orders, None, None).0,
        PodPolicy::Named("orders".into())
    );
    let (p, _) = catalog.choose("payments", &labels(&[("app", "x")]), Some("nope"), None);
    assert!(
        matches!(&p, PodPolicy::Missing(why) if why.contains("no IdentityPolicy payments/nope")),
        "{p:?}"
    );
}

#[test]
fn two_selecting_policies_are_a_conflict_in_either_source() {
    let config = config();
    let objects: PolicyObjects = [
        object("shop", "a", 1, json!({"selector": {"app": "orders"}})),
        object("shop", "b", 1, json!({})),
    ]
    .into();
    let catalog = Compiler::default().catalog(&config, &objects);
    let (p, c) = catalog.choose("shop", &labels(&[("app", "orders")]), None, None);
    assert_eq!(
        p,
        PodPolicy::Conflict(
            vec!["shop/a".into(), "shop/b".into()],
            "selected by several IdentityPolicies: shop/a, shop/b".into()
        )
    );
    assert!(c.is_none());
    // The file's policies: two selectors match one pod.
    let (p, _) = catalog.choose("payments", &labels(&[("app", "orders"), ("tier", "web")]), None, None);
    assert!(
        matches!(&p, PodPolicy::Conflict(keys, why) if keys.is_empty() && why.contains("orders, web")),
        "{p:?}"
    );
}

#[test]
fn a_refused_update_keeps_bound_pods_on_the_last_good_version_and_denies_new_ones() {
    let config = config();
    let mut compiler = Compiler::default();
    let good = json!({"selector": {"app": "orders"}, "ports": [8080], "rules": [{"name": "r", "require": {"providers": ["corp"]}}]});
    let catalog = compiler.catalog(&config, &[object("shop", "orders", 1, good)].into());
    let orders = labels(&[("app", "orders")]);
    let (bound, _) = catalog.choose("shop", &orders, None, None);
    assert_eq!(key_of(&bound), Some(("shop/orders", 1)));

    let bad = json!({"selector": {"app": "orders"}, "rules": [{"name": "r", "require": {"providers": ["corpp"]}}]});
    let catalog = compiler.catalog(&config, &[object("shop", "orders", 2, bad)].into());
    let c = catalog.resources().next().expect("compiled");
    assert_eq!(
        c.verdict.as_ref().err().map(String::as_str),
        Some("IdentityPolicy shop/orders: key `spec.rules[0].require.providers[0]`: no provider named \"corpp\"")
    );
    let (kept, policy) = catalog.choose("shop", &orders, None, Some(&bound));
    assert_eq!(key_of(&kept), Some(("shop/orders", 1)), "the pod stays on generation 1");
    assert_eq!(policy.map(|p| p.ports.clone()), Some(vec![8080]));
    let (new, policy) = catalog.choose("shop", &orders, None, None);
    assert!(
        matches!(&new, PodPolicy::NotAccepted(key, why) if key == "shop/orders" && why.contains("corpp")),
        "{new:?}"
    );
    assert!(policy.is_none());

    // A refused spec that cannot even be read selects nothing new.
    let catalog = compiler.catalog(
        &config,
        &[object("shop", "orders", 3, json!({"selector": "app=orders"}))].into(),
    );
    assert_eq!(
        key_of(&catalog.choose("shop", &orders, None, Some(&bound)).0),
        Some(("shop/orders", 1))
    );
    assert_eq!(
        catalog.choose("shop", &orders, None, None).0,
        PodPolicy::Named("orders".into())
    );
}

#[test]
fn the_spec_is_checked_like_the_file() {
    let config = config();
    for (spec, key) in [
        (json!({"name": "x"}), "spec.name"),
        (
            json!({"rules": [{"name": "r", "allow": "anonymous", "deny": true}]}),
            "spec.rules[0]",
        ),
        (json!({"forward_claims": {"host": "sub"}}), "spec.forward_claims.host"),
        (json!({"porst": [80]}), "spec.porst"),
        (json!("not an object"), "spec"),
    ] {
        let (_, o) = object("shop", "x", 1, spec.clone());
        let c = compile(&config, &o, None);
        let why = c.verdict.expect_err("refused");
        assert!(
            why.starts_with(&format!("IdentityPolicy shop/x: key `{key}`")),
            "{spec}: {why}"
        );
    }
    let text = "apiVersion: nodeward.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: a, namespace: shop}\nspec: {ports: [80]}\n---\nkind: ConfigMap\n---\nkind: IdentityPolicy\nmetadata: {name: b}\nspec: {mode: loud}\n";
    let checked = check_manifests(&config, text);
    assert_eq!(checked.len(), 2);
    assert_eq!(checked[0], ("IdentityPolicy shop/a".into(), Ok(())));
    assert!(
        checked[1].1.as_ref().is_err_and(|e| e.contains("spec.mode")),
        "{checked:?}"
    );
}
