//! The `egress` parts of validation: rule names, ports, providers named by
//! token kinds, what IdentityPolicies may not say (secret files on the
//! node), and what a static workload with egress must name (its cgroup and
//! service account).

use std::collections::HashSet;
use std::time::Duration;

use super::Invalid;
use crate::config::{Config, EgressToken, PolicyConfig, WorkloadConfig};

/// The shortest lifetime a TokenRequest may ask for (the API server's minimum).
const MIN_EXPIRATION: Duration = Duration::from_secs(600);
/// The longest a requested token may live: a leaked egress token is the
/// caller's identity for that long.
const MAX_EXPIRATION: Duration = Duration::from_secs(24 * 3600);

pub(super) fn egress(c: &Config, p: &PolicyConfig) -> Result<(), Invalid> {
    let mut names = HashSet::new();
    for (i, r) in p.egress.iter().enumerate() {
        let key = |k: &str| format!("egress[{i}].{k}");
        if r.name.is_empty() || r.name.contains('/') || !names.insert(r.name.as_str()) {
            return Err((
                key("name"),
                format!("empty, duplicate or slashed egress rule name {:?}", r.name),
            ));
        }
        if r.to.ports.is_empty() {
            return Err((key("to.ports"), "list at least one destination port".into()));
        }
        if r.to.ports.contains(&0) {
            return Err((key("to.ports"), "port 0 is not a destination".into()));
        }
        if let Some(net) = r.to.addresses.iter().find(|n| n.addr().to_canonical().is_loopback()) {
            return Err((
                key("to.addresses"),
                format!("{net}: loopback destinations are the pod's own and are never steered"),
            ));
        }
        token(c, &r.token).map_err(|(k, why)| (key(&format!("token.{k}")), why))?;
    }
    Ok(())
}

fn token(c: &Config, t: &EgressToken) -> Result<(), Invalid> {
    let provider = |name: &str, k: &str| -> Result<(), Invalid> {
        match c.providers.iter().find(|p| p.name == name) {
            None => Err((k.into(), format!("no provider named {name:?}"))),
            Some(p) if p.kubernetes_service_accounts.is_some() => Err((
                k.into(),
                format!("provider {name:?} is the cluster's service accounts: it has no token endpoint"),
            )),
            Some(_) => Ok(()),
        }
    };
    let needs_api = |k: &str| -> Result<(), Invalid> {
        if c.kubernetes.api() {
            Ok(())
        } else {
            Err((
                k.into(),
                "service-account tokens come from the API server: enable `kubernetes` or set `kubernetes.kubeconfig`"
                    .into(),
            ))
        }
    };
    match t {
        EgressToken::ServiceAccount(sa) => {
            if sa.audience.is_empty() {
                return Err(("service_account.audience".into(), "must not be empty".into()));
            }
            if !(MIN_EXPIRATION..=MAX_EXPIRATION).contains(&sa.expiration) {
                return Err((
                    "service_account.expiration".into(),
                    "between 10m (the API server's minimum) and 24h".into(),
                ));
            }
            needs_api("service_account")
        }
        EgressToken::ClientCredentials(cc) => {
            provider(&cc.provider, "client_credentials.provider")?;
            if cc.client_id.is_empty() {
                return Err(("client_credentials.client_id".into(), "must not be empty".into()));
            }
            Ok(())
        }
        EgressToken::Exchange(ex) => {
            provider(&ex.provider, "exchange.provider")?;
            if ex.subject_audience.is_empty() {
                return Err(("exchange.subject_audience".into(), "must not be empty".into()));
            }
            if ex.client_secret_file.is_some() && ex.client_id.is_none() {
                return Err((
                    "exchange.client_id".into(),
                    "a client secret needs its client_id".into(),
                ));
            }
            needs_api("exchange")
        }
    }
}

/// What an IdentityPolicy (written by an app team) may not say: secret and
/// token files live on the node and belong to the platform, so a namespace
/// must not be able to make the agent send them anywhere.
pub(in crate::config) fn resource_policy(p: &PolicyConfig) -> Result<(), Invalid> {
    for (i, r) in p.egress.iter().enumerate() {
        if !matches!(r.token, EgressToken::ServiceAccount(_)) {
            return Err((
                format!("egress[{i}].token"),
                format!(
                    "{} names files on the node (client secrets, the agent's token): only the agent's \
                     configuration file may use it; IdentityPolicies may use service_account",
                    r.token.kind()
                ),
            ));
        }
    }
    Ok(())
}

