//! `nodeward explain`: the decision the proxy would make for one request,
//! with the rule and the reason, computed by the same code the proxy runs.
//! Keys come from the disk copy in `state_dir`, else one fetch.
//!
//! The subject is a workload of the file, a pod (read from the API server and
//! bound to its policy exactly as the pod watch binds it), or a hypothetical
//! pod given by its labels (offline).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use k8s_openapi::api::core::v1::Pod;

use crate::app::{build_runtime, build_runtime_with_pods};
use crate::authz::{self, Decision, Verdict};
use crate::config::Config;
use crate::k8s::binding::{self, Binding, PodPolicy};
use crate::k8s::{PodWatch, PodWorkload};
use crate::policy::Action;
use crate::provider::{Provider, Providers};
use crate::token_cache::TokenCache;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no workload named {0:?} in the configuration (for a pod, give --pod NAMESPACE/NAME)")]
    NoWorkload(String),
    #[error("--pod wants NAMESPACE/NAME, not {0:?}")]
    PodName(String),
    #[error("--pod needs `kubernetes.enabled: true` in the configuration (it reads the pod from the API server)")]
    KubernetesDisabled,
    #[error(transparent)]
    Kube(#[from] crate::k8s::KubeError),
    #[error("cannot read pod {pod} from the API server: {source}")]
    Api {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {pod} is not protected by nodeward ({state}): {why}")]
    NotEnrolled {
        pod: String,
        state: &'static str,
        why: String,
    },
    #[error("bad label {0:?}: want KEY=VALUE")]
    Label(String),
    #[error("bad method {0:?}")]
    Method(String),
    #[error("the token is not a valid header value")]
    Token,
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
}

/// Whose request is explained.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A workload of the configuration file.
    Workload(String),
    /// A pod, `namespace/name`, read from the API server.
    Pod(String),
    /// A pod that would have these labels and, optionally, this policy annotation.
    Labels {
        labels: BTreeMap<String, String>,
        policy: Option<String>,
    },
}

impl Subject {
    /// Parses `--labels a=b,c=d`.
    pub fn labels(text: &str, policy: Option<String>) -> Result<Self, ExplainError> {
        let mut labels = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| ExplainError::Label(pair.into()))?;
            if k.trim().is_empty() {
                return Err(ExplainError::Label(pair.into()));
            }
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Self::Labels { labels, policy })
    }
}

pub struct Explanation {
    pub workload: String,
    pub policy: String,
    pub decision: Decision,
    pub rules: Vec<String>,
}

/// The pod workload a subject stands for (`None`: a workload of the file).
async fn pod_workload(config: &Config, subject: &Subject) -> Result<Option<PodWorkload>, ExplainError> {
    let k8s = &config.kubernetes;
    let (name, labels, annotated) = match subject {
        Subject::Workload(_) => return Ok(None),
        Subject::Labels { labels, policy } => ("(labels)".to_string(), labels.clone(), policy.clone()),
        Subject::Pod(name) => {
            let (ns, pod) = name
                .split_once('/')
                .filter(|(ns, pod)| !ns.is_empty() && !pod.is_empty() && !pod.contains('/'))
                .ok_or_else(|| ExplainError::PodName(name.clone()))?;
            if !k8s.enabled {
                return Err(ExplainError::KubernetesDisabled);
            }
            let client = PodWatch::client(k8s).await?;
            let api: kube::Api<Pod> = kube::Api::namespaced(client, ns);
            let p = api.get(pod).await.map_err(|source| ExplainError::Api {
                pod: name.clone(),
                source,
            })?;
            return match binding::bind(&p, k8s, &config.policies) {
                Binding::Enrol(b) => Ok(Some(PodWorkload {
                    name: name.clone(),
                    labels: b.labels,
                    policy: b.policy,
                    ips: b.ips,
                    ports: b.ports,
                    netns: PathBuf::new(),
                })),
                Binding::Waiting(why) => Err(ExplainError::NotEnrolled {
                    pod: name.clone(),
                    state: "waiting",
                    why,
                }),
                Binding::Refused(why) => Err(ExplainError::NotEnrolled {
                    pod: name.clone(),
                    state: "refused",
                    why,
                }),
                Binding::Failed(why) => Err(ExplainError::NotEnrolled {
                    pod: name.clone(),
                    state: "failed",
                    why,
                }),
            };
        }
    };
    let policy = match binding::choose_policy(&labels, annotated.as_deref(), k8s, &config.policies) {
        Ok(p) => PodPolicy::Named(p.name.clone()),
        Err(why) => PodPolicy::Missing(why),
    };
    Ok(Some(PodWorkload {
        name,
        labels,
        policy,
        ips: Vec::new(),
        ports: Vec::new(),
        netns: PathBuf::new(),
    }))
}

