//! Issue 16, agent-aware inbound, in process (no Node.js): a workload marked
//! `protected_resource` serves its RFC 9728 metadata itself (anonymously,
//! whatever the rules say, never forwarded), points its 401 challenges at
//! it with the scopes the rule needs, accepts only tokens whose audience is
//! the resource (RFC 8707) from its authorization servers, never passes a
//! token upstream, and its audit lines name the agent's client and the
//! `act` chain on both audit paths. `tests/mcp.rs` runs the same against
//! the official MCP SDK.

use std::sync::{Arc, Mutex, OnceLock};

use nodeward_testkit::{AuditCapture, AuditFlush, EchoUpstream, TestAgent, TestIdp, client};
use serde_json::{Value, json};

const RESOURCE: &str = "http://tools.example/mcp";
const METADATA_URL: &str = "http://tools.example/.well-known/oauth-protected-resource/mcp";

struct Setup {
    idp: TestIdp,
    other_idp: TestIdp,
    _up: EchoUpstream,
    agent: TestAgent,
    url: String,
    audit: AuditCapture,
    _flush: Option<AuditFlush>,
}

/// An agent in front of an echo app whose policy makes it a protected
/// resource of `corp`; `other` is a second trusted provider that is not one
/// of the resource's authorization servers. `capture`: audit lines through
/// the batching writer (the binary's path) instead of `tracing`.
async fn setup(capture: bool) -> Setup {
    let idp = TestIdp::start().await;
    let other_idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = format!(
        r#"admin: 127.0.0.1:0
providers:
  - {{name: corp, issuer: "{}", audiences: [orders]}}
  - {{name: other, issuer: "{}", audiences: [orders]}}
policies:
  - name: tools
    selector: {{app: tools}}
    protected_resource:
      resource: "{RESOURCE}"
      authorization_servers: [corp]
      scopes_supported: [tools.read, tools.call]
      resource_name: Tools
    rules:
      - {{name: health, paths: ["/healthz"], allow: anonymous}}
      - {{name: call, paths: ["/mcp"], require: {{claims: {{scope: {{all_of: [tools.call]}}}}}}}}
      - {{name: admin, paths: ["/admin"], require: {{claims: {{groups: {{any_of: [admins]}}}}}}}}
      - {{name: rest, deny: true}}
    forward_claims: {{x-client-id: azp}}
workloads:
  - {{name: tools, labels: {{app: tools}}, listen: 127.0.0.1:0, upstream: {}}}
"#,
        idp.issuer(),
        other_idp.issuer(),
        up.addr
    );
    let audit = AuditCapture::default();
    let (sink, flush) = if capture {
        let (sink, flush) = audit.audit();
        (sink, Some(flush))
    } else {
        (nodeward::Audit::tracing(), None)
    };
    let agent = TestAgent::start_with(&yaml, tempfile::tempdir().expect("tempdir"), sink).await;
    agent.wait_ready().await;
    let url = agent.url("tools");
    Setup {
        idp,
        other_idp,
        _up: up,
        agent,
        url,
        audit,
        _flush: flush,
    }
}

/// An agent's token as an authorization server mints it for `aud`.
fn agent_token(idp: &TestIdp, aud: &str, scope: &str) -> String {
    idp.token(json!({
        "sub": "agent-b",
        "aud": aud,
        "scope": scope,
        "azp": "mcp-agent",
        "act": {"sub": "agent-b", "act": {"sub": "agent-a"}},
    }))
}

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .expect("a challenge")
        .to_str()
        .expect("ascii")
        .to_string()
}

