//! A provider's verification keys: parsed once from the JWKS, each pinned to
//! exactly one algorithm (RFC 8725 §3.1), each built into an aws-lc-rs key at
//! load time, so an unusable key fails the fetch, not a request, and a
//! verification does no key parsing: an RSA key keeps its Montgomery context,
//! an EC key its decoded, on-curve point (see the benches).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, DecodingKeyKind};
use serde_json::Value;

use crate::config::Algorithm;

/// Most keys taken from one JWKS; more is a misbehaving provider.
pub const MAX_KEYS: usize = 64;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    verifier: Verifier,
    /// The public parameters, to recognise the same key across refreshes.
    fingerprint: String,
    /// Set when the key leaves the JWKS: tokens it verified leave the cache.
    revoked: AtomicBool,
}

/// A key ready to verify with its one algorithm.
enum Verifier {
    /// RSA (PKCS#1 v1.5 or PSS), ECDSA (fixed-length P1363 signatures) or Ed25519.
    Public(ParsedPublicKey),
    /// HS*: a configured shared secret (constant-time comparison).
    Hmac(Box<hmac::Key>),
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
    /// Checks the decoded `signature` over `message` with this key's one algorithm.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Public(key) => key.verify_sig(message, signature).is_ok(),
            Verifier::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
        }
    }

    /// The same key material, algorithm and kid (a refresh or reload that changed nothing).
    pub fn same_key(&self, other: &Key) -> bool {
        self.alg == other.alg && self.kid == other.kid && self.fingerprint == other.fingerprint
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// A key for HS* tokens made from a configured shared secret.
    pub fn from_secret(secret: &[u8], alg: Algorithm) -> Result<Self, String> {
        let digest = match alg {
            Algorithm::HS256 => hmac::HMAC_SHA256,
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            other => return Err(format!("{other} is not an HMAC algorithm")),
        };
        if secret.is_empty() {
            return Err("the shared secret is empty".into());
        }
        // A digest, not the secret: enough to tell a rotated secret from the same one.
        let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            kid: None,
            alg,
            verifier: Verifier::Hmac(Box::new(hmac::Key::new(digest, secret))),
            fingerprint,
            revoked: AtomicBool::new(false),
        })
    }
}

/// RSA parameters for `alg`, with aws-lc-rs's 2048–8192-bit modulus range.
fn rsa_params(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// Builds the aws-lc-rs key for `alg` from the JWK's decoded public parameters,
/// failing early, at JWKS load, for a key that cannot verify `alg`.
fn build_verifier(alg: Algorithm, key: &DecodingKey) -> Result<Verifier, String> {
    let unusable = |why: &dyn std::fmt::Display| format!("key unusable for {alg}: {why}");
    let parsed = match (alg, key.kind()) {
        (_, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            let params = rsa_params(alg).ok_or_else(|| unusable(&"not an RSA algorithm"))?;
            // The verify would refuse every token of a key outside the range; refuse the key instead.
            let bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
            let top = n.iter().find(|&&b| b != 0).map_or(0, |b| b.leading_zeros() as usize);
            let bits = bits.saturating_sub(top);
            if !(2048..=8192).contains(&bits) {
                return Err(unusable(&format!("a {bits}-bit RSA modulus is outside 2048–8192 bits")));
            }
            // e = 1 makes every "signature" its own message; an even e is no
            // RSA key at all. Real keys use 65537 (or 3).
            let e_value = e
                .iter()
                .skip_while(|&&b| b == 0)
                .try_fold(0u64, |acc, &b| acc.checked_mul(256).map(|a| a | u64::from(b)));
            match e_value {
                Some(v) if v >= 3 && v % 2 == 1 => {}
                _ => return Err(unusable(&"the RSA public exponent must be odd and at least 3")),
            }
            RsaPublicKeyComponents { n: &n[..], e: &e[..] }
                .to_parsed_public_key(params)
                .map_err(|e| unusable(&e))?
        }
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
            ParsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).map_err(|e| unusable(&e))?
        }
        (Algorithm::ES384, DecodingKeyKind::SecretOrDer(point)) => {
            ParsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, point).map_err(|e| unusable(&e))?
        }
        (Algorithm::ES512, DecodingKeyKind::SecretOrDer(point)) => {
            ParsedPublicKey::new(&sig::ECDSA_P521_SHA512_FIXED, point).map_err(|e| unusable(&e))?
        }
        (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(raw)) => {
            ParsedPublicKey::new(&sig::ED25519, raw).map_err(|e| unusable(&e))?
        }
        _ => return Err(unusable(&"the key type does not fit the algorithm")),
    };
    Ok(Verifier::Public(parsed))
}

/// The keys of one provider at one point in time.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
    /// Looked up on every request (a cache hit checks its key is still
    /// held): foldhash, seeded per process, not SipHash.
    by_kid: foldhash::HashMap<String, usize>,
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
                        None => match build_verifier(alg, &dk) {
                            Ok(verifier) => Arc::new(Key {
                                kid: kid.clone(),
                                alg,
                                verifier,
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
        ("EC", Some("P-521")) => Algorithm::ES512,
        ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
        ("oct", _) => return Err("symmetric keys are never taken from a JWKS".into()),
        (kty, crv) => return Err(format!("unsupported key type {kty} / curve {crv:?}")),
    };
    let alg = match obj.get("alg") {
        None => implied,
        Some(Value::String(a)) => {
            let alg = Algorithm::parse(a).ok_or_else(|| format!("unknown alg {a:?}"))?;
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
        return Err(format!("alg {alg} is not in the provider's allowlist"));
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
