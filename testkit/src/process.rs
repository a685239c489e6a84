//! `nodeward run` as a child process, for tests that need what only the
//! binary has: its signal handling (SIGHUP reloads, SIGTERM drains) and its
//! stdout audit writer. The binary's path is the caller's (Cargo gives
//! `CARGO_BIN_EXE_*` only to the package that builds it). The child is
//! killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::client;

pub struct AgentProcess {
    child: tokio::process::Child,
    /// The admin address of its config (`/readyz`, `/metrics`).
    pub admin: SocketAddr,
}

impl AgentProcess {
    /// `bin run --config FILE ARGS...`, stdout and stderr captured.
    pub fn spawn(bin: &str, config: &Path, args: &[&str], admin: SocketAddr) -> Self {
        let child = tokio::process::Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nodeward");
        Self { child, admin }
    }

    /// Waits (bounded: 10 s) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = client().get(format!("http://{}/readyz", self.admin)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nodeward did not become ready within 10 s");
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id().expect("the child is running")
    }

    /// Whether the child has a handler for signal number `signo`
    /// (`SigCgt` in /proc/PID/status).
    pub fn catches(&self, signo: u32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (signo - 1)) != 0)
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the child is running").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM, then the exit status and everything it wrote (bounded: 30 s).
    pub async fn terminate(self) -> Output {
        self.signal("TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait_with_output())
            .await
            .expect("exits within 30 s of SIGTERM")
            .expect("output")
    }
}
