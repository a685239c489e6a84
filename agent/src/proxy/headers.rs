//! Header hygiene: identity headers a client could forge are removed before
//! anything else looks at the request; verified identity is added after the
//! decision; hop-by-hop headers never cross the proxy; request ids.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::policy::Policy;
use crate::token::VerifiedToken;

pub const SUB: HeaderName = HeaderName::from_static("x-nodeward-sub");
pub const ISS: HeaderName = HeaderName::from_static("x-nodeward-iss");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDENTITY_PREFIX: &str = "x-nodeward-";

/// Removes every header the agent vouches for: all `x-nodeward-*` and the
/// policy's claim headers. `HeaderMap` names are already lower-case, so every
/// case variant and every duplicate goes.
///
/// Underscore spellings (`x_nodeward_sub`) go too: CGI-style servers read
/// `-` and `_` alike, so `x_user_email` would pass for `x-user-email`.
pub fn strip_identity(headers: &mut HeaderMap, policy: &Policy) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let name = k.as_str();
            if name.starts_with(IDENTITY_PREFIX) {
                return true;
            }
            if !name.contains('_') {
                return false;
            }
            let dashed = name.replace('_', "-");
            dashed.starts_with(IDENTITY_PREFIX) || policy.forward_claims.iter().any(|(h, _)| h.as_str() == dashed)
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(&name);
    }
    for (name, _) in &policy.forward_claims {
        headers.remove(name);
    }
}

/// Adds the verified identity for the upstream.
pub fn add_identity(headers: &mut HeaderMap, policy: &Policy, token: &VerifiedToken) {
    if let Some(sub) = token.sub.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(SUB, sub);
    }
    if let Ok(iss) = HeaderValue::from_str(&token.iss) {
        headers.insert(ISS, iss);
    }
    for (name, path) in &policy.forward_claims {
        let Some(value) = path.lookup(&token.claims) else {
            continue;
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            Value::Null => continue,
            other => other.to_string(),
        };
        // A claim with control characters is not forwarded rather than mangled.
        match HeaderValue::from_str(&text) {
            Ok(v) => {
                headers.insert(name.clone(), v);
            }
            Err(_) => tracing::debug!(header = %name, "claim value is not a valid header value; not forwarded"),
        }
    }
}

/// Connection-specific headers (RFC 9110 §7.6.1) plus the ones listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::TE,
        http::header::TRAILER,
        http::header::UPGRADE,
        http::header::PROXY_AUTHORIZATION,
        http::header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// Request ids: a client's own id is kept when it is short and plain, else a
/// new one is made from a per-process random prefix and a counter (unique,
/// no syscall per request).
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut seed = [0u8; 4];
        let prefix = match aws_lc_rs::rand::fill(&mut seed) {
            Ok(()) => u32::from_le_bytes(seed),
            Err(_) => std::process::id(),
        };
        Self {
            prefix,
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    pub fn for_request(&self, headers: &HeaderMap) -> HeaderValue {
        let mut sent = headers.get_all(&REQUEST_ID).iter();
        if let (Some(v), None) = (sent.next(), sent.next())
            && (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        {
            return v.clone();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:012x}", self.prefix)).expect("hex is a valid header value")
    }
}
