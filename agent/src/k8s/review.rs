//! Asking the API server: SubjectAccessReview (may this user do this?) and
//! TokenReview (is the pod or secret this token is bound to still there?),
//! each with a bounded per-node cache. RBAC answers are reused for
//! `allow_ttl` / `deny_ttl` (5 min / 30 s by default, the API server's
//! webhook-authorizer defaults); concurrent identical questions are asked
//! once. A review that fails or takes longer than `timeout` is an error,
//! never a stale or guessed answer: the caller fails closed. Errors are not
//! cached.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hash as _, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::metrics::KubeMetrics;
use crate::config::RbacConfig;
use crate::identity::KubeUser;

/// What is asked: a resource or a non-resource URL, and the verb.
///
/// Each value borrows where it can (a rule's literal, the called workload's
/// namespace, the request's path), so asking a cached question builds
/// nothing; the cache keeps an owned copy ([`Attributes::into_owned`]) of
/// the questions it actually asked. Borrowed and owned values hash and
/// compare alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes<'a> {
    Resource {
        verb: Cow<'a, str>,
        group: Cow<'a, str>,
        resource: Cow<'a, str>,
        subresource: Cow<'a, str>,
        namespace: Cow<'a, str>,
        name: Cow<'a, str>,
    },
    NonResource {
        verb: Cow<'a, str>,
        path: Cow<'a, str>,
    },
}

impl Attributes<'_> {
    pub fn into_owned(self) -> Attributes<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        match self {
            Self::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => Attributes::Resource {
                verb: own(verb),
                group: own(group),
                resource: own(resource),
                subresource: own(subresource),
                namespace: own(namespace),
                name: own(name),
            },
            Self::NonResource { verb, path } => Attributes::NonResource {
                verb: own(verb),
                path: own(path),
            },
        }
    }
}

impl std::fmt::Display for Attributes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                write!(f, "verb={verb} resource={resource}")?;
                if !subresource.is_empty() {
                    write!(f, "/{subresource}")?;
                }
                if !group.is_empty() {
                    write!(f, " group={group}")?;
                }
                if !namespace.is_empty() {
                    write!(f, " namespace={namespace}")?;
                }
                if !name.is_empty() {
                    write!(f, " name={name}")?;
                }
                Ok(())
            }
            Self::NonResource { verb, path } => write!(f, "verb={verb} path={path}"),
        }
    }
}

/// The authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub allowed: bool,
    /// `status.reason` (`RBAC: allowed by ClusterRoleBinding "x" of ...`), or why not.
    pub reason: String,
}

/// The API server's view of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    pub authenticated: bool,
    /// `status.error` when not authenticated.
    pub error: String,
    /// How long this answer may be reused.
    ttl: Duration,
    /// The token it is about (a 64-bit hash collision is a miss, not an answer).
    token: Box<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the API server refused the review: {0}")]
    Api(#[source] kube::Error),
    #[error("the authorizer could not decide: {0}")]
    Evaluation(String),
}

/// One remembered RBAC answer and the question it answers. The cache is
/// keyed by a 64-bit hash of (user, attributes) so that a hit borrows the
/// question instead of building an owned key per request; the stored
/// question is compared on every hit (a collision is a miss, not an answer).
struct Answer {
    user: Arc<KubeUser>,
    attrs: Attributes<'static>,
    access: Arc<Access>,
}

impl Answer {
    fn answers(&self, user: &Arc<KubeUser>, attrs: &Attributes<'_>) -> bool {
        (Arc::ptr_eq(&self.user, user) || self.user == *user) && self.attrs == *attrs
    }
}

struct AccessExpiry(RbacConfig);

impl moka::Expiry<u64, Arc<Answer>> for AccessExpiry {
    fn expire_after_create(&self, _: &u64, v: &Arc<Answer>, _: Instant) -> Option<Duration> {
        Some(if v.access.allowed {
            self.0.allow_ttl
        } else {
            self.0.deny_ttl
        })
    }
}

struct TokenExpiry;

