//! The verified-token cache: a busy node checks each token's signature once.
//!
//! Keyed by a randomly seeded 64-bit hash of the token; each entry also holds
//! the token text and a hit compares it, so a hash collision (even a crafted
//! one) is only a cache miss, never someone else's identity. Entries expire
//! at the token's `exp` (never later), at `max_ttl`, or when the key that
//! verified them leaves the JWKS.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::TokenCacheConfig;
use crate::identity::{IdentityError, KubeUser};
use crate::token::VerifiedToken;

pub struct Entry {
    token: Box<str>,
    pub verified: VerifiedToken,
    /// The Kubernetes user this token stands for, worked out on first need
    /// (`kubernetes_rbac` rules) and kept as long as the entry.
    pub kube_user: OnceLock<Result<Arc<KubeUser>, IdentityError>>,
}

struct ExpireAtExp {
    max_ttl: Duration,
}

impl moka::Expiry<u64, Arc<Entry>> for ExpireAtExp {
    fn expire_after_create(&self, _key: &u64, value: &Arc<Entry>, _created_at: Instant) -> Option<Duration> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let left = Duration::from_secs(value.verified.exp).saturating_sub(now);
        Some(left.min(self.max_ttl))
    }
}

pub struct TokenCache {
    cache: moka::sync::Cache<u64, Arc<Entry>>,
    hasher: foldhash::quality::RandomState,
}

impl TokenCache {
    pub fn new(cfg: &TokenCacheConfig) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.max_entries)
                .expire_after(ExpireAtExp { max_ttl: cfg.max_ttl })
                .build(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    fn key(&self, token: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(token.as_bytes());
        h.finish()
    }

    /// The cached verification of exactly this token, if still valid.
    pub fn get(&self, token: &str) -> Option<Arc<Entry>> {
        let key = self.key(token);
        let entry = self.cache.get(&key)?;
        if *entry.token != *token {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if entry.verified.exp <= now || entry.verified.key.is_revoked() {
            self.cache.invalidate(&key);
            return None;
        }
        Some(entry)
    }

    pub fn insert(&self, token: &str, verified: VerifiedToken) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            token: token.into(),
            verified,
            kube_user: OnceLock::new(),
        });
        self.cache.insert(self.key(token), entry.clone());
        entry
    }

    pub fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}
