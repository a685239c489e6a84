//! A faithful fake of the part of the Kubernetes API that nodeward uses. It
//! serves real HTTP/1.1 on loopback, so kube-rs's client, `watcher`,
//! `reflector` and events `Recorder` talk to it unchanged and see what a
//! real apiserver would send. Each part names the apiserver source it
//! follows in its module's header.
//!
//! What it serves, and how it matches the apiserver:
//! - **Resources** (`resource.rs`, `collection.rs`, `rest.rs`): Pods (read
//!   only, `/status` included: tests set them with
//!   [`FakeKubeApi::apply_pod`]), ServiceAccounts,
//!   Secrets, Nodes, Roles, ClusterRoles, RoleBindings,
//!   ClusterRoleBindings, CustomResourceDefinitions and the custom
//!   resources they define (`crd.rs`), at `/api/v1/...` and
//!   `/apis/{group}/{version}/...`, namespaced and cluster-wide.
//! - Lists: `…List` with `metadata.resourceVersion`; `limit` + `continue`
//!   pagination where every page is served at the first page's snapshot (a
//!   too-old `continue` is HTTP 410 Expired); `resourceVersion` with
//!   `resourceVersionMatch` `NotOlderThan`/`Exact`; built-in items without
//!   kind/apiVersion, custom ones with, as the apiserver sends them.
//! - Watches: newline-delimited `{"type":…,"object":…}` in a chunked 200;
//!   no/`"0"` resourceVersion starts with ADDED for the current state;
//!   resourceVersion N replays later changes from a bounded history, and one
//!   older than the history gets an `ERROR` event (Status 410 Expired) and
//!   the end of the stream; `sendInitialEvents=true` (kube's StreamingList)
//!   ends the initial state with a BOOKMARK annotated
//!   `k8s.io/initial-events-end`; an object leaving a label/field selector is
//!   DELETED and one entering it ADDED; `timeoutSeconds` ends the stream
//!   cleanly; BOOKMARKs only on [`FakeKubeApi::bookmark`] and only to
//!   watches with `allowWatchBookmarks=true`.
//! - Selectors: label (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (…)`,
//!   `k notin (…)`, `k>n`, `k<n`, comma = AND) and the field selectors each
//!   registry indexes (pods: `metadata.name`, `metadata.namespace`,
//!   `spec.nodeName`, `status.phase`, `status.podIP`, …; custom resources:
//!   metadata only); bad or unsupported ones answer 400 like the apiserver.
//! - Writes: POST, PUT, JSON merge PATCH, DELETE with server-set uid,
//!   creationTimestamp and resourceVersion, 409 Conflict on a stale
//!   resourceVersion, 409 AlreadyExists, delete preconditions, finalizers
//!   (deletionTimestamp, gone when the last one is removed), no write for a
//!   no-op update. Custom resources: `metadata.generation` from 1, bumped on
//!   any change outside metadata; with the status subresource, the main
//!   endpoint ignores `status` and `/status` (PUT, merge PATCH) writes only
//!   it, never the generation; PUT needs a resourceVersion and cannot
//!   create.
//! - **Service-account issuer** (`serviceaccount.rs`, `signing.rs`):
//!   `/.well-known/openid-configuration` and `/openid/v1/jwks` (RS256 keys,
//!   apiserver-style `kid`, rotation), for any valid credential or, with
//!   [`FakeKubeApi::set_anonymous_discovery`], anyone; tokens with the
//!   apiserver's claims (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`,
//!   `kubernetes.io` with namespace, serviceaccount, pod, node, secret,
//!   `warnafter`), minted directly
//!   ([`FakeKubeApi::service_account_token`]) or by **TokenRequest**
//!   (`POST …/serviceaccounts/{name}/token`, `tokenrequest.rs`) with the
//!   apiserver's defaults, limits, clamping, extension and bound-object
//!   checks.
//! - **TokenReview** (`tokenreview.rs`): signature, issuer, audiences,
//!   times, and that the service account and bound pod/secret/node still
//!   exist with their uid; the user, groups and extra the apiserver gives.
//! - **SubjectAccessReview** (`sar.rs`, `rbac.rs`): `system:masters`, then
//!   RBAC over the stored roles and bindings, with the RBAC authorizer's
//!   reasons.
//! - Events: POST and merge/strategic-merge PATCH (what `Recorder` sends) on
//!   `/apis/events.k8s.io/v1/namespaces/{ns}/events[/{name}]` and
//!   `/api/v1/namespaces/{ns}/events[/{name}]`, with the apiserver's
//!   required fields for `events.k8s.io/v1`.
//! - `/version`; anything else is a 404 Status. Every error is a `Status`
//!   object with the apiserver's reason, code and message.
//! - Authentication: the bearer token in [`FakeKubeApi::write_kubeconfig`]
//!   may do anything (401 without it, which proves a client used the file).
//!   A service-account token the fake issued (API audiences) is accepted
//!   but only for issuer discovery, and gets 403 elsewhere: the fake does
//!   not authorize its own API.
//!
//! One global resourceVersion counter orders every write, like etcd's
//! revision. Memory is bounded: the last 4096 changes per resource type and
//! at most 256 types, the last 4096 events, requests, TokenReviews and
//! SubjectAccessReviews, 4096 counted service accounts, and 1024 queued
//! events a watch (a slower watch is ended, as the apiserver ends watchers
//! that fall behind).
//!
//! Knobs for failure tests: [`FakeKubeApi::compact`] (history gone: 410),
//! [`FakeKubeApi::set_failing`] (an outage: every request gets that status,
//! open watch connections break), [`FakeKubeApi::set_failing_for`] (an
//! outage of the paths under a prefix, e.g. only the review APIs),
//! [`FakeKubeApi::set_latency`] and [`FakeKubeApi::set_latency_for`],
//! [`FakeKubeApi::set_authorizer_error`], [`FakeKubeApi::rotate_service_account_key`].
//!
//! Not modelled: JSON Patch and server-side apply (415), strategic merge
//! patch of custom resources (415, as the apiserver), writes to pods
//! through the API, DELETE of a collection, `dryRun`, managedFields, API
//! discovery (`/api`, `/apis`), admission, CRD schemas (validation,
//! defaulting, pruning), periodic automatic bookmarks, protobuf, HTTP/2,
//! TLS, and authorization of the fake's own API. See each module for its
//! part.
//!
//! Pods for tests: [`pod`]`("ns", "name", "node-1", &[("app", "web")])`, or
//! [`PodBuilder`]`::new("ns", "name").node("node-1").label("app", "web")
//! .running("10.0.0.7").build()`. Other objects: [`FakeKubeApi::apply`]
//! (typed) and [`FakeKubeApi::apply_yaml`].

