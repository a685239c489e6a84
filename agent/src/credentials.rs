//! Outbound tokens: the token an `egress` rule says a workload's calls
//! carry, obtained once per (caller, token) for the whole node, shared by
//! every connection, and refreshed ahead of its expiry.
//!
//! - A hit (a token that is still usable) costs a map lookup under a short
//!   lock and a reference-count increment; past [`REFRESH_AT`] of its
//!   lifetime one background task fetches the next one while the current
//!   one keeps serving.
//! - A miss is fetched once however many requests wait for it (single
//!   flight); a failure is shared with them and remembered for
//!   [`RETRY_AFTER`], so an API outage is one request per second per
//!   token, not one per call. Nothing is ever sent with a token that is
//!   about to expire ([`EXPIRY_MARGIN`]); the caller answers 502 instead.
//!
//! Where tokens come from is `credentials/fetch.rs` (TokenRequest, client
//! credentials, token exchange). Which rule applies and attaching the header
//! are the proxy's (`proxy/outbound.rs`).

mod fetch;
mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::HeaderValue;

pub use self::fetch::FetchError as CredentialError;
pub use self::metrics::CredentialMetrics;
use crate::config::EgressToken;
use crate::provider::Provider;

/// A token is replaced in the background once this share of its lifetime
/// has passed (the kubelet refreshes projected tokens at 80 % too).
const REFRESH_AT: f64 = 0.8;
/// A token this close to its expiry (or within a tenth of its lifetime, if
/// that is shorter) is not sent: it could expire in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// After a failed fetch, requests for the same token get the same error for
/// this long instead of asking again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most time one fetch (and the requests waiting for it) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Who an outbound token is for: the calling workload, as the API server
/// knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub service_account: Option<Arc<str>>,
    /// Pods: name and UID; their service-account tokens are bound to the pod.
    pub pod: Option<(Arc<str>, Arc<str>)>,
}

/// One token the node keeps: for a subject, of a kind. Built once per
/// (workload, rule) when a configuration is applied, so a request looks it
/// up without building anything.
#[derive(Debug)]
pub struct Want {
    key: Arc<str>,
    pub subject: Subject,
    pub token: EgressToken,
    /// The node's slot for `key`, found on first use: later requests skip
    /// the map.
    slot: std::sync::OnceLock<Arc<Slot>>,
}

impl Want {
    pub fn new(subject: Subject, token: &EgressToken) -> Self {
        // Client credentials are the client's, whoever calls; the other
        // kinds are the calling pod's own. The key names everything that
        // changes the token, so a changed rule never reuses an old one.
        let who = match token {
            EgressToken::ClientCredentials(_) => String::new(),
            _ => {
                let (pod, uid) = subject.pod.as_ref().map_or(("", ""), |(n, u)| (n, u));
                let sa = subject.service_account.as_deref().unwrap_or("");
                format!("{}/{sa}/{pod}/{uid}", subject.namespace)
            }
        };
        let what = serde_json::to_string(token).unwrap_or_default();
        Self {
            key: format!("{}|{who}|{what}", token.kind()).into(),
            subject,
            token: token.clone(),
            slot: std::sync::OnceLock::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// An obtained token.
pub struct Token {
    /// `Bearer …`, marked sensitive (never logged by hyper or us).
    header: HeaderValue,
    obtained: Instant,
    expires: Instant,
    /// `expires` minus the margin: sent until then.
    usable_until: Instant,
}

impl Token {
    fn new(token: &str, lifetime: Duration) -> Result<Self, CredentialError> {
        let mut header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| CredentialError::NotAHeader)?;
        header.set_sensitive(true);
        let now = Instant::now();
        let expires = now + lifetime;
        Ok(Self {
            header,
            obtained: now,
            expires,
            usable_until: expires - EXPIRY_MARGIN.min(lifetime / 10),
        })
    }

    fn usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }

    fn refresh_due(&self, now: Instant) -> bool {
        now >= self.obtained + (self.expires - self.obtained).mul_f64(REFRESH_AT)
    }
}

/// How a request's token was found, for metrics and the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

#[derive(Default)]
pub struct Slot {
    current: ArcSwapOption<Token>,
    /// Held while fetching (single flight); keeps the last failure.
    flight: tokio::sync::Mutex<Option<(Instant, Arc<CredentialError>)>>,
    refreshing: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Slot")
            .field("held", &self.current.load().is_some())
            .finish_non_exhaustive()
    }
}

