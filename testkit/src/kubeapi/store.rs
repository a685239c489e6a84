//! The fake's state: one collection per resource type it serves, one global
//! resourceVersion counter that orders every write (like etcd's revision),
//! the events clients wrote, the requests received, the failure knobs, and
//! what the identity and authorization APIs keep (keys, counters, review
//! logs).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::RequestRecord;
use super::collection::{Collection, ListQuery, WatchStart, object_key};
use super::events::EventStore;
use super::resource::{ResourceKey, ResourceType};
use super::sar::Authorization;
use super::serviceaccount::Identity;
use super::status::ApiError;

/// Requests remembered for `requests()`.
const REQUESTS: usize = 4096;
/// Resource types that may be registered (CRDs) beyond the built-ins, so a
/// test that registers in a loop hits a clear limit, not unbounded memory.
const MAX_RESOURCE_TYPES: usize = 256;

pub(super) struct Store {
    rv: u64,
    collections: BTreeMap<ResourceKey, Collection>,
    pub failing: Option<u16>,
    pub latency: Duration,
    /// `(path prefix, status)`: outages of part of the API.
    pub failing_paths: Vec<(String, u16)>,
    /// `(path prefix, delay)`: latency added for part of the API.
    pub latency_paths: Vec<(String, Duration)>,
    pub events: EventStore,
    requests: VecDeque<RequestRecord>,
    pub identity: Identity,
    pub authorization: Authorization,
}

impl Store {
    pub fn new() -> Self {
        // A fresh etcd is not at revision 0; starting higher keeps "0"
        // (which means "any") distinct from every real version.
        let rv = 1000;
        let collections = ResourceType::builtins()
            .into_iter()
            .map(|t| (t.key(), Collection::new(t, rv)))
            .collect();
        Self {
            rv,
            collections,
            failing: None,
            latency: Duration::ZERO,
            failing_paths: Vec::new(),
            latency_paths: Vec::new(),
            events: EventStore::default(),
            requests: VecDeque::new(),
            identity: Identity::default(),
            authorization: Authorization::default(),
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn record(&mut self, request: RequestRecord) {
        if self.requests.len() == REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests.iter().cloned().collect()
    }

    /// The outage status for a request to `path`, if any.
    pub fn failing_for(&self, path: &str) -> Option<u16> {
        self.failing.or_else(|| {
            self.failing_paths
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, code)| *code)
        })
    }