mod apply;
mod collection;
mod crd;
mod events;
mod pod;
mod rbac;
mod resource;
mod rest;
mod sar;
mod selector;
mod server;
mod serviceaccount;
mod signing;
mod status;
mod store;
mod tokenrequest;
mod tokenreview;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use self::apply::ApplyError;
pub use self::pod::{PodBuilder, pod};
use self::server::Shared;
pub use self::serviceaccount::DEFAULT_ISSUER;
use self::store::Store;

/// One HTTP request the fake received (before latency, outage and auth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
}

impl RequestRecord {
    /// The value of query parameter `key`, if present.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A `?watch=true` request.
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|v| v == "true" || v == "1")
    }
}

/// The fake apiserver on 127.0.0.1 with a random port. Dropping it stops the
/// server and breaks every open connection.
pub struct FakeKubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake kube API");
        let addr = listener.local_addr().expect("fake kube API address");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            token: format!("fake-kube-token-{}", store::new_uid()),
            url: format!("http://{addr}"),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Self { shared, addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bearer token the fake accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Writes `dir/kubeconfig` pointing at the fake (plain http, the fake's
    /// token, namespace `default`) and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: {token}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            url = self.url(),
            token = self.shared.token,
        );
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    /// Creates or replaces `namespace/name` (namespace `default` if unset),
    /// keeping the uid and creationTimestamp of the object it replaces or
    /// assigning new ones, and tells the watches. Returns the new
    /// resourceVersion.
    pub fn apply_pod(&self, pod: Pod) -> String {
        self.shared.store().apply_pod(pod)
    }

    /// Deletes the pod; false if there was none.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.shared.store().delete_pod(namespace, name)
    }

    /// The stored pod, as a GET would return it.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.shared.store().get_pod(namespace, name)
    }

    /// Forgets the history, as an etcd compaction plus a watch-cache restart
    /// would: older resourceVersions and continue tokens get 410 Gone, open
    /// watches get an ERROR 410 event and end.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// `Some(code)`: every request (list, watch, writes, reviews) gets that HTTP
    /// status with a Status body, and open watch connections break, until
    /// `None`.
    pub fn set_failing(&self, status: Option<u16>) {
        let mut store = self.shared.store();
        store.failing = status;
        if status.is_some() {
            store.cut_watches();
        }
    }

    /// `Some(code)`: requests whose path starts with `prefix` get that
    /// status (e.g. `/apis/authorization.k8s.io` for SubjectAccessReview
    /// only), until `None`. Open watches are not cut.
    pub fn set_failing_for(&self, prefix: &str, status: Option<u16>) {
        let mut store = self.shared.store();
        store.failing_paths.retain(|(p, _)| p != prefix);
        if let Some(code) = status {
            store.failing_paths.push((prefix.to_string(), code));
        }
    }

    /// A delay before every response head.
    pub fn set_latency(&self, delay: Duration) {
        self.shared.store().latency = delay;
    }

    /// A delay added before the response head of requests whose path starts
    /// with `prefix` (zero removes it).
    pub fn set_latency_for(&self, prefix: &str, delay: Duration) {
        let mut store = self.shared.store();
        store.latency_paths.retain(|(p, _)| p != prefix);
        if !delay.is_zero() {
            store.latency_paths.push((prefix.to_string(), delay));
        }
    }

    /// Sends a BOOKMARK at the current resourceVersion to the watches that
    /// allow them.
    pub fn bookmark(&self) {
        self.shared.store().bookmark();
    }

    /// The current resourceVersion (of the last write).
    pub fn resource_version(&self) -> String {
        self.shared.store().current_rv().to_string()
    }

    /// Every Event created or patched (both APIs), in order, as stored.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.shared.store().events.log()
    }

    /// Every request received, oldest first (the last 4096).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.store().requests()
    }

    /// Watches whose client is still connected.
    pub fn open_watches(&self) -> usize {
        self.shared.store().open_watches()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task.
        self.task.abort();
        self.shared.store().cut_watches();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| server::handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
