//! Claim paths: which claim of a token a rule or a forwarded header means.
//! Two spellings, one meaning each, so no claim can shadow another:
//!
//! - **dotted**: `email`, `realm_access.roles`: each `.` goes one level into
//!   a JSON object. A name with other characters than letters, digits, `_`,
//!   `-`, `$` or `@` is quoted in brackets: `["kubernetes.io"].namespace`,
//!   `['https://example.com/roles']`;
//! - **JSON Pointer** (RFC 6901), starting with `/`:
//!   `/kubernetes.io/namespace`, `/https:~1~1example.com~1roles`.
//!
//! `realm_access.roles` therefore always means the `roles` member of the
//! `realm_access` object, never a top-level claim literally named
//! `realm_access.roles` (write `["realm_access.roles"]` for that one).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimPath {
    raw: String,
    segments: Vec<String>,
}

impl ClaimPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("bad claim path {raw:?}: {why}");
        let segments = if let Some(pointer) = raw.strip_prefix('/') {
            pointer_segments(pointer).map_err(|w| bad(&w))?
        } else {
            dotted_segments(raw).map_err(|w| bad(&w))?
        };
        if segments.is_empty() {
            return Err(bad("names no claim"));
        }
        Ok(Self {
            raw: raw.to_string(),
            segments,
        })
    }

    /// As written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The claim this path names: `claims["a"]["b"]`, for `nodeward check`.
    pub fn resolved(&self) -> String {
        let mut out = String::from("claims");
        for s in &self.segments {
            out.push('[');
            out.push_str(&Value::String(s.clone()).to_string());
            out.push(']');
        }
        out
    }

    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        rest.iter()
            .try_fold(claims.get(first)?, |v, seg| v.as_object()?.get(seg))
    }

    /// Space-separated scope strings count as lists (RFC 8693 §4.2).
    pub fn is_scope(&self) -> bool {
        matches!(self.segments.last().map(String::as_str), Some("scope" | "scp"))
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

fn bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-$@".contains(c)
}

fn dotted_segments(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = raw;
    let mut first = true;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let (name, tail) = quoted(after)?;
            out.push(name);
            rest = tail;
        } else {
            if !first {
                rest = rest.strip_prefix('.').ok_or("expected `.` or `[` between names")?;
                if rest.starts_with('[') {
                    // Brackets follow the name directly: a["b"], not a.["b"].
                    return Err("write a[\"b\"], not a.[\"b\"]".into());
                }
            }
            let end = rest.find(|c: char| !bare(c)).unwrap_or(rest.len());
            let name = &rest[..end];
            if name.is_empty() {
                return Err(match rest.chars().next() {
                    None | Some('.') => "empty name (two dots, or a dot at an end)".into(),
                    Some(c) => format!(
                        "{c:?} cannot appear in a bare name: quote it, [\"{}\"], or use a JSON Pointer (/…)",
                        rest.split('.').next().unwrap_or(rest)
                    ),
                });
            }
            out.push(name.to_string());
            rest = &rest[end..];
        }
        first = false;
    }
    Ok(out)
}

/// `"name"]…` or `'name']…` (the `[` already taken): the name and what follows.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('"' | '\''))) => q,
        _ => return Err("a `[` must be followed by a quoted name".into()),
    };
    let mut name = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            name.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            let tail = s[i + 1..]
                .strip_prefix(']')
                .ok_or("a quoted name must be closed by `]`")?;
            return Ok((name, tail));
        } else {
            name.push(c);
        }
    }
    Err("unterminated quoted name".into())
}

/// RFC 6901: `/`-separated, `~1` is `/`, `~0` is `~`.
fn pointer_segments(pointer: &str) -> Result<Vec<String>, String> {
    pointer
        .split('/')
        .map(|seg| {
            let mut out = String::new();
            let mut chars = seg.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err("`~` must be followed by 0 or 1 (RFC 6901)".to_string()),
                    },
                    c => out.push(c),
                }
            }
            if out.is_empty() {
                return Err("empty name in the pointer".into());
            }
            Ok(out)
        })
        .collect()
}

impl Serialize for ClaimPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for ClaimPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::ClaimPath;

    fn segs(raw: &str) -> Vec<String> {
        ClaimPath::parse(raw)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
            .segments()
            .to_vec()
    }

    #[test]
    fn both_spellings_name_any_claim() {
        assert_eq!(segs("email"), ["email"]);
        assert_eq!(segs("realm_access.roles"), ["realm_access", "roles"]);
        assert_eq!(segs(r#"["kubernetes.io"].namespace"#), ["kubernetes.io", "namespace"]);
        assert_eq!(segs(r#"a["b.c"]["d"].e"#), ["a", "b.c", "d", "e"]);
        assert_eq!(segs("['https://example.com/roles']"), ["https://example.com/roles"]);
        assert_eq!(segs(r#"["say \"hi\""]"#), [r#"say "hi""#]);
        assert_eq!(segs("/kubernetes.io/namespace"), ["kubernetes.io", "namespace"]);
        assert_eq!(segs("/https:~1~1example.com~1roles"), ["https://example.com/roles"]);
        assert_eq!(segs("/a~0b"), ["a~b"]);
    }

    #[test]
    fn ambiguous_or_broken_paths_are_refused() {
        for raw in [
            "",
            "a..b",
            ".a",
            "a.",
            "https://example.com/roles",
            "kubernetes.io/namespace",
            "a.[\"b\"]",
            "[b]",
            "[\"b\"",
            "[\"b\"]x",
            "/",
            "/a//b",
            "/a~2",
            "a b",
        ] {
            assert!(ClaimPath::parse(raw).is_err(), "{raw:?} must be refused");
        }
    }

    #[test]
    fn a_dotted_path_never_reads_a_top_level_claim_with_dots_in_its_name() {
        let claims = json!({"realm_access.roles": ["forged"], "realm_access": {"roles": ["real"]}});
        let claims = claims.as_object().expect("object");
        let nested = ClaimPath::parse("realm_access.roles").expect("path");
        assert_eq!(nested.lookup(claims), Some(&json!(["real"])));
        let literal = ClaimPath::parse(r#"["realm_access.roles"]"#).expect("path");
        assert_eq!(literal.lookup(claims), Some(&json!(["forged"])));
        assert_eq!(nested.resolved(), r#"claims["realm_access"]["roles"]"#);
    }
}
