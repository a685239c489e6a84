//! Strict decoding of the compact JWS pieces: canonical base64url and JSON
//! objects that refuse duplicate member names (RFC 8725 §3.12: two parsers
//! that pick different duplicates are an attack surface).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// Decodes base64url without padding, refusing non-canonical trailing bits.
pub fn b64(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

/// [`b64`] into `buf` when the decoded bytes surely fit (a header, a
/// signature: no allocation on the miss path), else into a new `Vec`. The
/// same engine, so the same canonical-only rules.
pub fn b64_in<'b>(segment: &str, buf: &'b mut [u8]) -> Option<Cow<'b, [u8]>> {
    if base64::decoded_len_estimate(segment.len()) > buf.len() {
        return b64(segment).map(Cow::Owned);
    }
    let n = URL_SAFE_NO_PAD.decode_slice(segment, buf).ok()?;
    Some(Cow::Borrowed(&buf[..n]))
}

/// A header member the parser reads: absent, a string, or something else
/// (which the caller refuses by name).
#[derive(Debug, Default, PartialEq)]
pub enum Text {
    #[default]
    Absent,
    Str(String),
    NotStr,
}

/// The JOSE header, read without building a map: the members this
/// implementation reads are kept; every member, read or not, is strict JSON
/// with no duplicate name at any depth (as [`strict_object`] would refuse).
#[derive(Debug, Default)]
pub struct Header {
    pub alg: Text,
    pub kid: Text,
    pub typ: Text,
    pub crit: Option<Value>,
    pub enc: bool,
}

/// Parses a JOSE header (a JSON object), refusing duplicate keys at any depth.
pub fn header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        // Not an object at all: the general parser says why, in its words.
        return strict_object(bytes).and(Err("not a JSON object".into()));
    }
    serde_json::from_slice::<Header>(bytes).map_err(|e| format!("invalid JSON: {e}"))
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut h = Header::default();
        // Names other than the five read: rare, so no allocation unless
        // present; a set, not a list, so a header of a thousand names costs
        // n log n comparisons, not n² (the header is attacker-controlled).
        let mut others: BTreeSet<Cow<'de, str>> = BTreeSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let fresh = match &*key {
                "alg" | "kid" | "typ" => {
                    let v = map.next_value_seed(TextSeed)?;
                    let slot = match &*key {
                        "alg" => &mut h.alg,
                        "kid" => &mut h.kid,
                        _ => &mut h.typ,
                    };
                    let fresh = *slot == Text::Absent;
                    *slot = v;
                    fresh
                }
                "crit" => {
                    let Strict(v) = map.next_value()?;
                    h.crit.replace(v).is_none()
                }
                "enc" => {
                    let Strict(_) = map.next_value()?;
                    !std::mem::replace(&mut h.enc, true)
                }
                _ => {
                    let Strict(_) = map.next_value()?;
                    others.insert(key.clone())
                }
            };
            if !fresh {
                return Err(duplicate(&key));
            }
        }
        Ok(h)
    }
}

fn duplicate<E: de::Error>(key: &str) -> E {
    let key = super::truncate(key, super::ECHO_MAX);
    E::custom(format_args!("duplicate member {key:?}"))
}

/// A member name, borrowed from the input unless it had escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A header member's value as [`Text`]; a non-string is still checked strictly.
struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Text;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Text, D::Error> {
        match d.deserialize_any(StrictVisitor)? {
            Value::String(s) => Ok(Text::Str(s)),
            _ => Ok(Text::NotStr),
        }
    }
}

/// Parses a JSON object, refusing duplicate keys at any depth.
pub fn strict_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            // One search of the map for both the check and the insert.
            match out.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(v);
                }
                Entry::Occupied(taken) => return Err(duplicate(taken.key())),
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(strict_object(br#"{"a":1,"a":2}"#).is_err());
        assert!(strict_object(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(strict_object(br#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert_eq!(
            strict_object(br#"{"a":1,"b":[1,2.5,"x",null,true]}"#).map(|m| m.len()),
            Ok(2)
        );
    }

    #[test]
    fn non_objects_and_garbage_are_refused() {
        assert!(strict_object(b"[1]").is_err());
        assert!(strict_object(b"\"x\"").is_err());
        assert!(strict_object(b"{").is_err());
        assert!(strict_object(b"{} trailing").is_err());
    }

    #[test]
    fn the_header_reader_is_as_strict_as_the_map() {
        let ok = header(br#"{"alg":"RS256","kid":"k1","typ":"JWT","x":{"y":[1,{"z":null}]}}"#).expect("valid");
        assert_eq!(
            (ok.alg, ok.kid, ok.typ, ok.crit, ok.enc),
            (
                Text::Str("RS256".into()),
                Text::Str("k1".into()),
                Text::Str("JWT".into()),
                None,
                false
            )
        );
        let odd = header(br#"{"alg":256,"kid":null,"enc":"A128GCM","crit":["b64"]}"#).expect("valid JSON");
        assert_eq!((odd.alg, odd.kid, odd.typ), (Text::NotStr, Text::NotStr, Text::Absent));
        assert!(odd.enc && odd.crit.is_some());
        // Every input the map parser refuses, the header reader refuses with
        // the same words (duplicates read or not, escaped, nested; garbage).
        for text in [
            &br#"{"alg":"HS256","alg":"none"}"#[..],
            br#"{"alg":"HS256","al\u0067":"none"}"#,
            br#"{"x":1,"x":2,"alg":"RS256"}"#,
            br#"{"crit":["a"],"crit":["b"]}"#,
            br#"{"enc":1,"enc":1}"#,
            br#"{"alg":"RS256","x":{"b":1,"b":1}}"#,
            br#"{"alg":{"b":1,"b":1}}"#,
            br#"{"alg":"RS256"} trailing"#,
            b"{",
            b"[1]",
            b"\"x\"",
            b"",
            b"  7",
        ] {
            let want = strict_object(text).expect_err("the map parser refuses it");
            let got = header(text).expect_err("the header reader refuses it");
            assert_eq!(got, want, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn many_unread_names_are_all_checked_for_duplicates() {
        let names: Vec<String> = (0..2000).map(|i| format!("\"n{i}\":0")).collect();
        let many = format!("{{\"alg\":\"RS256\",{}}}", names.join(","));
        assert_eq!(
            header(many.as_bytes()).expect("distinct names").alg,
            Text::Str("RS256".into())
        );
        let again = format!("{{\"alg\":\"RS256\",{},\"n0\":1}}", names.join(","));
        assert_eq!(
            header(again.as_bytes()).expect_err("n0 twice"),
            strict_object(again.as_bytes()).expect_err("n0 twice")
        );
    }

    #[test]
    fn big_segments_decode_off_the_stack() {
        let mut buf = [0u8; 4];
        assert_eq!(b64_in("YWJj", &mut buf).as_deref(), Some(&b"abc"[..]));
        assert!(matches!(b64_in("YWJjZA", &mut buf), Some(Cow::Owned(v)) if v == b"abcd"));
        assert_eq!(b64_in("YR", &mut buf), None, "canonical only, on the stack too");
        assert_eq!(b64_in("YWJjZR", &mut buf), None, "and off it");
    }

    #[test]
    fn base64_is_canonical_only() {
        assert_eq!(b64("YQ"), Some(b"a".to_vec()));
        assert_eq!(b64("YQ=="), None, "padding is not base64url-no-pad");
        assert_eq!(b64("YR"), None, "non-zero trailing bits are non-canonical");
        assert_eq!(b64("Y+"), None, "standard alphabet is refused");
        assert_eq!(b64("Y Q"), None);
    }
}
