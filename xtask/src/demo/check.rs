//! Sends one scripted request, finds its audit line, and compares what
//! happened with what the contract says: status, reason and detail (body and
//! audit log), the RFC 6750 challenge, the identity headers the app saw, and
//! for the eBPF demo which workload and client address the agent saw, or
//! that the agent never saw the request at all.
//!
//! Every request is one HTTP/1.1 exchange on its own TCP connection, made
//! from the host or from inside a pod's network namespace (a socket created
//! there keeps that namespace): one connection per request is what lets the
//! eBPF demo compare the program's counters with the traffic it sent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::env::Target;
use super::script::{Credential, Scenario, Tokens};

/// The audit line is written as the decision is made; the bound only covers
/// the pipe, the agent's log writer and thread scheduling.
const AUDIT_WAIT: Duration = Duration::from_secs(2);
/// A local exchange takes milliseconds; a hung one must fail the demo, not stall it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// One request's result: the line to print and what differed from the contract.
pub struct Outcome {
    pub sent: String,
    pub got: String,
    /// The audit line, when the scenario asks to show it.
    pub audit: Option<String>,
    pub mismatches: Vec<String>,
}

struct Answer {
    /// The client end of the connection, which the agent must report as `client`.
    local: SocketAddr,
    status: u16,
    request_id: Option<String>,
    challenge: Option<String>,
    text: String,
    body: Value,
    audit_line: Option<String>,
    audit: Value,
}

/// Sends `s` to `t` and compares; `label` prefixes the printed request.
pub async fn run(s: &Scenario, t: &Target<'_>, tokens: &Tokens, label: &str) -> anyhow::Result<Outcome> {
    let token = match s.credential {
        Credential::NoToken => None,
        Credential::Raw(raw) => Some(raw),
        Credential::Token(m) => Some(tokens.get(m)),
    };
    let a = tokio::time::timeout(EXCHANGE_TIMEOUT, send(s, t, token))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {EXCHANGE_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("{label}{} {}", s.method, s.path))?;
    let e = &s.expect;
    let mut bad = Vec::new();
    check(&mut bad, "status", &e.status.to_string(), Some(&a.status.to_string()));
    if e.via_agent {
        check(&mut bad, "audit decision", e.decision, a.audit["decision"].as_str());
        check(&mut bad, "audit reason", e.reason, a.audit["reason"].as_str());
        if let Some(detail) = e.detail {
            check(&mut bad, "audit detail", detail, a.audit["detail"].as_str());
        }
        check(&mut bad, "audit workload", t.name, a.audit["workload"].as_str());
        // A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6
        // addresses; the same address either way.
        let client = a.audit["client"].as_str().map(|c| {
            c.parse::<SocketAddr>().map_or_else(
                |_| c.to_owned(),
                |c| SocketAddr::new(c.ip().to_canonical(), c.port()).to_string(),
            )
        });
        check(&mut bad, "audit client", &a.local.to_string(), client.as_deref());
    } else if let Some(id) = &a.request_id {
        bad.push(format!(
            "answered with x-request-id {id}: the agent handled a request it must not see"
        ));
    }
    let got = if !e.via_agent {
        direct(&a, &mut bad)
    } else if (200..300).contains(&a.status) {
        reached_app(s, t, &a, &mut bad)
    } else {
        refused(s, token, &a, &mut bad)
    };
    Ok(Outcome {
        sent: format!("{label}{} {}  [{}]", s.method, s.path, s.what),
        got,
        audit: a.audit_line.filter(|_| s.show_audit),
        mismatches: bad,
    })
}

/// Connects from the target's namespace and makes the one exchange.
async fn send(s: &Scenario, t: &Target<'_>, token: Option<&str>) -> anyhow::Result<Answer> {
    let authority = t.workload.strip_prefix("http://").unwrap_or(t.workload);
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("{} is not http://IP:port", t.workload))?;
    let stream = match t.from {
        None => tokio::net::TcpStream::connect(addr).await?,
        Some(netns) => nodeward_testkit::netns::connect_from(netns, None, addr, EXCHANGE_TIMEOUT).await?,
    };
    let local = stream.local_addr()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection; it ends when the sender is dropped below.
    let conn = tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(s.method.clone())
        .uri(s.path)
        .header(http::header::HOST, authority);
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in s.headers {
        req = req.header(*name, *value);
    }
    let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (request_id, challenge) = (header("x-request-id"), header("www-authenticate"));
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    drop(sender);
    let _ = conn.await;
    let audit_line = match &request_id {
        Some(id) => audit_line(t, id).await,
        None => None,
    };
    Ok(Answer {
        local,
        status,
        request_id,
        challenge,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        audit: audit_line
            .as_deref()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null),
        audit_line,
    })
}

