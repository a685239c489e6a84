//! Log setup: audit lines (target `audit`) are always JSON on stdout, one per
//! decision, for log shippers; everything else goes to stderr, human-readable
//! by default or JSON with `--log-json`. `RUST_LOG` filters the latter.
//!
//! The agent's audit lines bypass tracing: `audit::Audit::writer` formats
//! them on the worker and a batching writer thread puts them on stdout, so a
//! request never waits on a stdout syscall nor wakes a thread. Should a
//! `target: "audit"` event still reach tracing (`audit::Audit::tracing`), it
//! is written to stdout as JSON, synchronously.

use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

pub fn init(json: bool) {
    let audit = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(true)
        .with_writer(std::io::stdout)
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
}
