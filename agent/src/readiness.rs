//! Readiness as guards (after ztunnel's `readiness.rs`): whatever the agent
//! must finish before it is ready takes a [`Blocker`] naming it; the agent is
//! ready when none is held. Dropping the guard is the only way to clear it,
//! so an early return or a panic cannot leave readiness claimed wrongly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Default)]
pub struct Readiness(Arc<Inner>);

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    blockers: Mutex<BTreeMap<u64, String>>,
}

/// Keeps the agent not ready, saying why, until dropped.
#[must_use = "readiness is blocked only while the guard lives"]
pub struct Blocker {
    readiness: Readiness,
    id: u64,
}

impl Readiness {
    pub fn block(&self, what: impl Into<String>) -> Blocker {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.0
            .blockers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, what.into());
        Blocker {
            readiness: self.clone(),
            id,
        }
    }

    /// What readiness waits for, sorted; empty when ready.
    pub fn waiting_for(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .blockers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        self.readiness
            .0
            .blockers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn ready_once_every_blocker_is_dropped() {
        let r = Readiness::default();
        assert!(r.waiting_for().is_empty());
        let a = r.block("configuration not applied yet");
        let b = r.block("kubernetes: first pod list not applied yet");
        assert_eq!(r.waiting_for().len(), 2);
        drop(a);
        assert_eq!(r.waiting_for(), ["kubernetes: first pod list not applied yet"]);
        drop(b);
        assert!(r.waiting_for().is_empty());
    }
}
