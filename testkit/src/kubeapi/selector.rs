//! Label and field selectors as the apiserver parses them
//! (k8s.io/apimachinery `labels.Parse` and `fields.ParseSelector`), so a
//! selector the fake accepts is one a real apiserver accepts, and the other
//! way round for the syntax a client like kube-rs produces.

use serde_json::{Map, Value};

/// A parsed `labelSelector`: every requirement must hold (comma = AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl LabelSelector {
    /// Parses the apiserver's selector syntax: `k=v`, `k==v`, `k!=v`, `k`,
    /// `!k`, `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`, joined by commas.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(format!(
                    "found '', expected: !, identifier, or 'end of string' in {text:?}"
                ));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self(requirements))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches `metadata.labels` of an object (absent labels match only
    /// requirements that hold for no labels).
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
            LabelRequirement::GreaterThan(k, n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            LabelRequirement::LessThan(k, n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        })
    }
}

/// Splits on commas that are not inside a `( … )` value set.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unexpected ')' in {text:?}"))?
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("found 'end of string', expected: ')' in {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        validate_key(key)?;
        return Ok(LabelRequirement::DoesNotExist(key.to_string()));
    }
    for (op, build) in [
        ("==", LabelRequirement::Equals as fn(String, String) -> LabelRequirement),
        ("!=", LabelRequirement::NotEquals),
        ("=", LabelRequirement::Equals),
    ] {
        if let Some((key, value)) = part.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            validate_key(key)?;
            validate_value(value)?;
            return Ok(build(key.to_string(), value.to_string()));
        }
    }
    for (op, greater) in [('>', true), ('<', false)] {
        if let Some((key, value)) = part.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            validate_key(key)?;
            let n = value
                .parse::<i64>()
                .map_err(|_| format!("for 'Gt', 'Lt' operators, the value must be an integer: {value:?}"))?;
            let key = key.to_string();
            return Ok(if greater {
                LabelRequirement::GreaterThan(key, n)
            } else {
                LabelRequirement::LessThan(key, n)
            });
        }
    }
    if let Some(open) = part.find('(') {
        let head = part[..open].trim();
        let (key, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("unable to parse requirement: {part:?}"))?;
        let key = key.trim();
        validate_key(key)?;
        let rest = part[open + 1..].trim_end();
        let inner = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("found 'end of string', expected: ')' in {part:?}"))?;
        let values = inner.split(',').map(|v| v.trim().to_string()).collect::<Vec<_>>();
        for v in &values {
            validate_value(v)?;
        }
        return match op {
            "in" => Ok(LabelRequirement::In(key.to_string(), values)),
            "notin" => Ok(LabelRequirement::NotIn(key.to_string(), values)),
            other => Err(format!("found '{other}', expected: in, notin, =, ==, !=, gt, lt")),
        };
    }
    if part.contains(char::is_whitespace) {
        return Err(format!("found '{part}', expected: in, notin, =, ==, !=, gt, lt"));
    }
    validate_key(part)?;
    Ok(LabelRequirement::Exists(part.to_string()))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "invalid label key {key:?}: prefix part must be a DNS subdomain"
            ));
        }
    }
    if name.is_empty() || !is_qualified_name_part(name) {
        return Err(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A label value: empty, or a name of at most 63 characters.
fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value: {value:?}: a valid label must be an empty string or consist of alphanumeric \
             characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A parsed `fieldSelector`: `(field path, equal?, value)` terms, all of
/// which must hold. Which fields may be used depends on the resource
/// ([`FieldSelector::check`]), as each apiserver registry declares its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `field=value`, `field==value`, `field!=value` terms joined by
    /// commas, with `\` escaping `,`, `=`, `!` and `\` in values.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_unescaped_commas(text) {
            if term.is_empty() {
                continue;
            }
            let (field, equal, raw) = if let Some((f, v)) = split_unescaped(&term, "!=") {
                (f, false, v)
            } else if let Some((f, v)) = split_unescaped(&term, "==") {
                (f, true, v)
            } else if let Some((f, v)) = split_unescaped(&term, "=") {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{term}'; can't understand '{term}'"));
            };
            terms.push((field.trim().to_string(), equal, unescape(raw)));
        }
        Ok(Self(terms))
    }

    /// Refuses fields the resource does not index, with the apiserver's
    /// message.
    pub fn check(&self, supported: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(field, _, _)| !supported.contains(&field.as_str())) {
            Some((field, _, _)) => Err(format!("field label not supported: {field}")),
            None => Ok(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, equal, value)| (field_value(object, field) == *value) == *equal)
    }
}

