//! Responses the agent writes itself: 401/403 with RFC 6750 challenges and a
//! small JSON body that explains the refusal (never the token), the body of
//! the 502/504/413/503 answers (`error.rs` decides those), and a protected
//! resource's RFC 9728 metadata document.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde::Serialize;

use super::ProxyBody;
use crate::authz::Decision;
use crate::policy::{Policy, ProtectedResource};
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
/// 400/501 for requests that cannot be matched as sent. A protected
/// resource's challenges also point at its metadata and name the scopes.
pub fn refusal(
    d: &Decision,
    policy: &Policy,
    request_id: &HeaderValue,
    trace: Option<&TraceId>,
) -> Response<ProxyBody> {
    let detail = d.detail.as_deref().unwrap_or("denied");
    let answer = d.reason.answer();
    let (error, mut challenge) = match answer {
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
    if let (Some(c), Some(r)) = (challenge.as_mut(), &policy.resource) {
        resource_params(c, r, policy, d);
    }
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

/// RFC 9728 §5.1 `resource_metadata`, and RFC 6750 §3 `scope` when the
/// rule names scopes: on a 401 always (what to ask the authorization server
/// for), on a 403 only when a scope condition is what failed (so a client
/// steps up instead of asking again for what it has).
fn resource_params(challenge: &mut String, r: &ProtectedResource, policy: &Policy, d: &Decision) {
    use std::fmt::Write as _;
    // Both values are quoted-string safe as they are, and never cut short
    // (`quote_safe` truncates): the URL is serialised by `url` (`"` and `\`
    // percent-encoded), scopes are filtered to scope tokens when compiled.
    let _ = write!(challenge, ", resource_metadata=\"{}\"", r.metadata_url);
    let rule = d.rule.as_deref().and_then(|name| policy.rule(name));
    let scope = rule.and_then(|rule| {
        let needed = match d.reason.answer() {
            Answer::NoToken | Answer::InvalidToken => true,
            Answer::Forbidden => d.token.as_ref().is_some_and(|t| rule.scope_unmet(&t.entry.verified)),
            _ => false,
        };
        rule.scope.as_deref().filter(|_| needed)
    });
    if let Some(scope) = scope {
        let _ = write!(challenge, ", scope=\"{scope}\"");
    }
}

/// A protected resource's metadata document (GET, HEAD), answered by the
/// agent for anyone: it is public, so any origin may read it. Other methods
/// get 405.
pub fn resource_metadata(
    r: &ProtectedResource,
    method: &Method,
    request_id: &HeaderValue,
    trace: Option<&TraceId>,
) -> Response<ProxyBody> {
    let mut resp = if *method == Method::GET || *method == Method::HEAD {
        let body = if *method == Method::HEAD {
            Bytes::new()
        } else {
            r.document.clone()
        };
        let mut resp = Response::new(super::full(body));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(super::headers::REQUEST_ID, request_id.clone());
        // HEAD: the length a GET would get, no body.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.document.len()));
        resp
    } else {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the protected resource metadata is read with GET or HEAD",
            request_id,
            trace,
        )
    };
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::{HeaderValue, Method, StatusCode, header};

    use super::{refusal, resource_metadata};
    use crate::authz::Decision;
    use crate::config::{Config, Mode};
    use crate::policy::Policy;
    use crate::reason::Reason;

    fn policy(resource: bool) -> Policy {
        policy_of(resource.then_some("http://127.0.0.1:15007/mcp"))
    }

    fn policy_of(resource: Option<&str>) -> Policy {
        let pr = match resource {
            Some(r) => format!(
                r#"
    protected_resource: {{resource: "{r}", authorization_servers: [corp]}}"#
            ),
            None => String::new(),
        };
        let text = format!(
            r#"providers: [{{name: corp, issuer: "http://127.0.0.1:9000", audiences: [x]}}]
policies:
  - name: tools{pr}
    rules:
      - {{name: call, paths: ["/mcp"], require: {{claims: {{scope: {{all_of: [tools.call]}}}}}}}}
      - {{name: other, require: {{}}}}
"#
        );
        let c = Config::parse(&text, Path::new("t.yaml")).expect("valid");
        Policy::compile(&c.policies[0], &c.providers).expect("compiles")
    }

    fn challenge(p: &Policy, reason: Reason, rule: &str) -> (StatusCode, String) {
        let d = Decision::deny(reason, "why \"quoted\"".into(), Some(rule.into()), Mode::Enforce);
        let resp = refusal(&d, p, &HeaderValue::from_static("r1"), None);
        let h = resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .to_string();
        (resp.status(), h)
    }

    #[test]
    fn a_protected_resource_challenge_points_at_its_metadata_and_names_the_scope() {
        let p = policy(true);
        let meta = r#"resource_metadata="http://127.0.0.1:15007/.well-known/oauth-protected-resource/mcp""#;
        assert_eq!(
            challenge(&p, Reason::MissingToken, "call"),
            (
                StatusCode::UNAUTHORIZED,
                format!(r#"Bearer realm="nodeward", {meta}, scope="tools.call""#)
            )
        );
        assert_eq!(
            challenge(&p, Reason::WrongAudience, "call"),
            (
                StatusCode::UNAUTHORIZED,
                format!(
                    r#"Bearer realm="nodeward", error="invalid_token", error_description="why 'quoted'", {meta}, scope="tools.call""#
                )
            )
        );
        // A rule without scope conditions names none.
        assert_eq!(
            challenge(&p, Reason::MissingToken, "other").1,
            format!(r#"Bearer realm="nodeward", {meta}"#)
        );
        // A 403 without a token to compare names no scope (it cannot tell a scope is missing).
        assert_eq!(
            challenge(&p, Reason::ClaimMismatch, "call"),
            (
                StatusCode::FORBIDDEN,
                format!(
                    r#"Bearer realm="nodeward", error="insufficient_scope", error_description="why 'quoted'", {meta}"#
                )
            )
        );
    }

    #[test]
    fn a_long_metadata_url_is_never_cut_short() {
        let path = "/t".repeat(200);
        let p = policy_of(Some(&format!("https://tools.example.com{path}")));
        let (_, h) = challenge(&p, Reason::MissingToken, "other");
        assert!(
            h.ends_with(&format!(
                r#"resource_metadata="https://tools.example.com/.well-known/oauth-protected-resource{path}""#
            )),
            "{h}"
        );
    }

    #[test]
    fn other_workloads_keep_the_plain_challenge() {
        assert_eq!(
            challenge(&policy(false), Reason::MissingToken, "call").1,
            r#"Bearer realm="nodeward""#
        );
    }

    #[test]
    fn the_metadata_answers_get_and_head_and_refuses_other_methods() {
        let p = policy(true);
        let r = p.resource.as_ref().expect("resource");
        let id = HeaderValue::from_static("r1");
        let get = resource_metadata(r, &Method::GET, &id, None);
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(get.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            get.headers()[header::CONTENT_LENGTH],
            r.document.len().to_string().as_str()
        );
        let head = resource_metadata(r, &Method::HEAD, &id, None);
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            r.document.len().to_string().as_str()
        );
        let post = resource_metadata(r, &Method::POST, &id, None);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }
}
