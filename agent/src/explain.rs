//! `nodeward explain`: the decision the proxy would make for one request,
//! with the rule and the reason, computed by the same code the proxy runs
//! (`proxy::admit`: header hygiene, the path normalisation, the decision,
//! the request as the upstream would get it). The token is written into the
//! request where the first configured source reads it. Keys come from the
//! disk copy in `state_dir`, else one fetch.
//!
//! The subject is a workload of the file, a pod (read from the API server and
//! bound to its policy exactly as the pod watch binds it), or a hypothetical
//! pod given by its labels (offline).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use k8s_openapi::api::core::v1::Pod;

use crate::authz::{Decision, Outcome, Verifier};
use crate::config::{Config, Unbound, select_policy};
use crate::k8s::binding::{self, Binding, PodPolicy};
use crate::k8s::catalog::{Catalog, Compiler};
use crate::k8s::policies::{PolicyObject, PolicyObjects};
use crate::k8s::review::Reviews;
use crate::k8s::{KubeMetrics, PodWorkload};
use crate::policy::Action;
use crate::provider::{Provider, Providers};
use crate::proxy;
use crate::reason::Answer;
use crate::snapshot::{Snapshot, WorkloadSpec};
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
    #[error("bad request target {0:?}: {1}")]
    Target(String, String),
    #[error("bad header {0:?}: want 'Name: value'")]
    Header(String),
    #[error("the token cannot be placed in the request: {0}")]
    Token(&'static str),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
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
    /// The normalised path the rules were matched against.
    pub path: String,
    /// What the upstream would get: the path and query, and the identity headers.
    pub forwarded: Option<(String, Vec<(String, String)>)>,
    pub rules: Vec<String>,
    /// The workload is a protected resource: what that means for its requests.
    pub resource: Option<String>,
    /// The request asks for the resource's metadata document, which the
    /// agent answers itself (the decision above is then never made).
    pub metadata: bool,
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
            let client = crate::k8s::client(k8s).await?;
            let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
            let p = api.get(pod).await.map_err(|source| ExplainError::Api {
                pod: name.clone(),
                source,
            })?;
            let catalog = cluster_catalog(config, client, ns)
                .await
                .map_err(|source| ExplainError::Api {
                    pod: name.clone(),
                    source,
                })?;
            return match binding::bind_in(&p, k8s, &catalog, None) {
                Binding::Enrol(b) => Ok(Some(PodWorkload {
                    name: name.clone(),
                    labels: b.labels,
                    policy: b.policy,
                    ips: b.ips,
                    ports: b.ports,
                    netns: PathBuf::new(),
                    uid: b.uid,
                    service_account: b.service_account,
                    cgroup: None,
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
    let policy = match select_policy(&config.policies, &labels, annotated.as_deref()) {
        Ok(p) => PodPolicy::Named(p.name.clone()),
        Err(e @ Unbound::NotFound(_)) => PodPolicy::Missing(format!("{e} (annotation {})", k8s.policy_annotation)),
        Err(e) => PodPolicy::Missing(e.to_string()),
    };
    Ok(Some(PodWorkload {
        name,
        labels,
        policy,
        ips: Vec::new(),
        ports: Vec::new(),
        netns: PathBuf::new(),
        uid: String::new(),
        service_account: "default".into(),
        cgroup: None,
    }))
}

/// The policies a pod of `namespace` can be bound to: the file's, and the
/// namespace's IdentityPolicies compiled as the agent compiles them (none
/// when the CRD is not installed).
async fn cluster_catalog(config: &Config, client: kube::Client, namespace: &str) -> Result<Catalog, kube::Error> {
    let resource = crate::k8s::crd::api_resource();
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(client, namespace, &resource);
    let objects: PolicyObjects = match api.list(&kube::api::ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(PolicyObject::from_dynamic)
            .map(|o| (o.key(), Arc::new(o)))
            .collect(),
        Err(kube::Error::Api(s)) if s.code == 404 => PolicyObjects::new(),
        Err(e) => return Err(e),
    };
    Ok(Compiler::default().catalog(&Arc::new(config.clone()), &objects))
}

/// One request to explain: its method, target (path and query) and extra headers.
pub struct Probe<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: &'a [String],
    pub token: Option<&'a str>,
}

pub async fn explain(config: Config, subject: &Subject, probe: Probe<'_>) -> Result<Explanation, ExplainError> {
    // As the client sends it: `get` is not GET (the proxy refuses it, and so does explain).
    let method = Method::from_bytes(probe.method.as_bytes()).map_err(|_| ExplainError::Method(probe.method.into()))?;
    let pod = pod_workload(&config, subject).await?;
    let cache = TokenCache::new(&config.token_cache);
    // With the Kubernetes API (in-cluster, or `kubernetes.kubeconfig`), RBAC
    // rules and TokenReviews are asked live; without it they say they cannot
    // be decided offline (rbac_unavailable / token_review_unavailable).
    let kube = if config.kubernetes.api() {
        match crate::k8s::client(&config.kubernetes).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API client: RBAC rules cannot be decided offline");
                None
            }
        }
    } else {
        None
    };
    let reviews = kube
        .clone()
        .map(|c| Reviews::new(c, &config.kubernetes.rbac, KubeMetrics::unregistered()));
    let mut providers = Providers::default();
    for p in &config.providers {
        let metrics = crate::provider::ProviderMetrics::unregistered(&p.name);
        let provider = Arc::new(Provider::new(p.clone(), &config.state_dir, metrics, kube.as_ref())?);
        if probe.token.is_some() && !provider.is_ready() {
            let _ = provider.refresh().await;
        }
        providers.insert(provider);
    }
    let workload = match (&pod, subject) {
        (Some(p), _) => p.name.clone(),
        (None, Subject::Workload(w)) => w.clone(),
        (None, _) => return Err(ExplainError::NoWorkload(String::new())),
    };
    let specs = WorkloadSpec::all(&config, pod.as_slice());
    let snap = Snapshot::build(config, &specs, providers, |_| false)?;
    let wl = snap
        .workloads
        .get(workload.as_str())
        .ok_or_else(|| ExplainError::NoWorkload(workload.clone()))?;

    let mut req = http::Request::builder()
        .method(method.clone())
        .body(())
        .map_err(|e| ExplainError::Method(e.to_string()))?;
    for h in probe.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| ExplainError::Header(h.clone()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| ExplainError::Header(h.clone()))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| ExplainError::Header(h.clone()))?;
        req.headers_mut().append(name, value);
    }
    let (path, query) = match probe.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (probe.target, None),
    };
    let query = match probe.token {
        Some(t) => snap
            .sources
            .place(req.headers_mut(), query, t)
            .map_err(ExplainError::Token)?,
        None => query.map(String::from),
    };
    let target = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    *req.uri_mut() = target
        .parse()
        .map_err(|e: http::uri::InvalidUri| ExplainError::Target(target.clone(), e.to_string()))?;
    let (mut parts, ()) = req.into_parts();
    let metadata = proxy::metadata_request(&wl.policy, parts.uri.path()).is_some();
    let before: Vec<HeaderName> = parts.headers.keys().cloned().collect();
    let verifier = Verifier {
        providers: &snap.providers,
        cache: &cache,
        max_token_bytes: snap.limits().max_token_bytes,
        counters: None,
        reviews: reviews.as_ref(),
    };
    let admitted = proxy::admit(
        &verifier,
        &snap.sources,
        wl,
        &mut parts,
        std::net::IpAddr::from([127, 0, 0, 1]),
        false,
    )
    .await;
    let forwarded = admitted.decision.outcome.lets_through().then(|| {
        let added = parts
            .headers
            .iter()
            .filter(|(k, _)| !before.contains(k) && *k != proxy::headers::X_FORWARDED_FOR)
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let target = admitted.target.as_ref().map_or_else(String::new, |t| t.to_string());
        (target, added)
    });
    let rules = wl
        .policy
        .rules
        .iter()
        .map(|r| {
            let what = match &r.action {
                Action::Anonymous => "allow anonymous".to_string(),
                Action::Deny => "deny".to_string(),
                Action::Require {
                    providers,
                    claims,
                    source,
                    rbac,
                } => format!(
                    "require token{}{}{}{}",
                    if providers.is_empty() {
                        String::new()
                    } else {
                        format!(" from {}", providers.join(", "))
                    },
                    if claims.is_empty() {
                        String::new()
                    } else {
                        format!(" with {} claim condition(s)", claims.len())
                    },
                    if source.is_some() {
                        ", from listed service accounts"
                    } else {
                        ""
                    },
                    if rbac.is_some() {
                        ", allowed by the cluster's RBAC"
                    } else {
                        ""
                    },
                ),
            };
            let hit = if r.matches(&method, &admitted.path) {
                "matches"
            } else {
                "skipped"
            };
            format!("{} [{}]: {what}", r.name, hit)
        })
        .collect();
    let resource = wl.policy.resource.as_ref().map(|r| {
        format!(
            "{} (tokens must name it as their audience and come from {}; metadata at {}; the token is never forwarded)",
            r.resource,
            r.providers.join(", "),
            r.metadata_url
        )
    });
    Ok(Explanation {
        workload,
        policy: wl.policy.name.to_string(),
        path: admitted.path,
        decision: admitted.decision,
        forwarded,
        rules,
        resource,
        metadata,
    })
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.decision;
        if self.metadata {
            writeln!(
                f,
                "decision: ANSWERED BY NODEWARD (200 for GET and HEAD, 405 otherwise): the RFC 9728 metadata document; no rule applies, nothing is forwarded"
            )?;
            writeln!(f, "workload: {}", self.workload)?;
            writeln!(f, "policy:   {}", self.policy)?;
            writeln!(f, "path:     {}", self.path)?;
            return writeln!(f, "resource: {}", self.resource.as_deref().unwrap_or("-"));
        }
        let status = match d.outcome {
            Outcome::Allow => "ALLOW (forwarded)".to_string(),
            Outcome::AuditDeny => "AUDIT-ONLY DENY (forwarded, logged as a denial)".to_string(),
            Outcome::Deny => match d.reason.answer() {
                Answer::NotImplemented => "DENY 501".to_string(),
                a => format!("DENY {}", a.status().as_u16()),
            },
        };
        writeln!(f, "decision: {status}")?;
        writeln!(f, "reason:   {}", d.reason)?;
        if let Some(detail) = &d.detail {
            writeln!(f, "detail:   {detail}")?;
        }
        writeln!(f, "workload: {}", self.workload)?;
        writeln!(f, "policy:   {}", self.policy)?;
        writeln!(f, "path:     {}", self.path)?;
        if let Some(r) = &self.resource {
            writeln!(f, "resource: {r}")?;
        }
        if let Some(u) = &d.kube_user {
            writeln!(f, "k8s user: {} groups={}", u.username, u.groups.join(","))?;
        }
        writeln!(f, "rule:     {}", d.rule.as_deref().unwrap_or("(none matched)"))?;
        if let Some(t) = &d.token {
            let v = &t.entry.verified;
            writeln!(
                f,
                "caller:   iss={} sub={} email={} client_id={}{}",
                v.iss,
                v.sub.as_deref().unwrap_or("-"),
                v.email().unwrap_or("-"),
                v.client_id().unwrap_or("-"),
                v.act_chain().map(|a| format!(" act={a}")).unwrap_or_default()
            )?;
        }
        if let Some((target, added)) = &self.forwarded {
            writeln!(f, "upstream: {target}")?;
            for (k, v) in added {
                writeln!(f, "  {k}: {v}")?;
            }
        }
        writeln!(f, "rules in order (first match wins):")?;
        for r in &self.rules {
            writeln!(f, "  - {r}")?;
        }
        Ok(())
    }
}
