//! The demo's chapter "an AI agent calling an MCP tool" (issue 16): an MCP
//! server built with the official SDK (`tests/interop/mcp-server.mjs`), a
//! `nodeward run` in front of it whose policy makes it an OAuth protected
//! resource, panva's oidc-provider as the authorization server, and the
//! SDK's own client as the agent, which knows only the MCP URL and its
//! client credentials. Shows the agent's HTTP exchanges as the SDK made
//! them, and checks what the contract promises: the challenge points at the
//! metadata, the token is for the resource, the tool never sees the token, a
//! token for another resource is refused, the audit line names the client.
//!
//! Needs Node.js; installs the npm packages (`npm ci --prefix
//! tests/interop`) when they are missing, as `cargo xtask test` does.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use nodeward_testkit::interop::{AGENT_CLIENT_ID, NodeServer, agent_token, mcp_client};
use serde_json::{Value, json};

use super::env::wait_ready;
use crate::proc::{ChildProc, free_ports};

const HEADER: &str = "
chapter: an AI agent calling an MCP tool

An MCP server built with the official MCP SDK serves one tool, `whoami`.
nodeward sits in front of it; the policy marks it an OAuth protected
resource (RFC 9728) of the corporate authorization server, here panva's
oidc-provider. The agent is the SDK's own client: it knows the MCP URL and
its client credentials, nothing else. The token it gets is for this MCP
server only (RFC 8707), and nodeward never passes it on: the tool sees who
called, not the token.";

