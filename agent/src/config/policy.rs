//! The `policies` section, typed: ordered rules whose action is one enum,
//! claim conditions that are exactly one kind, claim paths in a syntax that
//! can name any claim, path globs checked and parsed once, upper-case methods.
//! Every value is checked when it is read, so a policy that deserialized is
//! well formed; cross references (providers named by rules) are `validate.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::claim_path::ClaimPath;
use super::egress::{EgressFail, EgressRule};
use super::model::unique_keys;
use super::resource::ProtectedResourceConfig;
use crate::path::PathOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are enforced.
    #[default]
    Enforce,
    /// Denials are logged and counted but the request goes through.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The audiences this policy's workloads accept, replacing the
    /// providers' `audiences` for them: a token minted for another workload
    /// of the same provider is refused here. Empty: the providers' lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// How request paths are normalised before rules see them (and the
    /// upstream receives them).
    #[serde(default)]
    pub path: PathOptions,
    /// Forward the client's verified token to the upstream. Off by default:
    /// the upstream gets the identity headers, and a token it never sees
    /// cannot be replayed from it. An unverified token is never forwarded.
    #[serde(default)]
    pub forward_token: bool,
    /// The workload is an OAuth 2.0 protected resource serving tools to AI
    /// agents (MCP authorization): nodeward serves its RFC 9728 metadata,
    /// points 401 challenges at it, accepts only tokens for the resource from
    /// its authorization servers, and never forwards the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_resource: Option<ProtectedResourceConfig>,
    /// First matching rule decides; no match denies.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Header name → claim, added to allowed requests.
    #[serde(default, deserialize_with = "unique_keys")]
    pub forward_claims: BTreeMap<String, ForwardClaim>,
    /// Outbound identity: the calls this policy's (eBPF-steered) workloads
    /// make to these destinations carry a token the agent obtains for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// While the agent is down, configured egress is refused (`closed`) or
    /// goes out directly without a token (`open`).
    #[serde(default, skip_serializing_if = "is_closed")]
    pub egress_fail: EgressFail,
}

fn is_closed(f: &EgressFail) -> bool {
    *f == EgressFail::Closed
}

/// One rule: which requests it matches and what it does with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRule", into = "RawRule")]
pub struct RuleConfig {
    pub name: String,
    /// Path globs over the normalised path (`*` within a segment, `**`
    /// across); empty means every path.
    pub paths: Vec<PathGlob>,
    /// HTTP methods; empty means every method. GET also covers HEAD.
    pub methods: Vec<MethodName>,
    pub action: RuleAction,
    /// Overrides the policy's mode for this rule.
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleAction {
    /// No token needed (a token, if sent, is still validated for forwarding).
    Anonymous,
    /// A valid token meeting the requirement.
    Require(Box<Requirement>),
    /// Every request the rule matches is refused.
    Deny,
}

/// The YAML shape of a rule: `allow: anonymous`, `require: {...}` or
/// `deny: true`, exactly one of them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    paths: Vec<PathGlob>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    methods: Vec<MethodName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow: Option<Allow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    require: Option<Requirement>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deny: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Allow {
    Anonymous,
}

impl TryFrom<RawRule> for RuleConfig {
    type Error = String;

    fn try_from(r: RawRule) -> Result<Self, String> {
        if r.name.is_empty() {
            return Err("rule `name` must not be empty".into());
        }
        let action = match (r.allow, r.require, r.deny) {
            (Some(Allow::Anonymous), None, false) => RuleAction::Anonymous,
            (None, Some(req), false) => RuleAction::Require(Box::new(req)),
            (None, None, true) => RuleAction::Deny,
            _ => {
                return Err(format!(
                    "rule {:?}: set exactly one of `allow: anonymous`, `require`, `deny: true`",
                    r.name
                ));
            }
        };
        Ok(Self {
            name: r.name,
            paths: r.paths,
            methods: r.methods,
            action,
            mode: r.mode,
        })
    }
}

impl From<RuleConfig> for RawRule {
    fn from(r: RuleConfig) -> Self {
        let (allow, require, deny) = match r.action {
            RuleAction::Anonymous => (Some(Allow::Anonymous), None, false),
            RuleAction::Require(req) => (None, Some(*req), false),
            RuleAction::Deny => (None, None, true),
        };
        Self {
            name: r.name,
            paths: r.paths,
            methods: r.methods,
            allow,
            require,
            deny,
            mode: r.mode,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// Providers whose tokens are accepted; empty means any configured provider.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Claim path → condition; all must hold.
    #[serde(default, deserialize_with = "unique_keys")]
    pub claims: BTreeMap<ClaimPath, ClaimCondition>,
    /// The calling workload, for service-account tokens: its namespace,
    /// service account or pod (as Istio's `source.namespaces`/`principals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// The cluster's RBAC decides (SubjectAccessReview), for the caller as
    /// a Kubernetes user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_rbac: Option<KubernetesRbac>,
}

/// Which service-account callers a rule admits; every listed kind must match.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Namespaces of the calling pod's service account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `namespace/name` of the calling service account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// `namespace/name` of the calling pod (bound tokens only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

/// What the SubjectAccessReview asks about. The verb comes from the method
/// (GET/HEAD get, POST create, PUT update, PATCH patch, DELETE delete,
/// others their lower-case name) unless `verb` says otherwise.
/// Placeholders in the attributes: `{namespace}`, `{pod}`, `{workload}`,
/// `{label:KEY}` (of the called workload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesRbac {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceAttributes>,
    /// Ask about the request's normalised path as a non-resource URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_resource: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceAttributes {
    #[serde(default)]
    pub group: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// What a claim must be: exactly one kind of condition.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCondition {
    Equals(Value),
    AnyOf(Vec<Value>),
    AllOf(Vec<Value>),
    /// `true`: the claim must be there (and not null); `false`: absent.
    Present(bool),
}

/// The YAML shape: a map with one of the four keys.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    all_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    present: Option<bool>,
}

