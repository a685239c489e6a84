//! The proxy end to end over real sockets: dev IdP + nodeward + an upstream
//! that echoes what it received. Every 401/403 body and header, identity
//! header hygiene (HTTP/1.1 and h2c), request ids, upstream failures, limits.

use std::time::Duration;

use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, example_config, metric};
use serde_json::{Value, json};

struct Env {
    idp: TestIdp,
    _upstream: EchoUpstream,
    agent: TestAgent,
    url: String,
}

async fn env() -> Env {
    let idp = TestIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let agent = TestAgent::start(&example_config(&idp.issuer(), upstream.addr)).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    Env {
        idp,
        _upstream: upstream,
        agent,
        url,
    }
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json_value().await;
    (status, headers, body)
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        let bytes = self.bytes().await.expect("body");
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}

fn www(h: &reqwest::header::HeaderMap) -> String {
    h.get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The body of every refusal: the contract's fields, never the token.
fn assert_refusal(body: &Value, error: &str, reason: &str, token: Option<&str>) {
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    assert!(body["request_id"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    if let Some(t) = token {
        assert!(!body.to_string().contains(t), "the token must never be echoed");
    }
}

#[tokio::test]
async fn missing_token_is_401_with_a_bare_challenge() {
    let e = env().await;
    let (status, h, body) = send(client().get(format!("{}/orders", e.url))).await;
    assert_eq!(status, 401);
    assert_eq!(www(&h), "Bearer realm=\"nodeward\"");
    assert_refusal(&body, "unauthorized", "missing_token", None);
    assert_eq!(body["rule"], "default");
    assert!(body.get("sub").is_none());
    assert_eq!(
        h.get("x-request-id").and_then(|v| v.to_str().ok()),
        body["request_id"].as_str()
    );
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token_with_the_reason() {
    let e = env().await;
    let other = TestIdp::start().await;
    let expired = e.idp.token(json!({"aud": "orders", "exp": 1_000_000, "iat": 999_000}));
    let wrong_aud = e.idp.token(json!({"aud": "billing"}));
    let foreign = other.token(json!({"aud": "orders"}));
    // Flip one character well inside the signature (a full 6-bit digit, so
    // the base64url stays canonical and only the signature is wrong).
    let mut tampered = e.idp.token(json!({"aud": "orders"}));
    let at = tampered.len() - 10;
    let flipped = if tampered.as_bytes()[at] == b'A' { "B" } else { "A" };
    tampered.replace_range(at..at + 1, flipped);
    let cases = [
        ("not-a-jwt", "malformed_token"),
        (expired.as_str(), "token_expired"),
        (wrong_aud.as_str(), "wrong_audience"),
        (foreign.as_str(), "unknown_issuer"),
        (tampered.as_str(), "bad_signature"),
    ];
    for (token, reason) in cases {
        let (status, h, body) = send(client().get(format!("{}/orders", e.url)).bearer_auth(token)).await;
        assert_eq!(status, 401, "{reason}: {body}");
        let challenge = www(&h);
        assert!(
            challenge.starts_with("Bearer realm=\"nodeward\", error=\"invalid_token\", error_description=\""),
            "{challenge}"
        );
        assert!(!challenge.contains(token), "token in challenge");
        assert_refusal(&body, "invalid_token", reason, Some(token));
    }
}

#[tokio::test]
async fn valid_token_lacking_a_group_is_403_insufficient_scope_explained() {
    let e = env().await;
    let token = e.idp.token(json!({"aud": "orders", "sub": "alice", "groups": ["dev"]}));
    let (status, h, body) = send(client().post(format!("{}/admin/users", e.url)).bearer_auth(&token)).await;
    assert_eq!(status, 403);
    assert!(www(&h).contains("error=\"insufficient_scope\""), "{}", www(&h));
    assert_refusal(&body, "insufficient_scope", "claim_mismatch", Some(&token));
    assert_eq!(body["detail"], "claim groups lacks \"admins\"");
    assert_eq!(body["rule"], "admin");
    assert_eq!(body["sub"], "alice");
}

#[tokio::test]
async fn allowed_request_carries_verified_identity_and_never_forged_copies() {
    let e = env().await;
    let token = e
        .idp
        .token(json!({"aud": "orders", "sub": "alice", "email": "alice@example.com", "groups": ["admins"]}));
    let req = client()
        .post(format!("{}/admin/users?x=1", e.url))
        .bearer_auth(&token)
        .header("X-Nodeward-Sub", "root")
        .header("x-nodeward-sub", "root2")
        .header("X-NODEWARD-ISS", "https://evil")
        .header("x-user-email", "root@example.com")
        .header("X-User-Email", "root2@example.com")
        .header("x-nodeward-groups", "admins")
        .body("hello");
    let (status, _, echo) = send(req).await;
    assert_eq!(status, 200, "{echo}");
    let h = &echo["headers"];
    assert_eq!(h["x-nodeward-sub"], json!(["alice"]));
    assert_eq!(h["x-nodeward-iss"], json!([e.idp.issuer()]));
    assert_eq!(h["x-user-email"], json!(["alice@example.com"]));
    assert!(
        h.get("x-nodeward-groups").is_none(),
        "unknown x-nodeward-* headers are stripped too"
    );
    assert_eq!(echo["path"], "/admin/users");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body_len"], 5);
    assert!(h["x-request-id"][0].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn forged_identity_is_stripped_on_anonymous_routes_and_without_token() {
    let e = env().await;
    let req = client()
        .get(format!("{}/healthz", e.url))
        .header("x-nodeward-sub", "root")
        .header("x-user-email", "root@example.com");
    let (status, _, echo) = send(req).await;
    assert_eq!(status, 200);
    assert!(echo["headers"].get("x-nodeward-sub").is_none(), "{echo}");
    assert!(echo["headers"].get("x-user-email").is_none(), "{echo}");
    // An invalid token on an anonymous route is ignored, not forwarded as identity.
    let (status, _, echo) = send(client().get(format!("{}/healthz", e.url)).bearer_auth("garbage")).await;
    assert_eq!(status, 200);
    assert!(echo["headers"].get("x-nodeward-sub").is_none());
}

#[tokio::test]
async fn forged_identity_is_stripped_over_h2c_too() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let e = env().await;
    let token = e.idp.token(json!({"aud": "orders", "sub": "bob"}));
    let h2: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let req = http::Request::get(format!("{}/orders", e.url))
        .header("authorization", format!("Bearer {token}"))
        .header("x-nodeward-sub", "root")
        .header("x-user-email", "root@example.com")
        .body(Empty::new())
        .expect("request");
    let resp = h2.request(req).await.expect("h2c request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let echo: Value = serde_json::from_slice(&body).expect("echo json");
    assert_eq!(echo["headers"]["x-nodeward-sub"], json!(["bob"]));
    assert!(echo["headers"].get("x-user-email").is_none());
    assert!(
        echo["headers"]["host"][0]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1:"))
    );
}

#[tokio::test]
async fn request_id_is_kept_when_plain_and_replaced_when_hostile() {
    let e = env().await;
    let (_, h, _) = send(
        client()
            .get(format!("{}/healthz", e.url))
            .header("x-request-id", "abc-123"),
    )
    .await;
    assert_eq!(h["x-request-id"], "abc-123");
    let (_, h, echo) = send(
        client()
            .get(format!("{}/healthz", e.url))
            .header("x-request-id", "a b\"<script>"),
    )
    .await;
    let id = h["x-request-id"].to_str().expect("ascii");
    assert_ne!(id, "a b\"<script>");
    assert_eq!(
        echo["headers"]["x-request-id"],
        json!([id]),
        "upstream sees the same id as the client"
    );
}

#[tokio::test]
async fn audit_mode_lets_through_but_counts_the_denial() {
    let e = env().await;
    let token = e.idp.token(json!({"aud": "orders", "groups": ["dev"]}));
    let (status, _, echo) = send(client().get(format!("{}/audit/report", e.url)).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{echo}");
    let m = e.agent.metrics().await;
    assert_eq!(
        metric(
            &m,
            "nodeward_requests_total{decision=\"audit_deny\",reason=\"claim_mismatch\",workload=\"orders\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let idp = TestIdp::start().await;
    // A port with nothing listening: bind, learn the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = example_config(&idp.issuer(), dead);
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let (status, _, body) = send(client().get(format!("{}/healthz", agent.url("orders")))).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["reason"], "upstream_unavailable");

    let upstream = EchoUpstream::start().await;
    let yaml = example_config(&idp.issuer(), upstream.addr).replace(
        "admin: 127.0.0.1:0",
        "admin: 127.0.0.1:0\nlimits: {upstream_timeout: 300ms}",
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let token = idp.token(json!({"aud": "orders"}));
    let (status, _, body) = send(
        client()
            .get(format!("{}/slow/3000", agent.url("orders")))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["reason"], "upstream_timeout");
    let m = agent.metrics().await;
    assert_eq!(
        metric(
            &m,
            "nodeward_upstream_errors_total{kind=\"timeout\",workload=\"orders\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn oversized_heads_and_bodies_are_refused() {
    let idp = TestIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let yaml = example_config(&idp.issuer(), upstream.addr).replace(
        "admin: 127.0.0.1:0",
        "admin: 127.0.0.1:0\nlimits: {max_body_bytes: 1024, max_header_bytes: 8192, max_headers: 20}",
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    let token = idp.token(json!({"aud": "orders"}));

    let (status, _, body) = send(
        client()
            .post(format!("{url}/orders"))
            .bearer_auth(&token)
            .body(vec![b'x'; 4096]),
    )
    .await;
    assert_eq!(status, 413, "{body}");

    // A huge header: hyper answers 431 and closes.
    // A huge head: hyper answers 431 (or drops the connection); never 200.
    let status = client()
        .get(format!("{url}/healthz"))
        .header("x-big", "y".repeat(20_000))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(431) | Err(_)), "{status:?}");
    let mut too_many = client().get(format!("{url}/healthz"));
    for i in 0..40 {
        too_many = too_many.header(format!("x-h{i}"), "v");
    }
    let status = too_many.send().await.map(|r| r.status().as_u16());
    assert!(
        !matches!(status, Ok(200)),
        "40 headers over a limit of 20 must not pass: {status:?}"
    );

    // The agent still serves normal requests afterwards.
    let (status, _, _) = send(client().get(format!("{url}/orders")).bearer_auth(&token)).await;
    assert_eq!(status, 200);
}

/// The header-line limit is exact, at the default (100, hyper's own, left
/// unset so hyper parses on the stack) and at a configured one: the limit
/// passes, one more is refused with 431. (HTTP/2 heads are bounded by their
/// size, `max_header_bytes`, not by a count.)
#[tokio::test]
async fn the_header_count_limit_is_exact_at_the_default_and_when_configured() {
    use nodeward_testkit::wire::{exchange, statuses};
    let idp = TestIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let default = example_config(&idp.issuer(), upstream.addr);
    let configured = default.replace("admin: 127.0.0.1:0", "admin: 127.0.0.1:0\nlimits: {max_headers: 20}");
    for (yaml, limit) in [(default, 100), (configured, 20)] {
        let agent = TestAgent::start(&yaml).await;
        agent.wait_ready().await;
        let addr: std::net::SocketAddr = agent.url("orders")["http://".len()..].parse().expect("addr");
        for (lines, want) in [(limit, 401), (limit + 1, 431)] {
            // `host` and `connection` count: `lines` header lines in all.
            let mut head = String::from("GET /orders HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n");
            for i in 0..lines - 2 {
                head.push_str(&format!("x-h{i}: v\r\n"));
            }
            head.push_str("\r\n");
            let resp = exchange(addr, head.as_bytes(), Duration::from_secs(3)).await;
            assert_eq!(statuses(&resp), [want], "{lines} header lines, limit {limit}: {resp}");
        }
    }
}

#[tokio::test]
async fn a_busy_token_is_verified_once() {
    let e = env().await;
    let token = e.idp.token(json!({"aud": "orders"}));
    for _ in 0..20 {
        let (status, _, _) = send(client().get(format!("{}/orders", e.url)).bearer_auth(&token)).await;
        assert_eq!(status, 200);
    }
    let m = e.agent.metrics().await;
    assert_eq!(metric(&m, "nodeward_token_cache_misses_total"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "nodeward_token_cache_hits_total"), Some(19.0));
    assert_eq!(metric(&m, "nodeward_token_cache_entries"), Some(1.0));
    assert!(metric(&m, "nodeward_decision_duration_seconds_count{workload=\"orders\"}").is_some_and(|n| n >= 20.0));
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let e = env().await;
    let token = e.idp.token(json!({"aud": "orders"}));
    let slow = tokio::spawn(client().get(format!("{}/slow/500", e.url)).bearer_auth(&token).send());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = e.agent.agent.workload_addr("orders").expect("addr");
    let _dir = e.agent.shutdown().await;
    let resp = slow.await.expect("join").expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn several_providers_are_chosen_by_iss_and_rules_can_restrict_them() {
    let corp = TestIdp::start().await;
    let partner = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = format!(
        r#"admin: 127.0.0.1:0
providers:
  - {{name: corp, issuer: "{}", audiences: [orders]}}
  - {{name: partner, issuer: "{}", audiences: [orders, partner-api]}}
policies:
  - name: p
    rules:
      - {{name: internal, paths: ["/internal/**"], require: {{providers: [corp]}}}}
      - {{name: any, require: {{}}}}
workloads:
  - {{name: orders, listen: "127.0.0.1:0", upstream: "{}"}}
"#,
        corp.issuer(),
        partner.issuer(),
        up.addr
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    let corp_token = corp.token(json!({"aud": "orders", "sub": "c"}));
    let partner_token = partner.token_with("ES256", json!({"aud": ["partner-api", "x"], "sub": "p"}));
    // A token signed by partner's key but claiming corp as issuer: wrong key for that issuer.
    let confused = partner.token(json!({"aud": "orders", "iss": corp.issuer()}));

    let (s, _, echo) = send(client().get(format!("{url}/a")).bearer_auth(&partner_token)).await;
    assert_eq!(s, 200);
    assert_eq!(echo["headers"]["x-nodeward-iss"], json!([partner.issuer()]));
    let (s, _, _) = send(client().get(format!("{url}/internal/x")).bearer_auth(&corp_token)).await;
    assert_eq!(s, 200);
    let (s, _, body) = send(client().get(format!("{url}/internal/x")).bearer_auth(&partner_token)).await;
    assert_eq!(s, 403);
    assert_eq!(body["reason"], "provider_not_allowed");
    let (s, _, body) = send(client().get(format!("{url}/a")).bearer_auth(&confused)).await;
    assert_eq!(s, 401, "{body}");
    assert!(
        matches!(body["reason"].as_str(), Some("unknown_kid" | "bad_signature")),
        "{body}"
    );
}
