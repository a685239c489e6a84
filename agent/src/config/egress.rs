//! The `egress` section of a policy: which of its workloads' outbound HTTP
//! calls carry an identity the agent obtains for them, and which kind of
//! token. Every value is checked when read (host patterns, exactly one token
//! kind); cross references (providers) are `validate.rs`.
//!
//! ```yaml
//! egress:
//!   - name: payments
//!     to: {hosts: ["payments.shop.svc.cluster.local", "payments"], ports: [8080]}
//!     token:
//!       service_account: {audience: payments}
//!     replace_existing: false
//! egress_fail: closed
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One outbound rule: where (host names and ports, optionally addresses)
/// and which token the call carries. The first rule matching a request's
/// host and destination decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    pub name: String,
    pub to: EgressTo,
    pub token: EgressToken,
    /// An `Authorization` header the application set itself is kept unless
    /// this is true (then the agent's token replaces it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace_existing: bool,
}

/// Where a rule applies. Connections to `ports` (on `addresses`, when
/// given) are steered to the agent; the request's `Host` (`:authority` in
/// HTTP/2) then picks the rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressTo {
    /// Host names as the application writes them (`payments`,
    /// `payments.shop.svc.cluster.local`, `*.shop.svc.cluster.local` for
    /// any name below); compared without the port, case-insensitively.
    /// Empty: any host on these ports and addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostPattern>,
    /// Destination ports (at least one): the socket layer steers by port.
    pub ports: Vec<u16>,
    /// Only connections to these addresses or networks (a Service CIDR, one
    /// pod): the token is never sent anywhere else, whatever `Host` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub addresses: Vec<ipnet::IpNet>,
}

/// What happens to a workload's configured egress while the agent is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EgressFail {
    /// Configured destinations are refused (`connect()` fails): nothing is
    /// sent without the identity it was configured to carry.
    #[default]
    Closed,
    /// Configured destinations are reached directly, without a token.
    Open,
}

/// Which token a rule's calls carry: exactly one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum EgressToken {
    /// A TokenRequest for the calling pod's service account, bound to the pod.
    ServiceAccount(ServiceAccountToken),
    /// An OAuth 2.0 client-credentials grant at a provider's token endpoint.
    ClientCredentials(ClientCredentials),
    /// An RFC 8693 token exchange: the pod's service-account token as the
    /// subject, optionally the agent's own token as the actor.
    Exchange(TokenExchange),
}

impl EgressToken {
    /// The kind as metrics and audit lines name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceAccount(_) => "service_account",
            Self::ClientCredentials(_) => "client_credentials",
            Self::Exchange(_) => "exchange",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountToken {
    /// The audience the token is minted for (what the destination accepts).
    pub audience: String,
    /// Requested lifetime (the API server may shorten it; at least 10m).
    #[serde(default = "default_expiration", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub expiration: Duration,
}

fn default_expiration() -> Duration {
    Duration::from_secs(3600)
}

/// How the agent authenticates as an OAuth client at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    /// The provider whose token endpoint (discovered, or `token_endpoint`) issues the token.
    pub provider: String,
    pub client_id: String,
    /// A file holding the client secret (re-read when it changes); platform-owned:
    /// refused in IdentityPolicies.
    pub client_secret_file: PathBuf,
    #[serde(default, skip_serializing_if = "ClientAuth::is_default")]
    pub auth_method: ClientAuth,
    /// Space-separated scopes to ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `audience` parameter (Auth0, Okta and others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// RFC 8707 `resource` indicator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    /// The provider whose token endpoint performs the exchange.
    pub provider: String,
    /// The audience of the pod's service-account token sent as the subject
    /// (what the provider's federation trusts).
    pub subject_audience: String,
    /// The agent's own token, sent as the actor (`act` in the result): a
    /// projected service-account token file of the agent, re-read each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_token_file: Option<PathBuf>,
    /// Client authentication at the token endpoint, when the provider wants it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "ClientAuth::is_default")]
    pub auth_method: ClientAuth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl ClientAuth {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The YAML shape: a map with exactly one of the three kinds.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service_account: Option<ServiceAccountToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_credentials: Option<ClientCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exchange: Option<TokenExchange>,
}

impl<'de> Deserialize<'de> for EgressToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawToken::deserialize(d)? {
            RawToken {
                service_account: Some(t),
                client_credentials: None,
                exchange: None,
            } => Ok(Self::ServiceAccount(t)),
            RawToken {
                service_account: None,
                client_credentials: Some(t),
                exchange: None,
            } => Ok(Self::ClientCredentials(t)),
            RawToken {
                service_account: None,
                client_credentials: None,
                exchange: Some(t),
            } => Ok(Self::Exchange(t)),
            _ => Err(serde::de::Error::custom(
                "set exactly one of service_account, client_credentials, exchange",
            )),
        }
    }
}

