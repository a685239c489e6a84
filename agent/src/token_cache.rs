//! The verified-token cache: a busy node checks each token's signature once.
//!
//! Keyed by a randomly seeded 64-bit hash of the token; each entry also holds
//! the token text and a hit compares it, so a hash collision (even a crafted
//! one) is only a cache miss, never someone else's identity. Entries expire
//! at the token's `exp` (never later), at `max_ttl`, or when the key that
//! verified them leaves the JWKS.
//!
//! A cache of capacity 0 (`max_entries: 0`) keeps nothing: a verification is
//! handed to its request and not inserted at all (moka would admit it and
//! evict it at its next maintenance, a cost for nothing, and meanwhile it
//! could still answer for the token).

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::TokenCacheConfig;
use crate::identity::{IdentityError, KubeUser};
use crate::token::VerifiedToken;

pub struct Entry {
    /// The token's text, compared on a hit; empty when the cache keeps nothing.
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
    /// Keyed by the token's (seeded) hash, which moka hashes again to
    /// find a shard: the fast hasher is enough for that.
    cache: moka::sync::Cache<u64, Arc<Entry>, foldhash::fast::RandomState>,
    hasher: foldhash::quality::RandomState,
    /// `max_entries > 0`.
    keeps: bool,
}

/// Where a token lives in the cache: its hash, computed once per request for
/// both the lookup and, on a miss, the insert (a 1 KB token hashes in ~300
/// instructions).
#[derive(Clone, Copy)]
pub struct Slot(u64);

impl TokenCache {
    pub fn new(cfg: &TokenCacheConfig) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(cfg.max_entries)
                .expire_after(ExpireAtExp { max_ttl: cfg.max_ttl })
                .build_with_hasher(foldhash::fast::RandomState::default()),
            hasher: foldhash::quality::RandomState::default(),
            keeps: cfg.max_entries > 0,
        }
    }

    pub fn slot(&self, token: &str) -> Slot {
        let mut h = self.hasher.build_hasher();
        h.write(token.as_bytes());
        Slot(h.finish())
    }

    /// The cached verification of exactly this token, if still valid.
    pub fn get(&self, token: &str) -> Option<Arc<Entry>> {
        self.get_at(self.slot(token), token)
    }

    /// [`Self::get`] with the token's slot already computed.
    pub fn get_at(&self, slot: Slot, token: &str) -> Option<Arc<Entry>> {
        if !self.keeps {
            return None;
        }
        let key = slot.0;
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
        self.insert_at(self.slot(token), token, verified)
    }

    /// [`Self::insert`] with the token's slot already computed.
    pub fn insert_at(&self, slot: Slot, token: &str, verified: VerifiedToken) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            token: if self.keeps { token.into() } else { Box::default() },
            verified,
            kube_user: OnceLock::new(),
        });
        if self.keeps {
            self.cache.insert(slot.0, entry.clone());
        }
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
