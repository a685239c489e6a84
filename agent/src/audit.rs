//! The audit log: one JSON line per decision under the target `audit`,
//! naming the caller (iss, sub, email), never the token.
//!
//! Two paths with the same line shape
//! (`{"timestamp","level","target":"audit", request_id, trace_id, workload, method, path,
//! decision, reason, detail, rule, iss, sub, email, client_id, act, k8s_user,
//! k8s_groups, client, latency_us}`; an
//! absent optional field is left out):
//!
//! - The binary makes an [`Audit`] writing to stdout ([`Audit::writer`]): the worker
//!   formats the line itself into a reused per-thread buffer and appends it
//!   to a shared batch; one writer thread swaps the batch out and writes it
//!   with one `write(2)`. The writer is woken only when a batch crosses
//!   [`Limits::batch`] bytes or, after a quiet spell, by the first line, and
//!   otherwise collects for one [`Limits::tick`]; so a busy agent pays no
//!   cross-thread wake-up per request. Never lossy: past [`Limits::cap`]
//!   buffered bytes the request waits for the writer (back-pressure from a
//!   slow stdout). Lines are appended whole under one lock, so they never
//!   interleave; the [`Guard`] flushes on shutdown.
//! - [`Audit::tracing`] (the library in tests, `explain`): the same fields go
//!   through `tracing` under the target `audit`, so a subscriber sees them.
//!
//! The handle is owned (the proxy's context holds it), not a global.
//!
//! [`AuditMetrics`] shows whether the writer keeps up: the bytes waiting in
//! the batch and how often a request had to wait for room. Both are read from
//! the sink at scrape time; the per-request path only counts its waits, which
//! happen on the slow path alone.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use prometheus::{IntCounter, IntGauge, Registry};

use crate::authz::Decision;
use crate::trace::TraceId;

mod egress;
pub use egress::EgressRecord;

pub struct Record<'a> {
    pub request_id: &'a HeaderValue,
    pub trace_id: Option<&'a TraceId>,
    pub workload: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub decision: &'a Decision,
    pub client: SocketAddr,
    pub latency: Duration,
}

/// The fields of one audit line, borrowed from the request and the decision.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub workload: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
    pub detail: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub iss: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub email: Option<&'a str>,
    /// The OAuth client the token was issued to (`azp`, else `client_id`).
    pub client_id: Option<&'a str>,
    /// An RFC 8693 delegation chain, current actor first (`agent-b>agent-a`).
    pub act: Option<String>,
    /// The Kubernetes user an RBAC rule asked about, and its groups (comma-separated).
    pub k8s_user: Option<&'a str>,
    pub k8s_groups: Option<String>,
    pub client: SocketAddr,
    pub latency_us: u64,
}

impl<'a> Fields<'a> {
    pub fn of(r: &'a Record<'a>) -> Self {
        let d = r.decision;
        let token = d.token.as_ref().map(|t| &t.entry.verified);
        Self {
            request_id: r.request_id.to_str().unwrap_or(""),
            trace_id: r.trace_id.map(TraceId::as_str),
            workload: r.workload,
            method: r.method.as_str(),
            path: r.path,
            decision: d.outcome.as_str(),
            reason: d.reason.as_str(),
            detail: d.detail.as_deref(),
            rule: d.rule.as_deref(),
            iss: token.map(|t| t.iss.as_str()),
            sub: token.and_then(|t| t.sub.as_deref()),
            email: token.and_then(|t| t.email()),
            client_id: token.and_then(|t| t.client_id()),
            act: token.and_then(|t| t.act_chain()),
            k8s_user: d.kube_user.as_ref().map(|u| u.username.as_str()),
            k8s_groups: d.kube_user.as_ref().map(|u| u.groups.join(",")),
            client: r.client,
            latency_us: u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

thread_local! {
    /// The line being formatted, reused across requests on this thread.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A per-thread line buffer above this is released after use (a very long path).
const KEEP_LINE_BYTES: usize = 16 * 1024;

/// Where audit lines go: a batching writer, or `tracing`.
#[derive(Clone, Default)]
pub struct Audit {
    sink: Option<Arc<Sink>>,
}

impl Audit {
    /// Lines as `tracing` events under the target `audit`.
    pub fn tracing() -> Self {
        Self::default()
    }

    /// Lines to `out` through a batching writer thread. Keep the guard until
    /// exit: dropping it writes what is buffered and stops the thread.
    pub fn writer(out: Box<dyn Write + Send>, limits: Limits) -> std::io::Result<(Self, Guard)> {
        let sink = Arc::new(Sink::new(out, limits));
        let guard = Guard::start(sink.clone())?;
        Ok((Self { sink: Some(sink) }, guard))
    }

    pub fn log(&self, r: &Record<'_>) {
        let f = Fields::of(r);
        match &self.sink {
            Some(sink) => LINE.with_borrow_mut(|line| {
                line.clear();
                format_line(line, &f, SystemTime::now());
                sink.push(line);
                if line.capacity() > KEEP_LINE_BYTES {
                    *line = Vec::new();
                }
            }),
            None => tracing::info!(
                target: "audit",
                request_id = f.request_id,
                trace_id = f.trace_id,
                workload = f.workload,
                method = f.method,
                path = f.path,
                decision = f.decision,
                reason = f.reason,
                detail = f.detail,
                rule = f.rule,
                iss = f.iss,
                sub = f.sub,
                email = f.email,
                client_id = f.client_id,
                act = f.act.as_deref(),
                k8s_user = f.k8s_user,
                k8s_groups = f.k8s_groups.as_deref(),
                client = %f.client,
                latency_us = f.latency_us,
            ),
        }
    }
}

/// Batching limits of a [`Sink`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Buffered bytes that wake the writer at once.
    pub batch: usize,
    /// Buffered bytes past which a request waits for the writer.
    pub cap: usize,
    /// How long the writer lets a batch fill before writing it.
    pub tick: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            batch: 64 * 1024,
            cap: 4 * 1024 * 1024,
            tick: Duration::from_millis(5),
        }
    }
}

/// Audit lines on their way to the output: an append-only batch and the writer's handle.
pub struct Sink {
    state: Mutex<State>,
    /// Wakes the writer: a line after a quiet spell, a full batch, or shutdown.
    wake: Condvar,
    /// Wakes requests waiting for room under the cap.
    room: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
    limits: Limits,
    /// Pushes that found the batch over the cap and waited for the writer.
    waits: AtomicU64,
}

/// What [`AuditMetrics`] reads from a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of whole lines in the batch, not yet handed to the output.
    pub buffered: usize,
    /// Pushes that had to wait for room under [`Limits::cap`], since start.
    pub waits: u64,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// The writer waits for a first line (not on a tick).
    parked: bool,
    /// Producers waiting for room.
    waiting: usize,
    /// The writer has stopped: lines go straight to the output.
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sink {
    pub fn new(out: Box<dyn Write + Send>, limits: Limits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(out),
            limits,
            waits: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            buffered: lock(&self.state).buf.len(),
            waits: self.waits.load(Ordering::Relaxed),
        }
    }

