//! A policy's outbound rules, compiled: which rule (if any) an outbound
//! request of its workload falls under, from the request's host and the
//! connection's original destination, and the destinations the socket
//! layer must steer to the agent.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{EgressFail, EgressRule, EgressToken, HostPattern};

/// The outbound rules of one policy, in order.
#[derive(Debug, Default)]
pub struct EgressRules {
    pub rules: Vec<Arc<Egress>>,
    pub fail: EgressFail,
}

/// One compiled outbound rule.
#[derive(Debug)]
pub struct Egress {
    pub name: Arc<str>,
    hosts: Vec<HostPattern>,
    ports: Vec<u16>,
    addresses: Vec<ipnet::IpNet>,
    pub token: EgressToken,
    pub replace_existing: bool,
}

/// A destination to steer: a port, on every address or on one network.
pub type SteeredDestination = (Option<ipnet::IpNet>, u16);

impl EgressRules {
    pub fn compile(rules: &[EgressRule], fail: EgressFail) -> Self {
        let rules = rules
            .iter()
            .map(|r| {
                Arc::new(Egress {
                    name: r.name.as_str().into(),
                    hosts: r.to.hosts.clone(),
                    ports: r.to.ports.clone(),
                    addresses: r.to.addresses.clone(),
                    token: r.token.clone(),
                    replace_existing: r.replace_existing,
                })
            })
            .collect();
        Self { rules, fail }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule for a request to `host` (its `Host`/`:authority`,
    /// see [`host_of`]) on a connection that was going to `dst`.
    pub fn find(&self, host: Option<&str>, dst: SocketAddr) -> Option<&Arc<Egress>> {
        self.rules.iter().find(|r| r.matches(host, dst))
    }

    /// What the socket layer steers: each rule's ports, on its addresses
    /// (or every address), without repeats.
    pub fn destinations(&self) -> Vec<SteeredDestination> {
        let mut out: Vec<SteeredDestination> = Vec::new();
        for r in &self.rules {
            for &port in &r.ports {
                if r.addresses.is_empty() {
                    out.push((None, port));
                } else {
                    out.extend(r.addresses.iter().map(|n| (Some(n.trunc()), port)));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

impl Egress {
    /// Whether a request to `host` on a connection to `dst` falls under this rule.
    pub fn matches(&self, host: Option<&str>, dst: SocketAddr) -> bool {
        let ip = dst.ip().to_canonical();
        self.ports.contains(&dst.port())
            && (self.addresses.is_empty() || self.addresses.iter().any(|n| n.contains(&ip)))
            && (self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h))))
    }
}

/// The host a request names, as rules compare it: lower case, without the
/// port, without a trailing dot; `None` when it names none or an invalid one.
pub fn host_of(authority: &str) -> Option<String> {
    // A Host header has no userinfo (RFC 9110 §7.2): `a@b` is refused, not read as `b`.
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        rest.split_once(']')?.0
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> EgressRules {
        let parsed: Vec<EgressRule> = serde_yaml_ng::from_str(yaml).expect("rules");
        EgressRules::compile(&parsed, EgressFail::Closed)
    }

    fn dst(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn first_rule_by_host_port_and_address() {
        let r = rules(
            r#"
- name: payments
  to: {hosts: [payments, payments.shop.svc.cluster.local], ports: [8080]}
  token: {service_account: {audience: payments}}
- name: pinned
  to: {ports: [9090], addresses: [10.96.0.0/12]}
  token: {service_account: {audience: internal}}
"#,
        );
        let name = |h: Option<&str>, d: &str| r.find(h, dst(d)).map(|e| e.name.to_string());
        assert_eq!(name(Some("payments"), "10.0.0.9:8080").as_deref(), Some("payments"));
        assert_eq!(name(Some("payments"), "10.0.0.9:8081"), None, "another port");
        assert_eq!(name(Some("orders"), "10.0.0.9:8080"), None, "another host");
        assert_eq!(name(None, "10.0.0.9:8080"), None, "no host");
        assert_eq!(name(Some("anything"), "10.96.3.4:9090").as_deref(), Some("pinned"));
        assert_eq!(name(Some("anything"), "10.0.3.4:9090"), None, "outside the network");
        assert_eq!(name(Some("x"), "[::ffff:10.96.3.4]:9090").as_deref(), Some("pinned"));
        assert_eq!(
            r.destinations(),
            vec![(None, 8080), (Some("10.96.0.0/12".parse().expect("net")), 9090)]
        );
    }

    #[test]
    fn hosts_are_read_like_rules_write_them() {
        assert_eq!(host_of("Payments:8080").as_deref(), Some("payments"));
        assert_eq!(
            host_of("payments.shop.svc.cluster.local.").as_deref(),
            Some("payments.shop.svc.cluster.local")
        );
        assert_eq!(host_of("[fd00::1]:80").as_deref(), Some("fd00::1"));
        assert_eq!(host_of("10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(host_of("user@payments:80"), None);
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("a b"), None);
        assert_eq!(host_of("payments:http"), None);
    }
}
