//! Hot reload: the config file is re-read when its content changes (polled,
//! which also catches Kubernetes ConfigMap symlink swaps) or on SIGHUP. A
//! file that does not parse, validate or apply is refused, logged and counted;
//! the running configuration keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::Agent;
use crate::config::Config;

/// Outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Applied,
    Rejected(String),
}

pub struct Reloader {
    file: PathBuf,
    last: Option<Vec<u8>>,
}

impl Reloader {
    /// `current` is the content the agent started with.
    pub fn new(file: &Path, current: Option<Vec<u8>>) -> Self {
        Self {
            file: file.to_path_buf(),
            last: current,
        }
    }

    /// Re-reads the file and applies it when its bytes changed.
    pub async fn check(&mut self, agent: &Agent) -> Reload {
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) => return self.reject(agent, format!("{}: cannot read: {e}", self.file.display())),
        };
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return Reload::Unchanged;
        }
        // Remember the bytes even when refused, so a bad file is reported once, not every poll.
        self.last = Some(bytes.clone());
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => return self.reject(agent, format!("{}: not UTF-8", self.file.display())),
        };
        let config = match Config::parse(&text, &self.file) {
            Ok(c) => c,
            Err(e) => return self.reject(agent, e.to_string()),
        };
        match agent.apply(config).await {
            Ok(()) => {
                agent.shared().metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %self.file.display(), "configuration reloaded");
                Reload::Applied
            }
            Err(e) => self.reject(agent, e.to_string()),
        }
    }

    fn reject(&self, agent: &Agent, why: String) -> Reload {
        agent
            .shared()
            .metrics
            .config_reloads
            .with_label_values(&["rejected"])
            .inc();
        tracing::error!(error = %why, "configuration refused; the previous one keeps serving");
        Reload::Rejected(why)
    }

    /// Polls every `interval` and on SIGHUP, until the future is dropped.
    pub async fn run(mut self, agent: &Agent, interval: Duration) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {}
            }
            self.check(agent).await;
        }
    }
}
