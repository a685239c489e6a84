//! Strict decoding of the compact JWS pieces: canonical base64url and JSON
//! objects that refuse duplicate member names (RFC 8725 §3.12: two parsers
//! that pick different duplicates are an attack surface).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Decodes base64url without padding, refusing non-canonical trailing bits.
pub fn b64(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
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
            if out.contains_key(&key) {
                let key = super::truncate(&key, super::ECHO_MAX);
                return Err(de::Error::custom(format_args!("duplicate member {key:?}")));
            }
            out.insert(key, v);
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
    fn base64_is_canonical_only() {
        assert_eq!(b64("YQ"), Some(b"a".to_vec()));
        assert_eq!(b64("YQ=="), None, "padding is not base64url-no-pad");
        assert_eq!(b64("YR"), None, "non-zero trailing bits are non-canonical");
        assert_eq!(b64("Y+"), None, "standard alphabet is refused");
        assert_eq!(b64("Y Q"), None);
    }
}