    /// The delay before answering a request to `path`.
    pub fn latency_for(&self, path: &str) -> Duration {
        self.latency
            + self
                .latency_paths
                .iter()
                .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, d)| *d)
                .sum::<Duration>()
    }

    // === resource types ===

    pub fn collection(&self, group: &str, plural: &str) -> Option<&Collection> {
        self.collections.get(&(group.to_string(), plural.to_string()))
    }

    pub fn collection_mut(&mut self, group: &str, plural: &str) -> Option<&mut Collection> {
        self.collections.get_mut(&(group.to_string(), plural.to_string()))
    }

    /// The resource type at `group/version/plural`, or the apiserver's 404
    /// for a path it does not serve.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Result<ResourceType, ApiError> {
        self.collection(group, plural)
            .map(|c| &c.rtype)
            .filter(|t| t.serves(version))
            .cloned()
            .ok_or_else(ApiError::no_route)
    }

    /// The resource type of an object by its `apiVersion` and `kind`.
    pub fn type_of(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.collections
            .values()
            .map(|c| &c.rtype)
            .find(|t| t.group == group && t.kind == kind && t.serves(version))
            .cloned()
    }

    /// Adds or updates a resource type (a CRD was written). Existing
    /// objects stay; their watches end if the scope changed.
    pub fn register(&mut self, rtype: ResourceType) -> Result<(), ApiError> {
        let rv = self.rv;
        let count = self.collections.len();
        match self.collections.get_mut(&rtype.key()) {
            Some(existing) => {
                if existing.rtype.namespaced != rtype.namespaced {
                    existing.end_watches();
                }
                existing.rtype = rtype;
            }
            None if count >= MAX_RESOURCE_TYPES => {
                return Err(ApiError::new(
                    507,
                    "InsufficientStorage",
                    format!("the fake serves at most {MAX_RESOURCE_TYPES} resource types"),
                ));
            }
            None => {
                self.collections.insert(rtype.key(), Collection::new(rtype, rv));
            }
        }
        Ok(())
    }

    /// Removes a resource type and its objects (its CRD was deleted): every
    /// watch sees each object DELETED, then its stream ends.
    pub fn unregister(&mut self, key: &ResourceKey) {
        let keys: Vec<String> = match self.collections.get(key) {
            Some(c) => c
                .values()
                .map(|o| {
                    let meta = &o["metadata"];
                    object_key(meta["namespace"].as_str(), meta["name"].as_str().unwrap_or(""))
                })
                .collect(),
            None => return,
        };
        for object in keys {
            let rv = self.next_rv();
            if let Some(c) = self.collections.get_mut(key) {
                c.remove(&object, rv);
            }
        }
        if let Some(mut c) = self.collections.remove(key) {
            c.end_watches();
        }
    }

    pub fn list(&self, rtype: &ResourceType, q: &ListQuery) -> Result<Value, ApiError> {
        let collection = self
            .collection(&rtype.group, &rtype.plural)
            .ok_or_else(ApiError::no_route)?;
        collection.list(q, self.rv)
    }

    pub fn watch(&mut self, rtype: &ResourceType, q: ListQuery) -> Result<WatchStart, ApiError> {
        let now = self.rv;
        let collection = self
            .collection_mut(&rtype.group, &rtype.plural)
            .ok_or_else(ApiError::no_route)?;
        collection.watch(q, now)
    }

    /// The stored object, as a GET returns it.
    pub fn get_object(&self, group: &str, plural: &str, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.collection(group, plural)?.get(namespace, name)
    }

    // === pods (written by tests, read by clients) ===

    pub fn apply_pod(&mut self, mut pod: Pod) -> String {
        let name = pod
            .metadata
            .name
            .clone()
            .expect("apply_pod: the pod needs metadata.name");
        let namespace = pod
            .metadata
            .namespace
            .get_or_insert_with(|| "default".to_string())
            .clone();
        let old = self.get_pod(&namespace, &name);
        let meta = &mut pod.metadata;
        if meta.uid.is_none() {
            meta.uid = Some(
                old.as_ref()
                    .and_then(|o| o.metadata.uid.clone())
                    .unwrap_or_else(new_uid),
            );
        }
        if meta.creation_timestamp.is_none() {
            meta.creation_timestamp = Some(
                old.as_ref()
                    .and_then(|o| o.metadata.creation_timestamp.clone())
                    .unwrap_or_else(|| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now_seconds())),
            );
        }
        let rv = self.next_rv();
        pod.metadata.resource_version = Some(rv.to_string());
        let value = serde_json::to_value(&pod).expect("a Pod serializes");
        if let Some(pods) = self.collection_mut("", "pods") {
            pods.put(object_key(Some(&namespace), &name), value, rv);
        }
        rv.to_string()
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> bool {
        let rv = self.rv + 1;
        let removed = self
            .collection_mut("", "pods")
            .and_then(|pods| pods.remove(&object_key(Some(namespace), name), rv));
        if removed.is_some() {
            self.rv = rv;
        }
        removed.is_some()
    }

    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let value = self.get_object("", "pods", Some(namespace), name)?;
        serde_json::from_value(value.clone()).ok()
    }

    // === every watch ===

    pub fn open_watches(&mut self) -> usize {
        self.collections.values_mut().map(Collection::open_watches).sum()
    }

    pub fn bookmark(&mut self) {
        let rv = self.rv;
        for c in self.collections.values_mut() {
            c.bookmark(rv);
        }
    }

    /// Forgets the history: every older resourceVersion is now 410 Gone, and
    /// open watches get an ERROR 410 event and end.
    pub fn compact(&mut self) {
        let rv = self.rv;
        for c in self.collections.values_mut() {
            c.compact(rv);
        }
    }

    /// Breaks every open watch's connection.
    pub fn cut_watches(&mut self) {
        for c in self.collections.values_mut() {
            c.cut_watches();
        }
    }
}

pub(super) fn now_seconds() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// `creationTimestamp` as the apiserver writes it (RFC 3339, seconds).
pub(super) fn now_json() -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now_seconds())).unwrap_or(Value::Null)
}