/// The string a field selector compares: the value at the dotted path, with
/// the apiserver's rendering of booleans and its defaults for unset fields.
fn field_value(object: &Value, path: &str) -> String {
    let found = path.split('.').try_fold(object, |v, key| v.get(key));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // The pod registry renders an unset hostNetwork as "false".
        _ if path == "spec.hostNetwork" => "false".to_string(),
        _ => String::new(),
    }
}

fn split_unescaped_commas(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let last = parts.last_mut().expect("parts is never empty");
                last.push(c);
                if let Some(next) = chars.next() {
                    last.push(next);
                }
            }
            ',' => parts.push(String::new()),
            _ => parts.last_mut().expect("parts is never empty").push(c),
        }
    }
    parts
}

/// Splits at the first `op` not preceded by a backslash escape.
fn split_unescaped<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some((&term[..i], &term[i + op.len()..]));
        }
        i += 1;
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    const POD_FIELDS: &[&str] = &[
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "status.phase",
        "spec.hostNetwork",
    ];

    #[test]
    fn label_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (web, db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("missing in (db)", false),
            ("app=web,tier=back", false),
            ("app=web, tier in (front,back)", true),
            ("n>4", true),
            ("n<4", false),
            ("example.com/app=", false),
        ];
        for (text, want) in cases {
            let sel = LabelSelector::parse(text).expect(text);
            assert_eq!(sel.matches(Some(&l)), want, "{text}");
        }
        assert!(LabelSelector::parse("app=web").expect("valid").matches(Some(&l)));
        assert!(!LabelSelector::parse("app").expect("valid").matches(None));
    }

    #[test]
    fn label_selector_rejects_bad_syntax() {
        for text in [
            "app in (web",
            "app==",
            "=web",
            "app=we b",
            "app=web,",
            "-app=x",
            "app within (x)",
            "n>x",
        ] {
            let parsed = LabelSelector::parse(text);
            // "app==" is a valid "equals empty" requirement for the apiserver.
            if text == "app==" {
                assert!(parsed.is_ok(), "{text}");
            } else {
                assert!(parsed.is_err(), "{text} should be rejected, got {parsed:?}");
            }
        }
    }

    #[test]
    fn field_selector_terms_and_escapes() {
        let pod = serde_json::json!({
            "metadata": {"name": "a,b", "namespace": "ns"},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Running"}
        });
        let yes = [
            "spec.nodeName=node-1",
            "spec.nodeName==node-1,status.phase!=Pending",
            "metadata.name=a\\,b",
            "",
        ];
        for text in yes {
            assert!(FieldSelector::parse(text).expect(text).matches(&pod), "{text}");
        }
        for text in [
            "spec.nodeName=node-2",
            "metadata.namespace!=ns",
            "spec.hostNetwork=true",
        ] {
            assert!(!FieldSelector::parse(text).expect(text).matches(&pod), "{text}");
        }
        let err = FieldSelector::parse("spec.foo=bar")
            .expect("syntax is fine")
            .check(POD_FIELDS)
            .expect_err("unsupported field");
        assert_eq!(err, "field label not supported: spec.foo");
        assert!(
            FieldSelector::parse("spec.hostNetwork=false")
                .expect("valid")
                .matches(&pod),
            "unset hostNetwork reads as false"
        );
        assert!(FieldSelector::parse("spec.nodeName").is_err());
    }
}
