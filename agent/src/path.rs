//! The one normalisation of a request path. What a rule matched must be what
//! the upstream receives, whatever spelling a client sent, so a path is
//! normalised exactly once, matched, and forwarded in that form:
//!
//! 1. percent-escapes of unreserved characters are decoded (RFC 3986
//!    §6.2.2.2: `%61` is `a`, `%2e` is `.`); the others are kept, upper-case;
//! 2. slashes are merged (`//a` is `/a`);
//! 3. dot segments are removed, encoded ones too (§5.2.4: `/a/%2e%2e/b` is `/b`);
//! 4. what servers read differently is refused (400) unless the policy says
//!    otherwise ([`PathOptions`]): encoded `/` and `\` (`%2F`, `%5C`), a raw
//!    `\`, `;` path parameters (raw or `%3B`), `%00`, and any malformed
//!    escape; a `..` hidden behind kept parameters (`/..;x/`) always is.
//!
//! Rules match a *decoded* view of the normalised path ([`Normalized::matched`]:
//! every escape decoded once, the trailing slash dropped, so `/admin` and
//! `/admin/` are one path to a rule); the upstream receives
//! [`Normalized::forward`], which keeps the escapes and the trailing slash.
//! The query string is never touched.

use serde::{Deserialize, Serialize};

/// Per-policy choices for spellings that servers disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathOptions {
    /// `%2F` and `%5C`: refused; kept as they are (matched as the literal
    /// text `%2F`: only for upstreams that never decode them); or unescaped
    /// to `/` and `\` before the other steps (as Envoy's
    /// `UNESCAPE_AND_FORWARD`).
    pub escaped_slashes: EscapedSlashes,
    /// A raw `\`: refused, kept (data, for upstreams that never read it as a
    /// separator), or read as `/` (as Windows servers do) and forwarded as `/`.
    pub backslashes: Backslashes,
    /// `;` (raw or `%3B`): refused, or kept as data (for upstreams that do not
    /// strip path parameters, unlike Tomcat and Jetty).
    pub parameters: Parameters,
    /// `%00`: refused, or kept encoded.
    pub encoded_nul: EncodedNul,
    /// Rules match the path without regard to case (for case-insensitive
    /// upstreams); the upstream still gets it as sent.
    pub case_insensitive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    #[default]
    Reject,
    Keep,
    Unescape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backslashes {
    #[default]
    Reject,
    Keep,
    AsSlash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Parameters {
    #[default]
    Reject,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodedNul {
    #[default]
    Reject,
    Keep,
}

/// Why a path is refused. Each is a 400 `invalid_path` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not a path (only origin-form `/…` is served)")]
    NotAPath,
    #[error("malformed percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("encoded `/` or `\\` (%2F, %5C) in the path")]
    EscapedSlash,
    #[error("`\\` in the path")]
    Backslash,
    #[error("`;` path parameter in the path")]
    Parameter,
    #[error("%00 in the path")]
    EncodedNul,
    #[error("a dot segment with path parameters (`..;`) in the path")]
    DotSegmentWithParameter,
    #[error("the path is not UTF-8 once decoded")]
    NotUtf8,
}

/// A normalised path: what the upstream gets and what rules match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub forward: String,
    pub matched: String,
}

/// One character of the path after decoding what may be decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    /// A literal character (possibly decoded from an unreserved escape).
    Char(char),
    /// A byte that stays percent-encoded in the forwarded path.
    Escaped(u8),
    /// A segment separator.
    Slash,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Reads `raw` into units, applying the options' refusals and conversions.
fn units(raw: &str, o: &PathOptions) -> Result<Vec<Unit>, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((i, c)) = chars.next() {
        let unit = match c {
            '%' => {
                let value = bytes
                    .get(i + 1)
                    .and_then(|&h| hex(h))
                    .zip(bytes.get(i + 2).and_then(|&l| hex(l)))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(PathError::BadEscape(i))?;
                // The two hex digits are ASCII: skip them.
                chars.next();
                chars.next();
                match value {
                    b'/' | b'\\' => match o.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => Unit::Escaped(value),
                        EscapedSlashes::Unescape if value == b'/' => Unit::Slash,
                        EscapedSlashes::Unescape => backslash(o)?,
                    },
                    0 => match o.encoded_nul {
                        EncodedNul::Reject => return Err(PathError::EncodedNul),
                        EncodedNul::Keep => Unit::Escaped(0),
                    },
                    b';' => match o.parameters {
                        Parameters::Reject => return Err(PathError::Parameter),
                        Parameters::Keep => Unit::Escaped(b';'),
                    },
                    v if unreserved(v) => Unit::Char(char::from(v)),
                    v => Unit::Escaped(v),
                }
            }
            '/' => Unit::Slash,
            '\\' => backslash(o)?,
            ';' => match o.parameters {
                Parameters::Reject => return Err(PathError::Parameter),
                Parameters::Keep => Unit::Char(';'),
            },
            c => Unit::Char(c),
        };
        out.push(unit);
    }
    Ok(out)
}

