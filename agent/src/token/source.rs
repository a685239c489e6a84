//! Where a request carries its token: headers (with or without a scheme such
//! as `Bearer`), a cookie, or a query parameter, tried in the configured
//! order. Reading ([`Sources::find`]), removing before forwarding
//! ([`Sources::strip`]) and, for `nodeward explain`, writing a token into a
//! request ([`Sources::place`]) are defined here together, so what the proxy
//! reads is what `explain` writes and what the upstream never sees.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::TokenSource;

/// One compiled place a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header {
        name: HeaderName,
        /// The scheme as configured (`Bearer`), empty for a bare token.
        scheme: String,
    },
    Cookie(String),
    Query(String),
}

/// The distinct sources of all providers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(Vec<Source>);

/// A token found in a request, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'r> {
    pub token: Cow<'r, str>,
    pub source: usize,
}

/// Why a source that is present does not hold a usable token.
pub type Malformed = &'static str;

impl Sources {
    pub fn compile<'c>(configs: impl IntoIterator<Item = &'c TokenSource>) -> Self {
        let mut out: Vec<Source> = Vec::new();
        for c in configs {
            let s = match c {
                TokenSource::Header { header, prefix } => {
                    let Ok(name) = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()) else {
                        // Validation refuses such a header; nothing to read from.
                        continue;
                    };
                    Source::Header {
                        name,
                        scheme: prefix.clone(),
                    }
                }
                TokenSource::Cookie { cookie } => Source::Cookie(cookie.clone()),
                TokenSource::Query { query } => Source::Query(query.clone()),
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
        if out.is_empty() {
            out.push(Source::Header {
                name: http::header::AUTHORIZATION,
                scheme: "Bearer".into(),
            });
        }
        Self(out)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.0.iter()
    }

    /// The token from the first source that carries one; `Err` when a
    /// source holds more than one, or one in an unusable shape.
    pub fn find<'r>(&self, headers: &'r HeaderMap, query: Option<&'r str>) -> Option<Result<Found<'r>, Malformed>> {
        for (i, s) in self.0.iter().enumerate() {
            let found = match s {
                Source::Header { name, scheme } => header_token(headers, name, scheme),
                Source::Cookie(name) => cookie_token(headers, name),
                Source::Query(name) => query_token(query, name),
            };
            match found {
                None => continue,
                Some(Err(why)) => return Some(Err(why)),
                Some(Ok(token)) if token.is_empty() => return Some(Err("empty token")),
                Some(Ok(token)) => return Some(Ok(Found { token, source: i })),
            }
        }
        None
    }

    /// Removes every value any source would read as a token, except the
    /// source `keep` (a verified token the policy forwards). Returns the
    /// query without token parameters (unchanged when it had none).
    pub fn strip<'q>(
        &self,
        headers: &mut HeaderMap,
        query: Option<&'q str>,
        keep: Option<usize>,
    ) -> Option<Cow<'q, str>> {
        let mut query = query.map(Cow::Borrowed);
        for (i, s) in self.0.iter().enumerate() {
            if Some(i) == keep {
                continue;
            }
            match s {
                Source::Header { name, scheme } => strip_header(headers, name, scheme),
                Source::Cookie(name) => strip_cookie(headers, name),
                Source::Query(name) => {
                    if let Some(q) = &query
                        && let Some(rest) = strip_param(q, name)
                    {
                        query = Some(Cow::Owned(rest));
                    }
                }
            }
        }
        query.filter(|q| !q.is_empty())
    }

    /// Writes `token` into a request the way the first source reads it
    /// (`nodeward explain`). Returns the query to use.
    pub fn place(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        token: &str,
    ) -> Result<Option<String>, Malformed> {
        let bad = "the token is not a valid header value";
        match &self.0[0] {
            Source::Header { name, scheme } => {
                let value = if scheme.is_empty() {
                    token.to_string()
                } else {
                    format!("{scheme} {token}")
                };
                headers.insert(name.clone(), HeaderValue::from_str(&value).map_err(|_| bad)?);
                Ok(query.map(String::from))
            }
            Source::Cookie(name) => {
                let value = format!("{name}={token}");
                headers.append(http::header::COOKIE, HeaderValue::from_str(&value).map_err(|_| bad)?);
                Ok(query.map(String::from))
            }
            Source::Query(name) => {
                let param = format!(
                    "{name}={}",
                    url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
                );
                Ok(Some(match query {
                    Some(q) if !q.is_empty() => format!("{q}&{param}"),
                    _ => param,
                }))
            }
        }
    }
}

