//! Checks of a policy's `protected_resource` against the rest of the policy
//! and the configuration: the resource identifier's shape, the providers it
//! names, how it composes with `audiences`, `forward_token` and the rules.
//! Keys are relative to the policy.

use super::super::{BearerMethod, Config, PolicyConfig, ProtectedResourceConfig, RuleAction, TokenSource};
use super::Invalid;

pub(super) fn protected_resource(c: &Config, p: &PolicyConfig) -> Result<(), Invalid> {
    let Some(r) = &p.protected_resource else {
        return Ok(());
    };
    let key = |k: &str| format!("protected_resource.{k}");
    if p.forward_token {
        return Err((
            "forward_token".into(),
            "a `protected_resource` never passes the client's token on (MCP forbids token passthrough): \
             its app gets the identity headers; remove `forward_token`"
                .into(),
        ));
    }
    resource_uri(&r.resource).map_err(|why| (key("resource"), why))?;
    if !p.audiences.is_empty() && !p.audiences.contains(&r.resource) {
        return Err((
            "audiences".into(),
            format!(
                "must include protected_resource.resource {:?} (tokens for the resource carry it as their \
                 audience, RFC 8707), or be left out: the resource is then the only audience",
                r.resource
            ),
        ));
    }
    authorization_servers(c, r).map_err(|(k, why)| (key(&k), why))?;
    for (i, s) in r.scopes_supported.iter().enumerate() {
        // RFC 6749 §3.3 scope-token: printable ASCII without space, `"` or `\`.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
            return Err((
                key(&format!("scopes_supported[{i}]")),
                format!("{s:?} is not a scope token (printable ASCII without spaces, quotes or backslashes)"),
            ));
        }
    }
    if let Some(doc) = &r.resource_documentation {
        let ok = url::Url::parse(doc).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !ok {
            return Err((key("resource_documentation"), "must be an absolute http(s) URL".into()));
        }
    }
    for (j, rule) in p.rules.iter().enumerate() {
        let RuleAction::Require(req) = &rule.action else {
            continue;
        };
        if let Some((k, name)) = req
            .providers
            .iter()
            .enumerate()
            .find(|(_, n)| !r.authorization_servers.contains(n))
        {
            return Err((
                format!("rules[{j}].require.providers[{k}]"),
                format!(
                    "provider {name:?} is not among protected_resource.authorization_servers: \
                     its tokens are refused on this workload, so the rule could never pass"
                ),
            ));
        }
    }
    Ok(())
}

/// An absolute http(s) URI with a host, no fragment, query or user info, and
/// nothing that would need escaping inside a quoted challenge parameter.
fn resource_uri(raw: &str) -> Result<(), String> {
    if !raw.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
        return Err("must be printable ASCII without spaces, quotes or backslashes".into());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not an absolute URI: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err("must be an absolute http(s) URI with a host (the URI clients use)".into());
    }
    if raw.contains('#') {
        return Err("must not have a fragment (RFC 8707 §2)".into());
    }
    if raw.contains('?') {
        return Err("must not have a query: the metadata's well-known URI is derived from the path".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user info".into());
    }
    Ok(())
}

