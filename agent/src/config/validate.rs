//! Checks that serde cannot express: cross references, URL schemes, globs,
//! exactly-one-of fields. Each failure names the key it is about.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use super::{Config, ConfigError, KubernetesConfig, PolicyConfig, ProviderConfig, RuleConfig, WorkloadConfig};

/// Algorithms the validator implements. `none` is deliberately absent.
pub const KNOWN_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512",
];

/// Headers a claim may not be forwarded as: the agent's own identity headers,
/// and headers that frame or route the request (a claim must never decide
/// where a request goes or how long its body is).
pub const RESERVED_HEADERS: &[&str] = &[
    "x-nodeward-sub",
    "x-nodeward-iss",
    "x-request-id",
    "x-forwarded-for",
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

pub(super) fn validate(c: &Config, file: &Path) -> Result<(), ConfigError> {
    let err = |key: String, reason: String| ConfigError::invalid(file, key, reason);

    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    for (i, p) in c.providers.iter().enumerate() {
        let key = |k: &str| format!("providers[{i}].{k}");
        if p.name.is_empty() {
            return Err(err(key("name"), "must not be empty".into()));
        }
        if !names.insert(p.name.as_str()) {
            return Err(err(key("name"), format!("duplicate provider name {:?}", p.name)));
        }
        if !issuers.insert(p.issuer.as_str()) {
            return Err(err(key("issuer"), format!("two providers share issuer {:?}", p.issuer)));
        }
        check_url(p, &p.issuer).map_err(|r| err(key("issuer"), r))?;
        if let Some(uri) = &p.jwks_uri {
            check_url(p, uri).map_err(|r| err(key("jwks_uri"), r))?;
        }
        if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
            return Err(err(
                key("audiences"),
                "list at least one non-empty audience: tokens for other services must not pass".into(),
            ));
        }
        if p.algorithms.is_empty() {
            return Err(err(key("algorithms"), "must list at least one algorithm".into()));
        }
        for (j, a) in p.algorithms.iter().enumerate() {
            if !KNOWN_ALGORITHMS.contains(&a.as_str()) {
                return Err(err(
                    format!("providers[{i}].algorithms[{j}]"),
                    format!(
                        "unknown or forbidden algorithm {a:?}; known: {}",
                        KNOWN_ALGORITHMS.join(", ")
                    ),
                ));
            }
            if a.starts_with("HS") && p.hs_secret_file.is_none() {
                return Err(err(
                    format!("providers[{i}].algorithms[{j}]"),
                    format!("{a} needs `hs_secret_file` (a shared secret), never a public key"),
                ));
            }
        }
        let r = &p.refresh;
        if r.min_interval.is_zero() || r.min_interval > r.max_interval {
            return Err(err(
                key("refresh.min_interval"),
                "must be above zero and not above refresh.max_interval".into(),
            ));
        }
        if r.max_staleness < r.max_interval {
            return Err(err(
                key("refresh.max_staleness"),
                "must be at least refresh.max_interval, or keys expire before the next refresh".into(),
            ));
        }
        if r.fetch_timeout.is_zero() || r.max_response_bytes == 0 {
            return Err(err(
                key("refresh"),
                "fetch_timeout and max_response_bytes must be above zero".into(),
            ));
        }
        if http::HeaderName::from_bytes(p.token_from.header.as_bytes()).is_err() {
            return Err(err(key("token_from.header"), "not a valid header name".into()));
        }
    }

    let mut policy_names = HashSet::new();
    for (i, p) in c.policies.iter().enumerate() {
        if p.name.is_empty() || !policy_names.insert(p.name.as_str()) {
            return Err(err(
                format!("policies[{i}].name"),
                format!("empty or duplicate policy name {:?}", p.name),
            ));
        }
        for (j, r) in p.rules.iter().enumerate() {
            validate_rule(c, r, &format!("policies[{i}].rules[{j}]")).map_err(|(k, r)| err(k, r))?;
        }
        for (header, claim) in &p.forward_claims {
            let key = format!("policies[{i}].forward_claims.{header}");
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(err(key, "not a valid header name".into()));
            }
            if RESERVED_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
                return Err(err(
                    key,
                    "reserved header: the agent sets it, or it frames/routes the request".into(),
                ));
            }
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                return Err(err(key, format!("bad claim path {claim:?}")));
            }
        }
    }

    let mut workload_names = HashSet::new();
    let mut listens = HashSet::new();
    for (i, w) in c.workloads.iter().enumerate() {
        let key = |k: &str| format!("workloads[{i}].{k}");
        if w.name.is_empty() || !workload_names.insert(w.name.as_str()) {
            return Err(err(
                key("name"),
                format!("empty or duplicate workload name {:?}", w.name),
            ));
        }
        if !w.ips.is_empty() && w.netns.is_none() {
            return Err(err(key("ips"), "`ips` only applies to `netns` workloads".into()));
        }
        match (w.listen, w.upstream, &w.netns) {
            (Some(listen), Some(_), None) => {
                if !listens.insert(listen) {
                    return Err(err(key("listen"), format!("{listen} is used by another workload")));
                }
            }
            (None, None, Some(_)) => {
                let ports = bound_policy(c, w).map(|p| p.ports.len());
                if ports == Some(0) {
                    return Err(err(
                        key("netns"),
                        "the policy selecting this workload lists no `ports` to protect".into(),
                    ));
                }
            }
            _ => {
                return Err(err(
                    key("listen"),
                    "set either `listen` and `upstream` (reverse proxy) or `netns` (eBPF steering)".into(),
                ));
            }
        }
        if let Some(name) = &w.policy {
            if !c.policies.iter().any(|p| &p.name == name) {
                return Err(err(key("policy"), format!("no policy named {name:?}")));
            }
            continue;
        }
        let matching: Vec<&str> = c
            .policies
            .iter()
            .filter(|p| p.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .map(|p| p.name.as_str())
            .collect();
        match matching.as_slice() {
            [_] => {}
            [] => {
                return Err(err(
                    key("labels"),
                    format!("no policy selects workload {:?}; it would deny everything", w.name),
                ));
            }
            many => {
                return Err(err(
                    key("labels"),
                    format!("several policies select workload {:?}: {}", w.name, many.join(", ")),
                ));
            }
        }
    }

    validate_kubernetes(&c.kubernetes).map_err(|(k, r)| err(format!("kubernetes.{k}"), r))
}

