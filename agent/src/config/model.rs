//! The typed configuration model. Every field has a default except the ones
//! a user must decide (issuer, audiences, names); unknown keys are errors so
//! a typo never silently disables a check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
pub struct ProviderConfig {
    pub name: String,
    /// Compared byte for byte with the token's `iss` and the discovery document's `issuer`.
    pub issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Skips discovery when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// PEM bundle trusted for this provider's HTTPS endpoints instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Signature algorithms accepted; a key is also pinned to its own `alg`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Shared secret file for HS256/384/512; HS* tokens are refused without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs_secret_file: Option<PathBuf>,
    /// Plain http is allowed for loopback issuers only, unless this is set.
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default)]
    pub refresh: RefreshConfig,
    /// Tolerance for `exp`, `nbf` and `iat`.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Where the token is read from.
    #[serde(default)]
    pub token_from: TokenSource,
}

pub fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .map(String::from)
    .to_vec()
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}

/// How the JWKS is kept fresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// Lower bound on the refresh interval, whatever Cache-Control says.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Upper bound on the refresh interval, and the interval when the provider sends no max-age.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Keys older than this (refreshes failing) are dropped: requests fail closed.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// At most one refetch per this interval for a token whose `kid` is unknown.
    #[serde(with = "humantime_serde")]
    pub unknown_kid_cooldown: Duration,
    /// Time limit on each discovery or JWKS fetch.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Size limit on each discovery or JWKS response body.
    pub max_response_bytes: usize,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(60),
            max_interval: Duration::from_secs(3600),
            max_staleness: Duration::from_secs(24 * 3600),
            unknown_kid_cooldown: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            max_response_bytes: 512 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// Header holding the token.
    #[serde(default = "default_token_header")]
    pub header: String,
    /// Case-insensitive scheme before the token; empty for a bare token.
    #[serde(default = "default_token_prefix")]
    pub prefix: String,
}

impl Default for TokenSource {
    fn default() -> Self {
        Self {
            header: default_token_header(),
            prefix: default_token_prefix(),
        }
    }
}

fn default_token_header() -> String {
    "authorization".into()
}

fn default_token_prefix() -> String {
    "Bearer".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are enforced.
    #[default]
    Enforce,
    /// Denials are logged and counted but the request goes through.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    /// Workloads whose labels include all of these get this policy.
    #[serde(default, deserialize_with = "unique_keys")]
    pub selector: BTreeMap<String, String>,
    /// Ports this policy protects (eBPF steering); reverse-proxy workloads use their `listen`.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Pods: besides `ports`, also protect every TCP `containerPort` the pod declares.
    #[serde(default)]
    pub container_ports: bool,
    #[serde(default)]
    pub mode: Mode,
    /// First matching rule decides; no match denies.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Header name → claim path, added to allowed requests.
    #[serde(default, deserialize_with = "unique_keys")]
    pub forward_claims: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Path globs (`*` within a segment, `**` across); empty means every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods; empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// `anonymous`: no token needed (a token, if sent, is still validated for forwarding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Allow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<Requirement>,
    /// Deny every request this rule matches.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny: bool,
    /// Overrides the policy's mode for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allow {
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// Providers whose tokens are accepted; empty means any configured provider.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Claim path (dots for nesting) → condition; all must hold.
    #[serde(default, deserialize_with = "unique_keys")]
    pub claims: BTreeMap<String, ClaimCondition>,
}

/// Exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_of: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_of: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
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
        }
    }
}

impl KubernetesConfig {
    /// The opt-in label as (key, value); validation guarantees the `=`.
    pub fn opt_in(&self) -> (&str, &str) {
        self.opt_in_label
            .split_once('=')
            .unwrap_or((self.opt_in_label.as_str(), ""))
    }
}

/// A map that refuses repeated keys: YAML parsers keep the last of two equal
/// keys, which would silently weaken a rule (`groups` listed twice).
fn unique_keys<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
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
