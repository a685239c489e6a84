//! One resource type's objects, keyed like etcd keys (`namespace/name`, or
//! `name` for cluster-scoped ones), with a bounded history of changes for
//! resuming watches and serving paginated and `Exact` lists at one snapshot,
//! and the watches open on it. The resourceVersion counter is the store's,
//! shared by every collection, like etcd's revision.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resource::ResourceType;
use super::status::ApiError;
use super::watch::{Filter, WATCH_QUEUE, WatchMsg, Watcher, bookmark_metadata, event_line, line};

/// Changes kept per collection for watch resumption and paginated lists;
/// older resourceVersions answer 410 Gone, as after an etcd compaction.
pub(super) const HISTORY: usize = 4096;

struct Change {
    rv: u64,
    key: String,
    old: Option<Value>,
    new: Option<Value>,
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

/// The first lines of a watch response and the receiver of the rest (None:
/// the stream ends after the first lines).
pub(super) type WatchStart = (VecDeque<Bytes>, Option<mpsc::Receiver<WatchMsg>>);

pub(super) struct Collection {
    pub rtype: ResourceType,
    objects: BTreeMap<String, Value>,
    history: VecDeque<Change>,
    /// Every change after this resourceVersion is in `history`.
    compacted: u64,
    watchers: Vec<Watcher>,
}

pub(super) fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

impl Collection {
    /// An empty collection whose history starts at `rv`.
    pub fn new(rtype: ResourceType, rv: u64) -> Self {
        Self {
            rtype,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: rv,
            watchers: Vec::new(),
        }
    }

    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&object_key(namespace, name))
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.objects.values()
    }

    /// Stores `object` (its `metadata.resourceVersion` already `rv`) and
    /// tells the watches.
    pub fn put(&mut self, key: String, object: Value, rv: u64) {
        let old = self.objects.insert(key.clone(), object.clone());
        self.change(Change {
            rv,
            key,
            old,
            new: Some(object),
        });
    }

    pub fn remove(&mut self, key: &str, rv: u64) -> Option<Value> {
        let old = self.objects.remove(key)?;
        self.change(Change {
            rv,
            key: key.to_string(),
            old: Some(old.clone()),
            new: None,
        });
        Some(old)
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

    /// The objects as they were at `rv`, rebuilt by undoing later changes;
    /// None when the history no longer reaches back that far.
    fn snapshot_at(&self, rv: u64) -> Option<BTreeMap<String, Value>> {
        if rv < self.compacted {
            return None;
        }
        let mut objects = self.objects.clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            match &change.old {
                Some(old) => objects.insert(change.key.clone(), old.clone()),
                None => objects.remove(&change.key),
            };
        }
        Some(objects)
    }

    // === list ===

    /// A list answer at `now` (the store's current resourceVersion) or at
    /// the snapshot the query names.
    pub fn list(&self, q: &ListQuery, now: u64) -> Result<Value, ApiError> {
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
            None => (list_rv(q, now)?, None),
        };
        let snapshot = if snapshot_rv == now {
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
        let objects = snapshot.as_ref().unwrap_or(&self.objects);
        let lower = match &start {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        let mut matching = objects
            .range((lower, Bound::Unbounded))
            .filter(|(_, o)| q.filter.matches(o));
        let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        for (key, object) in matching.by_ref().take(limit) {
            items.push(self.list_item(&q.filter, object));
            last_key = Some(key.clone());
        }
        let remaining = matching.count();
        let mut metadata = json!({ "resourceVersion": snapshot_rv.to_string() });
        if remaining > 0
            && let Some(last) = last_key
        {
            metadata["continue"] = Value::String(encode_continue(snapshot_rv, &last));
            // The apiserver counts the rest only when no selector filters it.
            if q.filter.labels.is_empty() && q.filter.fields.is_empty() {
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        let version = q
            .filter
            .api_version
            .clone()
            .unwrap_or_else(|| self.rtype.api_version(&self.rtype.storage_version));
        Ok(
            json!({ "kind": format!("{}List", self.rtype.kind), "apiVersion": version, "metadata": metadata, "items": items }),
        )
    }

    /// Built-in lists leave kind and apiVersion to the list; custom resource
    /// lists are unstructured and keep them on every item.
    fn list_item(&self, filter: &Filter, object: &Value) -> Value {
        let mut value = filter.present(object);
        if !self.rtype.custom
            && let Some(map) = value.as_object_mut()
        {
            map.remove("kind");
            map.remove("apiVersion");
        }
        value
    }

    // === watch ===

    /// Opens a watch: the lines to send first, and the receiver of the rest.
    pub fn watch(&mut self, q: ListQuery, now: u64) -> Result<WatchStart, ApiError> {
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
                if asked > now {
                    return Err(ApiError::too_large_rv(asked, now));
                }
            }
            initial.extend(self.current_as_added(&q.filter));
            initial.push_back(self.bookmark_line(&q.filter, now, true));
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
                    if asked > now {
                        return Err(ApiError::too_large_rv(asked, now));
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
        self.objects
            .values()
            .filter(|o| filter.matches(o))
            .map(|o| line("ADDED", &filter.present(o)))
            .collect()
    }

    fn bookmark_line(&self, filter: &Filter, rv: u64, initial_events_end: bool) -> Bytes {
        let mut object = self
            .rtype
            .bookmark_object(&self.rtype.storage_version, bookmark_metadata(rv, initial_events_end));
        if let Some(v) = &filter.api_version {
            object["apiVersion"] = Value::String(v.clone());
        }
        line("BOOKMARK", &object)
    }

    pub fn open_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }

    /// A BOOKMARK at `rv` to the watches that allow them.
    pub fn bookmark(&mut self, rv: u64) {
        let lines: Vec<_> = self
            .watchers
            .iter()
            .map(|w| w.bookmarks.then(|| self.bookmark_line(&w.filter, rv, false)))
            .collect();
        let mut lines = lines.into_iter();
        self.watchers.retain(|w| match lines.next().flatten() {
            Some(bookmark) => w.send(WatchMsg::Line(bookmark)),
            None => !w.tx.is_closed(),
        });
    }

    /// Forgets the history: every older resourceVersion is now 410 Gone, and
    /// open watches get an ERROR 410 event and end.
    pub fn compact(&mut self, rv: u64) {
        self.history.clear();
        self.compacted = rv;
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

    /// Ends every open watch cleanly, after what was queued (the resource
    /// went away, as when its CRD is deleted).
    pub fn end_watches(&mut self) {
        for w in self.watchers.drain(..) {
            w.send(WatchMsg::End);
        }
    }

    /// Breaks every open watch's connection.
    pub fn cut_watches(&mut self) {
        for w in self.watchers.drain(..) {
            w.send(WatchMsg::Cut);
        }
    }
}

/// The resourceVersion a first list page is served at.
fn list_rv(q: &ListQuery, now: u64) -> Result<u64, ApiError> {
    let rv = q.resource_version.as_deref().filter(|rv| !rv.is_empty());
    match (rv, q.version_match.as_deref().filter(|m| !m.is_empty())) {
        (None, Some(_)) => Err(ApiError::invalid_options(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (None, None) => Ok(now),
        (Some(rv), m) => {
            let asked = parse_rv(rv)?;
            match m {
                None | Some("NotOlderThan") if asked == 0 => Ok(now),
                None | Some("NotOlderThan") if asked > now => Err(ApiError::too_large_rv(asked, now)),
                None | Some("NotOlderThan") => Ok(now),
                Some("Exact") if asked == 0 => Err(ApiError::invalid_options(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                )),
                Some("Exact") if asked > now => Err(ApiError::too_large_rv(asked, now)),
                Some("Exact") => Ok(asked),
                Some(other) => Err(ApiError::invalid_options(format!(
                    "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
                ))),
            }
        }
    }
}

pub(super) fn parse_rv(rv: &str) -> Result<u64, ApiError> {
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
