//! The Node.js fixtures of `tests/interop` as child processes: panva's
//! `oidc-provider` (a certified OpenID provider), an MCP server and an MCP
//! client built with the official MCP SDK. Shared by the interop tests and
//! `cargo xtask demo`. Each server prints one ready line with its URL on
//! stdout; a fixture is killed when dropped, so a failing test leaves no
//! process behind.
//!
//! Nothing here skips: without Node.js or without `npm ci --prefix
//! tests/interop` every start is an error that says so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The npm packages the fixtures import (`tests/interop/package.json`).
pub const PACKAGES: [&str; 2] = ["oidc-provider", "@modelcontextprotocol/sdk"];

/// The MCP client's credentials at the provider (`oidc-provider.mjs`).
pub const AGENT_CLIENT_ID: &str = "nodeward-agent";
const AGENT_CLIENT_SECRET: &str = "nodeward-agent-secret";

#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    #[error(
        "npm package {0} is not installed in tests/interop: run `npm ci --prefix tests/interop` (cargo xtask test does it)"
    )]
    NotInstalled(&'static str),
    #[error("cannot run node (Node.js >= 20.19 must be installed): {0}")]
    NoNode(std::io::Error),
    #[error("{script} did not print its ready line within {timeout:?}")]
    NotReady { script: String, timeout: Duration },
    #[error("{script} failed ({status}): {stderr}")]
    Failed {
        script: String,
        status: String,
        stderr: String,
    },
    #[error("no token from {issuer}: {why}")]
    Token { issuer: String, why: String },
    #[error("{script} printed no JSON result ({error}): {stdout}")]
    Output {
        script: String,
        error: String,
        stdout: String,
    },
}

/// `tests/interop` of this workspace.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop")
}

/// The first package of [`PACKAGES`] that `npm ci` has not installed.
pub fn missing_package() -> Option<&'static str> {
    PACKAGES
        .into_iter()
        .find(|p| !dir().join("node_modules").join(p).is_dir())
}

fn installed() -> Result<(), InteropError> {
    match missing_package() {
        Some(p) => Err(InteropError::NotInstalled(p)),
        None => Ok(()),
    }
}

/// A free port on 127.0.0.1 (for a fixture whose URL must be known before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A fixture server: `node tests/interop/<script> <port>`.
pub struct NodeServer {
    child: Child,
    /// What the ready line announced (the issuer, the MCP endpoint).
    pub url: String,
}

impl NodeServer {
    /// Starts `script` on `port` with `env`, and waits (bounded) for its
    /// `"<name> ready <url>"` line. Its stderr goes to `stderr` (else nowhere).
    pub async fn start(
        script: &str,
        port: u16,
        env: &[(&str, &str)],
        stderr: Option<&Path>,
    ) -> Result<Self, InteropError> {
        installed()?;
        let mut cmd = Command::new("node");
        cmd.arg(dir().join(script))
            .arg(port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        match stderr {
            Some(path) => cmd.stderr(std::fs::File::create(path).map_err(InteropError::NoNode)?),
            None => cmd.stderr(Stdio::null()),
        };
        let mut child = cmd.spawn().map_err(InteropError::NoNode)?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let timeout = Duration::from_secs(30);
        let ready = tokio::time::timeout(timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, url)) = line.split_once(" ready ") {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await;
        match ready {
            Ok(Some(url)) => Ok(Self { child, url }),
            _ => Err(InteropError::NotReady {
                script: script.into(),
                timeout,
            }),
        }
    }

    /// SIGTERM, then a kill if it has not exited within 5 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // kill(1), as `process.rs` signals the agent: the fixtures exit 0 on SIGTERM.
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs the MCP SDK client (`mcp-client.mjs`) against `mcp_url`, with the
/// agent's client credentials at `issuer`: its JSON report (tools, the tool
/// result, every HTTP exchange, the token's claims).
pub async fn mcp_client(mcp_url: &str, issuer: &str) -> Result<Value, InteropError> {
    installed()?;
    let script = "mcp-client.mjs";
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("node")
            .arg(dir().join(script))
            .arg(mcp_url)
            .arg(issuer)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| InteropError::NotReady {
        script: script.into(),
        timeout: Duration::from_secs(60),
    })?
    .map_err(InteropError::NoNode)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(InteropError::Failed {
            script: script.into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    serde_json::from_str(stdout.trim()).map_err(|e| InteropError::Output {
        script: script.into(),
        error: e.to_string(),
        stdout,
    })
}

/// A client-credentials token of the agent's client for `resource` (RFC
/// 8707), asked for directly rather than by the SDK: what a client would
/// hold for another MCP server.
pub async fn agent_token(issuer: &str, resource: &str) -> Result<String, InteropError> {
    let fail = |why: String| InteropError::Token {
        issuer: issuer.into(),
        why,
    };
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("scope", "tools.call")
        .append_pair("resource", resource)
        .finish();
    let resp = crate::client()
        .post(format!("{issuer}/token"))
        .basic_auth(AGENT_CLIENT_ID, Some(AGENT_CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
    let body: Value = serde_json::from_str(&text).map_err(|_| fail(format!("{status}: {text}")))?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| fail(format!("{status}: {text}")))
}