fn backslash(o: &PathOptions) -> Result<Unit, PathError> {
    match o.backslashes {
        Backslashes::Reject => Err(PathError::Backslash),
        Backslashes::Keep => Ok(Unit::Char('\\')),
        Backslashes::AsSlash => Ok(Unit::Slash),
    }
}

/// `.` or `..` (literally, or decoded from `%2e`): a dot segment.
fn dots(seg: &[Unit]) -> Option<usize> {
    match seg {
        [Unit::Char('.')] => Some(1),
        [Unit::Char('.'), Unit::Char('.')] => Some(2),
        _ => None,
    }
}

/// Whether the part of `seg` before its first `;` is a dot segment.
fn dots_before_parameter(seg: &[Unit]) -> bool {
    let end = seg
        .iter()
        .position(|u| matches!(u, Unit::Char(';') | Unit::Escaped(b';')));
    end.is_some_and(|e| dots(&seg[..e]).is_some())
}

/// Normalises the path of a request target (without its query).
pub fn normalize(raw: &str, o: &PathOptions) -> Result<Normalized, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAPath);
    }
    let units = units(raw, o)?;
    // Segments between separators; empty ones (merged slashes) dropped.
    let mut stack: Vec<&[Unit]> = Vec::new();
    let mut trailing = false;
    for seg in units.split(|u| *u == Unit::Slash) {
        if seg.is_empty() {
            continue;
        }
        if dots_before_parameter(seg) {
            return Err(PathError::DotSegmentWithParameter);
        }
        match dots(seg) {
            Some(1) => trailing = true,
            Some(_) => {
                stack.pop();
                trailing = true;
            }
            _ => {
                stack.push(seg);
                trailing = false;
            }
        }
    }
    // A path ending in a separator keeps it (`/dir/` is not `/dir` to a file server).
    if units.last() == Some(&Unit::Slash) {
        trailing = true;
    }
    let mut forward = String::with_capacity(raw.len());
    let mut matched: Vec<u8> = Vec::with_capacity(raw.len());
    for seg in &stack {
        forward.push('/');
        matched.push(b'/');
        for u in *seg {
            match *u {
                Unit::Char(c) => {
                    forward.push(c);
                    let mut buf = [0; 4];
                    matched.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Unit::Escaped(b) => {
                    push_escape(&mut forward, b);
                    match b {
                        // Kept on purpose: a rule sees the escape, not a separator or a NUL.
                        b'/' | b'\\' | 0 => push_escape_bytes(&mut matched, b),
                        b => matched.push(b),
                    }
                }
                Unit::Slash => {}
            }
        }
    }
    if stack.is_empty() || trailing {
        forward.push('/');
    }
    if matched.is_empty() {
        matched.push(b'/');
    }
    let matched = String::from_utf8(matched).map_err(|_| PathError::NotUtf8)?;
    Ok(Normalized { forward, matched })
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escape(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

fn push_escape_bytes(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// A rule's path glob in the form it is matched in: its escapes decoded like
/// a request path's, no trailing slash. Refuses patterns that no normalised
/// path could match (`//`, dot segments, an encoded `/`).
pub fn glob_pattern(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let v = bytes
                .get(i + 1)
                .and_then(|&h| hex(h))
                .zip(bytes.get(i + 2).and_then(|&l| hex(l)))
                .map(|(h, l)| h << 4 | l)
                .ok_or_else(|| format!("malformed percent-escape at byte {i}"))?;
            if matches!(v, b'/' | b'\\' | 0) {
                return Err("an encoded `/`, `\\` or NUL never reaches a rule: write the path as it is".into());
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())?;
    if text.contains("//") {
        return Err("`//` never reaches a rule (slashes are merged)".into());
    }
    if text.split('/').any(|s| s == "." || s == "..") {
        return Err("dot segments never reach a rule (they are resolved first)".into());
    }
    Ok(match text.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped.to_string(),
        _ => text,
    })
}

#[cfg(test)]
mod tests;
