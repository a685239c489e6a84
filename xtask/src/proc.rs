//! Child processes the demo starts: each one is stopped (SIGTERM, then
//! SIGKILL after a grace period) when its guard is dropped, so an error or a
//! panic half-way through never leaves a dev IdP or an agent running.
//! Stdout is collected line by line (the dev IdP announces its address there,
//! the agent writes its audit log there); stderr goes to a file so it does not
//! clutter the demo, and is shown when something goes wrong.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a child gets to exit after SIGTERM; the agent drains in-flight
/// requests, which on an idle demo takes milliseconds.
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

pub struct ChildProc {
    name: String,
    /// `None` once stopped, so `Drop` does nothing more.
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
}

impl ChildProc {
    /// Spawns `cmd` with stdout captured and stderr written to `stderr_path`.
    pub fn spawn(name: &str, cmd: &mut Command, stderr_path: &Path) -> anyhow::Result<Self> {
        let stderr = File::create(stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut child = cmd
            // stderr goes to a file that people read with less or cat: no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&stdout);
            // A plain thread: the pipe is blocking, and the thread ends by
            // itself at EOF when the child exits.
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(PoisonError::into_inner).push(line);
                }
            });
        }
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr_path: stderr_path.to_owned(),
        })
    }

    /// The first stdout line so far that `pred` accepts.
    pub fn find_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let lines = self.stdout.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().find(|l| pred(l)).cloned()
    }

    /// Waits (bounded) for a stdout line that `pred` accepts; fails early if
    /// the child exits first.
    pub async fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.find_line(&pred) {
                return Ok(line);
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!("{} printed no expected line within {timeout:?}", self.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// An error if the child has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already stopped", self.name);
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited early ({status})", self.name),
            Err(e) => Err(e).with_context(|| format!("checking on {}", self.name)),
        }
    }

    /// The last `n` lines the child wrote to stderr, for error reports.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Returns how it exited.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.name);
        };
        terminate(&mut child).with_context(|| format!("stopping {}", self.name))
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Nothing to report to: the caller is already unwinding or erroring.
            let _ = terminate(&mut child);
        }
    }
}

fn terminate(child: &mut Child) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // std has no way to send SIGTERM and the workspace forbids `unsafe`
    // (libc::kill), so ask kill(1). If that fails, SIGKILL below still ends it.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(POLL);
    }
    child.kill()?;
    child.wait()
}

/// `N` distinct loopback ports that were free a moment ago: bind port 0, note
/// the ports, release them. All are held until all are picked, so they differ.
/// Another process could take one in between; acceptable for a demo on a
/// developer machine or a CI runner.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

/// `nodeward-dev-idp` as a process, on a port of its own choosing (port 0,
/// read back from its announcement: no race for the port).
pub struct DevIdp {
    /// Where to POST /mint.
    pub url: String,
    /// What it puts in `iss`.
    pub issuer: String,
    pub proc: ChildProc,
}

/// How long the dev IdP has to announce its address; it makes three keys first.
const IDP_START_TIMEOUT: Duration = Duration::from_secs(20);

impl DevIdp {
    /// Builds `nodeward-dev-idp` (release) when needed and starts it as `name`,
    /// its stderr in `dir/<name>.stderr`.
    pub async fn start(name: &str, dir: &Path) -> anyhow::Result<Self> {
        let bin = dev_idp_binary()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0"]);
        let mut proc = ChildProc::spawn(name, &mut cmd, &dir.join(format!("{name}.stderr")))?;
        let line = proc
            .wait_for_line(IDP_START_TIMEOUT, |l| l.starts_with("dev-idp listening on "))
            .await?;
        let (url, issuer) = line
            .strip_prefix("dev-idp listening on ")
            .and_then(|rest| rest.split_once(" issuer="))
            .with_context(|| format!("{name}: unexpected announcement {line:?}"))?;
        Ok(Self {
            url: url.to_owned(),
            issuer: issuer.to_owned(),
            proc,
        })
    }

    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.proc.stop()
    }
}

/// The release `nodeward-dev-idp` binary, built once per xtask run.
fn dev_idp_binary() -> anyhow::Result<PathBuf> {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(b) = BIN.get() {
        return Ok(b.clone());
    }
    let b = crate::bench::env::build_release("nodeward-dev-idp")?;
    Ok(BIN.get_or_init(|| b).clone())
}
