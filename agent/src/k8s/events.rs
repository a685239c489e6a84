//! Kubernetes Events on pods, so `kubectl describe pod` shows why a pod is
//! or is not protected. Posting must never block or fail enrolment: the
//! enrolment path only queues (a bounded channel; when full the event is
//! dropped and logged), and one task posts with a time limit and logs
//! failures (RBAC missing, API down).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Resource as _;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

/// Events queued but not yet posted, at most.
const QUEUE: usize = 256;
/// Time limit on posting one event.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an event was posted; the `reason` shown by kubectl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Enrolled,
    Unenrolled,
    EnrolmentFailed,
    PolicyNotFound,
    /// Several policies select the pod: deny-all.
    PolicyConflict,
    /// The IdentityPolicy that would bind the pod is refused: deny-all.
    PolicyNotAccepted,
    HostNetworkRefused,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "Enrolled",
            Self::Unenrolled => "Unenrolled",
            Self::EnrolmentFailed => "EnrolmentFailed",
            Self::PolicyNotFound => "PolicyNotFound",
            Self::PolicyConflict => "PolicyConflict",
            Self::PolicyNotAccepted => "PolicyNotAccepted",
            Self::HostNetworkRefused => "HostNetworkRefused",
        }
    }

    fn event_type(self) -> EventType {
        match self {
            Self::Enrolled | Self::Unenrolled => EventType::Normal,
            _ => EventType::Warning,
        }
    }
}

/// Queues events for the posting task. Cheap to clone.
#[derive(Clone)]
pub struct PodEvents {
    tx: mpsc::Sender<(Reason, String, ObjectReference)>,
}

impl PodEvents {
    /// Starts the posting task; it ends when every `PodEvents` is dropped.
    pub fn start(client: kube::Client, instance: Option<String>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(Reason, String, ObjectReference)>(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "nodeward".into(),
                instance,
            },
        );
        let task = tokio::spawn(async move {
            while let Some((reason, note, reference)) = rx.recv().await {
                let event = Event {
                    type_: reason.event_type(),
                    reason: reason.as_str().into(),
                    note: Some(truncate(note)),
                    action: "Enrolment".into(),
                    secondary: None,
                };
                let pod = reference.name.clone().unwrap_or_default();
                match tokio::time::timeout(POST_TIMEOUT, recorder.publish(&event, &reference)).await {
                    Ok(Ok(())) => tracing::debug!(%pod, reason = reason.as_str(), "event posted"),
                    Ok(Err(e)) => {
                        tracing::warn!(%pod, reason = reason.as_str(), error = %e, "cannot post a Kubernetes event")
                    }
                    Err(_) => tracing::warn!(%pod, reason = reason.as_str(), "posting a Kubernetes event timed out"),
                }
            }
        });
        (Self { tx }, task)
    }

    /// Queues an event about `pod`; never waits.
    pub fn post(&self, pod: &Pod, reason: Reason, note: String) {
        self.post_ref(pod.object_ref(&()), reason, note);
    }

    pub fn post_ref(&self, reference: ObjectReference, reason: Reason, note: String) {
        if let Err(e) = self.tx.try_send((reason, note, reference)) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "poster stopped",
            };
            tracing::warn!(reason = reason.as_str(), why, "Kubernetes event dropped");
        }
    }
}

/// The API limits an event's note to 1 kB.
fn truncate(mut note: String) -> String {
    const MAX: usize = 1000;
    if note.len() > MAX {
        let mut end = MAX;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}
