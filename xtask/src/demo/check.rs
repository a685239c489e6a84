//! Sends one scripted request, finds its audit line, and compares what
//! happened with what the contract says: status, reason and detail (body and
//! audit log), the RFC 6750 challenge, and the identity headers the app saw.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::env::Target;
use super::script::{Credential, Scenario, Tokens};

/// The audit line is written as the decision is made; the bound only covers
/// the pipe, the agent's log writer and thread scheduling.
const AUDIT_WAIT: Duration = Duration::from_secs(2);

/// One request's result: the line to print and what differed from the contract.
pub struct Outcome {
    pub sent: String,
    pub got: String,
    /// The audit line, when the scenario asks to show it.
    pub audit: Option<String>,
    pub mismatches: Vec<String>,
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    text: String,
    body: Value,
    audit_line: Option<String>,
    audit: Value,
}

pub async fn run(s: &Scenario, t: &Target<'_>, tokens: &Tokens, http: &reqwest::Client) -> anyhow::Result<Outcome> {
    let token = match s.credential {
        Credential::NoToken => None,
        Credential::Raw(raw) => Some(raw),
        Credential::Token(m) => Some(tokens.get(m)),
    };
    let a = send(s, t, token, http).await?;
    let e = &s.expect;
    let mut bad = Vec::new();
    check(&mut bad, "status", &e.status.to_string(), Some(&a.status.to_string()));
    check(&mut bad, "audit decision", e.decision, a.audit["decision"].as_str());
    check(&mut bad, "audit reason", e.reason, a.audit["reason"].as_str());
    if let Some(detail) = e.detail {
        check(&mut bad, "audit detail", detail, a.audit["detail"].as_str());
    }
    let got = if (200..300).contains(&a.status) {
        reached_app(s, t, &a, &mut bad)
    } else {
        refused(s, token, &a, &mut bad)
    };
    Ok(Outcome {
        sent: format!("{} {}  [{}]", s.method, s.path, s.what),
        got,
        audit: a.audit_line.filter(|_| s.show_audit),
        mismatches: bad,
    })
}

async fn send(s: &Scenario, t: &Target<'_>, token: Option<&str>, http: &reqwest::Client) -> anyhow::Result<Answer> {
    let mut req = http.request(s.method.clone(), format!("{}{}", t.workload, s.path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in s.headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.with_context(|| format!("{} {}", s.method, s.path))?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (request_id, challenge) = (header("x-request-id"), header("www-authenticate"));
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let audit_line = match &request_id {
        Some(id) => audit_line(t, id).await,
        None => None,
    };
    Ok(Answer {
        status,
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

/// The lines of /metrics the demo shows: requests by decision and reason,
/// the token cache, the JWKS cache, and how many decisions were timed.
pub async fn metrics_excerpt(t: &Target<'_>, http: &reqwest::Client) -> anyhow::Result<Vec<String>> {
    const SHOWN: [&str; 4] = [
        "nodeward_requests_total",
        "nodeward_token_cache_",
        "nodeward_jwks_",
        "nodeward_decision_duration_seconds_count",
    ];
    let resp = http.get(format!("{}/metrics", t.admin)).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("/metrics answered {status}");
    }
    let lines: Vec<String> = text
        .lines()
        .filter(|l| SHOWN.iter().any(|p| l.starts_with(p)))
        .map(str::to_owned)
        .collect();
    for p in SHOWN {
        anyhow::ensure!(lines.iter().any(|l| l.starts_with(p)), "/metrics has no {p}* series");
    }
    Ok(lines)
}
