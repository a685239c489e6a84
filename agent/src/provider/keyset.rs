//! A provider's verification keys: parsed once from the JWKS, each pinned to
//! exactly one algorithm (RFC 8725 §3.1), each checked against the crypto
//! backend at load time so an unusable key fails the fetch, not a request.
//! Verification goes through jsonwebtoken's aws-lc-rs backend, which rebuilds
//! the public key per call (about 2.6 µs of an RS256 verify; see the benches).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Most keys taken from one JWKS; more is a misbehaving provider.
pub const MAX_KEYS: usize = 64;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    decoding: DecodingKey,
    /// The public parameters, to recognise the same key across refreshes.
    fingerprint: String,
    /// Set when the key leaves the JWKS: tokens it verified leave the cache.
    revoked: AtomicBool,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    /// Checks the base64url `signature` over `message` with this key's one algorithm.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        jsonwebtoken::crypto::verify(signature, message, &self.decoding, self.alg).unwrap_or(false)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// A key for HS* tokens made from a configured shared secret.
    pub fn from_secret(secret: &[u8], alg: Algorithm) -> Result<Self, String> {
        let decoding = DecodingKey::from_secret(secret).map_err(|e| e.to_string())?;
        check_usable(alg, &decoding)?;
        Ok(Self {
            kid: None,
            alg,
            decoding,
            fingerprint: String::new(),
            revoked: AtomicBool::new(false),
        })
    }
}

/// Fails early, at JWKS load, for a key the crypto backend cannot use with `alg`.
fn check_usable(alg: Algorithm, key: &DecodingKey) -> Result<(), String> {
    let provider = CryptoProvider::try_get_default().ok_or("no crypto provider is built in")?;
    (provider.verifier_factory)(&alg, key)
        .map(drop)
        .map_err(|e| format!("key unusable for {alg:?}: {e}"))
}

/// The keys of one provider at one point in time.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
    by_kid: HashMap<String, usize>,
    /// When these keys were fetched from the provider (not loaded from disk).
    pub fetched_at: Option<SystemTime>,
    /// Keys the JWKS listed that were skipped, with the reason, for logs.
    pub skipped: Vec<String>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn by_kid(&self, kid: &str) -> Option<&Arc<Key>> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    /// Keys usable for `alg`, for tokens that name no `kid`.
    pub fn for_alg(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<Key>> {
        self.keys.iter().filter(move |k| k.alg == alg)
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    /// Marks the keys of `previous` that this set no longer holds as revoked,
    /// so tokens they verified leave the cache. Call only once this set is
    /// accepted: a refused fetch must not revoke the keys still in use.
    pub fn revoke_missing_from(&self, previous: &KeySet) {
        for old in &previous.keys {
            if !self.keys.iter().any(|k| Arc::ptr_eq(k, old)) {
                old.revoked.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Parses a JWKS document. Unusable keys are skipped with a reason; a
    /// document that is not a JWKS at all is an error. Keys already held in
    /// `previous` are reused (same `Arc`, so cache entries stay valid).
    pub fn parse(
        doc: &[u8],
        allowed: &[Algorithm],
        previous: Option<&KeySet>,
        fetched_at: Option<SystemTime>,
    ) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(doc).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let Some(list) = value.get("keys").and_then(Value::as_array) else {
            return Err("JWKS has no \"keys\" array".into());
        };
        let mut set = KeySet {
            fetched_at,
            ..KeySet::default()
        };
        for (i, raw) in list.iter().enumerate() {
            if set.keys.len() >= MAX_KEYS {
                set.skipped.push(format!("keys past the first {MAX_KEYS} ignored"));
                break;
            }
            match parse_key(raw, allowed) {
                Ok((kid, alg, fingerprint, dk)) => {
                    if let Some(kid) = &kid
                        && set.by_kid.contains_key(kid)
                    {
                        // Two keys under one kid make the choice ambiguous: keep neither's
                        // successor, the first wins, and say so.
                        set.skipped.push(format!("key {i}: duplicate kid {kid:?}"));
                        continue;
                    }
                    let reused = previous.and_then(|p| {
                        p.keys
                            .iter()
                            .find(|k| k.fingerprint == fingerprint && k.alg == alg && k.kid == kid)
                            .cloned()
                    });
                    let key = match reused {
                        Some(k) => k,
                        None => match check_usable(alg, &dk) {
                            Ok(()) => Arc::new(Key {
                                kid: kid.clone(),
                                alg,
                                decoding: dk,
                                fingerprint,
                                revoked: AtomicBool::new(false),
                            }),
                            Err(why) => {
                                set.skipped.push(format!("key {i}: {why}"));
                                continue;
                            }
                        },
                    };
                    if let Some(kid) = kid {
                        set.by_kid.insert(kid, set.keys.len());
                    }
                    set.keys.push(key);
                }
                Err(why) => set.skipped.push(format!("key {i}: {why}")),
            }
        }
        Ok(set)
    }
}

/// Decides one key's algorithm from the JWK itself: its `alg` when present,
/// else the only sensible one for its type and curve. The token header never
/// chooses.
fn parse_key(raw: &Value, allowed: &[Algorithm]) -> Result<(Option<String>, Algorithm, String, DecodingKey), String> {
    let obj = raw.as_object().ok_or("not a JSON object")?;
    let get = |k: &str| obj.get(k).and_then(Value::as_str);
    if let Some(u) = obj.get("use")
        && u.as_str() != Some("sig")
    {
        return Err(format!("use {u} is not \"sig\""));
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or("key_ops is not an array")?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Err("key_ops lacks \"verify\"".into());
        }
    }
    let kty = get("kty").ok_or("no kty")?;
    let implied = match (kty, get("crv")) {
        ("RSA", _) => Algorithm::RS256,
        ("EC", Some("P-256")) => Algorithm::ES256,
        ("EC", Some("P-384")) => Algorithm::ES384,
        ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
        ("oct", _) => return Err("symmetric keys are never taken from a JWKS".into()),
        (kty, crv) => return Err(format!("unsupported key type {kty} / curve {crv:?}")),
    };
    let alg = match obj.get("alg") {
        None => implied,
        Some(Value::String(a)) => {
            let alg: Algorithm = a.parse().map_err(|_| format!("unknown alg {a:?}"))?;
            let fits = matches!(
                (kty, alg),
                ("RSA", Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
                    | ("RSA", Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512)
            ) || alg == implied;
            if !fits {
                return Err(format!("alg {a} does not fit a {kty} key"));
            }
            alg
        }
        Some(other) => return Err(format!("alg {other} is not a string")),
    };
    if !allowed.contains(&alg) {
        return Err(format!("alg {alg:?} is not in the provider's allowlist"));
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    // Only the public parameters: a JWKS that leaks a private key still only verifies.
    let mut public = serde_json::Map::new();
    for k in ["kty", "crv", "n", "e", "x", "y"] {
        if let Some(v) = obj.get(k) {
            public.insert(k.into(), v.clone());
        }
    }
    let fingerprint = Value::Object(public.clone()).to_string();
    let jwk: Jwk = serde_json::from_value(Value::Object(public)).map_err(|e| format!("bad key parameters: {e}"))?;
    let dk = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key parameters: {e}"))?;
    Ok((kid, alg, fingerprint, dk))
}
