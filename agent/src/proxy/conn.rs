//! Per-connection watchdogs. Idle keep-alive connections are closed after the
//! idle timeout (hyper bounds the wait for a request head, not the quiet time
//! between requests). A connection whose client cancels requests in bulk —
//! HTTP/2 "rapid reset" (CVE-2023-44487), each cancelled stream having cost a
//! full decision — is closed once it spends its cancellation budget.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Activity(Arc<Inner>);

struct Inner {
    start: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// Requests cancelled by the client in the current window, and when it began.
    cancelled: AtomicU64,
    window_ms: AtomicU64,
    abuse: tokio::sync::Notify,
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
            abuse: tokio::sync::Notify::new(),
        }))
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
            self.0.abuse.notify_one();
        }
    }

    /// A guard for one request: dropped before [`Pending::done`], it counts
    /// as cancelled by the client.
    pub fn pending(&self) -> Pending {
        Pending(Some(self.clone()))
    }

    fn touch(&self) {
        self.0
            .last_ms
            .store(self.0.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops (the response body may
    /// outlive the service call; the guard travels with it).
    pub fn begin(&self) -> Busy {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.0.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
        Some(self.0.start.elapsed().saturating_sub(last))
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
        self.0.touch();
        self.0.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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

/// Drives `conn` to completion, dropping it once it has been idle too long.
pub async fn run_with_idle_timeout<F, T>(conn: F, activity: Activity, idle: Duration) -> Result<(), ConnError>
where
    F: Future<Output = Result<T, Box<dyn std::error::Error + Send + Sync>>>,
{
    tokio::pin!(conn);
    let tick = (idle / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            done = &mut conn => return done.map(|_| ()).map_err(ConnError::Http),
            _ = activity.0.abuse.notified() => return Err(ConnError::CancelBudget),
            _ = tokio::time::sleep(tick) => {
                if activity.idle_for().is_some_and(|d| d >= idle) {
                    return Ok(());
                }
            }
        }
    }
}