impl<'de> Deserialize<'de> for ClaimCondition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = RawCondition::deserialize(d)?;
        let c = match raw {
            RawCondition {
                equals: Some(v),
                any_of: None,
                all_of: None,
                present: None,
            } => Self::Equals(v),
            RawCondition {
                equals: None,
                any_of: Some(v),
                all_of: None,
                present: None,
            } => Self::AnyOf(v),
            RawCondition {
                equals: None,
                any_of: None,
                all_of: Some(v),
                present: None,
            } => Self::AllOf(v),
            RawCondition {
                equals: None,
                any_of: None,
                all_of: None,
                present: Some(p),
            } => Self::Present(p),
            _ => return Err(D::Error::custom("set exactly one of equals, any_of, all_of, present")),
        };
        if matches!(&c, Self::AnyOf(v) | Self::AllOf(v) if v.is_empty()) {
            return Err(D::Error::custom("any_of / all_of must list at least one value"));
        }
        Ok(c)
    }
}

impl Serialize for ClaimCondition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut raw = RawCondition::default();
        match self {
            Self::Equals(v) => raw.equals = Some(v.clone()),
            Self::AnyOf(v) => raw.any_of = Some(v.clone()),
            Self::AllOf(v) => raw.all_of = Some(v.clone()),
            Self::Present(p) => raw.present = Some(*p),
        }
        raw.serialize(s)
    }
}

/// A claim forwarded as a header: `x-user-email: email`, or with an encoding
/// `x-roles: {claim: realm_access.roles, encoding: json}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardClaim {
    pub claim: ClaimPath,
    pub encoding: Encoding,
}

/// How a claim value becomes a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// A string as it is; an array of strings joined with `,`; a number or
    /// boolean as JSON. A value this cannot carry without ambiguity (a
    /// comma inside an array element, a control or non-ASCII character, an
    /// object) refuses the request instead of forwarding something else.
    #[default]
    Plain,
    /// The claim's JSON, ASCII-only (non-ASCII as `\uXXXX`): carries any value.
    Json,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawForward {
    Path(ClaimPath),
    Full {
        claim: ClaimPath,
        #[serde(default)]
        encoding: Encoding,
    },
}

impl<'de> Deserialize<'de> for ForwardClaim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Untagged enums hide the inner error; say what is expected instead.
        let v = serde_yaml_ng::Value::deserialize(d)?;
        let parsed = match v {
            serde_yaml_ng::Value::String(s) => ClaimPath::parse(&s).map(|claim| Self {
                claim,
                encoding: Encoding::Plain,
            }),
            other => serde_yaml_ng::from_value::<RawForward>(other)
                .map_err(|e| format!("expected a claim path or {{claim: PATH, encoding: plain|json}}: {e}"))
                .map(|r| match r {
                    RawForward::Path(claim) => Self {
                        claim,
                        encoding: Encoding::Plain,
                    },
                    RawForward::Full { claim, encoding } => Self { claim, encoding },
                }),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

impl Serialize for ForwardClaim {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.encoding {
            Encoding::Plain => self.claim.serialize(s),
            Encoding::Json => RawForward::Full {
                claim: self.claim.clone(),
                encoding: self.encoding,
            }
            .serialize(s),
        }
    }
}

/// A path glob over the normalised request path, checked when read:
/// `/admin/**`, `/a/{b,c}/*.json`; `*` or `**` alone mean every path.
#[derive(Debug, Clone)]
pub struct PathGlob {
    /// As written.
    raw: String,
    /// Normalised like a request path (percent-escapes of the pattern
    /// decoded, no trailing slash), `None` for "every path".
    pattern: Option<String>,
}

impl PathGlob {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == "*" || raw == "**" {
            return Ok(Self {
                raw: raw.into(),
                pattern: None,
            });
        }
        if !raw.starts_with('/') {
            return Err(format!("path glob {raw:?} must start with '/'"));
        }
        let pattern = crate::path::glob_pattern(raw).map_err(|why| format!("path glob {raw:?}: {why}"))?;
        // One parse here, so a bad glob is a config error; the policy builds its set from the pattern.
        globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("bad glob {raw:?}: {e}"))?;
        Ok(Self {
            raw: raw.into(),
            pattern: Some(pattern),
        })
    }

    /// The normalised pattern, or `None` when it matches every path.
    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_deref()
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl PartialEq for PathGlob {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Serialize for PathGlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for PathGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An HTTP method as rules name it: upper case, as the standard methods are
/// (extension methods are case-sensitive, RFC 9110 §9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodName(pub http::Method);

impl Serialize for MethodName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = String::deserialize(d)?;
        match http::Method::from_bytes(m.as_bytes()) {
            Ok(method) if !m.bytes().any(|b| b.is_ascii_lowercase()) => Ok(Self(method)),
            _ => Err(serde::de::Error::custom(format!(
                "{m:?} is not an upper-case HTTP method"
            ))),
        }
    }
}