/// The node's outbound tokens. Cheap to clone.
#[derive(Clone)]
pub struct Credentials(Arc<Inner>);

struct Inner {
    kube: Option<kube::Client>,
    slots: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
    metrics: CredentialMetrics,
}

impl Credentials {
    /// `kube` is the agent's API client (TokenRequest); without it,
    /// service-account and exchange tokens fail (validation prevents that).
    pub fn new(kube: Option<kube::Client>, metrics: CredentialMetrics) -> Self {
        Self(Arc::new(Inner {
            kube,
            slots: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    fn slot(&self, want: &Want) -> Arc<Slot> {
        want.slot.get_or_init(|| self.slot_for(&want.key)).clone()
    }

    fn slot_for(&self, key: &Arc<str>) -> Arc<Slot> {
        let mut slots = self.0.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slots.get(&**key) {
            return s.clone();
        }
        let s = Arc::new(Slot::default());
        slots.insert(key.clone(), s.clone());
        self.0.metrics.held.set(slots.len() as i64);
        s
    }

    /// The `Authorization` value for `want`: the held token, or one fetched
    /// now. `provider` is the rule's provider (client credentials, exchange).
    pub async fn authorization(
        &self,
        want: &Arc<Want>,
        provider: Option<&Arc<Provider>>,
    ) -> Result<(HeaderValue, Lookup), Arc<CredentialError>> {
        let slot = self.slot(want);
        let now = Instant::now();
        if let Some(t) = &*slot.current.load()
            && t.usable(now)
        {
            if t.refresh_due(now) && !slot.refreshing.swap(true, Ordering::AcqRel) {
                self.refresh_in_background(slot.clone(), want.clone(), provider.cloned());
            }
            self.0.metrics.hits.inc();
            return Ok((t.header.clone(), Lookup::Hit));
        }
        self.0.metrics.misses.inc();
        let mut failure = slot.flight.lock().await;
        // Whoever held the flight before may have fetched it.
        if let Some(t) = &*slot.current.load()
            && t.usable(Instant::now())
        {
            return Ok((t.header.clone(), Lookup::Miss));
        }
        if let Some((at, e)) = &*failure
            && at.elapsed() < RETRY_AFTER
        {
            return Err(e.clone());
        }
        match self.fetch(want, provider).await {
            Ok(t) => {
                let header = t.header.clone();
                slot.current.store(Some(Arc::new(t)));
                *failure = None;
                Ok((header, Lookup::Miss))
            }
            Err(e) => {
                let e = Arc::new(e);
                *failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Fetches the next token while the current one keeps serving; a
    /// failure leaves the current one in place (requests fetch in the
    /// foreground once it is no longer usable).
    fn refresh_in_background(&self, slot: Arc<Slot>, want: Arc<Want>, provider: Option<Arc<Provider>>) {
        let this = self.clone();
        tokio::spawn(async move {
            let _flight = slot.flight.lock().await;
            match this.fetch(&want, provider.as_ref()).await {
                Ok(t) => slot.current.store(Some(Arc::new(t))),
                Err(e) => {
                    tracing::warn!(workload = %want.subject.workload, kind = want.token.kind(), error = %e,
                        "refreshing an outbound token failed; the current one serves until it expires");
                }
            }
            slot.refreshing.store(false, Ordering::Release);
        });
    }

    async fn fetch(&self, want: &Want, provider: Option<&Arc<Provider>>) -> Result<Token, CredentialError> {
        let began = Instant::now();
        let result = tokio::time::timeout(
            FETCH_TIMEOUT,
            fetch::obtain(self.0.kube.as_ref(), want, provider.map(|p| &**p)),
        )
        .await
        .unwrap_or(Err(CredentialError::Timeout(FETCH_TIMEOUT)))
        .and_then(|(token, lifetime)| Token::new(&token, lifetime));
        let m = &self.0.metrics;
        m.fetch_seconds.observe(began.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        m.fetched(want.token.kind(), outcome);
        if let Err(e) = &result {
            tracing::warn!(workload = %want.subject.workload, kind = want.token.kind(), error = %e,
                "cannot obtain an outbound token");
        }
        result
    }

    /// Forgets the tokens of wants that are gone (workloads or rules that
    /// left the configuration).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut slots = self.0.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|k, _| keep(k));
        self.0.metrics.held.set(slots.len() as i64);
    }
}

#[cfg(test)]
mod tests;
