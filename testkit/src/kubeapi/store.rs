//! The fake's state: pods keyed like etcd keys (`namespace/name`), one global
//! resourceVersion counter, a bounded history of pod changes for resuming
//! watches and serving paginated lists at one snapshot, the open watches,
//! and the events clients wrote.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::RequestRecord;
use super::events::EventStore;
use super::status::ApiError;
use super::watch::{Filter, WATCH_QUEUE, WatchMsg, Watcher, bookmark_line, event_line, line};

/// Pod changes kept for watch resumption and paginated lists; older
/// resourceVersions answer 410 Gone, as after an etcd compaction.
pub(super) const HISTORY: usize = 4096;
/// Requests remembered for `requests()`.
const REQUESTS: usize = 4096;

struct Change {
    rv: u64,
    key: String,
    old: Option<Pod>,
    new: Option<Pod>,
}

/// What a list or watch asked for in its query.
#[derive(Debug, Default)]
pub(super) struct ListQuery {
    pub filter: Filter,
    pub resource_version: Option<String>,
    pub version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
}

pub(super) struct Store {
    rv: u64,
    pods: BTreeMap<String, Pod>,
    history: VecDeque<Change>,
    /// Every pod change after this resourceVersion is in `history`.
    compacted: u64,
    watchers: Vec<Watcher>,
    pub failing: Option<u16>,
    pub latency: Duration,
    pub events: EventStore,
    requests: VecDeque<RequestRecord>,
}

impl Store {
    pub fn new() -> Self {
        Self {
            // A fresh etcd is not at revision 0; starting higher keeps "0"
            // (which means "any") distinct from every real version.
            rv: 1000,
            pods: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1000,
            watchers: Vec::new(),
            failing: None,
            latency: Duration::ZERO,
            events: EventStore::default(),
            requests: VecDeque::new(),
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

    // === pods ===

    pub fn apply(&mut self, mut pod: Pod) -> String {
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
        let key = format!("{namespace}/{name}");
        let old = self.pods.get(&key).cloned();
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
                    .unwrap_or_else(|| Time(now_seconds())),
            );
        }
        let rv = self.next_rv();
        pod.metadata.resource_version = Some(rv.to_string());
        self.pods.insert(key.clone(), pod.clone());
        self.change(Change {
            rv,
            key,
            old,
            new: Some(pod),
        });
        rv.to_string()
    }

