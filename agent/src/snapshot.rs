//! One applied configuration, immutable: compiled policies, the workloads
//! bound to them, the providers and where tokens are read from. Swapped
//! atomically on reload; a request loads it once and sees one consistent
//! configuration from head to decision. Data only: no sockets, no clients
//! (the proxy owns its upstream pools, the supervisor its listeners).
//!
//! [`WorkloadSpec`] is one workload as the file or the pod watch describes
//! it; [`Snapshot::build`] binds each to its policy.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, Limits, PolicyConfig, Unbound, WorkloadConfig, select_policy};
use crate::credentials::{Subject, Want};
use crate::k8s::{PodPolicy, PodWorkload};
use crate::policy::egress::Egress;
use crate::policy::{Policy, PolicyError};
use crate::provider::Providers;
use crate::token::Sources;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("workload {0}: no policy selects it")]
    NoPolicy(String),
}

pub struct Snapshot {
    pub config: Arc<Config>,
    pub providers: Providers,
    /// Where tokens are read from: every provider's sources, in order.
    pub sources: Sources,
    /// Looked up on every request: foldhash, seeded per process.
    pub workloads: foldhash::HashMap<Arc<str>, Workload>,
}

/// A workload as the request path needs it.
pub struct Workload {
    pub name: Arc<str>,
    pub policy: Arc<Policy>,
    pub upstream: Upstream,
    /// What `kubernetes_rbac` placeholders name.
    pub target: Arc<Target>,
    /// The policy's egress rules, each with the token this workload's calls
    /// under it carry (in the policy's order).
    pub egress: Vec<EgressBinding>,
}

/// One egress rule as one workload uses it.
pub struct EgressBinding {
    pub rule: Arc<Egress>,
    pub want: Arc<Want>,
}

/// The called workload, as RBAC attributes name it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub workload: String,
    pub namespace: String,
    /// The pod's name (pods only).
    pub pod: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Where a workload's allowed requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Reverse-proxy mode: a configured address.
    Fixed(SocketAddr),
    /// eBPF mode: the connection's original destination (pod IP and port),
    /// dialled from inside the pod's namespace. The program lets a connection
    /// from the pod's own address through, so it reaches the application
    /// whether that listens on the pod IP or on every address.
    OriginalDestination,
}

impl Upstream {
    /// The address to dial for a connection accepted on `local`.
    pub fn target(self, local: SocketAddr) -> SocketAddr {
        match self {
            Self::Fixed(a) => a,
            Self::OriginalDestination => local,
        }
    }
}

impl Snapshot {
    /// An empty snapshot: the agent before its first configuration is applied.
    pub fn empty(config: Config) -> Self {
        Self {
            sources: Sources::compile([]),
            config: Arc::new(config),
            providers: Providers::default(),
            workloads: foldhash::HashMap::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Compiles the policies and binds each of `specs` to its policy. A pod
    /// without its policy gets a deny-all stand-in: enrolled, fail closed.
    /// `skip` leaves out workloads that cannot serve (a steered workload
    /// whose namespace could not be opened).
    pub fn build(
        config: Config,
        specs: &[WorkloadSpec],
        providers: Providers,
        skip: impl Fn(&WorkloadSpec) -> bool,
    ) -> Result<Self, SnapshotError> {
        let mut policies = HashMap::new();
        for p in &config.policies {
            policies.insert(p.name.as_str(), Arc::new(Policy::compile(p, &config.providers)?));
        }
        // IdentityPolicies travel with their pods (named `ns/name`, which no
        // policy of the file can be); one compilation per policy version.
        for w in specs.iter().filter(|w| !skip(w)) {
            if let Some(p) = &w.resource
                && !policies.contains_key(p.name.as_str())
            {
                policies.insert(p.name.as_str(), Arc::new(Policy::compile(p, &config.providers)?));
            }
        }
        let mut workloads = foldhash::HashMap::default();
        for w in specs.iter().filter(|w| !skip(w)) {
            let policy = match &w.policy {
                Ok(name) => policies.get(name.as_str()).cloned(),
                Err(why) if w.fail_closed => Some(Arc::new(Policy::deny_all(
                    "(none)",
                    format!("workload {} has no policy: {why}", w.name),
                ))),
                Err(_) => None,
            }
            .ok_or_else(|| SnapshotError::NoPolicy(w.name.clone()))?;
            let upstream = match &w.kind {
                SpecKind::Listen { upstream, .. } => Upstream::Fixed(*upstream),
                SpecKind::Netns { .. } => Upstream::OriginalDestination,
            };
            let name: Arc<str> = w.name.as_str().into();
            let target = Arc::new(w.target());
            let subject = w.subject(&name);
            let egress = policy
                .egress
                .rules
                .iter()
                .map(|rule| EgressBinding {
                    rule: rule.clone(),
                    want: Arc::new(Want::new(subject.clone(), &rule.token)),
                })
                .collect();
            workloads.insert(
                name.clone(),
                Workload {
                    name,
                    policy,
                    upstream,
                    target,
                    egress,
                },
            );
        }
        Ok(Self {
            sources: Sources::compile(config.providers.iter().flat_map(|p| &p.token_from)),
            config: Arc::new(config),
            providers,
            workloads,
        })
    }
}

/// One workload as `apply` sees it: a static workload of the file, or a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub name: String,
    pub kind: SpecKind,
    pub labels: BTreeMap<String, String>,
    /// Pods: their namespace; the file's workloads: `namespace`, else `default`.
    pub namespace: String,
    /// Pods: their name.
    pub pod: Option<String>,
    /// The bound policy's name, or why there is none.
    pub policy: Result<String, String>,
    /// A missing policy means deny-all (pods) rather than an error (the file's workloads).
    pub fail_closed: bool,
    /// The IdentityPolicy a pod is bound to (not in the configuration's `policies`).
    pub resource: Option<Arc<PolicyConfig>>,
    /// The service account its egress tokens are requested for.
    pub service_account: Option<String>,
    /// Pods: their UID (service-account tokens are bound to the pod).
    pub uid: Option<String>,
    /// Steered workloads: the cgroup v2 directory egress steering attaches to.
    pub cgroup: Option<PathBuf>,
}

/// How a workload's traffic reaches the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecKind {
    /// Reverse proxy: the agent listens on `listen` and forwards to `upstream`.
    Listen { listen: SocketAddr, upstream: SocketAddr },
    /// eBPF steering into the namespace at `path`, on `ips` × `ports`.
    Netns {
        path: PathBuf,
        ips: Vec<IpAddr>,
        ports: Vec<u16>,
    },
}

