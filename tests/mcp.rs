//! Issue 16, agent-aware inbound, against the real thing: an MCP server built
//! with the official MCP SDK (`@modelcontextprotocol/sdk`, Streamable HTTP,
//! one tool) behind nodeward, panva's `oidc-provider` as the authorization
//! server, and the SDK's own client with its `ClientCredentialsProvider`.
//! Knowing only the MCP URL and its client credentials, the client gets
//! nodeward's 401, follows `resource_metadata` (RFC 9728) to the
//! authorization server, gets a token for the resource (RFC 8707) and calls
//! the tool. Also: a token for another resource is refused, the MCP server
//! never sees a token (only nodeward's identity headers), the metadata is
//! what RFC 9728 says, and the audit line names the client.
//!
//! Needs Node.js and `npm ci --prefix tests/interop` (`.ci/run` and
//! `cargo xtask test` do it); without them it fails loudly, never skips.

use nodeward_testkit::interop::{AGENT_CLIENT_ID, NodeServer, agent_token, free_port, mcp_client};
use nodeward_testkit::{AuditCapture, TestAgent, client};
use serde_json::{Value, json};

/// The SDK client's report: the HTTP exchanges it made, in order.
fn exchanges(report: &Value) -> Vec<(String, String, u64, String)> {
    report["trace"]
        .as_array()
        .expect("trace")
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap_or_default().to_string(),
                e["url"].as_str().unwrap_or_default().to_string(),
                e["status"].as_u64().unwrap_or_default(),
                e["www_authenticate"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Index of the first exchange after `from` that `pred` accepts.
fn position(
    trace: &[(String, String, u64, String)],
    from: usize,
    what: &str,
    pred: impl Fn(&(String, String, u64, String)) -> bool,
) -> usize {
    trace
        .iter()
        .skip(from)
        .position(pred)
        .map(|i| i + from)
        .unwrap_or_else(|| panic!("the SDK client never made {what} (after exchange {from}): {trace:#?}"))
}

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn the_mcp_sdk_client_discovers_authorizes_and_calls_a_tool_behind_nodeward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (provider_port, listen_port) = (free_port(), free_port());
    let resource = format!("http://127.0.0.1:{listen_port}/mcp");
    let metadata_url = format!("http://127.0.0.1:{listen_port}/.well-known/oauth-protected-resource/mcp");
    // Another MCP server's resource, which the same provider issues tokens for.
    let elsewhere = format!("http://127.0.0.1:{}/mcp", free_port());
    let resources = format!("{resource},{elsewhere}");
    let jwks = dir.path().join("jwks.json");
    let provider = NodeServer::start(
        "oidc-provider.mjs",
        provider_port,
        &[
            ("JWKS_FILE", jwks.to_str().expect("utf8")),
            ("MCP_RESOURCES", &resources),
        ],
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("oidc-provider: {e}"));
    let issuer = provider.url.clone();
    let seen = dir.path().join("seen.jsonl");
    let server = NodeServer::start(
        "mcp-server.mjs",
        0,
        &[("SEEN_FILE", seen.to_str().expect("utf8"))],
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("the MCP server: {e}"));
    let upstream = server
        .url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/mcp"))
        .expect("http://ADDR/mcp");

    let yaml = format!(
        r#"admin: 127.0.0.1:0
providers:
  - name: panva
    issuer: {issuer}
    audiences: ["{resource}"]
    typ: [at+jwt]
policies:
  - name: tools
    selector: {{app: tools}}
    protected_resource:
      resource: "{resource}"
      authorization_servers: [panva]
      scopes_supported: [tools.read, tools.call]
    rules:
      - name: call
        paths: ["/mcp"]
        require: {{claims: {{scope: {{all_of: [tools.call]}}}}}}
    forward_claims: {{x-client-id: client_id}}
workloads:
  - {{name: tools, labels: {{app: tools}}, listen: "127.0.0.1:{listen_port}", upstream: "{upstream}"}}
"#
    );
    let audit = AuditCapture::default();
    let (sink, _flush) = audit.audit();
    let agent = TestAgent::start_with(&yaml, tempfile::tempdir().expect("tempdir"), sink).await;
    agent.wait_ready().await;

    // The agent, as the SDK runs it.
    let report = mcp_client(&resource, &issuer)
        .await
        .unwrap_or_else(|e| panic!("the MCP SDK client: {e}"));
    assert_eq!(report["tools"], json!(["whoami"]), "{report}");
    let text = report["result"]["content"][0]["text"].as_str().expect("tool text");
    let who: Value = serde_json::from_str(text).expect("tool result JSON");
    assert_eq!(
        who,
        json!({"sub": AGENT_CLIENT_ID, "iss": issuer, "client_id": AGENT_CLIENT_ID, "authorization": null}),
        "the tool sees nodeward's identity headers, never the token"
    );
    // The token the SDK obtained is for this resource (RFC 8707), from the provider.
    let claims = &report["token"];
    assert_eq!(claims["aud"], json!(resource), "{claims}");
    assert_eq!(claims["iss"], json!(issuer));
    assert_eq!(claims["client_id"], json!(AGENT_CLIENT_ID));

    // How it got there: the 401, the metadata it points at, the
    // authorization server's discovery, the token, the call that passed.
    let trace = exchanges(&report);
    let refused = position(&trace, 0, "a 401 from the MCP URL", |(m, u, s, _)| {
        m == "POST" && *u == resource && *s == 401
    });
    let challenge = &trace[refused].3;
    assert!(
        challenge.contains(&format!(r#"resource_metadata="{metadata_url}""#))
            && challenge.contains(r#"scope="tools.call""#),
        "{challenge}"
    );
    let meta = position(&trace, refused, "a GET of the resource metadata", |(m, u, s, _)| {
        m == "GET" && *u == metadata_url && *s == 200
    });
    let discovery = position(&trace, meta, "the authorization server's discovery", |(m, u, s, _)| {
        m == "GET" && u.starts_with(&format!("{issuer}/.well-known/")) && *s == 200
    });
    let token = position(&trace, discovery, "the token request", |(m, u, s, _)| {
        m == "POST" && *u == format!("{issuer}/token") && *s == 200
    });
    position(&trace, token, "an authorized MCP call", |(m, u, s, _)| {
        m == "POST" && *u == resource && *s == 200
    });

    // The metadata, as any client reads it.
    let doc = json_of(client().get(&metadata_url).send().await.expect("metadata")).await;
    assert_eq!(
        doc,
        json!({
            "resource": resource,
            "authorization_servers": [issuer],
            "scopes_supported": ["tools.read", "tools.call"],
            "bearer_methods_supported": ["header"],
        })
    );

    // A token the provider minted for another MCP server is refused here.
    let foreign = agent_token(&issuer, &elsewhere)
        .await
        .unwrap_or_else(|e| panic!("a token for the other MCP server: {e}"));
    let resp = client()
        .post(&resource)
        .bearer_auth(&foreign)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().expect("ascii").to_string();
    assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    assert!(
        challenge.contains(&format!(r#"resource_metadata="{metadata_url}""#)),
        "{challenge}"
    );
    let body = json_of(resp).await;
    assert_eq!(body["reason"], "wrong_audience", "{body}");

    // What the MCP server received: identities, never a token.
    let received: Vec<Value> = std::fs::read_to_string(&seen)
        .expect("the MCP server recorded its requests")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(
        received.len() >= 2,
        "initialize and the tool call at least: {received:?}"
    );
    for r in &received {
        let headers = r["headers"].as_object().expect("headers");
        assert!(!headers.contains_key("authorization"), "{r}");
        assert_eq!(r["headers"]["x-nodeward-sub"], json!(AGENT_CLIENT_ID), "{r}");
        assert!(
            !headers
                .values()
                .any(|v| v.as_str().is_some_and(|v| v.contains(&foreign))),
            "{r}"
        );
    }

    // The audit lines name the agent's client; the refusal is there too.
    let lines = audit.lines(received.len() + 2).await;
    let allowed = lines
        .iter()
        .find(|l| l["decision"] == "allow" && l["path"] == "/mcp")
        .unwrap_or_else(|| panic!("no allowed call audited: {}", audit.text()));
    assert_eq!(allowed["client_id"], json!(AGENT_CLIENT_ID), "{allowed}");
    assert_eq!(allowed["sub"], json!(AGENT_CLIENT_ID), "{allowed}");
    assert!(
        lines
            .iter()
            .any(|l| l["reason"] == "wrong_audience" && l["client_id"].is_null()),
        "the foreign token's refusal is audited (no verified client): {}",
        audit.text()
    );
    assert!(!audit.text().contains(&foreign), "the token is never logged");

    agent.shutdown().await;
    server.stop().await;
    provider.stop().await;
}
