//! The life of custom resources and their CRDs: finalizers holding a
//! deletion (deletionTimestamp, no new finalizers, gone with the last one),
//! delete preconditions, a cluster-scoped CRD without a status subresource
//! written through the API (status is then an ordinary field), and deleting
//! a CRD deleting its objects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::json;

use super::custom::{IdentityPolicy, policy, rv};
use super::*;

#[tokio::test]
async fn finalizers_hold_deletion_and_preconditions_guard_it() {
    let fake = FakeKubeApi::start().await;
    fake.apply(&IdentityPolicy::crd()).expect("crd");
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    let api: Api<IdentityPolicy> = Api::namespaced(client.clone(), "shop");
    let pp = PostParams::default();
    let mut held = policy("held", "enforce", &[]);
    held.metadata.finalizers = Some(vec!["nodeward.io/cleanup".into()]);
    let created = within("create", api.create(&pp, &held)).await.expect("created");

    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..Default::default()
    };
    let err = within("precondition", api.delete("held", &stale))
        .await
        .expect_err("409");
    assert_eq!(
        api_status(&err).2,
        format!(
            r#"Operation cannot be fulfilled on identitypolicies.nodeward.io "held": Precondition failed: ResourceVersion in precondition: 1, ResourceVersion in object meta: {}"#,
            rv(&created)
        )
    );
    let marked = within("delete", api.delete("held", &DeleteParams::default()))
        .await
        .expect("marked");
    let marked = marked.left().expect("the object, still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(within("get", api.get("held")).await.is_ok(), "held by its finalizer");
    let more = Patch::Merge(json!({"metadata": {"finalizers": ["nodeward.io/cleanup", "other/x"]}}));
    let err = within("add finalizer", api.patch("held", &PatchParams::default(), &more))
        .await
        .expect_err("forbidden");
    assert!(
        api_status(&err)
            .2
            .contains("no new finalizers can be added if the object is being deleted")
    );
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    within("release", api.patch("held", &PatchParams::default(), &release))
        .await
        .expect("released");
    assert_eq!(
        within("gone", api.get("held")).await.err().as_ref().and_then(api_code),
        Some(404)
    );
}

#[tokio::test]
async fn a_cluster_scoped_crd_without_status_through_the_api_and_its_deletion() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    let pp = PostParams::default();
    // A cluster-scoped CRD without a status subresource, through the API.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let definition = |name: &str| -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {"group": "nodeward.io", "scope": "Cluster",
                     "names": {"plural": "nodeprofiles", "kind": "NodeProfile"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
        }))
        .expect("a CRD")
    };
    let err = within("bad name", crds.create(&pp, &definition("profiles.nodeward.io")))
        .await
        .expect_err("422");
    assert!(
        api_status(&err).2.contains(
            r#"metadata.name: Invalid value: "profiles.nodeward.io": must be spec.names.plural+"."+spec.group"#
        )
    );
    within("crd", crds.create(&pp, &definition("nodeprofiles.nodeward.io")))
        .await
        .expect("created");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nodeward.io", "v1", "NodeProfile"),
        "nodeprofiles",
    );
    let profiles: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let profile: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "nodeward.io/v1", "kind": "NodeProfile", "metadata": {"name": "node-1"},
        "spec": {"ports": [8080]}, "status": {"ready": false},
    }))
    .expect("object");
    let created = within("profile", profiles.create(&pp, &profile))
        .await
        .expect("created");
    assert_eq!(
        created.data["status"]["ready"], false,
        "no status subresource: status is an ordinary field"
    );
    let mut ready = created.clone();
    ready.data["status"]["ready"] = json!(true);
    let replaced = within("replace", profiles.replace("node-1", &pp, &ready))
        .await
        .expect("replaced");
    assert_eq!(
        replaced.metadata.generation,
        Some(2),
        "any change outside metadata bumps it"
    );
    assert_eq!(
        within("status", profiles.get_status("node-1"))
            .await
            .err()
            .as_ref()
            .and_then(api_code),
        Some(404)
    );
    let namespaced: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &resource);
    assert_eq!(
        within("scope", namespaced.get("node-1"))
            .await
            .err()
            .as_ref()
            .and_then(api_code),
        Some(404)
    );
    let lp = ListParams::default().fields("metadata.namespace=shop");
    assert_eq!(
        within("field", profiles.list(&lp))
            .await
            .err()
            .as_ref()
            .and_then(api_code),
        Some(400)
    );

    // Deleting the CRD deletes its objects and stops serving them.
    within(
        "delete crd",
        crds.delete("nodeprofiles.nodeward.io", &DeleteParams::default()),
    )
    .await
    .expect("deleted");
    assert_eq!(
        within("list", profiles.list(&ListParams::default()))
            .await
            .err()
            .as_ref()
            .and_then(api_code),
        Some(404)
    );
    assert_eq!(fake.get_object("nodeward.io/v1", "NodeProfile", None, "node-1"), None);
}

#[tokio::test]
async fn a_crd_serves_each_served_version_of_its_objects() {
    let fake = FakeKubeApi::start().await;
    let version = |name: &str, served: bool, storage: bool| {
        json!({"name": name, "served": served, "storage": storage,
               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
    };
    fake.apply(&json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "routes.nodeward.io"},
        "spec": {"group": "nodeward.io", "scope": "Namespaced", "names": {"plural": "routes", "kind": "Route"},
                 "versions": [version("v1", true, true), version("v1beta1", true, false), version("v1alpha1", false, false)]},
    }))
    .expect("a CRD with three versions");
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    let at = |v: &str| -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("nodeward.io", v, "Route");
        Api::namespaced_with(
            client.clone(),
            "shop",
            &ApiResource::from_gvk_with_plural(&gvk, "routes"),
        )
    };
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "nodeward.io/v1beta1", "kind": "Route", "metadata": {"name": "r"}, "spec": {"to": "orders"}
    }))
    .expect("object");
    let created = within(
        "create at v1beta1",
        at("v1beta1").create(&PostParams::default(), &route),
    )
    .await
    .expect("created");
    assert_eq!(
        created.types.as_ref().map(|t| t.api_version.as_str()),
        Some("nodeward.io/v1beta1")
    );
    let stored = fake
        .get_object("nodeward.io/v1", "Route", Some("shop"), "r")
        .expect("stored");
    assert_eq!(stored["apiVersion"], "nodeward.io/v1", "stored at the storage version");
    let got = within("get at v1", at("v1").get("r")).await.expect("get");
    assert_eq!(got.types.map(|t| t.api_version), Some("nodeward.io/v1".to_string()));
    let list = within("list at v1beta1", at("v1beta1").list(&ListParams::default()))
        .await
        .expect("list");
    assert_eq!(
        list.items[0].types.as_ref().map(|t| t.api_version.as_str()),
        Some("nodeward.io/v1beta1")
    );
    let mut events = std::pin::pin!(
        within("watch", at("v1beta1").watch(&WatchParams::default(), "0"))
            .await
            .expect("watch")
    );
    match within("event", events.next()).await.expect("open").expect("event") {
        WatchEvent::Added(o) => assert_eq!(o.types.map(|t| t.api_version), Some("nodeward.io/v1beta1".to_string())),
        other => panic!("expected ADDED, got {other:?}"),
    }
    let err = within("not served", at("v1alpha1").get("r")).await.expect_err("404");
    assert_eq!(api_code(&err), Some(404));
}