impl WorkloadSpec {
    /// A workload of the file (validated: exactly one way in, a policy that exists).
    pub fn from_static(w: &WorkloadConfig, config: &Config) -> Option<Self> {
        let policy = select_policy(&config.policies, &w.labels, w.policy.as_deref());
        let kind = match (w.listen, w.upstream, &w.netns) {
            (Some(listen), Some(upstream), _) => SpecKind::Listen { listen, upstream },
            (_, _, Some(path)) => SpecKind::Netns {
                path: path.clone(),
                ips: w.ips.clone(),
                ports: policy.as_ref().map(|p| p.ports.clone()).unwrap_or_default(),
            },
            _ => return None,
        };
        Some(Self {
            name: w.name.clone(),
            kind,
            labels: w.labels.clone(),
            namespace: w.namespace.clone().unwrap_or_else(|| "default".into()),
            pod: None,
            policy: policy.map(|p| p.name.clone()).map_err(|e: Unbound| e.to_string()),
            fail_closed: false,
            resource: None,
            service_account: w.service_account.clone(),
            uid: None,
            cgroup: w.cgroup.clone(),
        })
    }

    pub fn from_pod(p: &PodWorkload, config: &Config) -> Self {
        let (policy, resource) = match &p.policy {
            PodPolicy::Named(n) if config.policies.iter().any(|q| &q.name == n) => (Ok(n.clone()), None),
            PodPolicy::Named(n) => (Err(format!("policy {n:?} does not exist")), None),
            PodPolicy::Resource(r) => (Ok(r.config.name.clone()), Some(r.config.clone())),
            PodPolicy::Missing(why) | PodPolicy::Conflict(_, why) | PodPolicy::NotAccepted(_, why) => {
                (Err(why.clone()), None)
            }
        };
        let (namespace, pod) = p.name.split_once('/').unwrap_or(("default", p.name.as_str()));
        Self {
            name: p.name.clone(),
            kind: SpecKind::Netns {
                path: p.netns.clone(),
                ips: p.ips.clone(),
                ports: p.ports.clone(),
            },
            labels: p.labels.clone(),
            namespace: namespace.to_string(),
            pod: Some(pod.to_string()),
            policy,
            fail_closed: true,
            resource,
            service_account: Some(p.service_account.clone()),
            uid: Some(p.uid.clone()),
            cgroup: p.cgroup.clone(),
        }
    }

    /// Who this workload's egress tokens are for.
    fn subject(&self, name: &Arc<str>) -> Subject {
        Subject {
            workload: name.clone(),
            namespace: self.namespace.as_str().into(),
            service_account: self.service_account.as_deref().map(Into::into),
            pod: self
                .pod
                .as_deref()
                .zip(self.uid.as_deref())
                .map(|(n, u)| (n.into(), u.into())),
        }
    }

    fn target(&self) -> Target {
        Target {
            workload: self.pod.clone().unwrap_or_else(|| self.name.clone()),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            labels: self.labels.clone(),
        }
    }

    /// The effective workloads: the file's, then the pods whose names they do not take.
    pub fn all(config: &Config, pods: &[PodWorkload]) -> Vec<Self> {
        let mut out: Vec<Self> = config
            .workloads
            .iter()
            .filter_map(|w| Self::from_static(w, config))
            .collect();
        for p in pods {
            if config.workloads.iter().any(|w| w.name == p.name) {
                continue;
            }
            out.push(Self::from_pod(p, config));
        }
        out
    }
}
