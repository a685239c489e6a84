//! Hot reload: the config file is re-read when its content changes (polled,
//! which also catches Kubernetes ConfigMap symlink swaps), when a provider's
//! `hs_secret_file` changes, or on SIGHUP. A file that does not parse,
//! validate or apply is refused, logged and counted; the running
//! configuration keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::Signal;

use crate::config::Config;
use crate::control::Control;

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
    /// The shared-secret files of the running configuration and their contents.
    secrets: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl Reloader {
    /// `current` is the content the agent started with.
    pub fn new(file: &Path, current: Option<Vec<u8>>) -> Self {
        let secrets = current
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| Config::parse(t, file).ok())
            .map(|c| secret_files(&c))
            .unwrap_or_default();
        Self {
            file: file.to_path_buf(),
            last: current,
            secrets,
        }
    }

    /// Re-reads the file and applies it when its bytes (or a shared secret
    /// file's) changed, or always with `force` (SIGHUP).
    pub async fn check(&mut self, control: &Control, force: bool) -> Reload {
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) => return self.reject(control, format!("{}: cannot read: {e}", self.file.display())),
        };
        let secrets_changed = self.secrets.iter().any(|(p, before)| std::fs::read(p).ok() != *before);
        if !force && !secrets_changed && self.last.as_deref() == Some(bytes.as_slice()) {
            return Reload::Unchanged;
        }
        // Remember the bytes even when refused, so a bad file is reported once, not every poll.
        self.last = Some(bytes.clone());
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => return self.reject(control, format!("{}: not UTF-8", self.file.display())),
        };
        let config = match Config::parse(&text, &self.file) {
            Ok(c) => c,
            Err(e) => return self.reject(control, e.to_string()),
        };
        // Read before applying: a secret that changes again meanwhile is seen next time.
        let secrets = secret_files(&config);
        match control.apply(config).await {
            Ok(()) => {
                self.secrets = secrets;
                control.count_reload(true);
                tracing::info!(file = %self.file.display(), "configuration reloaded");
                Reload::Applied
            }
            Err(e) => self.reject(control, e.to_string()),
        }
    }

    fn reject(&self, control: &Control, why: String) -> Reload {
        control.count_reload(false);
        tracing::error!(error = %why, "configuration refused; the previous one keeps serving");
        Reload::Rejected(why)
    }

    /// Polls every `interval` and on each `hup` (the SIGHUP stream, which
    /// the caller registers before starting the agent: a SIGHUP's default
    /// action is to kill the process, so one sent while the agent starts
    /// must already be caught; it is then applied once `run` begins),
    /// until the future is dropped.
    pub async fn run(mut self, control: &Control, interval: Duration, mut hup: Option<Signal>) {
        loop {
            let force = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            };
            self.check(control, force).await;
        }
    }
}

/// The shared-secret files `config` reads, with their contents now.
fn secret_files(config: &Config) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    config
        .providers
        .iter()
        .filter_map(|p| p.hs_secret_file.clone())
        .map(|p| {
            let now = std::fs::read(&p).ok();
            (p, now)
        })
        .collect()
}
