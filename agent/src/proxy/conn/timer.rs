//! A connection's deadlines, kept by its [`Watchdog`](super::Watchdog): a
//! [`ConnSleep`] registers its deadline and waker in a slot and is woken by
//! the watchdog once it passes. Setting one is a lock and a store (no timer
//! of the runtime per request); the watchdog is woken only when a deadline
//! is earlier than the time it will look anyway.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::Activity;

/// What a deadline bounds; one at a time of each per connection (HTTP/1.1
/// handles one request at a time).
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    /// The client sending a request head (hyper's `header_read_timeout`).
    Head = 0,
    /// The upstream answering on the bound connection (`upstream_timeout`).
    Upstream = 1,
}

#[derive(Default)]
pub(super) struct Timers {
    slots: [Entry; 2],
    /// When the watchdog looks next.
    pub(super) planned: Option<Instant>,
    /// Numbers sleeps, so a dropped one clears only its own entry.
    next_id: u64,
}

#[derive(Default)]
struct Entry {
    id: u64,
    at: Option<Instant>,
    waker: Option<Waker>,
    fired: bool,
}

impl Timers {
    /// Marks the entries due at `now` as fired and wakes their sleeps; the
    /// earliest deadline still ahead.
    pub(super) fn fire(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for e in &mut self.slots {
            let Some(at) = e.at.filter(|_| !e.fired) else { continue };
            if at <= now {
                e.fired = true;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
    }
}

/// A sleep until `at` on a connection's watchdog.
pub struct ConnSleep {
    activity: Activity,
    slot: Slot,
    id: u64,
    at: Instant,
}

impl ConnSleep {
    pub fn new(activity: &Activity, slot: Slot, at: Instant) -> Self {
        let id = {
            let mut t = activity.timers();
            t.next_id += 1;
            let id = t.next_id;
            t.slots[slot as usize] = Entry {
                id,
                at: Some(at),
                waker: None,
                fired: false,
            };
            id
        };
        Self {
            activity: activity.clone(),
            slot,
            id,
            at,
        }
    }
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut t = self.activity.timers();
        let planned = t.planned;
        let e = &mut t.slots[self.slot as usize];
        if e.id != self.id || e.fired {
            return Poll::Ready(());
        }
        match &mut e.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        drop(t);
        // The watchdog sleeps past this deadline: it must plan again.
        if planned.is_none_or(|p| self.at < p) {
            self.activity.0.watchdog.wake();
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for ConnSleep {}

impl Drop for ConnSleep {
    fn drop(&mut self) {
        let mut t = self.activity.timers();
        let e = &mut t.slots[self.slot as usize];
        if e.id == self.id {
            *e = Entry::default();
        }
    }
}

/// hyper's timer for one HTTP/1.1 connection: its header read timeout on
/// the connection's watchdog.
#[derive(Clone)]
pub struct ConnTimer(pub Activity);

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(ConnSleep::new(&self.0, Slot::Head, at))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Activity, Watchdog};
    use super::*;

    #[tokio::test]
    async fn a_deadline_fires_on_the_watchdog_and_a_later_one_waits() {
        let activity = Activity::new();
        let watchdog = tokio::spawn(Watchdog::new(activity.clone(), Duration::from_secs(60)));
        let start = Instant::now();
        let late = ConnSleep::new(&activity, Slot::Upstream, start + Duration::from_secs(30));
        ConnSleep::new(&activity, Slot::Head, start + Duration::from_millis(50)).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        // The later deadline is still pending.
        let mut late = Box::pin(late);
        assert!(futures_util::poll!(late.as_mut()).is_pending());
        // A new, earlier deadline in the same slot replaces it.
        ConnSleep::new(&activity, Slot::Upstream, Instant::now() + Duration::from_millis(20)).await;
        assert!(
            futures_util::poll!(late.as_mut()).is_ready(),
            "replaced: no longer waits"
        );
        watchdog.abort();
    }
}