impl Serialize for EgressToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut raw = RawToken::default();
        match self {
            Self::ServiceAccount(t) => raw.service_account = Some(t.clone()),
            Self::ClientCredentials(t) => raw.client_credentials = Some(t.clone()),
            Self::Exchange(t) => raw.exchange = Some(t.clone()),
        }
        raw.serialize(s)
    }
}

/// A host name a rule matches: exact (`payments.shop`) or every name below
/// a domain (`*.shop.svc.cluster.local`). Lower case, no port, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    raw: String,
    /// `Some(".shop.svc.cluster.local")` for a wildcard.
    suffix: Option<String>,
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (wild, name) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let is_ip = name.parse::<std::net::IpAddr>().is_ok();
        if name.is_empty() || name.len() > 253 || !(is_ip || name.split('.').all(valid_label)) || (wild && is_ip) {
            return Err(format!(
                "{raw:?} is not a host name (letters, digits, `-`, dots; optionally `*.` in front; no port)"
            ));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("{raw:?}: write host names in lower case"));
        }
        Ok(Self {
            raw: raw.to_string(),
            suffix: wild.then(|| format!(".{name}")),
        })
    }

    /// Whether `host` (already lower case, without port or trailing dot) matches.
    pub fn matches(&self, host: &str) -> bool {
        match &self.suffix {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            None => host == self.raw,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Result<EgressRule, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_parses() {
        let r = rule(
            "name: payments\nto: {hosts: [payments.shop.svc.cluster.local, payments], ports: [8080]}\ntoken:\n  service_account: {audience: payments}\n",
        )
        .expect("parses");
        assert_eq!(r.to.ports, vec![8080]);
        assert!(!r.replace_existing);
        let EgressToken::ServiceAccount(sa) = &r.token else {
            panic!("service account token")
        };
        assert_eq!(sa.audience, "payments");
        assert_eq!(sa.expiration, Duration::from_secs(3600));
        // It serialises back to the same shape.
        let again: EgressRule =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&r).expect("yaml")).expect("round trip");
        assert_eq!(again, r);
    }

    #[test]
    fn exactly_one_token_kind() {
        let none = rule("name: a\nto: {ports: [80]}\ntoken: {}\n").expect_err("no kind");
        assert!(none.contains("exactly one of"), "{none}");
        let two = rule(
            "name: a\nto: {ports: [80]}\ntoken:\n  service_account: {audience: x}\n  client_credentials: {provider: p, client_id: c, client_secret_file: /s}\n",
        )
        .expect_err("two kinds");
        assert!(two.contains("exactly one of"), "{two}");
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("payments.shop").expect("exact");
        assert!(exact.matches("payments.shop"));
        assert!(!exact.matches("xpayments.shop"));
        let wild = HostPattern::parse("*.shop.svc.cluster.local").expect("wildcard");
        assert!(wild.matches("payments.shop.svc.cluster.local"));
        assert!(!wild.matches("shop.svc.cluster.local"));
        assert!(!wild.matches("evilshop.svc.cluster.local"));
        assert!(HostPattern::parse("10.0.0.7").is_ok());
        for bad in ["", "Payments", "a:8080", "*.10.0.0.1", "a..b", "-a.b", "a b", "*"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