/// The policy a static workload is bound to: the one it names, else the first its labels select.
pub fn bound_policy<'c>(c: &'c Config, w: &WorkloadConfig) -> Option<&'c PolicyConfig> {
    match &w.policy {
        Some(name) => c.policies.iter().find(|p| &p.name == name),
        None => c
            .policies
            .iter()
            .find(|p| p.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))),
    }
}

fn validate_kubernetes(k: &KubernetesConfig) -> Result<(), (&'static str, String)> {
    if k.enabled && k.node_name.as_deref().is_none_or(str::is_empty) {
        return Err((
            "node_name",
            "the pod watch needs this node's name: set it, or the NODE_NAME environment variable \
             (a DaemonSet passes spec.nodeName through the downward API)"
                .into(),
        ));
    }
    if let Some(n) = &k.node_name
        && (n.is_empty() || n.contains([',', '=', '!', ' ']))
    {
        return Err(("node_name", format!("{n:?} is not a node name")));
    }
    let Some((key, value)) = k.opt_in_label.split_once('=') else {
        return Err((
            "opt_in_label",
            format!(
                "{:?} must be `key=value`, e.g. nodeward.io/enabled=true",
                k.opt_in_label
            ),
        ));
    };
    label_key(key).map_err(|r| ("opt_in_label", format!("label key {key:?}: {r}")))?;
    label_value(value).map_err(|r| ("opt_in_label", format!("label value {value:?}: {r}")))?;
    label_key(&k.policy_annotation).map_err(|r| {
        (
            "policy_annotation",
            format!("annotation key {:?}: {r}", k.policy_annotation),
        )
    })?;
    if let Some(path) = &k.kubeconfig
        && path.as_os_str().is_empty()
    {
        return Err((
            "kubeconfig",
            "must not be empty; leave it out to use the in-cluster account".into(),
        ));
    }
    for (name, path) in [("proc_root", &k.proc_root), ("cgroup_root", &k.cgroup_root)] {
        if !path.is_absolute() {
            return Err((name, format!("{} must be an absolute path", path.display())));
        }
    }
    Ok(())
}