    pub fn delete(&mut self, namespace: &str, name: &str) -> bool {
        let key = format!("{namespace}/{name}");
        let Some(old) = self.pods.remove(&key) else {
            return false;
        };
        let rv = self.next_rv();
        self.change(Change {
            rv,
            key,
            old: Some(old),
            new: None,
        });
        true
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&format!("{namespace}/{name}"))
    }

    fn change(&mut self, change: Change) {
        self.watchers.retain(
            |w| match w.event_for(change.old.as_ref(), change.new.as_ref(), change.rv) {
                Some(event) => w.send(WatchMsg::Line(event)),
                None => !w.tx.is_closed(),
            },
        );
        if self.history.len() == HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = dropped.rv;
        }
        self.history.push_back(change);
    }

    /// The pods as they were at `rv`, rebuilt by undoing later changes;
    /// None when the history no longer reaches back that far.
    fn snapshot_at(&self, rv: u64) -> Option<BTreeMap<String, Pod>> {
        if rv < self.compacted {
            return None;
        }
        let mut pods = self.pods.clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            match &change.old {
                Some(old) => pods.insert(change.key.clone(), old.clone()),
                None => pods.remove(&change.key),
            };
        }
        Some(pods)
    }

    // === list ===

    pub fn list(&self, q: &ListQuery) -> Result<Value, ApiError> {
        let (snapshot_rv, start) = match &q.continue_token {
            Some(token) => {
                if q.resource_version.as_deref().is_some_and(|rv| !rv.is_empty()) {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rv, start) = decode_continue(token)?;
                (rv, Some(start))
            }
            None => (self.list_rv(q)?, None),
        };
        let snapshot = if snapshot_rv == self.rv {
            None
        } else {
            Some(self.snapshot_at(snapshot_rv).ok_or_else(|| {
                if q.continue_token.is_some() {
                    ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    )
                } else {
                    ApiError::expired(format!("too old resource version: {snapshot_rv} ({})", self.compacted))
                }
            })?)
        };
        let pods = snapshot.as_ref().unwrap_or(&self.pods);
        let lower = match &start {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        let mut matching = pods
            .range((lower, Bound::Unbounded))
            .filter(|(_, pod)| q.filter.matches(pod));
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        for (key, pod) in matching.by_ref().take(limit) {
            items.push(list_item(pod));
            last_key = Some(key.clone());
        }
        let remaining = matching.count();
        let mut metadata = json!({ "resourceVersion": snapshot_rv.to_string() });
        if remaining > 0
            && let Some(last) = last_key
        {
            metadata["continue"] = Value::String(encode_continue(snapshot_rv, &last));
            // The apiserver counts the rest only when no selector filters it.
            if q.filter.labels == Default::default() && q.filter.fields == Default::default() {
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({ "kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items }))
    }

    /// The resourceVersion a first list page is served at.
    fn list_rv(&self, q: &ListQuery) -> Result<u64, ApiError> {
        let rv = q.resource_version.as_deref().filter(|rv| !rv.is_empty());
        match (rv, q.version_match.as_deref().filter(|m| !m.is_empty())) {
            (None, Some(_)) => Err(ApiError::invalid_options(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            )),
            (None, None) => Ok(self.rv),
            (Some(rv), m) => {
                let asked = parse_rv(rv)?;
                match m {
                    None | Some("NotOlderThan") if asked == 0 => Ok(self.rv),
                    None | Some("NotOlderThan") if asked > self.rv => Err(ApiError::too_large_rv(asked, self.rv)),
                    None | Some("NotOlderThan") => Ok(self.rv),
                    Some("Exact") if asked == 0 => Err(ApiError::invalid_options(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                    )),
                    Some("Exact") if asked > self.rv => Err(ApiError::too_large_rv(asked, self.rv)),
                    Some("Exact") => Ok(asked),
                    Some(other) => Err(ApiError::invalid_options(format!(
                        "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
                    ))),
                }
            }
        }
    }

    // === watch ===

    /// Opens a watch: the lines to send first, and the receiver of the rest.
    pub fn watch(&mut self, q: ListQuery) -> Result<(VecDeque<Bytes>, Option<mpsc::Receiver<WatchMsg>>), ApiError> {
        let rv = q.resource_version.as_deref().filter(|rv| !rv.is_empty());
        let version_match = q.version_match.as_deref().filter(|m| !m.is_empty());
        let mut initial = VecDeque::new();
        if q.send_initial_events {
            if !q.bookmarks {
                return Err(ApiError::invalid_options(
                    "allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true when sendInitialEvents is set",
                ));
            }
            if version_match != Some("NotOlderThan") {
                return Err(ApiError::invalid_options(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if let Some(rv) = rv {
                let asked = parse_rv(rv)?;
                if asked > self.rv {
                    return Err(ApiError::too_large_rv(asked, self.rv));
                }
            }
            initial.extend(self.current_as_added(&q.filter));
            initial.push_back(bookmark_line(self.rv, true));
        } else {
            if version_match.is_some() {
                return Err(ApiError::invalid_options(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            match rv {
                None | Some("0") => initial.extend(self.current_as_added(&q.filter)),
                Some(rv) => {
                    let asked = parse_rv(rv)?;
                    if asked > self.rv {
                        return Err(ApiError::too_large_rv(asked, self.rv));
                    }
                    if asked < self.compacted {
                        // The apiserver answers 200 and one ERROR event, then ends the stream.
                        let gone = ApiError::expired(format!("too old resource version: {asked} ({})", self.compacted));
                        initial.push_back(line("ERROR", &gone.to_json()));
                        return Ok((initial, None));
                    }
                    for change in self.history.iter().filter(|c| c.rv > asked) {
                        initial.extend(event_line(
                            &q.filter,
                            change.old.as_ref(),
                            change.new.as_ref(),
                            change.rv,
                        ));
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.push(Watcher {
            filter: q.filter,
            bookmarks: q.bookmarks,
            tx,
        });
        Ok((initial, Some(rx)))
    }

    fn current_as_added(&self, filter: &Filter) -> Vec<Bytes> {
        self.pods
            .values()
            .filter(|p| filter.matches(p))
            .filter_map(|p| Some(line("ADDED", &serde_json::to_value(p).ok()?)))
            .collect()
    }

    pub fn open_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }

    pub fn bookmark(&mut self) {
        let bookmark = bookmark_line(self.rv, false);
        self.watchers.retain(|w| {
            if w.bookmarks {
                w.send(WatchMsg::Line(bookmark.clone()))
            } else {
                !w.tx.is_closed()
            }
        });
    }

    /// Forgets the history: every older resourceVersion is now 410 Gone, and
    /// open watches get an ERROR 410 event and end.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
        let gone = line(
            "ERROR",
            &ApiError::expired("The resourceVersion for the provided watch is too old.").to_json(),
        );
        for w in self.watchers.drain(..) {
            if w.send(WatchMsg::Line(gone.clone())) {
                w.send(WatchMsg::End);
            }
        }
    }

    /// Breaks every open watch's connection.
    pub fn cut_watches(&mut self) {
        for w in self.watchers.drain(..) {
            w.send(WatchMsg::Cut);
        }
    }
}

/// A list item: the apiserver leaves kind and apiVersion to the list.
fn list_item(pod: &Pod) -> Value {
    let mut value = serde_json::to_value(pod).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    value
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// The apiserver's continue token: base64 of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`.
fn encode_continue(rv: u64, last_key: &str) -> String {
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}") });
    B64.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = B64.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if value["v"] != "meta.k8s.io/v1" {
        return Err(bad());
    }
    let rv = value["rv"].as_u64().ok_or_else(bad)?;
    let start = value["start"].as_str().ok_or_else(bad)?;
    let last = start.strip_suffix('\u{0}').ok_or_else(bad)?;
    Ok((rv, last.to_string()))
}

pub(super) fn now_seconds() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
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
    use super::*;
    use crate::kubeapi::pod;

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
        let first = store.apply(pod("ns", "a", "n", &[("v", "1")]));
        store.apply(pod("ns", "b", "n", &[("v", "1")]));
        store.apply(pod("ns", "a", "n", &[("v", "2")]));
        store.delete("ns", "b");
        let now = store.current_rv().to_string();

        let at_first = store.list(&query(Some(&first), Some("Exact"))).expect("exact list");
        assert_eq!(names(&at_first), ["a=1"]);
        assert_eq!(at_first["metadata"]["resourceVersion"], first.as_str());
        assert_eq!(
            names(&store.list(&query(Some(&first), None)).expect("not older than")),
            ["a=2"]
        );
        assert_eq!(names(&store.list(&query(None, None)).expect("latest")), ["a=2"]);

        let future = (store.current_rv() + 5).to_string();
        assert_eq!(store.list(&query(Some(&future), None)).expect_err("future").code, 504);
        assert_eq!(
            store.list(&query(Some("0"), Some("Exact"))).expect_err("exact 0").code,
            422
        );
        assert_eq!(
            store
                .list(&query(None, Some("NotOlderThan")))
                .expect_err("match without rv")
                .code,
            422
        );
        assert_eq!(store.list(&query(Some("abc"), None)).expect_err("bad rv").code, 400);

        store.compact();
        assert_eq!(
            store
                .list(&query(Some(&first), Some("Exact")))
                .expect_err("compacted")
                .code,
            410
        );
        assert_eq!(
            names(&store.list(&query(Some(&now), Some("Exact"))).expect("exact now")),
            ["a=2"]
        );
    }

    #[test]
    fn watches_validate_their_options() {
        let mut store = Store::new();
        store.apply(pod("ns", "a", "n", &[]));
        let future = (store.current_rv() + 1).to_string();
        assert_eq!(store.watch(query(Some(&future), None)).err().map(|e| e.code), Some(504));
        assert_eq!(
            store
                .watch(query(Some("1"), Some("NotOlderThan")))
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
            store.watch(initial).err().map(|e| e.code),
            Some(422),
            "needs allowWatchBookmarks"
        );
        assert_eq!(store.open_watches(), 0);
        let (lines, rx) = store
            .watch(query(Some("1"), None))
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
        let (initial, rx) = store.watch(query(None, None)).expect("watch");
        assert!(initial.is_empty());
        let mut rx = rx.expect("an open watch");
        for i in 0..WATCH_QUEUE + 10 {
            store.apply(pod("ns", "a", "n", &[("v", &i.to_string())]));
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