impl moka::Expiry<u64, Arc<TokenStatus>> for TokenExpiry {
    fn expire_after_create(&self, _: &u64, v: &Arc<TokenStatus>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

pub struct Reviews {
    client: kube::Client,
    // Keyed by a hash already: moka's own hashing of it need not be SipHash.
    access: moka::future::Cache<u64, Arc<Answer>, foldhash::fast::RandomState>,
    tokens: moka::future::Cache<u64, Arc<TokenStatus>, foldhash::fast::RandomState>,
    hasher: foldhash::quality::RandomState,
    timeout: Duration,
    metrics: KubeMetrics,
}

impl Reviews {
    pub fn new(client: kube::Client, cfg: &RbacConfig, metrics: KubeMetrics) -> Self {
        Self {
            access: moka::future::Cache::builder()
                .max_capacity(cfg.max_entries)
                .expire_after(AccessExpiry(cfg.clone()))
                .build_with_hasher(foldhash::fast::RandomState::default()),
            tokens: moka::future::Cache::builder()
                .max_capacity(cfg.max_entries)
                .expire_after(TokenExpiry)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            hasher: foldhash::quality::RandomState::default(),
            timeout: cfg.timeout,
            client,
            metrics,
        }
    }

    /// May `user` do `attrs`? From the cache, else one SubjectAccessReview
    /// shared by every concurrent caller asking the same.
    /// The hit path allocates nothing: the question is hashed and compared
    /// where it lies, and copied only to be asked. The miss path is a future
    /// of its own, boxed, so a hit does not carry (and move) its state.
    pub async fn access(&self, user: &Arc<KubeUser>, attrs: &Attributes<'_>) -> Result<Arc<Access>, Arc<ReviewError>> {
        let key = {
            let mut h = self.hasher.build_hasher();
            user.hash(&mut h);
            attrs.hash(&mut h);
            h.finish()
        };
        if let Some(hit) = self.access.get(&key).await
            && hit.answers(user, attrs)
        {
            self.metrics.rbac_cache_hits.inc();
            return Ok(hit.access.clone());
        }
        Box::pin(self.access_miss(key, user, attrs)).await
    }

    async fn access_miss(
        &self,
        key: u64,
        user: &Arc<KubeUser>,
        attrs: &Attributes<'_>,
    ) -> Result<Arc<Access>, Arc<ReviewError>> {
        self.metrics.rbac_cache_misses.inc();
        let ask = self.ask_access(user.clone(), attrs.clone().into_owned());
        let got = self.access.try_get_with(key, ask).await?;
        if got.answers(user, attrs) {
            Ok(got.access.clone())
        } else {
            // Another question with the same hash filled the entry: ask this one, uncached.
            let own = self
                .ask_access(user.clone(), attrs.clone().into_owned())
                .await
                .map_err(Arc::new)?;
            Ok(own.access.clone())
        }
    }

    async fn ask_access(&self, user: Arc<KubeUser>, attrs: Attributes<'static>) -> Result<Arc<Answer>, ReviewError> {
        let spec = sar_spec(&user, &attrs);
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let began = Instant::now();
        let answer = tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review)).await;
        self.metrics.rbac_review_seconds.observe(began.elapsed().as_secs_f64());
        let result = match answer {
            Err(_) => Err(ReviewError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(ReviewError::Api(e)),
            Ok(Ok(r)) => {
                let status = r.status.unwrap_or_default();
                match status.evaluation_error.filter(|e| !e.is_empty()) {
                    // An authorizer that could not evaluate and did not allow: no answer to reuse.
                    Some(e) if !status.allowed => Err(ReviewError::Evaluation(e)),
                    _ => Ok(Arc::new(Answer {
                        user,
                        attrs,
                        access: Arc::new(Access {
                            allowed: status.allowed,
                            reason: status.reason.unwrap_or_default(),
                        }),
                    })),
                }
            }
        };
        let label = match &result {
            Ok(a) if a.access.allowed => "allowed",
            Ok(_) => "denied",
            Err(_) => "error",
        };
        self.metrics.rbac_reviews.with_label_values(&[label]).inc();
        if let Err(e) = &result {
            tracing::warn!(error = %e, "SubjectAccessReview failed; the request fails closed");
        }
        result
    }

    /// Is `token` (with `audiences`) still authenticated by the API server?
    /// Cached for `ttl`.
    pub async fn token(
        &self,
        token: &str,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<Arc<TokenStatus>, Arc<ReviewError>> {
        let key = {
            let mut h = self.hasher.build_hasher();
            h.write(token.as_bytes());
            h.finish()
        };
        if let Some(hit) = self.tokens.get(&key).await
            && *hit.token == *token
        {
            return Ok(hit);
        }
        let ask = self.ask_token(token, audiences, ttl);
        let got = self.tokens.try_get_with(key, ask).await?;
        if *got.token == *token {
            Ok(got)
        } else {
            // Another token with the same hash filled the entry: ask for this one, uncached.
            self.ask_token(token, audiences, ttl).await.map_err(Arc::new)
        }
    }

    async fn ask_token(
        &self,
        token: &str,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<Arc<TokenStatus>, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(audiences.to_vec()),
            },
            ..Default::default()
        };
        let answer = tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review)).await;
        let result = match answer {
            Err(_) => Err(ReviewError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(ReviewError::Api(e)),
            Ok(Ok(r)) => {
                let status = r.status.unwrap_or_default();
                Ok(Arc::new(TokenStatus {
                    authenticated: status.authenticated.unwrap_or(false),
                    error: status.error.unwrap_or_default(),
                    ttl,
                    token: token.into(),
                }))
            }
        };
        let label = match &result {
            Ok(s) if s.authenticated => "authenticated",
            Ok(_) => "unauthenticated",
            Err(_) => "error",
        };
        self.metrics.token_reviews.with_label_values(&[label]).inc();
        result
    }
}

