//! Per-connection watchdogs. Idle keep-alive connections are closed after the
//! idle timeout (hyper bounds the wait for a request head, not the quiet time
//! between requests). A connection whose client cancels requests in bulk —
//! HTTP/2 "rapid reset" (CVE-2023-44487), each cancelled stream having cost a
//! full decision — is closed once it spends its cancellation budget.
//!
//! The [`Watchdog`] also keeps the connection's deadlines (`timer.rs`: how
//! long a client may take to send a head, how long an upstream may take to
//! answer on a bound connection) with one timer per connection instead of
//! one per request: each request moves a deadline later, and the watchdog,
//! which sleeps until the earliest of them, only looks again when it wakes.

mod timer;

pub use timer::{ConnSleep, ConnTimer, Slot};

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

#[derive(Clone)]
pub struct Activity(Arc<Inner>);

struct Inner {
    start: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// Requests cancelled by the client in the current window, and when it began.
    cancelled: AtomicU64,
    window_ms: AtomicU64,
    /// The cancellation budget is spent.
    abused: AtomicBool,
    /// Wakes the watchdog: abuse, or a deadline earlier than it planned for.
    watchdog: AtomicWaker,
    timers: Mutex<timer::Timers>,
}

/// Most client-cancelled requests per connection per window.
const CANCEL_BUDGET: u64 = 200;
const CANCEL_WINDOW_MS: u64 = 10_000;

impl Activity {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            window_ms: AtomicU64::new(0),
            abused: AtomicBool::new(false),
            watchdog: AtomicWaker::new(),
            timers: Mutex::new(timer::Timers::default()),
        }))
    }

    fn timers(&self) -> MutexGuard<'_, timer::Timers> {
        self.0.timers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request the client cancelled before its response was ready.
    fn cancelled(&self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        let window = self.0.window_ms.load(Ordering::Relaxed);
        if now.saturating_sub(window) > CANCEL_WINDOW_MS {
            self.0.window_ms.store(now, Ordering::Relaxed);
            self.0.cancelled.store(0, Ordering::Relaxed);
        }
        if self.0.cancelled.fetch_add(1, Ordering::Relaxed) + 1 == CANCEL_BUDGET {
            self.0.abused.store(true, Ordering::SeqCst);
            self.0.watchdog.wake();
        }
    }

    /// A guard for one request: dropped before [`Pending::done`], it counts
    /// as cancelled by the client.
    pub fn pending(&self) -> Pending {
        Pending(Some(self.clone()))
    }

    /// Marks a request in flight until the guard drops (the response body may
    /// outlive the service call; the guard travels with it). The idle clock
    /// starts again when the last one drops.
    pub fn begin(&self) -> Busy {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// When the connection will have been idle too long, if nothing happens
    /// before (`None`: a request is in flight).
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.0.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
        Some(self.0.start + last + idle)
    }
}

pub struct Pending(Option<Activity>);

impl Pending {
    pub fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.cancelled();
        }
    }
}

pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0.0;
        a.last_ms.store(a.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection speaks, from its first bytes.
pub enum Preface {
    /// Not the HTTP/2 connection preface: HTTP/1.x (or garbage, which
    /// hyper's HTTP/1 parser refuses).
    Http1,
    /// The HTTP/2 preface, or a part of it so far.
    Other,
    /// Closed before a byte.
    Closed,
}

/// Waits for a connection's first bytes and tells HTTP/1 from the h2
/// preface, without consuming them.
pub async fn sniff(stream: &tokio::net::TcpStream) -> std::io::Result<Preface> {
    const H2: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; 24];
    let n = stream.peek(&mut first).await?;
    Ok(match n {
        0 => Preface::Closed,
        n if first[..n] == H2[..n] => Preface::Other,
        _ => Preface::Http1,
    })
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Http(Box<dyn std::error::Error + Send + Sync>),
    #[error("closed: over {CANCEL_BUDGET} requests cancelled by the client within {CANCEL_WINDOW_MS} ms")]
    CancelBudget,
}

/// Ends a connection (beside it in a `proxy::joint::Joint`) once it has been
/// idle too long (`Ok`) or spent its cancellation budget; fires its
/// deadlines. Polled only when its own timer or [`Activity`] wakes it.
pub struct Watchdog {
    activity: Activity,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Watchdog {
    pub fn new(activity: Activity, idle: Duration) -> Self {
        let first = Instant::now() + idle;
        Self {
            activity,
            idle,
            sleep: Box::pin(tokio::time::sleep_until(first.into())),
        }
    }
}

impl Future for Watchdog {
    type Output = Result<(), ConnError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let a = &this.activity;
        a.0.watchdog.register(cx.waker());
        if a.0.abused.load(Ordering::SeqCst) {
            return Poll::Ready(Err(ConnError::CancelBudget));
        }
        loop {
            let now = Instant::now();
            let idle_at = match a.idle_deadline(this.idle) {
                Some(at) if at <= now => return Poll::Ready(Ok(())),
                Some(at) => at,
                // Busy: look again in a full idle period at the latest.
                None => now + this.idle,
            };
            let planned = this.sleep.deadline().into_std();
            // A timer set later than planned can stay: it fires early and
            // the next round plans again. Only an earlier one is re-armed.
            let next = {
                let mut timers = a.timers();
                let next = timers.fire(now).map_or(idle_at, |at| at.min(idle_at));
                let next = if this.sleep.is_elapsed() || next < planned {
                    next
                } else {
                    planned
                };
                timers.planned = Some(next);
                next
            };
            if next != planned || this.sleep.is_elapsed() {
                this.sleep.as_mut().reset(next.into());
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}
