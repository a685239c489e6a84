//! The on-disk copy of each provider's last good JWKS, so an agent that
//! restarts while the provider is down still verifies tokens.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub issuer: String,
    pub jwks_uri: String,
    /// Seconds since the epoch when the JWKS was fetched from the provider.
    pub fetched_at: u64,
    /// The JWKS exactly as served.
    pub jwks: serde_json::Value,
}

impl Snapshot {
    pub fn fetched_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.fetched_at)
    }
}

pub fn path(state_dir: &Path, provider: &str) -> PathBuf {
    // Provider names are free text: keep the file name to a safe alphabet.
    let safe: String = provider
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("providers").join(format!("{safe}.json"))
}

/// Writes atomically (temp file + rename) so a crash never leaves half a file.
pub fn store(file: &Path, snap: &Snapshot) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    let body = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, file)
}

pub fn load(file: &Path) -> std::io::Result<Snapshot> {
    let body = std::fs::read(file)?;
    serde_json::from_slice(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
