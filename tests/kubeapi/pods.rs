//! Pods: list and watch with the apiserver's resourceVersion semantics,
//! selectors, pagination, outages and compaction; events from `Recorder`.

use super::*;

#[tokio::test]
async fn list_applies_label_and_field_selectors() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    fake.apply_pod(pod("apps", "web-1", "node-1", &[("app", "web"), ("tier", "front")]));
    fake.apply_pod(pod("apps", "web-2", "node-2", &[("app", "web")]));
    fake.apply_pod(pod("apps", "db-1", "node-1", &[("app", "db")]));
    fake.apply_pod(pod("other", "bare", "node-1", &[]));
    fake.apply_pod(
        PodBuilder::new("other", "web-3")
            .node("node-1")
            .label("app", "web")
            .running("10.0.0.3")
            .build(),
    );

    let all: Api<Pod> = Api::all(client.clone());
    let cases = [
        ("app=web", "spec.nodeName=node-1", set(&["apps/web-1", "other/web-3"])),
        ("app==web", "", set(&["apps/web-1", "apps/web-2", "other/web-3"])),
        ("app!=web", "spec.nodeName=node-1", set(&["apps/db-1", "other/bare"])),
        (
            "app in (web,db),tier notin (back)",
            "metadata.namespace=apps",
            set(&["apps/web-1", "apps/web-2", "apps/db-1"]),
        ),
        ("!app", "", set(&["other/bare"])),
        ("tier", "", set(&["apps/web-1"])),
        ("", "status.phase=Running", set(&["other/web-3"])),
        ("", "spec.nodeName!=node-1,metadata.name=web-2", set(&["apps/web-2"])),
    ];
    for (labels, fields, want) in cases {
        let mut lp = ListParams::default();
        if !labels.is_empty() {
            lp = lp.labels(labels);
        }
        if !fields.is_empty() {
            lp = lp.fields(fields);
        }
        let list = within("list", all.list(&lp)).await.expect("list");
        assert_eq!(names(list.items.iter()), want, "labels {labels:?} fields {fields:?}");
        let rv: u64 = list
            .metadata
            .resource_version
            .as_deref()
            .expect("list rv")
            .parse()
            .expect("numeric rv");
        assert!(list.items.iter().all(|p| {
            p.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                <= Some(rv)
        }));
    }

    let namespaced: Api<Pod> = Api::namespaced(client.clone(), "other");
    let list = within("namespaced list", namespaced.list(&ListParams::default()))
        .await
        .expect("list");
    assert_eq!(names(list.items.iter()), set(&["other/bare", "other/web-3"]));
    let got = within("get", namespaced.get("web-3")).await.expect("get pod");
    assert_eq!(got.status.and_then(|s| s.pod_ip).as_deref(), Some("10.0.0.3"));
    assert!(got.metadata.uid.is_some() && got.metadata.creation_timestamp.is_some());
    let status = within("status", namespaced.get_status("web-3"))
        .await
        .expect("pods/status");
    assert_eq!(status.metadata.uid, got.metadata.uid);
    let missing = within("get missing", namespaced.get("nope"))
        .await
        .expect_err("no such pod");
    assert_eq!(api_code(&missing), Some(404));

    // The query kube sent is what the fake recorded.
    let last_list = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/pods")
        .expect("a cluster-wide list was recorded");
    assert_eq!(
        last_list.param("fieldSelector"),
        Some("spec.nodeName!=node-1,metadata.name=web-2")
    );

    // Bad selectors are rejected as the apiserver rejects them.
    for (labels, fields) in [("app in (web", ""), ("", "spec.containers=x"), ("", "nonsense")] {
        let lp = ListParams {
            label_selector: Some(labels.into()),
            field_selector: Some(fields.into()),
            ..Default::default()
        };
        let err = within("bad list", all.list(&lp)).await.expect_err("bad selector");
        assert_eq!(api_code(&err), Some(400), "{labels:?} {fields:?}: {err}");
    }
}

