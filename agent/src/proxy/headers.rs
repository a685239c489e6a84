//! Header hygiene, in the order the pipeline applies it:
//!
//! 1. hop-by-hop headers, and the ones a client lists in `Connection`, go
//!    first, before anything reads the request, so a `Connection` header can
//!    never remove what nodeward adds later (or decide what it checks);
//! 2. identity headers a client could forge go next;
//! 3. after the decision, the verified identity is added, each claim in an
//!    encoding that cannot be misread, and the forwarding headers say who
//!    nodeward saw (a client's own are believed only from trusted proxies).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::{Encoding, ForwardClaim};
use crate::policy::Policy;
use crate::token::{IdentityValues, VerifiedToken};

pub const SUB: HeaderName = HeaderName::from_static("x-nodeward-sub");
pub const ISS: HeaderName = HeaderName::from_static("x-nodeward-iss");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const IDENTITY_PREFIX: &str = "x-nodeward-";

/// Connection-specific headers (RFC 9110 §7.6.1). Matched by name: a
/// `const` array of `HeaderName`s is built and dropped at every use, and a
/// comparison with a `static` one costs more than the string match.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// A `Connection` header naming a header that routes or frames the request:
/// removing it would change what the upstream does with the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Connection lists {0}, which frames or routes the request")]
pub struct ListedFraming(pub String);

/// The `Content-Length` a message is forwarded with, as RFC 9112 §6.3 asks
/// of a proxy. A message that came with a `Transfer-Encoding` was framed by
/// it (its parser let that win), so a length beside it frames nothing and
/// goes: forwarded, a stale 3 would cut a chunked body at the next hop, a
/// stale 50 would leave its reader waiting. One length repeated (`5, 5`, or
/// two fields), which the parser accepted because the values agree, and one
/// spelled out of the ordinary (`05`) go on as the one plain value, so the
/// next parser cannot read them otherwise. A length that does not parse
/// (the parsers before this one refuse it) goes, and the next hop frames the
/// body by what it is.
///
/// Part of [`strip_hop_by_hop`], before it removes the `Transfer-Encoding`
/// this looks for: every message the agent forwards goes through both.
fn canonical_length(headers: &mut HeaderMap) {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    // One pass over the fields instead of a hashed lookup per name: a
    // message has a handful, and most have one plain length or none.
    let (mut chunked, mut lengths, mut plain) = (false, 0, true);
    for (name, value) in headers.iter() {
        if *name == TRANSFER_ENCODING {
            chunked = true;
        } else if *name == CONTENT_LENGTH {
            lengths += 1;
            plain &= is_plain_length(value.as_bytes());
        }
    }
    if lengths == 0 || (lengths == 1 && plain && !chunked) {
        return;
    }
    if chunked {
        headers.remove(CONTENT_LENGTH);
        return;
    }
    let mut agreed: Option<Option<u64>> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = decimal(part.trim_ascii());
            agreed = match agreed {
                None => Some(n),
                Some(m) if m == n => Some(m),
                Some(_) => Some(None),
            };
        }
    }
    match agreed.flatten() {
        Some(n) => headers.insert(CONTENT_LENGTH, HeaderValue::from(n)),
        None => headers.remove(CONTENT_LENGTH),
    };
}

/// A length as its shortest decimal that surely fits `u64` (19 digits).
fn is_plain_length(b: &[u8]) -> bool {
    matches!(b, [b'0']) || (matches!(b, [b'1'..=b'9', ..]) && b.len() <= 19 && b.iter().all(u8::is_ascii_digit))
}

/// Digits only (no sign, no spaces, no hex), within `u64`.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter()
        .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Removes hop-by-hop headers and those `Connection` names, and leaves the
/// `Content-Length` only if it framed the message ([`canonical_length`]).
/// All of them go in any case; `Err` says the client listed a header that
/// routes or frames the request (a request is refused for it, a response
/// just cleaned).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Result<(), ListedFraming> {
    canonical_length(headers);
    // One pass over the names first: most messages carry none of these
    // (a name `Connection` lists can only matter when `Connection` is
    // there), and a hashed removal per hop-by-hop name costs more than
    // the scan.
    if !headers.keys().any(is_hop_by_hop) {
        return Ok(());
    }
    let mut listed: Vec<HeaderName> = Vec::new();
    let mut framing = None;
    for v in headers.get_all(http::header::CONNECTION) {
        for name in v.to_str().unwrap_or_default().split(',') {
            let name = name.trim();
            // The usual tokens: `close` names no header, `keep-alive` is
            // hop-by-hop anyway; neither needs a HeaderName made.
            if name.eq_ignore_ascii_case("close") || name.eq_ignore_ascii_case("keep-alive") || name.is_empty() {
                continue;
            }
            if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
                framing.get_or_insert(name.to_ascii_lowercase());
            }
            // `from_bytes` lower-cases.
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                listed.push(n);
            }
        }
    }
    // Remove only what is there, found by scanning the handful of names
    // rather than a hashed lookup per hop-by-hop name, one at a time: a
    // message nearly always has one or two (an upstream's `Connection:
    // keep-alive`), and no list of them is built. Each turn removes a name,
    // so the loop ends.
    while let Some(name) = headers.keys().find(|k| is_hop_by_hop(k) || listed.contains(k)).cloned() {
        headers.remove(&name);
    }
    framing.map_or(Ok(()), |name| Err(ListedFraming(name)))
}

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

