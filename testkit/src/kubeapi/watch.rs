//! One open watch: the filter it was opened with, and the streaming HTTP body
//! that carries its events as newline-delimited JSON, the way the apiserver
//! frames `?watch=true` responses.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::selector::{FieldSelector, LabelSelector};

/// Events a watch may have queued and unread before the fake drops it, as
/// the apiserver drops watchers that cannot keep up.
pub(super) const WATCH_QUEUE: usize = 1024;

/// Which objects a list or watch covers, and at which `apiVersion` it
/// presents them.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Set when the request asked for another served version than the one
    /// objects are stored at.
    pub api_version: Option<String>,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(object["metadata"]["labels"].as_object())
            && self.fields.matches(object)
    }

    /// The object as this request sees it.
    pub fn present(&self, object: &Value) -> Value {
        let mut object = object.clone();
        if let Some(v) = &self.api_version {
            object["apiVersion"] = Value::String(v.clone());
        }
        object
    }
}

pub(super) enum WatchMsg {
    /// One event line (already ending in `\n`).
    Line(Bytes),
    /// The server ends the response cleanly after what was sent.
    End,
    /// The connection breaks mid-stream (no final chunk), like an apiserver
    /// going away.
    Cut,
}

/// The server side of an open watch, held by the store.
pub(super) struct Watcher {
    pub filter: Filter,
    pub bookmarks: bool,
    pub tx: mpsc::Sender<WatchMsg>,
}

impl Watcher {
    /// Queues a message; false when the client is gone or too far behind,
    /// and the watch should be dropped (which ends its stream).
    pub fn send(&self, msg: WatchMsg) -> bool {
        self.tx.try_send(msg).is_ok()
    }

    /// The event (if any) this watch sees for a change from `old` to `new`:
    /// an object that starts matching the filter is ADDED, one that stops
    /// matching is DELETED (the previous state at the change's
    /// resourceVersion), as the apiserver's watch cache does.
    pub fn event_for(&self, old: Option<&Value>, new: Option<&Value>, rv: u64) -> Option<Bytes> {
        event_line(&self.filter, old, new, rv)
    }
}

pub(super) fn event_line(filter: &Filter, old: Option<&Value>, new: Option<&Value>, rv: u64) -> Option<Bytes> {
    let old_matches = old.is_some_and(|o| filter.matches(o));
    let new_matches = new.is_some_and(|o| filter.matches(o));
    match (old_matches, new_matches, new) {
        (false, true, Some(object)) => Some(line("ADDED", &filter.present(object))),
        (true, true, Some(object)) => Some(line("MODIFIED", &filter.present(object))),
        (true, false, _) => {
            let mut gone = filter.present(old?);
            gone["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            Some(line("DELETED", &gone))
        }
        _ => None,
    }
}

pub(super) fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// The `metadata` of a BOOKMARK event (annotated at the end of a streaming
/// list's initial events).
pub(super) fn bookmark_metadata(rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    metadata
}

/// The response body of a watch: the initial lines, then whatever the store
/// sends, until `timeoutSeconds` passes (a clean end, as the apiserver does),
/// the store ends or cuts it, or the fake stops.
pub(super) struct WatchBody {
    pub initial: VecDeque<Bytes>,
    pub rx: mpsc::Receiver<WatchMsg>,
    pub deadline: Pin<Box<Sleep>>,
    pub done: bool,
}

/// The body error that makes hyper drop the connection without the final
/// chunk.
#[derive(Debug, thiserror::Error)]
#[error("watch cut by the fake apiserver")]
pub(super) struct WatchCut;

impl Body for WatchBody {
    type Data = Bytes;
    type Error = WatchCut;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, WatchCut>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(first) = self.initial.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(WatchMsg::Line(bytes))) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(WatchMsg::Cut)) => {
                self.done = true;
                return Poll::Ready(Some(Err(WatchCut)));
            }
            Poll::Ready(Some(WatchMsg::End) | None) => {
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
