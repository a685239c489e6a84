//! The fake Kubernetes API (`nodeward_testkit::kubeapi`) driven by kube-rs
//! itself — its client, `watcher`, `reflector` and events `Recorder` — over
//! real HTTP on loopback, so the fake is held to what kube-rs expects of an
//! apiserver, and each answer to what the API documents.
//!
//! - `kubeapi/pods.rs`: pod list/watch semantics, selectors, pagination.
//! - `kubeapi/reflect.rs`: kube's reflector through outages and
//!   compaction, events, authentication.
//! - `kubeapi/identity.rs`: issuer discovery, service-account tokens,
//!   TokenRequest.
//! - `kubeapi/tokenreview.rs`: TokenReview.
//! - `kubeapi/access.rs`: SubjectAccessReview over RBAC.
//! - `kubeapi/custom.rs`, `custom_lifecycle.rs`, `custom_watch.rs`: CRDs and
//!   custom resources.

#[path = "kubeapi/access.rs"]
mod access;
#[path = "kubeapi/custom.rs"]
mod custom;
#[path = "kubeapi/custom_lifecycle.rs"]
mod custom_lifecycle;
#[path = "kubeapi/custom_watch.rs"]
mod custom_watch;
#[path = "kubeapi/identity.rs"]
mod identity;
#[path = "kubeapi/pods.rs"]
mod pods;
#[path = "kubeapi/reflect.rs"]
mod reflect;
#[path = "kubeapi/tokenreview.rs"]
mod tokenreview;

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

/// The code, reason and message of an API error.
fn api_status(err: &kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("not an API error: {other}"),
    }
}

/// The claims of a JWT, not verified.
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn unix_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit")
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