/// A Kubernetes label (or annotation) key: an optional DNS-subdomain prefix and `/`, then a name.
fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err("the prefix must be a DNS subdomain (lower case, dots)".into());
        }
    }
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    label_value(name)
}

/// A label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends (empty allowed).
fn label_value(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("at most 63 of A-Z a-z 0-9 . _ -, starting and ending alphanumeric".into())
    }
}

fn validate_rule(c: &Config, r: &RuleConfig, at: &str) -> Result<(), (String, String)> {
    let e = |k: &str, reason: String| Err((format!("{at}.{k}"), reason));
    if r.name.is_empty() {
        return e("name", "must not be empty".into());
    }
    let set = usize::from(r.allow.is_some()) + usize::from(r.require.is_some()) + usize::from(r.deny);
    if set != 1 {
        return e(
            "require",
            "set exactly one of `allow: anonymous`, `require`, `deny: true`".into(),
        );
    }
    for (k, g) in r.paths.iter().enumerate() {
        if !g.starts_with('/') && g != "*" && g != "**" {
            return e(&format!("paths[{k}]"), format!("path glob {g:?} must start with '/'"));
        }
        if let Err(why) = globset::GlobBuilder::new(g).literal_separator(true).build() {
            return e(&format!("paths[{k}]"), format!("bad glob: {why}"));
        }
    }
    for (k, m) in r.methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() || m.bytes().any(|b| b.is_ascii_lowercase()) {
            return e(
                &format!("methods[{k}]"),
                format!("{m:?} is not an upper-case HTTP method"),
            );
        }
    }
    if let Some(req) = &r.require {
        for (k, p) in req.providers.iter().enumerate() {
            if !c.providers.iter().any(|q| &q.name == p) {
                return e(&format!("require.providers[{k}]"), format!("no provider named {p:?}"));
            }
        }
        if c.providers.is_empty() {
            return e(
                "require",
                "a rule requires a token but no `providers` are configured".into(),
            );
        }
        for (path, cond) in &req.claims {
            let key = format!("require.claims.{path}");
            if path.split('.').any(str::is_empty) {
                return e(&key, format!("bad claim path {path:?}"));
            }
            let n = usize::from(cond.equals.is_some())
                + usize::from(cond.any_of.is_some())
                + usize::from(cond.all_of.is_some())
                + usize::from(cond.present.is_some());
            if n != 1 {
                return e(&key, "set exactly one of equals, any_of, all_of, present".into());
            }
            if cond.any_of.as_ref().is_some_and(Vec::is_empty) || cond.all_of.as_ref().is_some_and(Vec::is_empty) {
                return e(&key, "any_of / all_of must list at least one value".into());
            }
        }
    }
    Ok(())
}

/// https anywhere; plain http only for loopback hosts or with the explicit opt-in.
fn check_url(p: &ProviderConfig, raw: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if p.allow_insecure_http => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(
                    "plain http is only allowed for loopback issuers; use https or set allow_insecure_http: true"
                        .into(),
                )
            }
        }
        other => Err(format!("scheme {other:?} is not supported; use https")),
    }
}