pub async fn explain(
    config: Config,
    subject: &Subject,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let method =
        Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| ExplainError::Method(method.into()))?;
    let pod = pod_workload(&config, subject).await?;
    let cache = TokenCache::new(&config.token_cache);
    let mut providers = Providers::default();
    for p in &config.providers {
        let metrics = crate::provider::ProviderMetrics::unregistered(&p.name);
        let provider = Arc::new(Provider::new(p.clone(), &config.state_dir, metrics)?);
        if token.is_some() && !provider.is_ready() {
            let _ = provider.refresh().await;
        }
        providers.insert(provider);
    }
    let host = std::sync::Arc::new(crate::proxy::upstream::Client::new(
        None,
        config.limits.upstream_connect_timeout,
        config.limits.upstream_timeout,
    ));
    let (rt, workload) = match (&pod, subject) {
        (Some(p), _) => (
            build_runtime_with_pods(config, std::slice::from_ref(p), providers, |_| Some(host.clone()))?,
            p.name.clone(),
        ),
        (None, Subject::Workload(w)) => (build_runtime(config, providers, |_| Some(host.clone()))?, w.clone()),
        (None, _) => return Err(ExplainError::NoWorkload(String::new())),
    };
    let wl = rt
        .workloads
        .get(&workload)
        .ok_or_else(|| ExplainError::NoWorkload(workload.clone()))?;
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ExplainError::Token)?;
        headers.insert(rt.token_sources[0].header.clone(), v);
    }
    let decision = authz::decide(
        &rt,
        &cache,
        &wl.policy,
        authz::Request {
            method: &method,
            path,
            headers: &headers,
        },
        None,
    )
    .await;
    let rules = wl
        .policy
        .rules
        .iter()
        .map(|r| {
            let what = match &r.action {
                Action::Anonymous => "allow anonymous".to_string(),
                Action::Deny => "deny".to_string(),
                Action::Require { providers, claims } => format!(
                    "require token{}{}",
                    if providers.is_empty() {
                        String::new()
                    } else {
                        format!(" from {}", providers.join(", "))
                    },
                    if claims.is_empty() {
                        String::new()
                    } else {
                        format!(" with {} claim condition(s)", claims.len())
                    }
                ),
            };
            let hit = if r.matches(&method, path) { "matches" } else { "skipped" };
            format!("{} [{}]: {what}", r.name, hit)
        })
        .collect();
    Ok(Explanation {
        workload: workload.clone(),
        policy: wl.policy.name.to_string(),
        decision,
        rules,
    })
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.decision;
        let status = match (d.verdict, d.audit_only) {
            (Verdict::Allow, _) => "ALLOW (forwarded)",
            (_, true) => "AUDIT-ONLY DENY (forwarded, logged as a denial)",
            (Verdict::Unauthenticated, _) => "DENY 401",
            (Verdict::Forbidden, _) => "DENY 403",
        };
        writeln!(f, "decision: {status}")?;
        writeln!(f, "reason:   {}", d.reason)?;
        if let Some(detail) = &d.detail {
            writeln!(f, "detail:   {detail}")?;
        }
        writeln!(f, "workload: {}", self.workload)?;
        writeln!(f, "policy:   {}", self.policy)?;
        writeln!(f, "rule:     {}", d.rule.as_deref().unwrap_or("(none matched)"))?;
        if let Some(t) = &d.token {
            let v = &t.verified;
            writeln!(
                f,
                "caller:   iss={} sub={} email={}",
                v.iss,
                v.sub.as_deref().unwrap_or("-"),
                v.email().unwrap_or("-")
            )?;
        }
        writeln!(f, "rules in order (first match wins):")?;
        for r in &self.rules {
            writeln!(f, "  - {r}")?;
        }
        Ok(())
    }
}