/// Every named provider exists, has an issuer clients can reach, and at
/// least one of them reads tokens the way each advertised bearer method sends them.
fn authorization_servers(c: &Config, r: &ProtectedResourceConfig) -> Result<(), (String, String)> {
    if r.authorization_servers.is_empty() {
        return Err((
            "authorization_servers".into(),
            "name at least one provider: clients get their tokens there".into(),
        ));
    }
    let mut named = Vec::new();
    for (i, name) in r.authorization_servers.iter().enumerate() {
        let key = format!("authorization_servers[{i}]");
        let Some(p) = c.providers.iter().find(|p| &p.name == name) else {
            return Err((key, format!("no provider named {name:?}")));
        };
        if named.iter().any(|n| n == &name) {
            return Err((key, format!("{name:?} is listed twice")));
        }
        if p.issuer.is_empty() {
            return Err((
                key,
                format!(
                    "provider {name:?} has no configured `issuer` (its issuer is discovered from the API \
                     server): it cannot be published as an authorization server"
                ),
            ));
        }
        named.push(name);
    }
    if r.bearer_methods_supported.is_empty() {
        return Err((
            "bearer_methods_supported".into(),
            "list at least one method (the default is [header])".into(),
        ));
    }
    for (i, m) in r.bearer_methods_supported.iter().enumerate() {
        let read = c
            .providers
            .iter()
            .filter(|p| r.authorization_servers.contains(&p.name))
            .flat_map(|p| &p.token_from)
            .any(|s| {
                matches!(
                    (m, s),
                    (BearerMethod::Header, TokenSource::Header { .. })
                        | (BearerMethod::Query, TokenSource::Query { .. })
                )
            });
        if !read {
            return Err((
                format!("bearer_methods_supported[{i}]"),
                format!(
                    "none of the authorization servers' providers reads tokens by {} (their `token_from`)",
                    m.as_str()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    /// A configuration with two providers (one a service-account issuer)
    /// and a policy `tools` whose `protected_resource` and extra keys are
    /// `resource` (YAML flow mapping) and `extra` (policy keys, one per line).
    fn config(resource: &str, extra: &str) -> String {
        format!(
            r#"providers:
  - {{name: corp, issuer: "http://127.0.0.1:9000", audiences: [tools]}}
  - {{name: other, issuer: "http://127.0.0.1:9001", audiences: [tools]}}
  - {{name: cluster, kubernetes_service_accounts: {{}}, audiences: [nodeward]}}
kubernetes: {{kubeconfig: /dev/null}}
policies:
  - name: tools
    protected_resource: {resource}
{extra}    rules: [{{name: call, require: {{}}}}]
"#
        )
    }

    const GOOD: &str = r#"{resource: "https://tools.example.com/mcp", authorization_servers: [corp]}"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, Path::new("/etc/nodeward.yaml"), |_| None)
    }

    fn invalid(text: &str) -> (String, String) {
        match parse(text) {
            Err(ConfigError::Invalid { key, reason, .. }) => (key, reason),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_protected_resource_with_defaults_is_valid() {
        let c = parse(&config(GOOD, "")).expect("valid");
        let r = c.policies[0].protected_resource.as_ref().expect("parsed");
        assert_eq!(r.bearer_methods_supported, vec![super::BearerMethod::Header]);
        // The effective configuration prints it back, defaults included.
        let yaml = c.to_yaml();
        assert!(yaml.contains("    bearer_methods_supported:\n    - header\n"), "{yaml}");
        assert_eq!(parse(&yaml).expect("round trip"), c);
    }

    #[test]
    fn the_resource_must_be_an_absolute_http_uri_without_fragment_or_query() {
        for (resource, why) in [
            ("tools.example.com/mcp", "not an absolute URI"),
            ("urn:tools", "absolute http(s) URI with a host"),
            ("ftp://tools.example.com/mcp", "absolute http(s) URI with a host"),
            ("https://tools.example.com/mcp#frag", "fragment"),
            ("https://tools.example.com/mcp?x=1", "query"),
            ("https://user@tools.example.com/mcp", "user info"),
            ("https://tools.example.com/a b", "printable ASCII"),
        ] {
            let r = format!(r#"{{resource: "{resource}", authorization_servers: [corp]}}"#);
            let (key, reason) = invalid(&config(&r, ""));
            assert_eq!(key, "policies[0].protected_resource.resource", "{resource}");
            assert!(reason.contains(why), "{resource}: {reason}");
        }
    }

    #[test]
    fn authorization_servers_must_name_providers_with_an_issuer() {
        for (servers, key, why) in [
            ("[]", "authorization_servers", "at least one provider"),
            ("[nope]", "authorization_servers[0]", "no provider named \"nope\""),
            ("[corp, corp]", "authorization_servers[1]", "listed twice"),
            ("[corp, cluster]", "authorization_servers[1]", "no configured `issuer`"),
        ] {
            let r = format!(r#"{{resource: "https://t.example/mcp", authorization_servers: {servers}}}"#);
            let (k, reason) = invalid(&config(&r, ""));
            assert_eq!(k, format!("policies[0].protected_resource.{key}"), "{servers}");
            assert!(reason.contains(why), "{servers}: {reason}");
        }
    }

    #[test]
    fn forward_token_is_refused_with_the_reason() {
        let (key, reason) = invalid(&config(GOOD, "    forward_token: true\n"));
        assert_eq!(key, "policies[0].forward_token");
        assert!(reason.contains("token passthrough"), "{reason}");
        assert!(reason.contains("identity headers"), "{reason}");
    }

    #[test]
    fn audiences_must_include_the_resource_when_set() {
        let (key, reason) = invalid(&config(GOOD, "    audiences: [tools]\n"));
        assert_eq!(key, "policies[0].audiences");
        assert!(reason.contains("\"https://tools.example.com/mcp\""), "{reason}");
        let both = "    audiences: [\"https://tools.example.com/mcp\", tools]\n";
        parse(&config(GOOD, both)).expect("audiences that include the resource are valid");
    }

    #[test]
    fn scopes_methods_and_documentation_are_checked() {
        let cases = [
            (
                r#"{resource: "https://t.example/mcp", authorization_servers: [corp], scopes_supported: ["a b"]}"#,
                "scopes_supported[0]",
                "not a scope token",
            ),
            (
                r#"{resource: "https://t.example/mcp", authorization_servers: [corp], bearer_methods_supported: [query]}"#,
                "bearer_methods_supported[0]",
                "reads tokens by query",
            ),
            (
                r#"{resource: "https://t.example/mcp", authorization_servers: [corp], bearer_methods_supported: []}"#,
                "bearer_methods_supported",
                "at least one",
            ),
            (
                r#"{resource: "https://t.example/mcp", authorization_servers: [corp], resource_documentation: "docs"}"#,
                "resource_documentation",
                "absolute http(s) URL",
            ),
        ];
        for (r, key, why) in cases {
            let (k, reason) = invalid(&config(r, ""));
            assert_eq!(k, format!("policies[0].protected_resource.{key}"), "{r}");
            assert!(reason.contains(why), "{r}: {reason}");
        }
        let body =
            r#"{resource: "https://t.example/mcp", authorization_servers: [corp], bearer_methods_supported: [body]}"#;
        let (k, reason) = invalid(&config(body, ""));
        assert_eq!(k, "policies[0].protected_resource.bearer_methods_supported[0]");
        assert!(reason.contains("unknown variant `body`"), "{reason}");
    }

    #[test]
    fn a_rule_may_not_require_a_provider_the_resource_refuses() {
        let text = config(GOOD, "").replace("require: {}", "require: {providers: [other]}");
        let (key, reason) = invalid(&text);
        assert_eq!(key, "policies[0].rules[0].require.providers[0]");
        assert!(
            reason.contains("not among protected_resource.authorization_servers"),
            "{reason}"
        );
    }

    #[test]
    fn an_identity_policy_gets_the_same_checks_under_spec() {
        let c = parse(&config(GOOD, "")).expect("valid");
        let spec = serde_json::json!({
            "protected_resource": {"resource": "https://t.example/mcp", "authorization_servers": ["corp"]},
            "forward_token": true,
            "rules": [{"name": "call", "require": {}}],
        });
        let e = c
            .parse_policy("ns/tools", &spec, Path::new("IdentityPolicy ns/tools"))
            .expect_err("refused");
        assert!(e.to_string().contains("key `spec.forward_token`"), "{e}");
        let mut spec = spec;
        spec.as_object_mut().expect("object").remove("forward_token");
        let p = c
            .parse_policy("ns/tools", &spec, Path::new("IdentityPolicy ns/tools"))
            .expect("an IdentityPolicy may be a protected resource");
        assert_eq!(
            p.protected_resource.map(|r| r.resource).as_deref(),
            Some("https://t.example/mcp")
        );
    }
}
