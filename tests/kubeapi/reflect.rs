//! kube-rs's `watcher` + `reflector` through compaction, outages, bookmarks,
//! latency and streaming lists; the events `Recorder`; authentication and
//! unknown paths.

use super::*;

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