#[tokio::test]
async fn pagination_serves_one_snapshot_and_expires() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<Pod> = Api::namespaced(client(&fake, &dir).await, "ns");
    for i in 0..5 {
        fake.apply_pod(pod("ns", &format!("p{i}"), "node-1", &[("app", "web")]));
    }
    let first = within("page 1", api.list(&ListParams::default().limit(2)))
        .await
        .expect("page 1");
    assert_eq!(names(first.items.iter()), set(&["ns/p0", "ns/p1"]));
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("a continue token");
    let snapshot_rv = first.metadata.resource_version.clone();

    // Changes after the first page do not show in later pages.
    fake.apply_pod(pod("ns", "p2", "node-1", &[("app", "changed")]));
    fake.apply_pod(pod("ns", "p25", "node-1", &[]));
    fake.delete_pod("ns", "p4");

    let mut seen = names(first.items.iter());
    let mut token = Some(token);
    let mut pages = 1;
    while let Some(t) = token {
        let page = within(
            "next page",
            api.list(&ListParams::default().limit(2).continue_token(&t)),
        )
        .await
        .expect("next page");
        assert_eq!(
            page.metadata.resource_version, snapshot_rv,
            "every page is at the first page's snapshot"
        );
        for p in &page.items {
            if p.metadata.name.as_deref() == Some("p2") {
                assert_eq!(
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("app"))
                        .map(String::as_str),
                    Some("web")
                );
            }
        }
        seen.extend(names(page.items.iter()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        pages += 1;
        assert!(pages <= 5, "pagination did not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, set(&["ns/p0", "ns/p1", "ns/p2", "ns/p3", "ns/p4"]));

    // A new list sees the changes; its token expires with the history.
    let fresh = within("fresh list", api.list(&ListParams::default().limit(2)))
        .await
        .expect("fresh list");
    let token = fresh.metadata.continue_.expect("continue token");
    fake.apply_pod(pod("ns", "p9", "node-1", &[]));
    fake.compact();
    let err = within(
        "expired continue",
        api.list(&ListParams::default().limit(2).continue_token(&token)),
    )
    .await
    .expect_err("continue token older than the history");
    assert_eq!(api_code(&err), Some(410));
    let all = within("full list", api.list(&ListParams::default()))
        .await
        .expect("list");
    assert_eq!(
        names(all.items.iter()),
        set(&["ns/p0", "ns/p1", "ns/p2", "ns/p25", "ns/p3", "ns/p9"])
    );
}

async fn next_event(stream: &mut (impl Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin)) -> WatchEvent<Pod> {
    within("a watch event", stream.next())
        .await
        .expect("watch stream ended")
        .expect("watch event")
}

fn describe(event: &WatchEvent<Pod>) -> String {
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    match event {
        WatchEvent::Added(p) => format!("ADDED {}", name(p)),
        WatchEvent::Modified(p) => format!("MODIFIED {}", name(p)),
        WatchEvent::Deleted(p) => format!("DELETED {}", name(p)),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(s) => format!("ERROR {}", s.code),
    }
}

#[tokio::test]
async fn watch_follows_changes_and_selector_transitions() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<Pod> = Api::all(client(&fake, &dir).await);
    fake.apply_pod(pod("ns", "before", "node-1", &[("app", "web")]));
    let list = within("list", api.list(&ListParams::default().labels("app=web")))
        .await
        .expect("list");
    let rv = list.metadata.resource_version.expect("list rv");
    let wp = WatchParams::default().labels("app=web").fields("spec.nodeName=node-1");
    let mut stream = within("watch", api.watch(&wp, &rv)).await.expect("watch").boxed();

    fake.apply_pod(pod("ns", "a", "node-1", &[("app", "web")]));
    fake.apply_pod(pod("ns", "elsewhere", "node-2", &[("app", "web")]));
    fake.apply_pod(
        PodBuilder::new("ns", "a")
            .node("node-1")
            .label("app", "web")
            .running("10.1.0.1")
            .build(),
    );
    fake.apply_pod(pod("ns", "a", "node-1", &[("app", "db")]));
    fake.apply_pod(pod("ns", "a", "node-1", &[("app", "web")]));
    fake.delete_pod("ns", "a");
    let mut got = Vec::new();
    let mut last_rv = 0u64;
    for _ in 0..5 {
        let event = next_event(&mut stream).await;
        if let WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) = &event {
            let rv: u64 = p
                .metadata
                .resource_version
                .as_deref()
                .expect("rv")
                .parse()
                .expect("numeric rv");
            assert!(rv > last_rv, "resourceVersions increase");
            last_rv = rv;
        }
        got.push(describe(&event));
    }
    assert_eq!(got, ["ADDED a", "MODIFIED a", "DELETED a", "ADDED a", "DELETED a"]);
    assert_eq!(fake.open_watches(), 1);

    // Resuming from the list's version replays the same history.
    let mut replay = within("watch replay", api.watch(&wp, &rv))
        .await
        .expect("watch")
        .boxed();
    let mut again = Vec::new();
    for _ in 0..5 {
        again.push(describe(&next_event(&mut replay).await));
    }
    assert_eq!(again, got);

    // After compaction: open watches get ERROR 410 and end; old versions are gone.
    fake.compact();
    let WatchEvent::Error(status) = next_event(&mut stream).await else {
        panic!("expected an ERROR event after compaction")
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(
        within("end of stream", stream.next()).await.is_none(),
        "the stream ends after ERROR 410"
    );
    let mut old = within("watch old rv", api.watch(&wp, &rv))
        .await
        .expect("watch is accepted")
        .boxed();
    let WatchEvent::Error(status) = next_event(&mut old).await else {
        panic!("expected ERROR 410 for a compacted resourceVersion")
    };
    assert_eq!(status.code, 410);
    assert!(within("end of stream", old.next()).await.is_none());
}

#[tokio::test]
async fn watch_bookmarks_timeouts_and_initial_events() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<Pod> = Api::namespaced(client(&fake, &dir).await, "ns");
    fake.apply_pod(pod("ns", "one", "node-1", &[]));

    // No resourceVersion: the current state as ADDED first.
    let mut with = within("watch", api.watch(&WatchParams::default(), "0"))
        .await
        .expect("watch")
        .boxed();
    assert_eq!(describe(&next_event(&mut with).await), "ADDED one");
    let mut without = within("watch", api.watch(&WatchParams::default().disable_bookmarks(), "0"))
        .await
        .expect("watch")
        .boxed();
    assert_eq!(describe(&next_event(&mut without).await), "ADDED one");
    fake.apply_pod(pod("other", "unrelated", "node-1", &[]));
    fake.bookmark();
    fake.apply_pod(pod("ns", "two", "node-1", &[]));
    let rv = fake.resource_version();
    let bookmark_rv = rv.parse::<u64>().expect("rv") - 1;
    assert_eq!(
        describe(&next_event(&mut with).await),
        format!("BOOKMARK {bookmark_rv}")
    );
    assert_eq!(describe(&next_event(&mut with).await), "ADDED two");
    assert_eq!(
        describe(&next_event(&mut without).await),
        "ADDED two",
        "no bookmark without allowWatchBookmarks"
    );

    // timeoutSeconds ends the stream cleanly.
    let started = Instant::now();
    let mut short = within("watch", api.watch(&WatchParams::default().timeout(1), &rv))
        .await
        .expect("watch")
        .boxed();
    assert!(within("timeout end", short.next()).await.is_none());
    assert!(started.elapsed() >= Duration::from_secs(1));

    // sendInitialEvents (kube's StreamingList): state, then the end bookmark.
    let wp = WatchParams::streaming_lists();
    let mut streaming = within("streaming watch", api.watch(&wp, "0"))
        .await
        .expect("watch")
        .boxed();
    let mut got = Vec::new();
    for _ in 0..3 {
        match next_event(&mut streaming).await {
            WatchEvent::Bookmark(b) => {
                assert!(b.metadata.annotations.contains_key("k8s.io/initial-events-end"));
                got.push(format!("BOOKMARK {}", b.metadata.resource_version));
            }
            other => got.push(describe(&other)),
        }
    }
    assert_eq!(
        got,
        ["ADDED one".to_string(), "ADDED two".into(), format!("BOOKMARK {rv}")]
    );
    // The apiserver's validation: initial events need bookmarks.
    let url = "/api/v1/namespaces/ns/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan";
    let request = http::Request::get(url).body(Vec::new()).expect("request");
    let bad = within("invalid watch", api.clone().into_client().request_text(request)).await;
    assert_eq!(bad.err().as_ref().and_then(api_code), Some(422));
}