/// A random version-4 UUID, the form the apiserver gives `metadata.uid`.
pub(super) fn new_uid() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}
#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::kubeapi::pod;
    use crate::kubeapi::watch::{WATCH_QUEUE, WatchMsg};

    fn pods(store: &Store) -> ResourceType {
        store.resolve("", "v1", "pods").expect("pods are served")
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                format!(
                    "{}={}",
                    p["metadata"]["name"].as_str().unwrap_or(""),
                    p["metadata"]["labels"]["v"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    fn query(rv: Option<&str>, version_match: Option<&str>) -> ListQuery {
        ListQuery {
            resource_version: rv.map(str::to_string),
            version_match: version_match.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn exact_lists_rebuild_old_states_until_compaction() {
        let mut store = Store::new();
        let first = store.apply_pod(pod("ns", "a", "n", &[("v", "1")]));
        store.apply_pod(pod("ns", "b", "n", &[("v", "1")]));
        store.apply_pod(pod("ns", "a", "n", &[("v", "2")]));
        store.delete_pod("ns", "b");
        let now = store.current_rv().to_string();

        let at_first = store
            .list(&pods(&store), &query(Some(&first), Some("Exact")))
            .expect("exact list");
        assert_eq!(names(&at_first), ["a=1"]);
        assert_eq!(at_first["metadata"]["resourceVersion"], first.as_str());
        assert_eq!(
            names(
                &store
                    .list(&pods(&store), &query(Some(&first), None))
                    .expect("not older than")
            ),
            ["a=2"]
        );
        assert_eq!(
            names(&store.list(&pods(&store), &query(None, None)).expect("latest")),
            ["a=2"]
        );

        let future = (store.current_rv() + 5).to_string();
        assert_eq!(
            store
                .list(&pods(&store), &query(Some(&future), None))
                .expect_err("future")
                .code,
            504
        );
        assert_eq!(
            store
                .list(&pods(&store), &query(Some("0"), Some("Exact")))
                .expect_err("exact 0")
                .code,
            422
        );
        assert_eq!(
            store
                .list(&pods(&store), &query(None, Some("NotOlderThan")))
                .expect_err("match without rv")
                .code,
            422
        );
        assert_eq!(
            store
                .list(&pods(&store), &query(Some("abc"), None))
                .expect_err("bad rv")
                .code,
            400
        );

        store.compact();
        assert_eq!(
            store
                .list(&pods(&store), &query(Some(&first), Some("Exact")))
                .expect_err("compacted")
                .code,
            410
        );
        assert_eq!(
            names(
                &store
                    .list(&pods(&store), &query(Some(&now), Some("Exact")))
                    .expect("exact now")
            ),
            ["a=2"]
        );
    }

    #[test]
    fn watches_validate_their_options() {
        let mut store = Store::new();
        store.apply_pod(pod("ns", "a", "n", &[]));
        let future = (store.current_rv() + 1).to_string();
        assert_eq!(
            store
                .watch(&pods(&store), query(Some(&future), None))
                .err()
                .map(|e| e.code),
            Some(504)
        );
        assert_eq!(
            store
                .watch(&pods(&store), query(Some("1"), Some("NotOlderThan")))
                .err()
                .map(|e| e.code),
            Some(422)
        );
        let initial = ListQuery {
            send_initial_events: true,
            version_match: Some("NotOlderThan".into()),
            ..Default::default()
        };
        assert_eq!(
            store.watch(&pods(&store), initial).err().map(|e| e.code),
            Some(422),
            "needs allowWatchBookmarks"
        );
        assert_eq!(store.open_watches(), 0);
        let (lines, rx) = store
            .watch(&pods(&store), query(Some("1"), None))
            .expect("a 410 is an event, not an HTTP error");
        assert!(rx.is_none());
        let event: Value = serde_json::from_slice(&lines[0]).expect("json line");
        assert_eq!(
            (event["type"].as_str(), event["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
    }

    #[tokio::test]
    async fn a_watch_that_falls_behind_is_ended_not_buffered() {
        let mut store = Store::new();
        let (initial, rx) = store.watch(&pods(&store), query(None, None)).expect("watch");
        assert!(initial.is_empty());
        let mut rx = rx.expect("an open watch");
        for i in 0..WATCH_QUEUE + 10 {
            store.apply_pod(pod("ns", "a", "n", &[("v", &i.to_string())]));
        }
        assert_eq!(store.open_watches(), 0, "dropped once its queue was full");
        let mut queued = 0;
        while let Some(WatchMsg::Line(_)) = rx.recv().await {
            queued += 1;
        }
        assert_eq!(
            queued, WATCH_QUEUE,
            "what was queued is delivered, then the stream ends"
        );
    }
}
