//! W3C trace context through the agent over real sockets: a client's
//! `traceparent` reaches the upstream unchanged on an allow, and the same
//! trace id is in the refusal's JSON body and in the audit line on a deny;
//! a request without one (or with an invalid one) gets a new trace; the
//! `traces` switches decide whether a client's trace is continued.

use nodeward_testkit::wire::{BOTH, send};
use nodeward_testkit::{AuditCapture, EchoUpstream, TestAgent, TestIdp, example_config};
use serde_json::{Value, json};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Setup {
    idp: TestIdp,
    _up: EchoUpstream,
    agent: TestAgent,
    audit: AuditCapture,
    _flush: nodeward_testkit::AuditFlush,
}

async fn setup(extra: &str) -> Setup {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = format!("{extra}{}", example_config(&idp.issuer(), up.addr));
    let audit = AuditCapture::default();
    let (sink, flush) = audit.audit();
    let agent = TestAgent::start_with(&yaml, tempfile::tempdir().expect("tempdir"), sink).await;
    agent.wait_ready().await;
    Setup {
        idp,
        _up: up,
        agent,
        audit,
        _flush: flush,
    }
}

/// The trace id of a `traceparent` value, checked for shape.
fn trace_of(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert!(
        traceparent[3..]
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{traceparent}"
    );
    assert_ne!(parts[1], "0".repeat(32));
    parts[1].to_string()
}

