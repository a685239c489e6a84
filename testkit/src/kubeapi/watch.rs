//! One open watch: the filter it was opened with, and the streaming HTTP body
//! that carries its events as newline-delimited JSON, the way the apiserver
//! frames `?watch=true` responses.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::selector::{FieldSelector, LabelSelector};

/// Events a watch may have queued and unread before the fake drops it, as
/// the apiserver drops watchers that cannot keep up.
pub(super) const WATCH_QUEUE: usize = 1024;

/// Which pods a list or watch covers.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, pod: &Pod) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| pod.metadata.namespace.as_ref() == Some(ns))
            && self.labels.matches(pod.metadata.labels.as_ref())
            && self.fields.matches(pod)
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
    pub fn event_for(&self, old: Option<&Pod>, new: Option<&Pod>, rv: u64) -> Option<Bytes> {
        event_line(&self.filter, old, new, rv)
    }
}

pub(super) fn event_line(filter: &Filter, old: Option<&Pod>, new: Option<&Pod>, rv: u64) -> Option<Bytes> {
    let old_matches = old.is_some_and(|p| filter.matches(p));
    let new_matches = new.is_some_and(|p| filter.matches(p));
    match (old_matches, new_matches, new) {
        (false, true, Some(pod)) => Some(line("ADDED", &serde_json::to_value(pod).ok()?)),
        (true, true, Some(pod)) => Some(line("MODIFIED", &serde_json::to_value(pod).ok()?)),
        (true, false, _) => {
            let mut gone = old?.clone();
            gone.metadata.resource_version = Some(rv.to_string());
            Some(line("DELETED", &serde_json::to_value(&gone).ok()?))
        }
        _ => None,
    }
}

pub(super) fn line(kind: &str, object: &serde_json::Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A BOOKMARK event as the apiserver encodes it: an empty Pod but for
/// `metadata.resourceVersion` (and annotations for the end of a streaming
/// list).
pub(super) fn bookmark_line(rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(
        "BOOKMARK",
        &json!({ "kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": { "containers": null }, "status": {} }),
    )
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