/// `scheme token` (scheme case-insensitive) or, without a scheme, the whole value.
fn scheme_token<'v>(value: &'v str, scheme: &str) -> Option<&'v str> {
    if scheme.is_empty() {
        return Some(value.trim());
    }
    // The byte at `scheme.len()` is then a space or tab: a char boundary.
    is_scheme_prefixed(value.as_bytes(), scheme).then(|| value[scheme.len()..].trim())
}

fn header_token<'r>(
    headers: &'r HeaderMap,
    name: &HeaderName,
    scheme: &str,
) -> Option<Result<Cow<'r, str>, Malformed>> {
    let mut found = None;
    for v in headers.get_all(name) {
        let Ok(v) = v.to_str() else {
            return Some(Err("token header is not visible ASCII"));
        };
        // Another scheme (Basic, ...) under the same header is not our token.
        let Some(token) = scheme_token(v, scheme) else { continue };
        if found.is_some() {
            return Some(Err("several token headers"));
        }
        found = Some(token);
    }
    // Two values of a bare-token header are two tokens, even if one is "other".
    if scheme.is_empty() && headers.get_all(name).iter().count() > 1 {
        return Some(Err("several token headers"));
    }
    found.map(|t| Ok(Cow::Borrowed(t)))
}

/// The `name=value` pairs of every Cookie header (RFC 6265 §5.4; h2 may split them).
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = Result<(&str, &str), Malformed>> {
    headers.get_all(http::header::COOKIE).iter().flat_map(|v| {
        let pairs: Vec<Result<(&str, &str), Malformed>> = match v.to_str() {
            Ok(s) => s
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    p.split_once('=')
                        .map(|(k, v)| Ok((k.trim(), v.trim().trim_matches('"'))))
                })
                .collect(),
            Err(_) => vec![Err("cookie header is not visible ASCII")],
        };
        pairs
    })
}

fn cookie_token<'r>(headers: &'r HeaderMap, name: &str) -> Option<Result<Cow<'r, str>, Malformed>> {
    let mut found = None;
    for pair in cookies(headers) {
        match pair {
            Err(e) => return Some(Err(e)),
            Ok((k, v)) if k == name => {
                if found.is_some() {
                    return Some(Err("several token cookies"));
                }
                found = Some(v);
            }
            Ok(_) => {}
        }
    }
    found.map(|t| Ok(Cow::Borrowed(t)))
}

fn query_token<'r>(query: Option<&'r str>, name: &str) -> Option<Result<Cow<'r, str>, Malformed>> {
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(query?.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Some(Err("several token query parameters"));
            }
            found = Some(v);
        }
    }
    found.map(Ok)
}

fn strip_header(headers: &mut HeaderMap, name: &HeaderName, scheme: &str) {
    if scheme.is_empty() {
        headers.remove(name);
        return;
    }
    // A value goes unless it is visible ASCII under another scheme (a
    // value that is not visible ASCII goes too: no source reads it). The
    // usual value, `Bearer <token>`, is settled by its prefix: no scan of
    // the whole token.
    let goes = |v: &HeaderValue| is_scheme_prefixed(v.as_bytes(), scheme) || v.to_str().is_err();
    let http::header::Entry::Occupied(entry) = headers.entry(name) else {
        return;
    };
    if entry.iter().all(goes) {
        entry.remove_entry_mult();
        return;
    }
    let kept: Vec<HeaderValue> = entry.iter().filter(|v| !goes(v)).cloned().collect();
    headers.remove(name);
    for v in kept {
        headers.append(name.clone(), v);
    }
}

/// `value` starts with `scheme` (any case) and a space or tab, exactly:
/// `Bearerx` is another scheme.
fn is_scheme_prefixed(value: &[u8], scheme: &str) -> bool {
    value.len() > scheme.len()
        && value[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        && matches!(value[scheme.len()], b' ' | b'\t')
}

fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(http::header::COOKIE) {
        return;
    }
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        let rest: Vec<&str> = s
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k.trim() != name))
            .collect();
        if !rest.is_empty()
            && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
        {
            kept.push(v);
        }
    }
    headers.remove(http::header::COOKIE);
    for v in kept {
        headers.append(http::header::COOKIE, v);
    }
}

/// `query` without its `name` parameters (other bytes unchanged), or `None`
/// when it had none.
fn strip_param(query: &str, name: &str) -> Option<String> {
    let is_token = |part: &str| {
        let key = part.split_once('=').map_or(part, |(k, _)| k);
        url::form_urlencoded::parse(key.as_bytes())
            .next()
            .is_some_and(|(k, _)| k == name)
    };
    if !query.split('&').any(is_token) {
        return None;
    }
    Some(query.split('&').filter(|p| !is_token(p)).collect::<Vec<_>>().join("&"))
}

#[cfg(test)]
mod tests;