/// A claim that cannot be carried in its header without changing its meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claim {claim} cannot be forwarded in {header} as plain text ({why}); use `encoding: json`")]
pub struct Unforwardable {
    pub claim: String,
    pub header: String,
    pub why: &'static str,
}

/// The verified identity headers for the upstream, or why one cannot be
/// built faithfully (the request is then refused, not forwarded without it).
pub fn identity(policy: &Policy, token: &VerifiedToken) -> Result<Vec<(HeaderName, HeaderValue)>, Unforwardable> {
    let mut out = Vec::with_capacity(2 + policy.forward_claims.len());
    // Checked and copied once per token, not per request.
    let values = token.header_values.get_or_init(|| IdentityValues {
        sub: token.sub.as_deref().map(plain_string),
        // The configured issuer: a URL, always a valid header value.
        iss: HeaderValue::from_str(&token.iss).ok(),
    });
    if let Some(sub) = &values.sub {
        let v = sub.clone().map_err(|why| Unforwardable {
            claim: "sub".into(),
            header: SUB.to_string(),
            why,
        })?;
        out.push((SUB, v));
    }
    if let Some(iss) = &values.iss {
        out.push((ISS, iss.clone()));
    }
    for (name, fc) in &policy.forward_claims {
        let Some(value) = fc.claim.lookup(&token.claims).filter(|v| !v.is_null()) else {
            continue;
        };
        let v = encode(fc, value).map_err(|why| Unforwardable {
            claim: fc.claim.to_string(),
            header: name.to_string(),
            why,
        })?;
        out.push((name.clone(), v));
    }
    Ok(out)
}

fn encode(fc: &ForwardClaim, value: &Value) -> Result<HeaderValue, &'static str> {
    match fc.encoding {
        Encoding::Json => HeaderValue::from_str(&ascii_json(value)).map_err(|_| "not a header value"),
        Encoding::Plain => match value {
            Value::String(s) => plain_string(s),
            Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(s) = item else {
                        return Err("an array element is not a string");
                    };
                    if s.contains(',') {
                        return Err("an array element contains a comma");
                    }
                    plain_string(s)?;
                    parts.push(s.as_str());
                }
                HeaderValue::from_str(&parts.join(",")).map_err(|_| "not a header value")
            }
            Value::Number(_) | Value::Bool(_) => {
                HeaderValue::from_str(&value.to_string()).map_err(|_| "not a header value")
            }
            Value::Object(_) => Err("an object"),
            Value::Null => Err("null"),
        },
    }
}

/// A string exactly as it is: visible ASCII and inner spaces only, so no
/// parser trims, folds or re-decodes it into something else.
fn plain_string(s: &str) -> Result<HeaderValue, &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.starts_with([' ', '\t']) || s.ends_with([' ', '\t']) {
        return Err("leading or trailing whitespace");
    }
    if !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err("a control or non-ASCII character");
    }
    HeaderValue::from_str(s).map_err(|_| "not a header value")
}

/// JSON with every non-ASCII character escaped (`\uXXXX`), so it is a valid
/// header value whatever the claim holds.
pub fn ascii_json(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// What the upstream learns about the client: from a trusted proxy, its
/// forwarding headers plus the proxy's address; from anyone else, only the
/// address nodeward saw (`x-forwarded-*`, `x-real-ip` and `forwarded` of the
/// client are removed, so a forged chain never reaches the app).
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, trusted: bool) {
    let peer_value = ip_value(peer);
    if trusted {
        headers.append(X_FORWARDED_FOR, peer_value);
        return;
    }
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            // Headers through which a client claims to speak for someone else.
            let name = k.as_str();
            name.starts_with("x-forwarded-") || name == "x-real-ip" || name == "forwarded"
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
    headers.insert(X_FORWARDED_FOR, peer_value);
}

