//! Tests of rule matching (order, globs, methods) and of `Rule::authorize`
//! with its claim conditions, against tokens built by hand.

use std::sync::Arc;

use http::Method;
use serde_json::{Value, json};

use super::*;
use crate::config::{Algorithm, ClaimCondition, PolicyConfig, ProviderConfig};
use crate::provider::{Key, Provider, ProviderMetrics};
use crate::token::VerifiedToken;

fn policy(yaml: &str) -> Policy {
    let cfg: PolicyConfig = serde_yaml_ng::from_str(yaml).expect("policy yaml");
    Policy::compile(&cfg, &[]).expect("policy compiles")
}

/// The contract example's policy.
fn orders() -> Policy {
    policy(
        r#"
name: orders
rules:
  - name: health
    paths: ["/healthz"]
    allow: anonymous
  - name: admin
    paths: ["/admin/**"]
    methods: [POST, DELETE]
    require:
      providers: [corp]
      claims:
        groups: {any_of: [admins]}
  - name: default
    require: {providers: [corp]}
forward_claims: {X-User-Email: email}
"#,
    )
}

fn rule_name<'a>(p: &'a Policy, method: &str, path: &str) -> Option<&'a str> {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    p.matching_rule(&method, path).map(|r| &*r.name)
}

fn provider(name: &str) -> Arc<Provider> {
    let cfg: ProviderConfig = serde_yaml_ng::from_str(&format!(
        "{{name: {name}, issuer: 'https://{name}.example.com', audiences: [orders]}}"
    ))
    .expect("provider yaml");
    let dir = std::env::temp_dir().join("nodeward-policy-tests-no-state");
    Arc::new(Provider::new(cfg, &dir, ProviderMetrics::unregistered(name), None).expect("provider"))
}

fn token(provider_name: &str, claims: Value) -> VerifiedToken {
    let key = Key::from_secret(b"0123456789abcdef0123456789abcdef", Algorithm::HS256)
        .expect("HS256 key from a 32-byte secret");
    let Value::Object(claims) = claims else {
        panic!("claims must be an object")
    };
    VerifiedToken {
        provider: provider(provider_name),
        iss: Arc::new(format!("https://{provider_name}.example.com")),
        sub: claims.get("sub").and_then(Value::as_str).map(String::from),
        exp: 4_000_000_000,
        audiences: vec!["orders".into()],
        claims,
        key: Arc::new(key),
        header_values: Default::default(),
    }
}

#[test]
fn first_matching_rule_decides() {
    let p = orders();
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("GET", "/healthz", Some("health")),
        ("POST", "/healthz", Some("health")),
        ("GET", "/healthz/x", Some("default")),
        ("GET", "/admin", Some("default")),
        ("POST", "/admin", Some("admin")),
        ("DELETE", "/admin/x", Some("admin")),
        ("POST", "/admin/x/y", Some("admin")),
        ("POST", "/admin/", Some("admin")),
        ("POST", "/administrator", Some("default")),
        ("PUT", "/admin/x", Some("default")),
        ("GET", "/", Some("default")),
    ];
    for (method, path, want) in cases {
        assert_eq!(rule_name(&p, method, path), *want, "{method} {path}");
    }
}

#[test]
fn earlier_rule_wins_over_a_later_identical_one() {
    let p = policy(
        "name: p\nrules:\n  - {name: first, paths: ['/x'], deny: true}\n  - {name: second, paths: ['/x'], allow: anonymous}\n",
    );
    assert_eq!(rule_name(&p, "GET", "/x"), Some("first"));
    let r = p.matching_rule(&Method::GET, "/x").expect("a rule");
    assert!(matches!(r.action, Action::Deny));
}

#[test]
fn path_globs() {
    let p = policy(
        r#"
name: p
rules:
  - {name: admin, paths: ["/admin/**"], deny: true}
  - {name: items, paths: ["/api/*/items"], deny: true}
  - {name: json, paths: ["/files/*.json", "/exact"], deny: true}
  - {name: everything, paths: ["**"], deny: true}
"#,
    );
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("/admin", "admin"),
        ("/admin/x", "admin"),
        ("/admin/x/y", "admin"),
        ("/administrator", "everything"),
        ("/adminx/y", "everything"),
        ("/api/a/items", "items"),
        ("/api/a/b/items", "everything"),
        ("/api/items", "everything"),
        ("/api/a/items/x", "everything"),
        ("/files/a.json", "json"),
        ("/files/a/b.json", "everything"),
        ("/exact", "json"),
        ("/exact/", "everything"),
        ("/", "everything"),
    ];
    for (path, want) in cases {
        assert_eq!(rule_name(&p, "GET", path), Some(*want), "{path}");
    }
}

