//! The development OpenID provider behind `nodeward-dev-idp`: an in-memory key
//! ring (RS256, ES256, EdDSA), token minting with arbitrary claims and headers,
//! key rotation, fault injection and fetch counters.
//!
//! It signs whatever it is asked to sign, so it exists for demos, integration
//! tests and benchmarks only and must never stand in for a real provider.
//! The HTTP side lives in `server`, the command line in `cli`.

mod cli;
mod keys;
mod server;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub use cli::{DevIdpArgs, DevIdpCommand, MintArgs, run_cli};
pub use server::serve;

use keys::{Alg, SigningKey, b64};

const DEFAULT_TTL: Duration = Duration::from_secs(300);
const DEFAULT_SUBJECT: &str = "dev-user";

/// Everything that can go wrong in the dev IdP, its server and its CLI.
#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("generating a {alg} signing key failed")]
    KeyGeneration { alg: &'static str },
    #[error("the generated {alg} public key has an unexpected encoding ({len} bytes)")]
    PublicKeyEncoding { alg: &'static str, len: usize },
    #[error("the system random number generator failed while generating a key id")]
    Random,
    #[error("signing with {alg} key {kid} failed")]
    Signing { alg: &'static str, kid: String },
    #[error("unsupported alg {alg:?}: expected one of RS256, ES256, EdDSA")]
    UnsupportedAlg { alg: String },
    #[error("serializing the {what} as JSON failed")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "refusing to listen on non-loopback address {addr}: the dev IdP mints valid tokens \
         for anyone who asks; pass --allow-non-loopback if you really mean it"
    )]
    NonLoopback { addr: SocketAddr },
    #[error("--listen ADDR is required to run the dev IdP server")]
    MissingListen,
    #[error("binding {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the listener's local address failed")]
    LocalAddr {
        #[source]
        source: std::io::Error,
    },
    #[error("installing the {signal} handler failed")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --claim {arg:?}: expected KEY=VALUE with a non-empty KEY")]
    InvalidClaim { arg: String },
    #[error("--claims-json must be a JSON object")]
    InvalidClaimsJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("POST {url} failed")]
    MintHttp {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("POST {url} answered HTTP {status}: {body}")]
    MintStatus { url: String, status: u16, body: String },
    #[error("POST {url} answered a body without a token")]
    MintResponse {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What to mint. Every field is optional so `{}` mints a default RS256 token.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// "RS256" (default), "ES256" or "EdDSA": signs with the current key of that type.
    #[serde(default)]
    pub alg: Option<String>,
    /// Lifetime, `exp = now + ttl`; default 300s. Humantime in JSON ("5m").
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Merged over `iss`, `iat`, `exp`, `sub = "dev-user"`; a JSON null removes the claim.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Merged over `{alg, typ: "JWT", kid}`; a JSON null removes the field.
    /// The signature is always made with the key picked by `alg`.
    #[serde(default)]
    pub header: Map<String, Value>,
}

/// Counters of documents served over HTTP (direct method calls do not count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevIdpStats {
    pub discovery_fetches: u64,
    pub jwks_fetches: u64,
}

/// Current keys plus, after rotations with overlap, the retired ones that are
/// still published so tokens they signed keep verifying.
struct KeyRing {
    rs256: Arc<SigningKey>,
    es256: Arc<SigningKey>,
    eddsa: Arc<SigningKey>,
    retired: Vec<Arc<SigningKey>>,
}

impl KeyRing {
    fn generate() -> Result<Self, DevIdpError> {
        let generate = |alg| SigningKey::generate(alg).map(Arc::new);
        Ok(Self {
            rs256: generate(Alg::Rs256)?,
            es256: generate(Alg::Es256)?,
            eddsa: generate(Alg::EdDsa)?,
            retired: Vec::new(),
        })
    }

    fn current(&self, alg: Alg) -> &Arc<SigningKey> {
        match alg {
            Alg::Rs256 => &self.rs256,
            Alg::Es256 => &self.es256,
            Alg::EdDsa => &self.eddsa,
        }
    }

    /// In `Alg::ALL` order, which is the order they appear in the JWKS.
    fn current_keys(&self) -> impl Iterator<Item = &Arc<SigningKey>> {
        Alg::ALL.into_iter().map(|alg| self.current(alg))
    }
}

/// A development OpenID provider. Cheap to share as `Arc<DevIdp>`.
pub struct DevIdp {
    issuer: String,
    ring: RwLock<KeyRing>,
    discovery_fetches: AtomicU64,
    jwks_fetches: AtomicU64,
    /// Injected HTTP status for discovery and JWKS; 0 means "answer normally".
    failure: AtomicU32,
}