/// A static workload whose policy has egress rules needs its cgroup (to
/// steer) and, for pod tokens, a service account.
pub(super) fn workload(w: &WorkloadConfig, p: &PolicyConfig) -> Result<(), Invalid> {
    if p.egress.is_empty() {
        if w.cgroup.is_some() {
            return Err((
                "cgroup".into(),
                "only used for `egress`, and the policy has none".into(),
            ));
        }
        return Ok(());
    }
    if w.netns.is_none() {
        return Err((
            "netns".into(),
            "`egress` needs eBPF steering: set `netns` and `cgroup` (reverse-proxy workloads have no outbound side)"
                .into(),
        ));
    }
    let Some(cgroup) = &w.cgroup else {
        return Err((
            "cgroup".into(),
            "`egress` needs the workload's cgroup (v2 directory)".into(),
        ));
    };
    if !cgroup.is_absolute() {
        return Err(("cgroup".into(), "must be an absolute path".into()));
    }
    let pod_tokens = p
        .egress
        .iter()
        .any(|r| matches!(r.token, EgressToken::ServiceAccount(_) | EgressToken::Exchange(_)));
    if pod_tokens && w.service_account.is_none() {
        return Err((
            "service_account".into(),
            "the policy's egress asks for service-account tokens: name the workload's service account".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const BASE: &str = r#"
kubernetes: {kubeconfig: /etc/kubeconfig}
providers:
  - {name: corp, issuer: "https://idp.example.com", audiences: [orders]}
  - {name: cluster, kubernetes_service_accounts: {}, audiences: [orders]}
policies:
  - name: callers
    selector: {app: caller}
    egress:
      - name: payments
        to: {hosts: [payments], ports: [8080]}
        token: TOKEN
workloads:
  - {name: caller, namespace: shop, service_account: caller, labels: {app: caller}, netns: /run/netns/a, cgroup: /sys/fs/cgroup/a}
"#;

    fn parse(token: &str, edit: impl Fn(String) -> String) -> Result<Config, ConfigError> {
        Config::parse_with_env(&edit(BASE.replace("TOKEN", token)), Path::new("f.yaml"), |_| None)
    }

    fn refused(token: &str, edit: impl Fn(String) -> String) -> (String, String) {
        match parse(token, edit) {
            Err(ConfigError::Invalid { key, reason, .. }) => (key, reason),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    const SA: &str = "{service_account: {audience: payments}}";

    #[test]
    fn the_three_token_kinds_are_accepted() {
        parse(SA, |s| s).expect("service_account");
        parse(
            "{client_credentials: {provider: corp, client_id: c, client_secret_file: /s, scope: a b}}",
            |s| s,
        )
        .expect("client_credentials");
        parse(
            "{exchange: {provider: corp, subject_audience: corp, actor_token_file: /t}}",
            |s| s,
        )
        .expect("exchange");
    }

    #[test]
    fn errors_name_the_key() {
        type Edit = Box<dyn Fn(String) -> String>;
        let cases: Vec<(&str, Edit, &str, &str)> = vec![
            (
                SA,
                Box::new(|s| s.replace("ports: [8080]", "ports: []")),
                "policies[0].egress[0].to.ports",
                "at least one",
            ),
            (
                SA,
                Box::new(|s| s.replace("ports: [8080]", "ports: [8080], addresses: [127.0.0.0/8]")),
                "policies[0].egress[0].to.addresses",
                "loopback",
            ),
            (
                "{service_account: {audience: payments, expiration: 1m}}",
                Box::new(|s| s),
                "policies[0].egress[0].token.service_account.expiration",
                "10m",
            ),
            (
                "{client_credentials: {provider: nope, client_id: c, client_secret_file: /s}}",
                Box::new(|s| s),
                "policies[0].egress[0].token.client_credentials.provider",
                "no provider",
            ),
            (
                "{client_credentials: {provider: cluster, client_id: c, client_secret_file: /s}}",
                Box::new(|s| s),
                "policies[0].egress[0].token.client_credentials.provider",
                "no token endpoint",
            ),
            (
                SA,
                Box::new(|s| {
                    s.replace("kubernetes: {kubeconfig: /etc/kubeconfig}\n", "").replace(
                        "  - {name: cluster, kubernetes_service_accounts: {}, audiences: [orders]}\n",
                        "",
                    )
                }),
                "policies[0].egress[0].token.service_account",
                "API server",
            ),
            (
                SA,
                Box::new(|s| s.replace(", cgroup: /sys/fs/cgroup/a", "")),
                "workloads[0].cgroup",
                "cgroup",
            ),
            (
                SA,
                Box::new(|s| s.replace("service_account: caller, ", "")),
                "workloads[0].service_account",
                "service account",
            ),
            (
                SA,
                Box::new(|s| {
                    s.replace(
                        "netns: /run/netns/a, cgroup: /sys/fs/cgroup/a",
                        "listen: 127.0.0.1:1, upstream: 127.0.0.1:2",
                    )
                }),
                "workloads[0].netns",
                "eBPF",
            ),
        ];
        for (token, edit, key, why) in cases {
            let (k, reason) = refused(token, edit);
            assert_eq!(k, key, "{reason}");
            assert!(reason.contains(why), "{key}: {reason}");
        }
        let e = parse(
            "{service_account: {audience: a}, exchange: {provider: corp, subject_audience: x}}",
            |s| s,
        )
        .expect_err("two kinds");
        assert!(e.to_string().contains("exactly one of"), "{e}");
    }

    #[test]
    fn identity_policies_may_only_use_service_account_tokens() {
        let config = parse(SA, |s| s).expect("valid");
        let spec = |token: &str| {
            serde_json::json!({
                "egress": [{"name": "x", "to": {"ports": [80]}, "token": serde_yaml_ng::from_str::<serde_json::Value>(token).expect("token")}]
            })
        };
        config
            .parse_policy("shop/p", &spec(SA), Path::new("IdentityPolicy shop/p"))
            .expect("service_account is fine");
        let e = config
            .parse_policy(
                "shop/p",
                &spec("{client_credentials: {provider: corp, client_id: c, client_secret_file: /etc/nodeward/secret}}"),
                Path::new("IdentityPolicy shop/p"),
            )
            .expect_err("a node file");
        assert!(
            e.to_string().contains("spec.egress[0].token") && e.to_string().contains("only the agent's configuration"),
            "{e}"
        );
    }
}