fn sar_spec(user: &KubeUser, attrs: &Attributes<'_>) -> SubjectAccessReviewSpec {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let (resource_attributes, non_resource_attributes) = match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => (
            Some(ResourceAttributes {
                verb: Some(verb.to_string()),
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                subresource: non_empty(subresource),
                namespace: non_empty(namespace),
                name: non_empty(name),
                ..Default::default()
            }),
            None,
        ),
        Attributes::NonResource { verb, path } => (
            None,
            Some(NonResourceAttributes {
                verb: Some(verb.to_string()),
                path: Some(path.to_string()),
            }),
        ),
    };
    SubjectAccessReviewSpec {
        user: Some(user.username.clone()),
        uid: user.uid.clone(),
        groups: Some(user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
        resource_attributes,
        non_resource_attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(a: &Attributes<'_>) -> u64 {
        foldhash::quality::FixedState::with_seed(7).hash_one(a)
    }

    #[test]
    fn a_borrowed_question_is_the_same_question_as_its_owned_copy() {
        let (ns, path) = (String::from("shop"), String::from("/metrics"));
        let borrowed = [
            Attributes::Resource {
                verb: "get".into(),
                group: "".into(),
                resource: "services".into(),
                subresource: "proxy".into(),
                namespace: Cow::Borrowed(&ns),
                name: "orders".into(),
            },
            Attributes::NonResource {
                verb: "get".into(),
                path: Cow::Borrowed(&path),
            },
        ];
        for a in borrowed {
            let owned = a.clone().into_owned();
            assert!(matches!(
                &owned,
                Attributes::NonResource {
                    path: Cow::Owned(_),
                    ..
                } | Attributes::Resource {
                    namespace: Cow::Owned(_),
                    ..
                }
            ));
            assert_eq!(owned, a);
            assert_eq!(hash(&owned), hash(&a), "{a}");
            assert_eq!(owned.to_string(), a.to_string());
        }
        // One field apart is another question.
        let a = Attributes::NonResource {
            verb: "get".into(),
            path: "/a".into(),
        };
        let b = Attributes::NonResource {
            verb: "get".into(),
            path: "/b".into(),
        };
        assert_ne!(a.clone().into_owned(), b);
    }
}
