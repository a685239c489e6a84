//! Watches of custom resources with the pods' semantics: kube's `watcher`
//! and `reflector` for a `CustomResource` type and for `DynamicObject`, raw
//! watch events (ADDED, MODIFIED for status writes, DELETED when leaving a
//! label selector), resuming from a resourceVersion, bookmarks, and the end
//! of a watch when its CRD is deleted.

use futures_util::TryStreamExt;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::custom::{IdentityPolicy, dynamic_resource, policy, rv};
use super::*;

async fn next(stream: &mut (impl Stream<Item = kube::Result<WatchEvent<IdentityPolicy>>> + Unpin)) -> String {
    let event = within("a watch event", stream.next())
        .await
        .expect("the stream is open")
        .expect("an event");
    match event {
        WatchEvent::Added(p) => format!("ADDED {}", p.metadata.name.unwrap_or_default()),
        WatchEvent::Modified(p) => format!(
            "MODIFIED {} status={}",
            p.metadata.name.unwrap_or_default(),
            p.status.map(|s| s.nodes.len()).unwrap_or(0)
        ),
        WatchEvent::Deleted(p) => format!("DELETED {}", p.metadata.name.unwrap_or_default()),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {}", e.code),
    }
}

#[tokio::test]
async fn watches_of_custom_resources_follow_writes_and_selectors() {
    let fake = FakeKubeApi::start().await;
    fake.apply(&<IdentityPolicy as kube::CustomResourceExt>::crd())
        .expect("crd");
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    let api: Api<IdentityPolicy> = Api::namespaced(client.clone(), "shop");
    let pp = PostParams::default();
    let first = within(
        "create",
        api.create(&pp, &policy("orders", "enforce", &[("team", "a")])),
    )
    .await
    .expect("created");

    let wp = WatchParams::default().labels("team=a");
    let mut from_now = std::pin::pin!(within("watch", api.watch(&wp, "0")).await.expect("watch"));
    assert_eq!(next(&mut from_now).await, "ADDED orders", "the current state first");
    let mut resumed = std::pin::pin!(within("resume", api.watch(&wp, &rv(&first))).await.expect("watch"));

    let status = Patch::Merge(json!({"status": {"nodes": {"node-a": 1}}}));
    within("status", api.patch_status("orders", &PatchParams::default(), &status))
        .await
        .expect("status written");
    within(
        "second",
        api.create(&pp, &policy("payments", "audit", &[("team", "a")])),
    )
    .await
    .expect("created");
    let relabel = Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}}));
    within("relabel", api.patch("orders", &PatchParams::default(), &relabel))
        .await
        .expect("relabelled");
    within("delete", api.delete("payments", &DeleteParams::default()))
        .await
        .expect("deleted");
    fake.bookmark();
    let want = [
        "MODIFIED orders status=1",
        "ADDED payments",
        "DELETED orders",
        "DELETED payments",
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(next(&mut from_now).await, *w, "event {i} of the open watch");
        assert_eq!(next(&mut resumed).await, *w, "event {i} replayed from {}", rv(&first));
    }
    assert_eq!(
        next(&mut from_now).await,
        format!("BOOKMARK {}", fake.resource_version())
    );

    // kube's watcher + reflector, typed and dynamic, converge on the store.
    let (typed, writer) = reflector::store::<IdentityPolicy>();
    let typed_task = tokio::spawn(
        reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .try_for_each(|_| async { Ok(()) }),
    );
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &dynamic_resource());
    let writer = reflector::store::Writer::<DynamicObject>::new(dynamic_resource());
    let untyped = writer.as_reader();
    let dynamic_task = tokio::spawn(
        reflector::reflector(writer, watcher(dynamic, watcher::Config::default()))
            .default_backoff()
            .try_for_each(|_| async { Ok(()) }),
    );
    within("create", api.create(&pp, &policy("billing", "enforce", &[])))
        .await
        .expect("created");
    let deadline = Instant::now() + WAIT;
    let names = |n: Vec<Option<String>>| n.into_iter().flatten().collect::<BTreeSet<_>>();
    loop {
        let have_typed = names(typed.state().iter().map(|p| p.metadata.name.clone()).collect());
        let have_dynamic = names(untyped.state().iter().map(|p| p.metadata.name.clone()).collect());
        if have_typed == set(&["billing", "orders"]) && have_dynamic == have_typed {
            break;
        }
        assert!(Instant::now() < deadline, "reflectors: {have_typed:?} {have_dynamic:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let orders = typed
        .get(&ObjectRef::new("orders").within("shop"))
        .expect("in the store");
    assert_eq!(orders.status.as_ref().map(|s| s.nodes.len()), Some(1));

    // Deleting the CRD: every object DELETED, then the watch ends.
    let mut until_gone = std::pin::pin!(
        within("watch", api.watch(&WatchParams::default(), &fake.resource_version()))
            .await
            .expect("watch")
    );
    assert!(fake.delete_object(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "identitypolicies.nodeward.io"
    ));
    let mut deleted = BTreeSet::new();
    deleted.insert(next(&mut until_gone).await);
    deleted.insert(next(&mut until_gone).await);
    assert_eq!(deleted, set(&["DELETED billing", "DELETED orders"]));
    let end = within("end of stream", until_gone.next()).await;
    assert!(end.is_none(), "the watch ends with its resource: {end:?}");
    typed_task.abort();
    dynamic_task.abort();
}
