//! The typed configuration model's top level: admin address, limits, the
//! token cache, workloads, Kubernetes and eBPF settings (providers are in
//! `provider.rs`, policies in `policy.rs`). Every field has a default except
//! the ones a user must decide (issuer, audiences, names); unknown keys are
//! errors so a typo never silently disables a check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{PolicyConfig, ProviderConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the admin server: /metrics, /healthz, /readyz.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Where discovery documents and JWKS are persisted across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    #[serde(default)]
    pub workloads: Vec<WorkloadConfig>,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    #[serde(default)]
    pub ebpf: EbpfConfig,
    /// Peers whose `X-Forwarded-For`, `X-Real-IP` and `Forwarded` headers
    /// are believed (a load balancer in front of the node). From anyone
    /// else those headers are replaced with what nodeward saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    #[serde(default)]
    pub traces: TraceConfig,
}

/// W3C trace context (`traceparent`/`tracestate`): what the agent does with
/// a client's trace and when it starts one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    /// Keep a client's valid `traceparent` (and its `tracestate`). `false`
    /// at an edge whose clients' traces should not be continued: every
    /// request then starts a new trace (when `start`) or carries none.
    pub accept: bool,
    /// Start a trace when a request carries no valid `traceparent`, so every
    /// audit line, refusal and forwarded request has a trace id.
    pub start: bool,
    /// The sampled flag of the traces the agent starts (the app's
    /// parent-based sampler records them when set).
    pub sampled: bool,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            accept: true,
            start: true,
            sampled: true,
        }
    }
}

/// eBPF steering (workloads with `netns`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Where the program, its maps and one link per workload are pinned; the
    /// state survives the agent, so a dead agent fails closed and a restarted
    /// one adopts it.
    pub pin_dir: PathBuf,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf/nodeward"),
        }
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15020))
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/nodeward")
}

/// Bounds on what a client may send, so no client can hold the agent's memory
/// or connections hostage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Time a client has to send a complete request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest request body forwarded, in bytes (streamed, never buffered).
    pub max_body_bytes: u64,
    /// Largest bearer token examined, in bytes.
    pub max_token_bytes: usize,
    /// Time to connect to an upstream.
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// Time for an upstream to send its response head; past it the client gets 504.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 16 * 1024 * 1024,
            max_token_bytes: 16 * 1024,
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            max_concurrent_streams: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCacheConfig {
    /// Most verified tokens remembered; the least recently used go first.
    pub max_entries: u64,
    /// No entry lives longer than this, even when the token's `exp` is later.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    pub name: String,
    #[serde(default, deserialize_with = "unique_keys")]
    pub labels: BTreeMap<String, String>,
    /// Reverse-proxy mode: the agent listens here ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// ... and forwards allowed requests here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<SocketAddr>,
    /// eBPF steering mode: the workload's network namespace. Its inbound
    /// connections to (its addresses × the policy's `ports`) are steered into
    /// the agent, and allowed requests go on to the original destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// eBPF steering mode: the addresses to protect; empty means every
    /// non-loopback address found inside `netns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::IpAddr>,
    /// Binds the workload to this policy by name instead of by its labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The Kubernetes namespace it stands for (`{namespace}` in `kubernetes_rbac` rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// eBPF steering mode, outbound identity: the workload's cgroup (v2
    /// directory) whose connections to the policy's `egress` destinations
    /// are steered to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// The service account (of `namespace`) its `service_account` and
    /// `exchange` egress tokens are requested for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// The pod watch: pods of this node with the opt-in label become workloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub enabled: bool,
    /// This node's name; defaults to the `NODE_NAME` environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `key=value`: only pods carrying this label are watched.
    pub opt_in_label: String,
    /// Pod annotation naming the pod's policy explicitly.
    pub policy_annotation: String,
    /// Kubeconfig file; unset means in-cluster service account, else `$KUBECONFIG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The host's /proc (the DaemonSet runs with hostPID).
    pub proc_root: PathBuf,
    /// The host's cgroup mount, where a pod's processes are found by its UID.
    pub cgroup_root: PathBuf,
    /// SubjectAccessReview answers for `kubernetes_rbac` rules.
    pub rbac: RbacConfig,
}

/// The per-node cache of SubjectAccessReview answers; the API server's
/// webhook-authorizer defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RbacConfig {
    /// How long an allowed answer is reused.
    #[serde(with = "humantime_serde")]
    pub allow_ttl: Duration,
    /// How long a denied answer is reused.
    #[serde(with = "humantime_serde")]
    pub deny_ttl: Duration,
    /// A review slower than this fails closed (`rbac_unavailable`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most answers remembered.
    pub max_entries: u64,
}

impl Default for RbacConfig {
    fn default() -> Self {
        Self {
            allow_ttl: Duration::from_secs(300),
            deny_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            max_entries: 10_000,
        }
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_name: None,
            opt_in_label: "nodeward.io/enabled=true".into(),
            policy_annotation: "nodeward.io/policy".into(),
            kubeconfig: None,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            rbac: RbacConfig::default(),
        }
    }
}

impl KubernetesConfig {
    /// Whether the agent talks to an API server at all: the pod watch, or an
    /// explicit kubeconfig (service-account providers, RBAC rules outside a cluster).
    pub fn api(&self) -> bool {
        self.enabled || self.kubeconfig.is_some()
    }

    /// The opt-in label as (key, value); validation guarantees the `=`.
    pub fn opt_in(&self) -> (&str, &str) {
        self.opt_in_label
            .split_once('=')
            .unwrap_or((self.opt_in_label.as_str(), ""))
    }
}

/// A map that refuses repeated keys: YAML parsers keep the last of two equal
/// keys, which would silently weaken a rule (`groups` listed twice).
pub(super) fn unique_keys<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + std::fmt::Display,
    V: Deserialize<'de>,
{
    struct Unique<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de> + Ord + std::fmt::Display, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<K, V> {
        type Value = BTreeMap<K, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<K>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format_args!("duplicate key `{key}`")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(std::marker::PhantomData))
}
