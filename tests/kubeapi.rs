//! The fake Kubernetes API (`nodeward_testkit::kubeapi`) driven by kube-rs
//! itself — its client, `watcher`, `reflector` and events `Recorder` — over
//! real HTTP on loopback, so the fake is held to what kube-rs expects of an
//! apiserver.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder, RequestRecord, pod};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

async fn client(api: &FakeKubeApi, dir: &TempDir) -> Client {
    let path = api.write_kubeconfig(dir.path());
    client_from(&path).await
}

async fn client_from(path: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config from the fake's kubeconfig");
    Client::try_from(config).expect("kube client")
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

fn names<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<String> {
    pods.into_iter()
        .map(|p| {
            let m = &p.metadata;
            format!(
                "{}/{}",
                m.namespace.as_deref().unwrap_or(""),
                m.name.as_deref().unwrap_or("")
            )
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Polls the reflector store until it holds exactly `want` (by ns/name) and
/// `extra` holds for it.
async fn converge(store: &Store<Pod>, want: &BTreeSet<String>, extra: impl Fn(&[std::sync::Arc<Pod>]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let state = store.state();
        if names(state.iter().map(AsRef::as_ref)) == *want && extra(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reflector store did not converge: have {:?}, want {want:?}",
            names(state.iter().map(AsRef::as_ref))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the watcher emitted, for the test to inspect.
#[derive(Debug)]
enum Seen {
    Event(&'static str),
    Error(String, Option<u16>),
}

/// Runs `watcher` + `reflector` (with kube's default backoff, as a real
/// consumer would) in a task; the task ends when the guard drops.
struct Reflecting {
    store: Store<Pod>,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reflecting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reflecting {
    fn start(api: Api<Pod>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let (tx, seen) = mpsc::unbounded_channel();
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let task = tokio::spawn(forward(stream, tx));
        Self { store, seen, task }
    }

    /// Everything seen so far.
    fn drain(&mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Ok(s) = self.seen.try_recv() {
            out.push(s);
        }
        out
    }
}

async fn forward(
    stream: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let seen = match item {
            Ok(watcher::Event::Init) => Seen::Event("Init"),
            Ok(watcher::Event::InitApply(_)) => Seen::Event("InitApply"),
            Ok(watcher::Event::InitDone) => Seen::Event("InitDone"),
            Ok(watcher::Event::Apply(_)) => Seen::Event("Apply"),
            Ok(watcher::Event::Delete(_)) => Seen::Event("Delete"),
            Err(e) => {
                let code = match &e {
                    watcher::Error::InitialListFailed(k)
                    | watcher::Error::WatchStartFailed(k)
                    | watcher::Error::WatchFailed(k) => api_code(k),
                    watcher::Error::WatchError(status) => Some(status.code),
                    watcher::Error::NoResourceVersion => None,
                };
                Seen::Error(e.to_string(), code)
            }
        };
        if tx.send(seen).is_err() {
            return;
        }
    }
}

fn lists(requests: &[RequestRecord]) -> usize {
    requests
        .iter()
        .filter(|r| r.path.ends_with("/pods") && !r.is_watch())
        .count()
}

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

#[tokio::test]
async fn reflector_converges_after_compaction() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<Pod> = Api::all(client(&fake, &dir).await);
    fake.apply_pod(pod("a", "p1", "node-1", &[]));
    fake.apply_pod(pod("a", "off-node", "node-2", &[]));
    let mut r = Reflecting::start(api, watcher::Config::default().fields("spec.nodeName=node-1"));
    converge(&r.store, &set(&["a/p1"]), |_| true).await;
    fake.apply_pod(pod("b", "p2", "node-1", &[]));
    converge(&r.store, &set(&["a/p1", "b/p2"]), |_| true).await;
    let lists_before = lists(&fake.requests());

    fake.compact();
    fake.delete_pod("a", "p1");
    fake.apply_pod(pod("b", "p3", "node-1", &[]));
    converge(&r.store, &set(&["b/p2", "b/p3"]), |_| true).await;
    let seen = r.drain();
    let gone = seen
        .iter()
        .position(|s| matches!(s, Seen::Error(_, Some(410))))
        .unwrap_or_else(|| panic!("the watcher reports the 410: {seen:?}"));
    let relisted: Vec<_> = seen[gone..]
        .iter()
        .filter_map(|s| match s {
            Seen::Event(e) => Some(*e),
            Seen::Error(..) => None,
        })
        .take(2)
        .collect();
    assert_eq!(
        relisted,
        ["Init", "InitApply"],
        "then starts over with a fresh list: {seen:?}"
    );
    let requests = fake.requests();
    assert!(lists(&requests) > lists_before, "a 410 makes the watcher re-list");
    let list = requests
        .iter()
        .find(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .expect("a list");
    assert_eq!(list.param("limit"), Some("500"), "kube's default page size");
    assert_eq!(list.param("fieldSelector"), Some("spec.nodeName=node-1"));
    let watch = requests.iter().find(|r| r.is_watch()).expect("a watch");
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
}

async fn wait_for_open_watch(fake: &FakeKubeApi) {
    within("the watch is open", async {
        while fake.open_watches() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn reflector_survives_an_outage() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<Pod> = Api::all(client(&fake, &dir).await);
    fake.apply_pod(pod("a", "p1", "node-1", &[]));
    let mut r = Reflecting::start(api, watcher::Config::default());
    converge(&r.store, &set(&["a/p1"]), |_| true).await;
    wait_for_open_watch(&fake).await;

    // A 500 is not retried by kube's client: the watcher yields the error
    // (and retries on its own backoff) while the store keeps the last state.
    fake.set_failing(Some(500));
    assert_eq!(fake.open_watches(), 0, "the outage breaks open watches");
    fake.apply_pod(pod("a", "p2", "node-1", &[]));
    let first_error = within("an error during the outage", async {
        loop {
            match r.seen.recv().await {
                Some(Seen::Error(message, code)) => return (message, code),
                Some(Seen::Event(_)) => {}
                None => panic!("watcher ended"),
            }
        }
    })
    .await;
    assert_eq!(first_error.1, Some(500), "{first_error:?}");
    assert!(
        first_error.0.starts_with("failed to"),
        "a list/watch start failure: {first_error:?}"
    );
    assert_eq!(names(r.store.state().iter().map(AsRef::as_ref)), set(&["a/p1"]));

    fake.set_failing(None);
    converge(&r.store, &set(&["a/p1", "a/p2"]), |_| true).await;
    fake.apply_pod(PodBuilder::new("a", "p1").node("node-1").running("10.0.0.1").build());
    converge(&r.store, &set(&["a/p1", "a/p2"]), |s| {
        s.iter()
            .any(|p| p.status.as_ref().and_then(|st| st.pod_ip.as_deref()) == Some("10.0.0.1"))
    })
    .await;
}

#[tokio::test]
async fn a_short_503_outage_is_absorbed_by_kubes_retries() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<Pod> = Api::all(client(&fake, &dir).await);
    fake.apply_pod(pod("a", "p1", "node-1", &[]));
    let mut r = Reflecting::start(api, watcher::Config::default());
    converge(&r.store, &set(&["a/p1"]), |_| true).await;
    wait_for_open_watch(&fake).await;
    r.drain();
    let before = fake.requests().len();

    // kube's client retries 429/503/504 itself (exponential backoff from
    // 5 ms, 15 attempts), so during a short 503 outage the watcher emits
    // nothing: the retried request just takes longer.
    fake.set_failing(Some(503));
    fake.apply_pod(pod("a", "p2", "node-1", &[]));
    within("retries during the outage", async {
        while fake.requests().len() < before + 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    fake.set_failing(None);
    converge(&r.store, &set(&["a/p1", "a/p2"]), |_| true).await;
    let seen = r.drain();
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Error(..))),
        "no error surfaces through the watcher: {seen:?}"
    );
    let retried = &fake.requests()[before..];
    assert!(retried.iter().all(|q| q.path == "/api/v1/pods"), "{retried:?}");
}

#[tokio::test]
async fn reflector_resumes_from_a_bookmark() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<Pod> = Api::all(client(&fake, &dir).await);
    fake.apply_pod(pod("a", "p1", "node-1", &[]));
    let _r = Reflecting::start(api, watcher::Config::default().fields("spec.nodeName=node-1"));
    wait_for_open_watch(&fake).await;
    // A write the watch does not see moves the version on; the bookmark
    // tells the watcher about it.
    fake.apply_pod(pod("a", "off-node", "node-2", &[]));
    let bookmark_rv = fake.resource_version();
    fake.bookmark();
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_failing(Some(500));
    fake.set_failing(None);
    let resumed = within("a resumed watch", async {
        loop {
            let requests = fake.requests();
            let watches: Vec<_> = requests.iter().filter(|r| r.is_watch()).collect();
            if watches.len() >= 2 {
                return watches[watches.len() - 1].param("resourceVersion").map(str::to_string);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        resumed,
        Some(bookmark_rv),
        "the watcher resumes from the bookmark's version"
    );
}

#[tokio::test]
async fn reflector_with_latency_and_streaming_lists() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    fake.apply_pod(pod("a", "p1", "node-1", &[]));
    fake.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    within("get", Api::<Pod>::namespaced(client.clone(), "a").get("p1"))
        .await
        .expect("get");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the latency delays the response"
    );

    let slow = Reflecting::start(Api::all(client.clone()), watcher::Config::default());
    let streaming = Reflecting::start(Api::all(client), watcher::Config::default().streaming_lists());
    converge(&slow.store, &set(&["a/p1"]), |_| true).await;
    converge(&streaming.store, &set(&["a/p1"]), |_| true).await;
    fake.apply_pod(pod("a", "p2", "node-1", &[]));
    fake.delete_pod("a", "p1");
    converge(&slow.store, &set(&["a/p2"]), |_| true).await;
    converge(&streaming.store, &set(&["a/p2"]), |_| true).await;
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.param("sendInitialEvents") == Some("true")),
        "StreamingList asks for initial events"
    );
}

#[tokio::test]
async fn recorder_publishes_events() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    fake.apply_pod(pod("apps", "web-1", "node-1", &[]));
    let target = fake.get_pod("apps", "web-1").expect("pod");
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "nodeward".into(),
            instance: Some("node-1".into()),
        },
    );
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "TokenRejected".into(),
        note: Some("3 requests without a valid token".into()),
        action: "Authenticate".into(),
        secondary: None,
    };
    let reference = target.object_ref(&());
    within("publish", recorder.publish(&event, &reference))
        .await
        .expect("publish");
    within("publish again", recorder.publish(&event, &reference))
        .await
        .expect("publish again (a PATCH)");

    let events = fake.events();
    assert_eq!(events.len(), 2, "{events:?}");
    let first = &events[0];
    assert_eq!(first["apiVersion"], "events.k8s.io/v1");
    assert_eq!(first["reason"], "TokenRejected");
    assert_eq!(first["type"], "Warning");
    assert_eq!(first["reportingController"], "nodeward");
    assert_eq!(first["regarding"]["kind"], "Pod");
    assert_eq!(first["regarding"]["name"], "web-1");
    assert_eq!(first["regarding"]["namespace"], "apps");
    assert_eq!(first["regarding"]["uid"].as_str(), target.metadata.uid.as_deref());
    assert_eq!(first["metadata"]["namespace"], "apps");
    assert_eq!(events[1]["metadata"]["name"], first["metadata"]["name"]);
    assert_eq!(events[1]["series"]["count"], 2);
    let methods: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/events"))
        .map(|r| r.method)
        .collect();
    assert_eq!(methods, ["POST", "PATCH"]);
}

#[tokio::test]
async fn wrong_token_is_401_and_unknown_paths_404() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let good = client(&fake, &dir).await;
    let version = within("version", good.apiserver_version()).await.expect("/version");
    assert_eq!(version.major, "1");

    let path = fake.write_kubeconfig(dir.path());
    let text = std::fs::read_to_string(&path).expect("read kubeconfig");
    std::fs::write(&path, text.replace(fake.token(), "not-the-token")).expect("write kubeconfig");
    let bad = client_from(&path).await;
    let err = within("list", Api::<Pod>::all(bad).list(&ListParams::default()))
        .await
        .expect_err("wrong token");
    assert_eq!(api_code(&err), Some(401));

    let err = within(
        "request",
        good.request_text(
            http::Request::get("/api/v1/persistentvolumes")
                .body(Vec::new())
                .expect("request"),
        ),
    )
    .await
    .expect_err("not served");
    assert_eq!(api_code(&err), Some(404));
}