fn upstream_headers(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|l| l.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The audit line of the request with `request_id`.
async fn audit_line(s: &Setup, n: usize, request_id: &str) -> Value {
    let lines = s.audit.lines(n).await;
    lines
        .into_iter()
        .find(|l| l["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no audit line for {request_id}: {}", s.audit.text()))
}

#[tokio::test]
async fn a_denial_is_found_by_the_clients_trace_and_an_allow_carries_it_upstream() {
    let s = setup("").await;
    let addr = s.agent.agent.workload_addr("orders").expect("listening");
    let dev = s.idp.token(json!({"aud": "orders", "sub": "bob", "groups": ["dev"]}));
    let bearer = format!("Bearer {dev}");
    let mut n = 0;
    for proto in BOTH {
        // Denied: the 403 body and the audit line carry the client's trace.
        let denied = send(
            proto,
            addr,
            "POST",
            "/admin/users",
            &[
                ("authorization", &bearer),
                ("traceparent", PARENT),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
        )
        .await;
        assert_eq!(denied.status, 403, "{proto:?}");
        let body = denied.json();
        assert_eq!(body["trace_id"], TRACE_ID, "{proto:?}: {body}");
        assert_eq!(body["reason"], "claim_mismatch");
        n += 1;
        let line = audit_line(&s, n, body["request_id"].as_str().expect("request id")).await;
        assert_eq!(line["trace_id"], TRACE_ID, "{proto:?}: {line}");
        assert_eq!(line["decision"], "deny");

        // No token: the 401 carries it too.
        let anonymous = send(proto, addr, "GET", "/orders", &[("traceparent", PARENT)]).await;
        assert_eq!(anonymous.status, 401);
        assert_eq!(anonymous.json()["trace_id"], TRACE_ID, "{proto:?}: {anonymous:?}");
        n += 1;

        // Allowed: the upstream gets the same trace and its state, once.
        let allowed = send(
            proto,
            addr,
            "GET",
            "/orders",
            &[
                ("authorization", &bearer),
                ("traceparent", PARENT),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
        )
        .await;
        let echo = allowed.echoed();
        assert_eq!(upstream_headers(&echo, "traceparent"), [PARENT], "{proto:?}");
        assert_eq!(
            upstream_headers(&echo, "tracestate"),
            ["congo=t61rcWkgMzE"],
            "{proto:?}"
        );
        let request_id = allowed
            .headers
            .iter()
            .find(|(k, _)| k == "x-request-id")
            .map(|(_, v)| v.clone())
            .expect("request id");
        n += 1;
        let line = audit_line(&s, n, &request_id).await;
        assert_eq!(line["trace_id"], TRACE_ID, "{proto:?}: {line}");
        assert_eq!(line["decision"], "allow");
    }
}

#[tokio::test]
async fn requests_without_a_valid_trace_get_a_new_one_everywhere() {
    let s = setup("").await;
    let url = s.agent.url("orders");
    let token = s.idp.token(json!({"aud": "orders", "sub": "alice"}));
    let client = nodeward_testkit::client();
    let mut seen = std::collections::HashSet::new();
    let cases: [(&str, Vec<(&str, &str)>); 5] = [
        ("absent", vec![]),
        ("malformed", vec![("traceparent", "00-nope"), ("tracestate", "a=b")]),
        (
            "upper case",
            vec![("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01")],
        ),
        (
            "zero trace id",
            vec![("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
        ),
        // Listed as hop-by-hop: removed before tracing, so a new trace.
        (
            "listed in Connection",
            vec![("traceparent", PARENT), ("connection", "traceparent")],
        ),
    ];
    for (i, (case, headers)) in cases.iter().enumerate() {
        let mut req = client.get(format!("{url}/orders")).bearer_auth(&token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 200, "{case}");
        let request_id = resp.headers()["x-request-id"].to_str().expect("ascii").to_string();
        let echo: Value = json_of(resp).await;
        let sent = upstream_headers(&echo, "traceparent");
        assert_eq!(sent.len(), 1, "{case}: exactly one traceparent upstream: {echo}");
        let trace = trace_of(&sent[0]);
        assert!(sent[0].ends_with("-01"), "started traces are sampled by default");
        assert_ne!(trace, TRACE_ID, "{case}");
        assert!(
            upstream_headers(&echo, "tracestate").is_empty(),
            "{case}: state of an invalid trace dropped"
        );
        assert!(seen.insert(trace.clone()), "{case}: a fresh trace per request");
        let line = audit_line(&s, i + 1, &request_id).await;
        assert_eq!(
            line["trace_id"],
            trace.as_str(),
            "{case}: the audit line names the trace the app got"
        );
    }
    // A refusal without a trace: its body and audit line share the new id.
    let resp = client.get(format!("{url}/orders")).send().await.expect("request");
    assert_eq!(resp.status(), 401);
    let body: Value = json_of(resp).await;
    let trace = body["trace_id"]
        .as_str()
        .expect("a trace id in the refusal")
        .to_string();
    assert_eq!(trace.len(), 32);
    let line = audit_line(&s, cases.len() + 1, body["request_id"].as_str().expect("id")).await;
    assert_eq!(line["trace_id"], trace.as_str());
}

#[tokio::test]
async fn an_edge_can_refuse_to_continue_client_traces_or_trace_nothing() {
    let token_claims = json!({"aud": "orders", "sub": "alice"});
    // `accept: false`: the client's trace is replaced.
    let s = setup("traces: {accept: false}\n").await;
    let token = s.idp.token(token_claims.clone());
    let resp = nodeward_testkit::client()
        .get(format!("{}/orders", s.agent.url("orders")))
        .bearer_auth(&token)
        .header("traceparent", PARENT)
        .header("tracestate", "a=b")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let echo: Value = json_of(resp).await;
    let sent = upstream_headers(&echo, "traceparent");
    assert_eq!(sent.len(), 1);
    assert_ne!(trace_of(&sent[0]), TRACE_ID, "not continued");
    assert!(upstream_headers(&echo, "tracestate").is_empty());

    // Nothing accepted, nothing started: no trace anywhere.
    let s = setup("traces: {accept: false, start: false}\n").await;
    let token = s.idp.token(token_claims);
    let resp = nodeward_testkit::client()
        .get(format!("{}/orders", s.agent.url("orders")))
        .bearer_auth(&token)
        .header("traceparent", PARENT)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().expect("ascii").to_string();
    let echo: Value = json_of(resp).await;
    assert!(upstream_headers(&echo, "traceparent").is_empty(), "{echo}");
    let line = audit_line(&s, 1, &request_id).await;
    assert!(line.get("trace_id").is_none(), "{line}");
    let refused = nodeward_testkit::client()
        .get(format!("{}/orders", s.agent.url("orders")))
        .send()
        .await
        .expect("request");
    let body: Value = json_of(refused).await;
    assert!(body.get("trace_id").is_none(), "{body}");
}
