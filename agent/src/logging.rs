//! Log setup: audit lines (target `audit`) are always JSON on stdout, one per
//! decision, for log shippers; everything else goes to stderr, human-readable
//! by default or JSON with `--log-json`. `RUST_LOG` filters the latter.
//!
//! Audit lines are written by a dedicated thread (tracing-appender), so a
//! request never waits on a stdout syscall. The writer is not lossy: when the
//! queue is full, requests wait rather than lose audit lines.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

/// Keep the returned guard alive until exit: dropping it flushes the audit queue.
pub fn init(json: bool) -> WorkerGuard {
    let (stdout, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("nodeward-audit")
        .finish(std::io::stdout());
    let audit = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(true)
        .with_writer(stdout)
        .with_filter(filter_fn(|m| m.target() == "audit"));
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let not_audit = filter_fn(|m| m.target() != "audit");
    let registry = tracing_subscriber::registry().with(audit);
    if json {
        let logs = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(env)
            .with_filter(not_audit);
        let _ = registry.with(logs).try_init();
    } else {
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(env)
            .with_filter(not_audit);
        let _ = registry.with(logs).try_init();
    }
    guard
}