    /// Appends whole lines; waits while the batch is over the cap.
    pub fn push(&self, lines: &[u8]) {
        let mut st = lock(&self.state);
        // A line longer than the cap still goes in, alone.
        let mut waited = false;
        while !st.closed && !st.buf.is_empty() && st.buf.len() + lines.len() > self.limits.cap {
            if !waited {
                waited = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            st.waiting += 1;
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.waiting -= 1;
        }
        if st.closed {
            drop(st);
            self.write(lines);
            return;
        }
        let before = st.buf.len();
        st.buf.extend_from_slice(lines);
        let batch = self.limits.batch;
        let wake = (st.parked && before == 0) || (before < batch && st.buf.len() >= batch);
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut out = lock(&self.out);
        if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
            // Nowhere left to put the lines; say so on stderr once per failure.
            eprintln!("nodeward: audit log write failed ({} bytes lost): {e}", bytes.len());
        }
    }

    /// The writer thread's loop: until closed, take the batch and write it.
    fn run(&self) {
        let Limits { batch, tick, .. } = self.limits;
        let mut spare = Vec::with_capacity(batch);
        loop {
            let mut st = lock(&self.state);
            loop {
                if st.closed || st.buf.len() >= batch {
                    break;
                }
                if st.buf.is_empty() {
                    st.parked = true;
                    st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                    st.parked = false;
                    continue;
                }
                // Let the batch fill for one tick (a full batch or shutdown cuts it short).
                st = self
                    .wake
                    .wait_timeout(st, tick)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                break;
            }
            let closed = st.closed;
            std::mem::swap(&mut st.buf, &mut spare);
            let waiting = st.waiting > 0;
            drop(st);
            if waiting {
                self.room.notify_all();
            }
            if !spare.is_empty() {
                self.write(&spare);
                spare.clear();
                if spare.capacity() > 4 * batch {
                    spare = Vec::with_capacity(batch);
                }
            }
            if closed {
                return;
            }
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_one();
        self.room.notify_all();
    }
}

/// Owns the writer thread; dropping it writes what is buffered and stops it.
pub struct Guard {
    sink: Arc<Sink>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Guard {
    /// Starts the writer thread of `sink`.
    pub fn start(sink: Arc<Sink>) -> std::io::Result<Self> {
        let s = sink.clone();
        let thread = std::thread::Builder::new()
            .name("nodeward-audit".into())
            .spawn(move || s.run())?;
        Ok(Self {
            sink,
            thread: Some(thread),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.sink.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `nodeward_audit_buffered_bytes` and `nodeward_audit_backpressure_waits_total`,
/// brought up to date from the installed sink at scrape time.
pub struct AuditMetrics {
    buffered: IntGauge,
    waits: IntCounter,
    /// Two concurrent scrapes must not both add the same waits to the counter.
    observing: Mutex<()>,
}

impl AuditMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let buffered = IntGauge::new(
            "nodeward_audit_buffered_bytes",
            "Audit log bytes waiting for the writer thread (sampled at scrape time)",
        )?;
        let waits = IntCounter::new(
            "nodeward_audit_backpressure_waits_total",
            "Requests that waited for the audit writer because its buffer was full (slow stdout)",
        )?;
        r.register(Box::new(buffered.clone()))?;
        r.register(Box::new(waits.clone()))?;
        Ok(Self {
            buffered,
            waits,
            observing: Mutex::new(()),
        })
    }

    /// Brings the series up to date from `audit`'s writer (nothing to show
    /// when its lines go through `tracing`).
    pub fn observe(&self, audit: &Audit) {
        self.observe_stats(audit.sink.as_ref().map(|s| s.stats()).unwrap_or_default());
    }

    fn observe_stats(&self, s: Stats) {
        let _one_at_a_time = lock(&self.observing);
        self.buffered.set(i64::try_from(s.buffered).unwrap_or(i64::MAX));
        self.waits.inc_by(s.waits.saturating_sub(self.waits.get()));
    }
}

mod format;

pub use format::format_line;
pub(crate) use format::ipv4;

#[cfg(test)]
mod tests;