/// `ip` as a header value, as `Display` writes it; IPv4 without the
/// formatting machinery (which costs more than the rest of this step).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
    };
    let mut text = Vec::with_capacity(15);
    crate::audit::ipv4(&mut text, v4);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).unwrap_or(HeaderValue::from_static("unknown"))
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
        // `{prefix:08x}-{n:012x}`, without the formatting machinery.
        let mut id = [b'-'; 21];
        hex_into(&mut id[..8], u64::from(self.prefix));
        hex_into(&mut id[9..], n);
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
    }
}

/// `out.len()` lower-case hex digits of `v` (its low bits), most significant first.
fn hex_into(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_length_is_one_plain_value_or_none() {
        use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
        let lengths = |h: &HeaderMap| -> Vec<String> {
            h.get_all(CONTENT_LENGTH)
                .iter()
                .map(|v| v.to_str().expect("visible ASCII").to_string())
                .collect()
        };
        let cases: &[(&[&str], bool, &[&str])] = &[
            (&["5"], false, &["5"]),
            (&["0"], false, &["0"]),
            (&["5", "5"], false, &["5"]),
            (&["5, 5"], false, &["5"]),
            (&["5,5", " 5 "], false, &["5"]),
            (&["05"], false, &["5"]),
            (&["00"], false, &["0"]),
            (&["1234567890123456789"], false, &["1234567890123456789"]),
            (&["5", "6"], false, &[]),
            (&["5, 6"], false, &[]),
            (&["+5"], false, &[]),
            (&["-1"], false, &[]),
            (&["0x5"], false, &[]),
            (&["5,"], false, &[]),
            (&["99999999999999999999"], false, &[]),
            (&["18446744073709551615"], false, &["18446744073709551615"]),
            (&["3"], true, &[]),
            (&["5", "5"], true, &[]),
            (&[], false, &[]),
        ];
        for (given, chunked, want) in cases {
            let mut h = HeaderMap::new();
            for v in *given {
                h.append(CONTENT_LENGTH, HeaderValue::from_str(v).expect("a header value"));
            }
            if *chunked {
                h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            canonical_length(&mut h);
            assert_eq!(lengths(&h), *want, "{given:?} chunked: {chunked}");
            assert_eq!(h.contains_key(TRANSFER_ENCODING), *chunked, "only the length changes");
        }
    }

    #[test]
    fn made_request_ids_are_prefix_and_counter_in_hex() {
        let ids = RequestIds {
            prefix: 0x0a1b_2c3d,
            next: AtomicU64::new(0xfedc_ba98_7654),
        };
        let h = HeaderMap::new();
        assert_eq!(ids.for_request(&h), "0a1b2c3d-fedcba987654");
        assert_eq!(ids.for_request(&h), "0a1b2c3d-fedcba987655");
        let mut sent = HeaderMap::new();
        sent.insert(REQUEST_ID, HeaderValue::from_static("client-id.1"));
        assert_eq!(ids.for_request(&sent), "client-id.1", "a plain client id is kept");
        sent.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(
            ids.for_request(&sent),
            "0a1b2c3d-fedcba987656",
            "an odd one is replaced"
        );
    }

    #[test]
    fn peer_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "fe80::2",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_lists_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-app", HeaderValue::from_static("1"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let before = h.clone();
        assert_eq!(strip_hop_by_hop(&mut h), Ok(()));
        assert_eq!(h, before, "nothing hop-by-hop: untouched");
        h.insert(http::header::CONNECTION, HeaderValue::from_static("x-app, keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
        assert_eq!(strip_hop_by_hop(&mut h), Ok(()));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        let mut h = HeaderMap::new();
        h.insert(http::header::CONNECTION, HeaderValue::from_static("Host"));
        h.insert(http::header::HOST, HeaderValue::from_static("a"));
        assert_eq!(strip_hop_by_hop(&mut h), Err(ListedFraming("host".into())));
        assert!(h.is_empty(), "removed anyway: {h:?}");
        // Every hop-by-hop name of RFC 9110 §7.6.1 (and the two legacy
        // ones), whatever case the client wrote, without a `Connection`.
        for name in [
            "Transfer-Encoding",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Authorization",
            "Proxy-Authenticate",
            "Keep-Alive",
            "Proxy-Connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static("x"),
            );
            h.insert("x-app", HeaderValue::from_static("1"));
            assert_eq!(strip_hop_by_hop(&mut h), Ok(()));
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-app"], "{name}");
        }
    }
}