#[test]

fn double_star_suffix_keeps_single_segment_stars() {
    let p = policy("name: p\nrules:\n  - {name: items, paths: ['/api/*/items/**'], deny: true}\n");
    assert_eq!(rule_name(&p, "GET", "/api/a/items"), Some("items"));
    assert_eq!(rule_name(&p, "GET", "/api/a/items/1"), Some("items"));
    assert_eq!(rule_name(&p, "GET", "/api/a/b/items"), None, "`*` must not cross '/'");
}

#[test]

fn single_star_glob_matches_every_path() {
    // config/validate.rs explicitly admits `*` as a path glob; a `deny` rule
    // written with it silently denies nothing.
    let p =
        policy("name: p\nrules:\n  - {name: block, paths: ['*'], deny: true}\n  - {name: open, allow: anonymous}\n");
    assert_eq!(rule_name(&p, "GET", "/anything"), Some("block"));
}

#[test]
fn method_filters() {
    let p = policy(
        "name: p\nrules:\n  - {name: reads, methods: [GET, HEAD], allow: anonymous}\n  - {name: purge, methods: [PURGE], deny: true}\n",
    );
    let cases: &[(&str, Option<&str>)] = &[
        ("GET", Some("reads")),
        ("HEAD", Some("reads")),
        ("PURGE", Some("purge")),
        ("POST", None),
        ("OPTIONS", None),
        ("get", None),
    ];
    for (method, want) in cases {
        assert_eq!(rule_name(&p, method, "/x"), *want, "{method}");
    }
}

#[test]
fn no_matching_rule_is_none() {
    let p = policy("name: p\nrules:\n  - {name: health, paths: ['/healthz'], allow: anonymous}\n");
    assert_eq!(rule_name(&p, "GET", "/other"), None);
    assert_eq!(rule_name(&policy("name: empty\n"), "GET", "/"), None);
    let deny = Policy::deny_all("missing", "policy \"missing\" does not exist");
    assert_eq!(&*deny.name, "missing");
    assert_eq!(deny.mode, Mode::Enforce);
    assert!(deny.matching_rule(&Method::GET, "/").is_none());
}