/// Runs the chapter with `bin` (the nodeward binary); returns how many
/// checks failed.
pub async fn tour(bin: &Path) -> anyhow::Result<usize> {
    println!("{HEADER}\n");
    let dir = tempfile::Builder::new()
        .prefix("nodeward-demo-agents-")
        .tempdir()
        .context("creating a temporary directory")?;
    let dir = dir.path();
    crate::test::interop_prerequisites(&crate::workspace_root())?;
    let [provider_port, listen, admin, elsewhere] = free_ports()?;
    let resource = format!("http://127.0.0.1:{listen}/mcp");
    let other_resource = format!("http://127.0.0.1:{elsewhere}/mcp");
    let jwks = dir.join("agents-jwks.json");
    let provider = NodeServer::start(
        "oidc-provider.mjs",
        provider_port,
        &[
            ("JWKS_FILE", &jwks.to_string_lossy()),
            ("MCP_RESOURCES", &format!("{resource},{other_resource}")),
        ],
        Some(&dir.join("oidc-provider.stderr")),
    )
    .await?;
    let issuer = provider.url.clone();
    let server = NodeServer::start("mcp-server.mjs", 0, &[], Some(&dir.join("mcp-server.stderr"))).await?;
    let upstream = server
        .url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/mcp"))
        .context("the MCP server announces http://ADDR/mcp")?
        .to_owned();

    let config_path = dir.join("nodeward-agents.yaml");
    let q = |s: &str| serde_json::to_string(s);
    let state = dir.join("agents-state");
    std::fs::write(
        &config_path,
        format!(
            r#"admin: 127.0.0.1:{admin}
state_dir: {state}
providers:
  - {{name: corp, issuer: {issuer_q}, audiences: [{resource_q}], typ: [at+jwt]}}
policies:
  - name: tools
    selector: {{app: tools}}
    protected_resource:
      resource: {resource_q}
      authorization_servers: [corp]
      scopes_supported: [tools.read, tools.call]
    rules:
      - {{name: call, paths: ["/mcp"], require: {{claims: {{scope: {{all_of: [tools.call]}}}}}}}}
    forward_claims: {{x-client-id: client_id}}
workloads:
  - {{name: tools, labels: {{app: tools}}, listen: "127.0.0.1:{listen}", upstream: "{upstream}"}}
"#,
            state = q(&state.to_string_lossy())?,
            issuer_q = q(&issuer)?,
            resource_q = q(&resource)?,
        ),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(&config_path);
    let mut agent = ChildProc::spawn("nodeward (agents)", &mut cmd, &dir.join("nodeward-agents.stderr"))?;
    let admin_url = format!("http://127.0.0.1:{admin}");
    if let Err(e) = wait_ready(&mut agent, &admin_url).await {
        anyhow::bail!("{e:#}\nnodeward's stderr ends with:\n{}", agent.stderr_tail(20));
    }
    println!(
        "started:
  oidc-provider  {issuer} (authorization server; the agent's client is {AGENT_CLIENT_ID})
  MCP server     {} (tool whoami: reports the identity headers it got)
  nodeward       workload tools on http://127.0.0.1:{listen} -> the MCP server; config {}
  policy         protected_resource {resource}, authorization server corp,
                 POST /mcp needs scope tools.call; the app gets x-nodeward-sub and x-client-id
",
        server.url,
        config_path.display()
    );
    let failed = checks(&resource, &issuer, &other_resource, &agent).await;
    let status = agent.stop()?;
    server.stop().await;
    provider.stop().await;
    println!("stopped: nodeward ({status}), MCP server, oidc-provider");
    failed
}

/// The agent's run and what it shows; returns how many checks failed.
async fn checks(resource: &str, issuer: &str, other_resource: &str, agent: &ChildProc) -> anyhow::Result<usize> {
    println!("the agent: node tests/interop/mcp-client.mjs {resource} {issuer}");
    let report = mcp_client(resource, issuer).await?;
    println!("its HTTP exchanges, as the SDK made them:");
    for e in report["trace"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let challenge = e["www_authenticate"]
            .as_str()
            .map(|c| format!("\n         WWW-Authenticate: {c}"))
            .unwrap_or_default();
        println!(
            "  {:<4} {} -> {}{challenge}",
            e["method"].as_str().unwrap_or("?"),
            str_of(&e["url"]),
            e["status"]
        );
    }
    let tool: Value = report["result"]["content"][0]["text"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    let first_refusal = report["trace"][0]["www_authenticate"].as_str().unwrap_or_default();
    let foreign = agent_token(issuer, other_resource).await?;
    let refused = nodeward_testkit::client()
        .post(resource)
        .bearer_auth(&foreign)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await?;
    let refused_status = refused.status();
    let refused_body: Value = serde_json::from_str(&refused.text().await?).unwrap_or(Value::Null);
    let audit = audit_line(agent, |l| {
        l.contains(r#""decision":"allow""#) && l.contains(&format!(r#""client_id":"{AGENT_CLIENT_ID}""#))
    })
    .await;

    let metadata = format!(
        r#"resource_metadata="{}""#,
        resource.replacen("/mcp", "/.well-known/oauth-protected-resource/mcp", 1)
    );
    let results = [
        (
            first_refusal.contains(&metadata),
            format!("the agent's first call got 401 with {metadata}"),
        ),
        (
            report["token"]["aud"] == json!(resource),
            format!(
                "its token names this MCP server as the audience (aud={})",
                report["token"]["aud"]
            ),
        ),
        (
            tool["sub"] == json!(AGENT_CLIENT_ID) && tool["authorization"].is_null(),
            format!("tool whoami ran and saw no Authorization header, only the identity: {tool}"),
        ),
        (
            refused_status == 401 && refused_body["reason"] == "wrong_audience",
            format!(
                "a token for another MCP server ({other_resource}) -> {refused_status} {}",
                refused_body["reason"]
            ),
        ),
        (
            audit.is_some(),
            format!(
                "audit log: {}",
                audit.as_deref().unwrap_or("(no allowed call naming the client)")
            ),
        ),
    ];
    println!("\nchecks:");
    for (ok, what) in &results {
        println!("{} {what}", if *ok { "ok  " } else { "FAIL" });
    }
    println!();
    Ok(results.iter().filter(|(ok, _)| !ok).count())
}

/// The agent's first audit line `pred` accepts, waiting (bounded) for its
/// batching writer.
async fn audit_line(agent: &ChildProc, pred: impl Fn(&str) -> bool) -> Option<String> {
    for _ in 0..100 {
        if let Some(line) = agent.find_line(&pred) {
            return Some(line);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}