impl DevIdp {
    /// Generates fresh keys: one RSA-2048 (RS256), one P-256 (ES256) and one Ed25519 (EdDSA).
    pub fn new(issuer: impl Into<String>) -> Result<Self, DevIdpError> {
        Ok(Self {
            issuer: issuer.into(),
            ring: RwLock::new(KeyRing::generate()?),
            discovery_fetches: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
            failure: AtomicU32::new(0),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs a token as described by `req`; see [`MintRequest`].
    pub fn mint(&self, req: &MintRequest) -> Result<String, DevIdpError> {
        let alg = Alg::parse(req.alg.as_deref().unwrap_or(Alg::Rs256.name()))?;
        let key = self.current_key(alg);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let ttl = req.ttl.unwrap_or(DEFAULT_TTL).as_secs();

        let mut header = Map::new();
        header.insert("alg".to_owned(), Value::from(alg.name()));
        header.insert("typ".to_owned(), Value::from("JWT"));
        header.insert("kid".to_owned(), Value::from(key.kid()));
        merge_removing_nulls(&mut header, &req.header);

        let mut claims = Map::new();
        claims.insert("iss".to_owned(), Value::from(self.issuer.as_str()));
        claims.insert("sub".to_owned(), Value::from(DEFAULT_SUBJECT));
        claims.insert("iat".to_owned(), Value::from(now));
        claims.insert("exp".to_owned(), Value::from(now.saturating_add(ttl)));
        merge_removing_nulls(&mut claims, &req.claims);

        let header = serde_json::to_vec(&header).map_err(|source| DevIdpError::Serialize {
            what: "JWT header",
            source,
        })?;
        let claims = serde_json::to_vec(&claims).map_err(|source| DevIdpError::Serialize {
            what: "JWT claims",
            source,
        })?;
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        let signature = key.sign(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64(&signature)))
    }

    /// Signs arbitrary bytes with the current key for `alg` and returns the
    /// base64url signature: hostile-token tests hand-build headers and claims
    /// (duplicate members, odd encodings) that `mint` cannot express.
    pub fn sign_raw(&self, alg: &str, signing_input: &[u8]) -> Result<String, DevIdpError> {
        let key = self.current_key(Alg::parse(alg)?);
        Ok(b64(&key.sign(signing_input)?))
    }

    /// The kid of the current key for `alg`.
    pub fn current_kid(&self, alg: &str) -> Result<String, DevIdpError> {
        Ok(self.current_key(Alg::parse(alg)?).kid().to_owned())
    }

    /// Replaces the current keys with a fresh set and returns the new kids.
    /// With `keep_old` every key published so far stays in the JWKS (overlap);
    /// without it only the new keys remain.
    pub fn rotate(&self, keep_old: bool) -> Result<Vec<String>, DevIdpError> {
        // Generate outside the lock: RSA key generation takes long enough to
        // stall concurrent JWKS fetches and mints.
        let fresh = KeyRing::generate()?;
        let kids = fresh.current_keys().map(|k| k.kid().to_owned()).collect();
        let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *ring, fresh);
        if keep_old {
            ring.retired = old.current_keys().cloned().collect();
            ring.retired.extend(old.retired);
        }
        drop(ring);
        tracing::info!(?kids, keep_old, "dev-idp rotated its keys");
        Ok(kids)
    }

    /// The JWKS document (public keys only): current keys first, then retired ones.
    pub fn jwks(&self) -> Value {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<Value> = ring
            .current_keys()
            .chain(&ring.retired)
            .map(|k| k.jwk().clone())
            .collect();
        json!({ "keys": keys })
    }

    /// The discovery document served at `/.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        let base = self.issuer.trim_end_matches('/');
        let algs: Vec<&str> = Alg::ALL.into_iter().map(Alg::name).collect();
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base}/jwks"),
            "token_endpoint": format!("{base}/mint"),
            "id_token_signing_alg_values_supported": algs,
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        })
    }

    pub fn stats(&self) -> DevIdpStats {
        DevIdpStats {
            discovery_fetches: self.discovery_fetches.load(Ordering::Relaxed),
            jwks_fetches: self.jwks_fetches.load(Ordering::Relaxed),
        }
    }

    /// Makes discovery and `/jwks` answer with `status` instead of the
    /// documents until set back to `None`. A status that is not a valid HTTP
    /// status code is served as 500.
    pub fn set_failure(&self, status: Option<u16>) {
        self.failure.store(status.map_or(0, u32::from), Ordering::Relaxed);
        tracing::info!(?status, "dev-idp failure injection changed");
    }

    pub(crate) fn failure(&self) -> Option<u16> {
        match self.failure.load(Ordering::Relaxed) {
            0 => None,
            status => Some(u16::try_from(status).unwrap_or(500)),
        }
    }

    pub(crate) fn record_discovery_fetch(&self) {
        self.discovery_fetches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_jwks_fetch(&self) {
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    }

    fn current_key(&self, alg: Alg) -> Arc<SigningKey> {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(ring.current(alg))
    }
}

fn merge_removing_nulls(base: &mut Map<String, Value>, overrides: &Map<String, Value>) {
    for (name, value) in overrides {
        if value.is_null() {
            base.remove(name);
        } else {
            base.insert(name.clone(), value.clone());
        }
    }
}