/// Let through: the echo app's body says which identity headers it got.
fn reached_app(s: &Scenario, t: &Target<'_>, a: &Answer, bad: &mut Vec<String>) -> String {
    let seen = |name: &str| -> Option<String> {
        let values: Vec<&str> = a.body["headers"][name]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        Some(values.join(", "))
    };
    let (sub, iss, email) = (seen("x-nodeward-sub"), seen("x-nodeward-iss"), seen("x-user-email"));
    match s.expect.identity {
        Some(who) => {
            // A joined list would show a spoofed value that survived next to the real one.
            check(bad, "app saw x-nodeward-sub", who.sub, sub.as_deref());
            check(bad, "app saw x-nodeward-iss", &t.idp.issuer, iss.as_deref());
            check(bad, "app saw x-user-email", who.email, email.as_deref());
        }
        None => {
            for (name, v) in [
                ("x-nodeward-sub", &sub),
                ("x-nodeward-iss", &iss),
                ("x-user-email", &email),
            ] {
                if let Some(v) = v {
                    bad.push(format!("app saw {name}: {v:?} on a request without identity"));
                }
            }
        }
    }
    let reason = a.audit["reason"].as_str().unwrap_or("?");
    let decision = match a.audit["decision"].as_str() {
        Some("audit_deny") => format!(
            "let through in audit mode, would deny: {reason} ({})",
            a.audit["detail"].as_str().unwrap_or("")
        ),
        _ => format!("allow ({reason})"),
    };
    let identity = match (sub, iss, email) {
        (None, None, None) => "no identity headers".to_owned(),
        (sub, iss, email) => format!(
            "x-nodeward-sub={} x-nodeward-iss={} x-user-email={}",
            sub.unwrap_or_default(),
            iss.unwrap_or_default(),
            email.unwrap_or_default()
        ),
    };
    format!("{} {decision}; app saw {identity}", a.status)
}

/// Not steered: the app answered itself, and saw nothing the agent adds.
fn direct(a: &Answer, bad: &mut Vec<String>) -> String {
    for name in [
        "x-nodeward-sub",
        "x-nodeward-iss",
        "x-user-email",
        "x-forwarded-for",
        "x-request-id",
    ] {
        if let Some(v) = a.body["headers"].get(name) {
            bad.push(format!("app saw {name}: {v}: the request went through the agent"));
        }
    }
    if a.body["headers"].is_null() {
        bad.push(format!("not an answer from the echo app: {}", a.text));
    }
    format!(
        "{} straight from the app: not steered, no audit line, no identity headers",
        a.status
    )
}

/// Refused: the JSON body explains why, the challenge says which kind.
fn refused(s: &Scenario, token: Option<&str>, a: &Answer, bad: &mut Vec<String>) -> String {
    let e = &s.expect;
    check(bad, "body reason", e.reason, a.body["reason"].as_str());
    if let Some(detail) = e.detail {
        check(bad, "body detail", detail, a.body["detail"].as_str());
    }
    let (want, exact) = match (e.status, e.reason) {
        (401, "missing_token") => (r#"Bearer realm="nodeward""#, true),
        (401, _) => (r#"error="invalid_token""#, false),
        _ => (r#"error="insufficient_scope""#, false),
    };
    let challenge = a.challenge.as_deref().unwrap_or("");
    if (exact && challenge != want) || (!exact && !challenge.contains(want)) {
        bad.push(format!("WWW-Authenticate: expected {want}, got {challenge:?}"));
    }
    if token.is_some_and(|tok| a.text.contains(tok)) {
        bad.push("the refusal body contains the token".into());
    }
    let rule = a.body["rule"]
        .as_str()
        .map(|r| format!(" [rule {r}]"))
        .unwrap_or_default();
    format!(
        "{} {}{rule}: {}",
        a.status,
        a.body["reason"].as_str().unwrap_or("?"),
        a.body["detail"].as_str().unwrap_or("?")
    )
}

/// Notes a difference between what the contract wants and what happened.
fn check(bad: &mut Vec<String>, what: &str, want: &str, got: Option<&str>) {
    if got != Some(want) {
        let got = got.map_or_else(|| "nothing".to_owned(), |g| format!("{g:?}"));
        bad.push(format!("{what}: expected {want:?}, got {got}"));
    }
}

/// The agent's audit line for `request_id` (its stdout, target `audit`).
async fn audit_line(t: &Target<'_>, request_id: &str) -> Option<String> {
    let deadline = Instant::now() + AUDIT_WAIT;
    let matches = |l: &str| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["target"] == "audit" && v["request_id"] == request_id)
    };
    loop {
        if let Some(line) = t.agent.find_line(matches) {
            return Some(line);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent's /metrics text.
pub async fn metrics(admin: &str) -> anyhow::Result<String> {
    let resp = nodeward_testkit::client()
        .get(format!("{admin}/metrics"))
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("/metrics answered {status}");
    }
    Ok(text)
}

/// The lines of `metrics` starting with one of `shown`; an error if one of
/// them has no series (a renamed metric should fail the demo, not vanish).
pub fn excerpt(metrics: &str, shown: &[&str]) -> anyhow::Result<Vec<String>> {
    let lines: Vec<String> = metrics
        .lines()
        .filter(|l| shown.iter().any(|p| l.starts_with(p)))
        .map(str::to_owned)
        .collect();
    for p in shown {
        anyhow::ensure!(lines.iter().any(|l| l.starts_with(p)), "/metrics has no {p}* series");
    }
    Ok(lines)
}
