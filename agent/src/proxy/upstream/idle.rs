//! Upstream connections left idle by downstream HTTP/1.1 connections that
//! ended, for the next downstream connection to the same address: a client
//! that opens a connection per request does not make the agent dial one per
//! request (the pooled client did not either).
//!
//! An idle connection here is not polled, so one the upstream closed is
//! found out when it is taken up again: its first `ready()` fails and the
//! request, not yet written, goes to the next one or a new connection.
//! Entries older than [`IDLE_TTL`] are dropped when the list is used and by
//! a reaper task every [`REAP_EVERY`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::bound::{Conn, Sender};

/// How long an idle connection is kept (the pooled client's idle timeout).
const IDLE_TTL: Duration = Duration::from_secs(90);
/// Most idle connections kept per upstream address (as the pool's per host).
const MAX_PER_TARGET: usize = 256;
const REAP_EVERY: Duration = Duration::from_secs(30);

pub struct Idle {
    pub target: SocketAddr,
    pub sender: Sender,
    pub conn: Conn,
    since: Instant,
}

impl Idle {
    pub fn new(target: SocketAddr, sender: Sender, conn: Conn) -> Self {
        Self {
            target,
            sender,
            conn,
            since: Instant::now(),
        }
    }
}

#[derive(Default)]
pub struct IdleConns {
    list: Mutex<List>,
}

#[derive(Default)]
struct List {
    entries: Vec<Idle>,
    reaper: bool,
}

impl IdleConns {
    fn lock(&self) -> MutexGuard<'_, List> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `idle` for the next downstream connection to its address.
    pub fn put(self: &Arc<Self>, idle: Idle) {
        let mut list = self.lock();
        prune(&mut list.entries);
        if list.entries.iter().filter(|e| e.target == idle.target).count() < MAX_PER_TARGET {
            list.entries.push(idle);
        }
        if !list.reaper
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            list.reaper = true;
            rt.spawn(reap(Arc::downgrade(self)));
        }
    }

    /// The most recently idle connection to `target`, if any.
    pub fn take(&self, target: SocketAddr) -> Option<Idle> {
        let mut list = self.lock();
        prune(&mut list.entries);
        let at = list.entries.iter().rposition(|e| e.target == target)?;
        Some(list.entries.swap_remove(at))
    }
}

fn prune(entries: &mut Vec<Idle>) {
    entries.retain(|e| e.since.elapsed() < IDLE_TTL && !e.sender.is_closed());
}

/// Drops expired entries until the list's owner is gone.
async fn reap(list: Weak<IdleConns>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(list) = list.upgrade() else { return };
        prune(&mut list.lock().entries);
    }
}