#[tokio::test]
async fn a_missing_policy_refuses_every_request_with_no_policy() {
    let config: crate::config::Config = serde_yaml_ng::from_str("{}").expect("empty config");
    let providers = crate::provider::Providers::default();
    let cache = crate::token_cache::TokenCache::new(&config.token_cache);
    let verifier = crate::authz::Verifier {
        providers: &providers,
        cache: &cache,
        max_token_bytes: 16 * 1024,
        counters: None,
        reviews: None,
    };
    let sources = crate::token::Sources::compile([]);
    let deny = Policy::deny_all(
        "ghost",
        "policy \"ghost\" named by annotation nodeward.io/policy does not exist",
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer not.a.token".parse().expect("header"));
    for (method, path) in [(Method::GET, "/"), (Method::POST, "/healthz")] {
        let req = crate::authz::Request {
            method: &method,
            path,
            headers: &headers,
            query: None,
            target: &crate::snapshot::Target::default(),
        };
        let d = crate::authz::decide(&verifier, &sources, &deny, req).await;
        assert_eq!(d.outcome, crate::authz::Outcome::Deny);
        assert_eq!(d.reason, Reason::NoPolicy);
        assert_eq!(d.reason.answer(), crate::reason::Answer::Forbidden);
        assert!(
            d.detail.as_deref().is_some_and(|t| t.contains("ghost")),
            "{:?}",
            d.detail
        );
    }
}

#[test]
fn the_last_of_twenty_rules_decides() {
    let mut yaml = String::from("name: many\nrules:\n");
    for i in 0..19 {
        yaml.push_str(&format!(
            "  - {{name: r{i}, paths: ['/p{i}/**'], methods: [POST], deny: true}}\n"
        ));
    }
    yaml.push_str(
        "  - {name: last, paths: ['/target/*'], methods: [GET], require: {claims: {role: {equals: reader}}}}\n",
    );
    let p = policy(&yaml);
    assert_eq!(p.rules.len(), 20);
    let rule = p
        .matching_rule(&Method::GET, "/target/x")
        .expect("the last rule matches");
    assert_eq!(&*rule.name, "last");
    assert!(matches!(rule.action, Action::Require { .. }));
    assert_eq!(rule.authorize(&token("corp", json!({"role": "reader"}))), Ok(()));
    let refusal = rule
        .authorize(&token("corp", json!({"role": "writer"})))
        .expect_err("wrong role");
    assert_eq!(refusal.detail, r#"claim role is "writer", expected "reader""#);
    assert!(p.matching_rule(&Method::GET, "/p3/x").is_none(), "method filters hold");
    assert_eq!(rule_name(&p, "POST", "/p18"), Some("r18"));
}

#[test]
fn modes_and_forward_claims_compile() {
    let p = policy(
        "name: p\nmode: audit\nrules:\n  - {name: a, allow: anonymous}\n  - {name: b, deny: true, mode: enforce}\nforward_claims: {X-User-Email: email, x-roles: realm_access.roles}\n",
    );
    assert_eq!(p.mode, Mode::Audit);
    assert_eq!(p.rules[0].mode, Mode::Audit, "rules inherit the policy's mode");
    assert_eq!(p.rules[1].mode, Mode::Enforce, "a rule's own mode wins");
    assert!(matches!(p.rules[0].action, Action::Anonymous) && matches!(p.rules[1].action, Action::Deny));
    let fc: Vec<(&str, &str)> = p
        .forward_claims
        .iter()
        .map(|(h, c)| (h.as_str(), c.claim.as_str()))
        .collect();
    assert_eq!(fc, [("x-user-email", "email"), ("x-roles", "realm_access.roles")]);
    assert_eq!(orders().forward_claims[0].0.as_str(), "x-user-email");
}

#[test]
fn compile_errors_name_policy_rule_and_glob() {
    // A bad glob is refused when the policy is read, naming the glob.
    let e = serde_yaml_ng::from_str::<PolicyConfig>("name: p\nrules:\n  - {name: r, paths: ['/a/[b'], deny: true}\n")
        .expect_err("unclosed class");
    assert!(e.to_string().contains("bad glob \"/a/[b\""), "{e}");

    let cfg: PolicyConfig = serde_yaml_ng::from_str("name: p\nforward_claims: {'bad header': sub}\n").expect("yaml");
    let e = Policy::compile(&cfg, &[]).expect_err("bad header");
    assert_eq!(e.to_string(), "policy p: bad forward_claims header \"bad header\"");
}

#[test]
fn anonymous_deny_and_provider_filter() {
    let p = orders();
    let anyone = token("other", json!({}));
    assert_eq!(p.rules[0].authorize(&anyone), Ok(()), "anonymous accepts any token");

    let block = policy("name: p\nrules:\n  - {name: block, deny: true}\n");
    let r = block.rules[0].authorize(&anyone).expect_err("deny");
    assert_eq!(r.reason, Reason::RuleDenies);
    assert_eq!(r.detail, "rule block denies every request it matches");

    let r = p.rules[2].authorize(&anyone).expect_err("wrong provider");
    assert_eq!(r.reason, Reason::ProviderNotAllowed);
    assert_eq!(r.detail, "tokens from provider other are not accepted by rule default");
    assert_eq!(p.rules[2].authorize(&token("corp", json!({}))), Ok(()));

    // Provider is checked before claims.
    let r = p.rules[1]
        .authorize(&token("other", json!({"groups": ["admins"]})))
        .expect_err("wrong provider");
    assert_eq!(r.reason, Reason::ProviderNotAllowed);

    let any_provider = policy("name: p\nrules:\n  - {name: r, require: {}}\n");
    assert_eq!(
        any_provider.rules[0].authorize(&anyone),
        Ok(()),
        "no providers listed: any"
    );
}

/// (claim path, condition YAML, claims, expected detail or None for Ok)
type Case = (&'static str, &'static str, Value, Option<&'static str>);

#[test]
fn conditions_with_exact_details() {
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("email", "{equals: a@x.io}", json!({"email": "a@x.io"}), None),
        ("email", "{equals: a@x.io}", json!({"email": "b@x.io"}), Some(r#"claim email is "b@x.io", expected "a@x.io""#)),
        ("email", "{equals: a@x.io}", json!({}), Some("claim email is missing")),
        ("level", "{equals: 3}", json!({"level": 3}), None),
        ("level", "{equals: 3}", json!({"level": 4}), Some("claim level is 4, expected 3")),
        ("level", "{equals: 3}", json!({"level": "3"}), Some(r#"claim level is "3", expected 3"#)),
        ("ok", "{equals: true}", json!({"ok": true}), None),
        ("ok", "{equals: true}", json!({"ok": false}), Some("claim ok is false, expected true")),
        ("ok", "{equals: true}", json!({"ok": "true"}), Some(r#"claim ok is "true", expected true"#)),
        ("groups", "{any_of: [admins]}", json!({"groups": ["users", "admins"]}), None),
        ("groups", "{any_of: [admins]}", json!({"groups": ["users"]}), Some(r#"claim groups lacks "admins""#)),
        ("groups", "{any_of: [admins]}", json!({"groups": []}), Some(r#"claim groups lacks "admins""#)),
        ("groups", "{any_of: [admins, ops]}", json!({"groups": ["ops"]}), None),
        ("groups", "{any_of: [admins, ops]}", json!({"groups": ["x"]}), Some(r#"claim groups lacks any of ["admins", "ops"]"#)),
        ("groups", "{any_of: [admins]}", json!({"groups": "admins"}), None),
        ("groups", "{any_of: [admins]}", json!({"groups": "admins users"}), Some(r#"claim groups lacks "admins""#)),
        ("role", "{any_of: [admin, ops]}", json!({"role": "ops"}), None),
        ("groups", "{all_of: [a, b]}", json!({"groups": ["b", "c", "a"]}), None),
        ("groups", "{all_of: [a, b]}", json!({"groups": ["a", "c"]}), Some(r#"claim groups lacks "b""#)),
        ("groups", "{all_of: [a, b]}", json!({"groups": "a"}), Some(r#"claim groups lacks "b""#)),
        ("tenant", "{present: true}", json!({"tenant": ""}), None),
        ("tenant", "{present: true}", json!({}), Some("claim tenant is missing")),
        ("tenant", "{present: false}", json!({}), None),
        ("tenant", "{present: false}", json!({"tenant": "t1"}), Some("claim tenant must be absent")),
        ("tenant", "{present: true}", json!({"tenant": null}), Some("claim tenant is missing")),
        ("tenant", "{present: false}", json!({"tenant": null}), None),
        ("tenant", "{equals: t1}", json!({"tenant": null}), Some("claim tenant is missing")),
        ("groups", "{any_of: [a]}", json!({"groups": null}), Some("claim groups is missing")),
        ("realm_access.roles", "{any_of: [admin]}", json!({"realm_access": {"roles": ["admin"]}}), None),
        ("realm_access.roles", "{any_of: [admin]}", json!({"realm_access": {"roles": ["user"]}}), Some(r#"claim realm_access.roles lacks "admin""#)),
        ("realm_access.roles", "{any_of: [admin]}", json!({"realm_access": {}}), Some("claim realm_access.roles is missing")),
        ("realm_access.roles", "{any_of: [admin]}", json!({"realm_access": ["roles"]}), Some("claim realm_access.roles is missing")),
        ("realm_access.roles", "{present: true}", json!({"roles": ["admin"]}), Some("claim realm_access.roles is missing")),
        (r#"["https://example.com/groups"]"#, "{any_of: [admins]}", json!({"https://example.com/groups": ["admins"]}), None),
        (r#"["https://example.com/groups"]"#, "{any_of: [admins]}", json!({"https://example.com/groups": ["x"]}), Some(r#"claim ["https://example.com/groups"] lacks "admins""#)),
        (r#"["https://example.com/groups"]"#, "{present: true}", json!({"https://example": {"com/groups": 1}}), Some(r#"claim ["https://example.com/groups"] is missing"#)),
        ("/https:~1~1example.com~1groups", "{any_of: [admins]}", json!({"https://example.com/groups": ["admins"]}), None),
        (r#"["kubernetes.io"].namespace"#, "{equals: shop}", json!({"kubernetes.io": {"namespace": "shop"}}), None),
        ("/kubernetes.io/namespace", "{equals: shop}", json!({"kubernetes.io": {"namespace": "dev"}}), Some(r#"claim /kubernetes.io/namespace is "dev", expected "shop""#)),
        ("realm_access.roles", "{any_of: [admin]}", json!({"realm_access.roles": ["admin"]}), Some("claim realm_access.roles is missing")),
        ("scope", "{any_of: [write]}", json!({"scope": "read write"}), None),
        ("scope", "{any_of: [write]}", json!({"scope": "read writer"}), Some(r#"claim scope lacks "write""#)),
        ("scope", "{all_of: [read, write]}", json!({"scope": "write openid read"}), None),
        ("scope", "{all_of: [read, write]}", json!({"scope": "read"}), Some(r#"claim scope lacks "write""#)),
        ("scope", "{equals: read}", json!({"scope": "read write"}), Some(r#"claim scope is "read write", expected "read""#)),
        ("scp", "{any_of: [write]}", json!({"scp": ["read", "write"]}), None),
        ("scp", "{any_of: [write]}", json!({"scp": "read write"}), None),
        ("ext.scope", "{any_of: [write]}", json!({"ext": {"scope": "read write"}}), None),
    ];
    for (path, cond, claims, want) in cases {
        let cond: ClaimCondition = serde_yaml_ng::from_str(cond).expect("condition yaml");
        let path = ClaimPath::parse(path).expect("claim path");
        let got = cond.check(&path, claims.as_object().expect("object"));
        assert_eq!(
            got,
            want.map_or(Ok(()), |d| Err(d.to_string())),
            "{path} {cond:?} on {claims}"
        );
    }
}

#[test]
fn rule_checks_every_condition_and_reports_claim_mismatch() {
    let p = policy(
        r#"
name: p
rules:
  - name: r
    require:
      claims:
        email_verified: {equals: true}
        groups: {any_of: [admins]}
"#,
    );
    let rule = &p.rules[0];
    assert_eq!(
        rule.authorize(&token("corp", json!({"email_verified": true, "groups": ["admins"]}))),
        Ok(())
    );
    let r = rule
        .authorize(&token("corp", json!({"email_verified": true, "groups": ["users"]})))
        .expect_err("groups");
    assert_eq!(
        r,
        Refusal {
            reason: Reason::ClaimMismatch,
            detail: r#"claim groups lacks "admins""#.into()
        }
    );
    let r = rule
        .authorize(&token("corp", json!({"groups": ["admins"]})))
        .expect_err("email_verified");
    assert_eq!(r.detail, "claim email_verified is missing");
}

#[test]
fn long_values_are_cut() {
    let long = "é".repeat(100);
    let claims = json!({"name": long});
    let err = ClaimCondition::Equals(json!("short"))
        .check(
            &ClaimPath::parse("name").expect("path"),
            claims.as_object().expect("object"),
        )
        .expect_err("mismatch");
    assert!(err.starts_with("claim name is \"éé"), "{err}");
    assert!(err.contains('…') && err.ends_with(r#", expected "short""#), "{err}");
    assert!(err.len() < 140, "a long claim is cut: {} bytes", err.len());
}

#[test]
fn get_rules_cover_head_and_methods_match_exactly() {
    let p = policy("name: p\nrules:\n  - {name: reads, methods: [GET], allow: anonymous}\n");
    assert_eq!(rule_name(&p, "HEAD", "/x"), Some("reads"), "a GET rule covers HEAD");
    assert_eq!(rule_name(&p, "get", "/x"), None);
}

#[test]
fn case_insensitive_policies_match_any_case() {
    let p = policy(
        "name: p\npath: {case_insensitive: true}\nrules:\n  - {name: admin, paths: ['/Admin/**'], deny: true}\n",
    );
    assert_eq!(rule_name(&p, "GET", "/admin/x"), Some("admin"));
    assert_eq!(rule_name(&p, "GET", "/ADMIN"), Some("admin"));
    let strict = policy("name: p\nrules:\n  - {name: admin, paths: ['/admin/**'], deny: true}\n");
    assert_eq!(rule_name(&strict, "GET", "/ADMIN/x"), None, "case-sensitive by default");
}
