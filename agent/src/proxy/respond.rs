//! Responses the agent writes itself: 401/403 with RFC 6750 challenges and a
//! small JSON body that explains the refusal (never the token), and the
//! body of the 502/504/413/503 answers (`error.rs` decides those).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use super::ProxyBody;
use crate::authz::Decision;
use crate::reason::Answer;
use crate::trace::TraceId;

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    reason: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    request_id: &'a str,
    /// The W3C trace id the request carried or was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
}

/// The refusal of a denied request: 401/403 with the RFC 6750 challenge,
/// 400/501 for requests that cannot be matched as sent.
pub fn refusal(d: &Decision, request_id: &HeaderValue, trace: Option<&TraceId>) -> Response<ProxyBody> {
    let detail = d.detail.as_deref().unwrap_or("denied");
    let answer = d.reason.answer();
    let (error, challenge) = match answer {
        Answer::NoToken => ("unauthorized", Some("Bearer realm=\"nodeward\"".to_string())),
        Answer::InvalidToken => (
            "invalid_token",
            Some(format!(
                "Bearer realm=\"nodeward\", error=\"invalid_token\", error_description=\"{}\"",
                quote_safe(detail)
            )),
        ),
        Answer::Forbidden => (
            "insufficient_scope",
            Some(format!(
                "Bearer realm=\"nodeward\", error=\"insufficient_scope\", error_description=\"{}\"",
                quote_safe(detail)
            )),
        ),
        Answer::BadRequest => ("bad_request", None),
        Answer::NotImplemented => ("not_implemented", None),
        Answer::Unavailable => ("temporarily_unavailable", None),
    };
    let body = Body {
        error,
        reason: d.reason.as_str(),
        detail,
        rule: d.rule.as_deref(),
        request_id: request_id.to_str().unwrap_or(""),
        trace_id: trace.map(TraceId::as_str),
        sub: d.sub(),
    };
    let mut resp = json(answer.status(), &body, request_id);
    if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// A plain error answer (upstream down, too slow, body too large).
pub fn error(
    status: StatusCode,
    reason: &str,
    detail: &str,
    request_id: &HeaderValue,
    trace: Option<&TraceId>,
) -> Response<ProxyBody> {
    let error = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    json(
        status,
        &Body {
            error: &error,
            reason,
            detail,
            rule: None,
            request_id: request_id.to_str().unwrap_or(""),
            trace_id: trace.map(TraceId::as_str),
            sub: None,
        },
        request_id,
    )
}

fn json(status: StatusCode, body: &Body<'_>, request_id: &HeaderValue) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(super::full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(super::headers::REQUEST_ID, request_id.clone());
    resp
}

/// error_description is a quoted-string of printable ASCII without `"` or `\` (RFC 6750 §3).
fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || !(' '..='~').contains(&c) {
                '\''
            } else {
                c
            }
        })
        .take(200)
        .collect()
}