#[tokio::test]
async fn the_metadata_is_answered_by_the_agent_anonymously_whatever_the_rules() {
    let s = setup(false).await;
    let expected = json!({
        "resource": RESOURCE,
        "authorization_servers": [s.idp.issuer()],
        "scopes_supported": ["tools.read", "tools.call"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Tools",
    });
    // The path-suffixed form (RFC 9728 §3.1), the root form, and a spelling
    // that normalises to it; the policy's last rule denies everything else.
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
        "/.well-known//./oauth-protected-resource/mcp",
    ] {
        let resp = client().get(format!("{}{path}", s.url)).send().await.expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(json_of(resp).await, expected, "{path}");
    }
    let head = client()
        .head(format!("{}/.well-known/oauth-protected-resource/mcp", s.url))
        .send()
        .await
        .expect("request");
    assert_eq!(head.status(), 200);
    let length: usize = head.headers()["content-length"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert_eq!(length, expected.to_string().len());
    assert!(head.bytes().await.expect("body").is_empty());
    // A token does not change the answer, and other methods are refused by the agent.
    let post = client()
        .post(format!("{}/.well-known/oauth-protected-resource", s.url))
        .bearer_auth(agent_token(&s.idp, RESOURCE, "tools.call"))
        .send()
        .await
        .expect("request");
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    // Only the resource's own well-known paths: another goes through the rules.
    let other = client()
        .get(format!("{}/.well-known/oauth-protected-resource/other", s.url))
        .send()
        .await
        .expect("request");
    assert_eq!(other.status(), 403);
    assert_eq!(json_of(other).await["rule"], "rest");
    // Metadata requests are not decisions: only the request the rules refused was counted.
    let m = s.agent.metrics().await;
    let counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("nodeward_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 1.0, "{m}");
}

#[tokio::test]
async fn a_401_points_at_the_metadata_and_names_the_rules_scope() {
    let s = setup(false).await;
    let resp = client().post(format!("{}/mcp", s.url)).send().await.expect("request");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        www_authenticate(&resp),
        format!(r#"Bearer realm="nodeward", resource_metadata="{METADATA_URL}", scope="tools.call""#)
    );
    assert_eq!(json_of(resp).await["reason"], "missing_token");
}

#[tokio::test]
async fn only_tokens_for_the_resource_from_its_authorization_servers_pass() {
    let s = setup(false).await;
    let ok = client()
        .post(format!("{}/mcp", s.url))
        .bearer_auth(agent_token(&s.idp, RESOURCE, "tools.read tools.call"))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);

    // A token minted for another resource (RFC 8707): the audience is wrong.
    for aud in ["http://tools.example/other", "orders", "http://tools.example/mcp/"] {
        let resp = client()
            .post(format!("{}/mcp", s.url))
            .bearer_auth(agent_token(&s.idp, aud, "tools.call"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 401, "{aud}");
        let challenge = www_authenticate(&resp);
        assert!(
            challenge.starts_with(r#"Bearer realm="nodeward", error="invalid_token", error_description="audience"#),
            "{challenge}"
        );
        assert!(
            challenge.ends_with(&format!(r#"resource_metadata="{METADATA_URL}", scope="tools.call""#)),
            "{challenge}"
        );
        assert_eq!(json_of(resp).await["reason"], "wrong_audience", "{aud}");
    }

    // The right audience from a provider the agent trusts, but that is not
    // one of the resource's authorization servers.
    let resp = client()
        .post(format!("{}/mcp", s.url))
        .bearer_auth(agent_token(&s.other_idp, RESOURCE, "tools.call"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    let body = json_of(resp).await;
    assert_eq!(body["reason"], "unknown_issuer");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not an authorization server of resource")),
        "{body}"
    );
}

#[tokio::test]
async fn the_token_is_never_passed_upstream_only_the_identity() {
    let s = setup(false).await;
    let resp = client()
        .post(format!("{}/mcp", s.url))
        .bearer_auth(agent_token(&s.idp, RESOURCE, "tools.call"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let echo = json_of(resp).await;
    let headers = echo["headers"].as_object().expect("headers");
    assert!(!headers.contains_key("authorization"), "{echo}");
    assert_eq!(echo["headers"]["x-nodeward-sub"], json!(["agent-b"]));
    assert_eq!(echo["headers"]["x-nodeward-iss"], json!([s.idp.issuer()]));
    assert_eq!(echo["headers"]["x-client-id"], json!(["mcp-agent"]));

    // Not even credentials in a scheme no provider reads, on an anonymous route.
    let resp = client()
        .get(format!("{}/healthz", s.url))
        .header("authorization", "Basic dXNlcjpwYXNzd29yZA==")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let echo = json_of(resp).await;
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
}

#[tokio::test]
async fn a_missing_scope_is_named_so_the_client_can_step_up() {
    let s = setup(false).await;
    let resp = client()
        .post(format!("{}/mcp", s.url))
        .bearer_auth(agent_token(&s.idp, RESOURCE, "tools.read"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        www_authenticate(&resp),
        format!(
            r#"Bearer realm="nodeward", error="insufficient_scope", error_description="claim scope lacks 'tools.call'", resource_metadata="{METADATA_URL}", scope="tools.call""#
        )
    );
    // A denial that is not about scopes names none: asking again would not help.
    let resp = client()
        .get(format!("{}/admin", s.url))
        .bearer_auth(agent_token(&s.idp, RESOURCE, "tools.call"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);
    let challenge = www_authenticate(&resp);
    assert!(
        challenge.ends_with(&format!(r#"resource_metadata="{METADATA_URL}""#)),
        "{challenge}"
    );
}

#[tokio::test]
async fn the_audit_line_names_the_client_and_the_act_chain_never_the_token() {
    let s = setup(true).await;
    let token = agent_token(&s.idp, RESOURCE, "tools.call");
    let resp = client()
        .post(format!("{}/mcp", s.url))
        .bearer_auth(&token)
        .header("x-request-id", "agent-call-1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let lines = s.audit.lines(1).await;
    let line = lines
        .iter()
        .find(|l| l["request_id"] == "agent-call-1")
        .unwrap_or_else(|| panic!("no audit line: {}", s.audit.text()));
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["sub"], "agent-b");
    assert_eq!(line["client_id"], "mcp-agent");
    assert_eq!(line["act"], "agent-b>agent-a");
    let text = s.audit.text();
    assert!(!text.contains(&token), "the token is never logged");
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!text.contains(signature), "no part of the token is logged");
}

/// Everything `tracing` writes in this test binary, as JSON lines.
fn tracing_output() -> Arc<Mutex<Vec<u8>>> {
    static OUT: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || Shared(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        out
    })
    .clone()
}

struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("tracing output").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_tracing_audit_path_names_the_client_and_the_act_chain_too() {
    let out = tracing_output();
    let s = setup(false).await;
    let resp = client()
        .post(format!("{}/mcp", s.url))
        .bearer_auth(agent_token(&s.idp, RESOURCE, "tools.call"))
        .header("x-request-id", "agent-call-tracing")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(out.lock().expect("tracing output").clone()).expect("utf8");
    let line: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["target"] == "audit" && l["fields"]["request_id"] == "agent-call-tracing")
        .unwrap_or_else(|| panic!("no audit event: {text}"));
    assert_eq!(line["fields"]["client_id"], "mcp-agent");
    assert_eq!(line["fields"]["act"], "agent-b>agent-a");
}
