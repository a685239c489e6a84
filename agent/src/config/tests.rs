//! Tests of the configuration model, parser and validator: the contract
//! example, defaults, durations, every validation error's key and reason, and
//! the `to_yaml` round trip.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::*;

const FILE: &str = "/etc/nodeward/config.yaml";

/// The contract example, verbatim.
/// The design contract's example (shared with the testkit, which the demo and the tests use).
const EXAMPLE: &str = include_str!("../../../testkit/src/contract-example.yaml");

/// Parses with an empty environment, so a `NODE_NAME` of the machine running the tests cannot leak in.
fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, Path::new(FILE), |_| None)
}

fn example() -> Config {
    parse(EXAMPLE).expect("the contract example is valid")
}

/// The key, the reason and the whole message of an `Invalid` error.
fn invalid(text: &str) -> (String, String, String) {
    let e = parse(text).expect_err("a validation error");
    let shown = e.to_string();
    match e {
        ConfigError::Invalid { key, reason, .. } => (key, reason, shown),
        other => panic!("expected Invalid, got {other}"),
    }
}

/// One step of a path like `policies[0].rules[1].require`.
enum Step {
    Key(String),
    Index(usize),
}

fn steps(at: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in at.split('.') {
        let mut pieces = part.split('[');
        let name = pieces.next().expect("split yields at least one piece");
        if !name.is_empty() {
            out.push(Step::Key(name.to_string()));
        }
        for idx in pieces {
            let idx = idx.trim_end_matches(']').parse().expect("numeric index in test path");
            out.push(Step::Index(idx));
        }
    }
    out
}

fn child<'a>(v: &'a mut Value, step: &Step) -> &'a mut Value {
    match step {
        Step::Key(k) => {
            if v.is_null() {
                *v = Value::Mapping(Mapping::new());
            }
            let map = v.as_mapping_mut().expect("test path goes through a mapping");
            map.entry(Value::String(k.clone())).or_insert(Value::Null)
        }
        Step::Index(i) => &mut v.as_sequence_mut().expect("test path goes through a sequence")[*i],
    }
}

/// The example with the value at `at` replaced by `value` (YAML text), or
/// removed when `value` is `None`. Index one past the end appends.
fn edit(at: &str, value: Option<&str>) -> String {
    edit_text(EXAMPLE, at, value)
}

fn edit_text(base: &str, at: &str, value: Option<&str>) -> String {
    let mut doc: Value = serde_yaml_ng::from_str(base).expect("base yaml");
    let mut path = steps(at);
    let last = path.pop().expect("non-empty test path");
    let parent = path.iter().fold(&mut doc, |v, s| child(v, s));
    let new = value.map(|t| serde_yaml_ng::from_str::<Value>(t).expect("replacement yaml"));
    match (last, new) {
        (Step::Key(k), Some(new)) => *child(parent, &Step::Key(k)) = new,
        (Step::Key(k), None) => {
            parent.as_mapping_mut().expect("mapping").remove(k.as_str());
        }
        (Step::Index(i), Some(new)) => {
            let seq = parent.as_sequence_mut().expect("sequence");
            if i == seq.len() {
                seq.push(new);
            } else {
                seq[i] = new;
            }
        }
        (Step::Index(i), None) => {
            parent.as_sequence_mut().expect("sequence").remove(i);
        }
    }
    serde_yaml_ng::to_string(&doc).expect("render edited yaml")
}

#[test]
fn contract_example_parses_with_defaults_filled() {
    let c = example();
    assert_eq!(c.admin, "127.0.0.1:15020".parse::<SocketAddr>().expect("addr"));
    assert_eq!(c.state_dir, Path::new("/var/lib/nodeward"));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_token_bytes, 16 * 1024);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.token_cache, TokenCacheConfig::default());
    assert!(!c.kubernetes.enabled);

    let p = &c.providers[0];
    assert_eq!((p.name.as_str(), p.issuer.as_str()), ("corp", "http://127.0.0.1:9000"));
    assert_eq!(p.audiences, ["orders"]);
    let algs: Vec<&str> = p.algorithms.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        algs,
        [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
        ]
    );
    assert!(p.algorithms.iter().all(|a| !a.is_hmac()));
    assert_eq!(p.clock_skew, Duration::from_secs(60));
    assert_eq!(p.audience_claims, ["aud"]);
    assert_eq!(p.typ, None);
    assert_eq!(p.token_from, [TokenSource::default()]);
    assert!(!p.allow_insecure_http && p.jwks_uri.is_none() && p.hs_secret_file.is_none());
    assert_eq!(p.refresh, RefreshConfig::default());

    let pol = &c.policies[0];
    assert_eq!(pol.mode, Mode::Enforce);
    assert_eq!(pol.ports, [8080]);
    let names: Vec<&str> = pol.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["health", "admin", "default"]);
    assert_eq!(pol.rules[0].action, RuleAction::Anonymous);
    let methods: Vec<&str> = pol.rules[1].methods.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(methods, ["POST", "DELETE"]);
    let RuleAction::Require(req) = &pol.rules[1].action else {
        panic!("admin requires a token")
    };
    assert_eq!(req.providers, ["corp"]);
    let groups = ClaimPath::parse("groups").expect("path");
    assert_eq!(
        req.claims[&groups],
        ClaimCondition::AnyOf(vec![serde_json::Value::from("admins")])
    );
    assert!(pol.rules[2].paths.is_empty() && pol.rules[2].mode.is_none());
    assert!(matches!(pol.rules[2].action, RuleAction::Require(_)));
    assert_eq!(pol.forward_claims["x-user-email"].claim.as_str(), "email");
    assert_eq!(pol.forward_claims["x-user-email"].encoding, Encoding::Plain);
    assert_eq!(pol.path, crate::path::PathOptions::default());
    assert!(pol.audiences.is_empty() && !pol.forward_token);

    let w = &c.workloads[0];
    assert_eq!(w.listen, Some("127.0.0.1:15006".parse().expect("addr")));
    assert_eq!(w.upstream, Some("127.0.0.1:8080".parse().expect("addr")));
    assert!(w.netns.is_none());
}

#[test]
fn top_level_defaults_when_omitted() {
    let c = parse("{}").expect("an empty config is valid");
    assert_eq!(c.admin, SocketAddr::from(([127, 0, 0, 1], 15020)));
    assert_eq!(c.state_dir, Path::new("/var/lib/nodeward"));
    assert!(c.providers.is_empty() && c.policies.is_empty() && c.workloads.is_empty());
    assert_eq!(c.kubernetes.opt_in_label, "nodeward.io/enabled=true");
}

#[test]
fn durations_are_humantime() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, Duration)] = &[
        ("providers[0].clock_skew", "30s", Duration::from_secs(30)),
        ("providers[0].refresh.max_interval", "10m", Duration::from_secs(600)),
        ("limits.idle_timeout", "1m 30s", Duration::from_secs(90)),
        ("limits.drain_timeout", "250ms", Duration::from_millis(250)),
        ("token_cache.max_ttl", "2h", Duration::from_secs(7200)),
    ];
    for (at, text, want) in cases {
        let c = parse(&edit(at, Some(text))).unwrap_or_else(|e| panic!("{at}: {text}: {e}"));
        let got = match *at {
            "providers[0].clock_skew" => c.providers[0].clock_skew,
            "providers[0].refresh.max_interval" => c.providers[0].refresh.max_interval,
            "limits.idle_timeout" => c.limits.idle_timeout,
            "limits.drain_timeout" => c.limits.drain_timeout,
            _ => c.token_cache.max_ttl,
        };
        assert_eq!(got, *want, "{at}: {text}");
    }
    // A bare number has no unit and is refused, naming the key.
    let (key, _, _) = invalid(&edit("providers[0].clock_skew", Some("30")));
    assert_eq!(key, "providers[0].clock_skew");
}

#[test]
fn serde_errors_name_the_key_path() {
    // (edit at, new value, expected key, reason fragment)
    #[rustfmt::skip]
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("providers[0].audience", Some("[orders]"), "providers[0].audience", "unknown field `audience`"),
        ("providers[0].audiences", None, "providers[0]", "missing field `audiences`"),
        ("policies[0].ports[0]", Some("70000"), "policies[0].ports[0]", ""),
        ("policies[0].mode", Some("Enforce"), "policies[0].mode", "unknown variant"),
        ("policies[0].rules[0].allow", Some("everyone"), "policies[0].rules[0].allow", "unknown variant"),
        ("workloads[0].listen", Some("not-an-addr"), "workloads[0].listen", ""),
        ("limits.max_header_byte", Some("1"), "limits.max_header_byte", "unknown field `max_header_byte`"),
    ];
    for (at, value, want_key, fragment) in cases {
        let (key, reason, shown) = invalid(&edit(at, *value));
        assert_eq!(key, *want_key, "{at}: {reason}");
        assert!(reason.contains(fragment), "{at}: {reason:?} lacks {fragment:?}");
        assert!(shown.starts_with(&format!("{FILE}: key `{want_key}`: ")), "{shown}");
    }
}

#[test]
fn unknown_top_level_key_is_refused_with_its_name() {
    let text = format!("{EXAMPLE}\nprovider: []\n");
    let (key, reason, shown) = invalid(&text);
    assert_eq!(key, "provider");
    assert!(reason.contains("unknown field `provider`"), "{reason}");
    assert!(
        reason.contains("providers"),
        "the reason lists the known keys: {reason}"
    );
    assert!(shown.contains(FILE), "{shown}");
}

#[test]
fn validation_errors_name_key_and_reason() {
    let other_provider = "{name: corp, issuer: 'https://other.example', audiences: [x]}";
    let same_issuer = "{name: other, issuer: 'http://127.0.0.1:9000', audiences: [x]}";
    // (edit at, new value, expected key, reason fragment)
    #[rustfmt::skip]
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("providers[1]", Some(other_provider), "providers[1].name", "duplicate provider name \"corp\""),
        ("providers[1]", Some(same_issuer), "providers[1].issuer", "two providers share issuer"),
        ("providers[0].name", Some("''"), "providers[0].name", "must not be empty"),
        ("providers[0].issuer", Some("http://idp.example.com"), "providers[0].issuer", "plain http is only allowed for loopback"),
        ("providers[0].issuer", Some("http://10.0.0.1:9000"), "providers[0].issuer", "plain http"),
        ("providers[0].issuer", Some("http://127.0.0.1@evil.example"), "providers[0].issuer", "plain http"),
        ("providers[0].issuer", Some("http://localhost.evil.example"), "providers[0].issuer", "plain http"),
        ("providers[0].issuer", Some("http://0.0.0.0:9000"), "providers[0].issuer", "plain http"),
        ("providers[0].issuer", Some("ftp://idp.example.com"), "providers[0].issuer", "scheme \"ftp\" is not supported"),
        ("providers[0].issuer", Some("idp.example.com"), "providers[0].issuer", "not a URL"),
        ("providers[0].jwks_uri", Some("http://keys.example.com/jwks"), "providers[0].jwks_uri", "plain http"),
        ("providers[0].audiences", Some("[]"), "providers[0].audiences", "at least one non-empty audience"),
        ("providers[0].audiences", Some("['']"), "providers[0].audiences", "at least one non-empty audience"),
        ("providers[0].algorithms", Some("[]"), "providers[0].algorithms", "at least one algorithm"),
        ("providers[0].algorithms", Some("[none]"), "providers[0].algorithms[0]", "unknown or forbidden algorithm \"none\""),
        ("providers[0].algorithms", Some("[RS256, rs384]"), "providers[0].algorithms[1]", "unknown or forbidden algorithm \"rs384\""),
        ("providers[0].algorithms", Some("[RS256, HS256]"), "providers[0].algorithms[1]", "HS256 needs `hs_secret_file`"),
        ("providers[0].refresh", Some("{min_interval: 2h, max_interval: 1h}"), "providers[0].refresh.min_interval", "not above refresh.max_interval"),
        ("providers[0].refresh", Some("{min_interval: 0s}"), "providers[0].refresh.min_interval", "above zero"),
        ("providers[0].refresh", Some("{max_interval: 2h, max_staleness: 1h}"), "providers[0].refresh.max_staleness", "at least refresh.max_interval"),
        ("providers[0].refresh", Some("{fetch_timeout: 0s}"), "providers[0].refresh", "fetch_timeout"),
        ("providers[0].token_from", Some("{header: 'bad header'}"), "providers[0].token_from.header", "not a valid header name"),
        ("policies[1]", Some("{name: orders, selector: {app: x}}"), "policies[1].name", "duplicate policy name \"orders\""),
        ("policies[0].rules[1].allow", Some("anonymous"), "policies[0].rules[1]", "rule \"admin\": set exactly one of `allow: anonymous`, `require`, `deny: true`"),
        ("policies[0].rules[0].deny", Some("true"), "policies[0].rules[0]", "exactly one of"),
        ("policies[0].rules[2].require", None, "policies[0].rules[2]", "exactly one of"),
        ("policies[0].rules[2].name", Some("''"), "policies[0].rules[2]", "`name` must not be empty"),
        ("policies[0].rules[1].paths", Some("['/admin/[x']"), "policies[0].rules[1].paths[0]", "bad glob"),
        ("policies[0].rules[1].paths", Some("['/ok', 'admin/**']"), "policies[0].rules[1].paths[1]", "must start with '/'"),
        ("policies[0].rules[1].methods", Some("[POST, delete]"), "policies[0].rules[1].methods[1]", "\"delete\" is not an upper-case HTTP method"),
        ("policies[0].rules[1].methods", Some("['GE T']"), "policies[0].rules[1].methods[0]", "not an upper-case HTTP method"),
        ("policies[0].rules[2].require.providers", Some("[corp, other]"), "policies[0].rules[2].require.providers[1]", "no provider named \"other\""),
        ("policies[0].rules[1].require.claims.groups", Some("{any_of: [admins], equals: admins}"), "policies[0].rules[1].require.claims.groups", "exactly one of equals, any_of, all_of, present"),
        ("policies[0].rules[1].require.claims.groups", Some("{}"), "policies[0].rules[1].require.claims.groups", "exactly one of"),
        ("policies[0].rules[1].require.claims.groups", Some("{any_of: []}"), "policies[0].rules[1].require.claims.groups", "at least one value"),
        ("policies[0].rules[1].require.claims.groups", Some("{all_of: []}"), "policies[0].rules[1].require.claims.groups", "at least one value"),
        ("policies[0].rules[1].require.claims", Some("{'realm..roles': {present: true}}"), "policies[0].rules[1].require.claims.realm..roles", "bad claim path"),
        ("policies[0].forward_claims", Some("{x-nodeward-sub: sub}"), "policies[0].forward_claims.x-nodeward-sub", "the agent sets it"),
        ("policies[0].forward_claims", Some("{X-Nodeward-Iss: iss}"), "policies[0].forward_claims.X-Nodeward-Iss", "the agent sets it"),
        ("policies[0].forward_claims", Some("{'bad header': sub}"), "policies[0].forward_claims.bad header", "not a valid header name"),
        ("policies[0].forward_claims", Some("{x-roles: 'realm..roles'}"), "policies[0].forward_claims.x-roles", "bad claim path"),
        ("workloads[0].upstream", None, "workloads[0].listen", "set either `listen` and `upstream`"),
        ("workloads[0].listen", None, "workloads[0].listen", "set either"),
        ("workloads[0].netns", Some("/proc/1/ns/net"), "workloads[0].listen", "set either"),
        ("workloads[0].ips", Some("[10.0.0.1]"), "workloads[0].ips", "only applies to `netns` workloads"),
        ("workloads[1]", Some("{name: orders, labels: {app: orders}, listen: '127.0.0.1:1', upstream: '127.0.0.1:2'}"), "workloads[1].name", "duplicate workload name"),
        ("workloads[1]", Some("{name: b, labels: {app: orders}, listen: '127.0.0.1:15006', upstream: '127.0.0.1:2'}"), "workloads[1].listen", "127.0.0.1:15006 is used by another workload"),
        ("workloads[0].labels", Some("{app: billing}"), "workloads[0].labels", "no policy selects workload \"orders\""),
        ("workloads[0].labels", None, "workloads[0].labels", "no policy selects"),
        ("policies[1]", Some("{name: catchall}"), "workloads[0].labels", "several policies select workload \"orders\": orders, catchall"),
        ("kubernetes.enabled", Some("true"), "kubernetes.node_name", "NODE_NAME environment variable"),
        ("kubernetes", Some("{enabled: true, node_name: ''}"), "kubernetes.node_name", "NODE_NAME"),
        ("kubernetes.node_name", Some("'a,b'"), "kubernetes.node_name", "not a node name"),
        ("kubernetes.opt_in_label", Some("nodeward.io/enabled"), "kubernetes.opt_in_label", "must be `key=value`"),
        ("kubernetes.opt_in_label", Some("'Bad_Prefix/x=true'"), "kubernetes.opt_in_label", "DNS subdomain"),
        ("kubernetes.opt_in_label", Some("'nodeward.io/enabled=not ok'"), "kubernetes.opt_in_label", "label value"),
        ("kubernetes.opt_in_label", Some("'=true'"), "kubernetes.opt_in_label", "must not be empty"),
        ("kubernetes.policy_annotation", Some("'nodeward.io/'"), "kubernetes.policy_annotation", "must not be empty"),
        ("kubernetes.kubeconfig", Some("''"), "kubernetes.kubeconfig", "must not be empty"),
        ("kubernetes.proc_root", Some("host/proc"), "kubernetes.proc_root", "absolute path"),
        ("kubernetes.cgroup_root", Some("sys/fs/cgroup"), "kubernetes.cgroup_root", "absolute path"),
        ("kubernetes.watch", Some("true"), "kubernetes.watch", "unknown field `watch`"),
        ("workloads[0].policy", Some("billing"), "workloads[0].policy", "no policy named \"billing\""),
        ("policies[0].container_ports", Some("yes"), "policies[0].container_ports", "invalid type"),
    ];
    for (at, value, want_key, fragment) in cases {
        let (key, reason, shown) = invalid(&edit(at, *value));
        assert_eq!(key, *want_key, "edit {at} = {value:?}: {reason}");
        assert!(reason.contains(fragment), "edit {at}: {reason:?} lacks {fragment:?}");
        assert!(shown.contains(&format!("key `{want_key}`")), "{shown}");
        assert!(shown.starts_with(FILE), "{shown}");
    }
}

#[test]
fn accepted_variants() {
    #[rustfmt::skip]
    let cases: &[(&str, Option<&str>)] = &[
        ("providers[0].issuer", Some("https://idp.example.com/realms/corp")),
        ("providers[0].issuer", Some("http://localhost:9000")),
        ("providers[0].issuer", Some("http://[::1]:9000")),
        ("providers[0].issuer", Some("http://127.8.9.10")),
        ("providers[0].jwks_uri", Some("https://keys.example.com/jwks")),
        ("providers[0].hs_secret_file", Some("/etc/nodeward/secret")),
        ("policies[0].rules[1].paths", Some("['*', '**', '/a/{b,c}/*.json']")),
        ("policies[0].rules[1].methods", Some("[GET, PURGE]")),
        ("policies[0].rules[1].require.claims.groups", Some("{present: false}")),
        ("policies[0].rules[2]", Some("{name: block, deny: true}")),
        ("policies[0].rules[2].require", Some("{}")),
        ("policies[0].forward_claims", Some("{X-Roles: realm_access.roles, x-nodeward-email: email}")),
        ("policies[0].mode", Some("audit")),
    ];
    for (at, value) in cases {
        parse(&edit(at, *value)).unwrap_or_else(|e| panic!("edit {at} = {value:?} refused: {e}"));
    }
    let insecure = edit_text(
        &edit("providers[0].issuer", Some("http://idp.example.com")),
        "providers[0].allow_insecure_http",
        Some("true"),
    );
    let c = parse(&insecure).expect("allow_insecure_http admits a non-loopback http issuer");
    assert!(c.providers[0].allow_insecure_http);
    let hs = edit_text(
        &edit("providers[0].algorithms", Some("[RS256, HS256]")),
        "providers[0].hs_secret_file",
        Some("/run/secret"),
    );
    assert_eq!(
        parse(&hs).expect("HS256 with a secret").providers[0].algorithms,
        [Algorithm::RS256, Algorithm::HS256]
    );
}

#[test]
fn require_without_any_provider_is_refused() {
    let text = "policies:\n  - name: p\n    rules:\n      - {name: r, require: {}}\n";
    let (key, reason, _) = invalid(text);
    assert_eq!(key, "policies[0].rules[0].require");
    assert!(reason.contains("no `providers` are configured"), "{reason}");
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, EXAMPLE).expect("write");
    assert_eq!(Config::load(&good).expect("load"), example());

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, edit("providers[0].audiences", Some("[]"))).expect("write");
    let shown = Config::load(&bad).expect_err("invalid").to_string();
    assert!(shown.starts_with(&bad.display().to_string()), "{shown}");
    assert!(shown.contains("providers[0].audiences"), "{shown}");

    let missing = dir.path().join("missing.yaml");
    let e = Config::load(&missing).expect_err("no such file");
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("missing.yaml: cannot read"), "{e}");
}

#[test]
fn to_yaml_round_trips() {
    let mut with_everything = edit(
        "policies[0].rules[1].require.claims",
        Some(
            "{groups: {any_of: [admins, 7, true]}, level: {equals: 3.5}, email_verified: {equals: true}, \
         '[\"https://example.com/groups\"]': {all_of: ['a', 'b']}, tenant: {present: false}, \
         n: {equals: '123'}, t: {equals: 'true'}, z: {equals: 'null'}, e: {equals: ''}, \
         h: {equals: '# not a comment'}, c: {equals: 'a: b'}, f: {equals: '1e3'}, obj: {equals: {k: [1, 2]}}}",
        ),
    );
    with_everything = edit_text(&with_everything, "policies[0].rules[2].mode", Some("audit"));
    with_everything = edit_text(
        &with_everything,
        "policies[0].rules[3]",
        Some("{name: block, deny: true, paths: ['/x']}"),
    );
    with_everything = edit_text(&with_everything, "providers[0].clock_skew", Some("1m 30s 250ms"));
    with_everything = edit_text(
        &with_everything,
        "providers[0].jwks_uri",
        Some("http://127.0.0.1:9000/keys"),
    );
    with_everything = edit_text(
        &with_everything,
        "providers[0].token_from",
        Some("{header: x-token, prefix: ''}"),
    );
    with_everything = edit_text(&with_everything, "kubernetes.node_name", Some("node-1"));
    with_everything = edit_text(&with_everything, "admin", Some("'[::1]:15020'"));
    for text in [EXAMPLE.to_string(), with_everything, "{}".to_string()] {
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let yaml = c.to_yaml();
        assert!(!yaml.starts_with("# cannot render"), "{yaml}");
        let again = parse(&yaml).unwrap_or_else(|e| panic!("re-parse: {e}\n{yaml}"));
        assert_eq!(again, c, "round trip changed the config:\n{yaml}");
    }
}

#[test]
fn to_yaml_shows_the_filled_defaults() {
    let yaml = example().to_yaml();
    for needle in [
        "clock_skew: 1m",
        "max_token_bytes: 16384",
        "header: authorization",
        "prefix: Bearer",
        "- EdDSA",
    ] {
        assert!(yaml.contains(needle), "{needle:?} missing from\n{yaml}");
    }
}

#[test]

fn serde_reason_does_not_repeat_the_path() {
    let (key, reason, shown) = invalid(&edit("providers[0].audience", Some("[orders]")));
    assert_eq!(key, "providers[0].audience");
    assert!(reason.starts_with("unknown field `audience`"), "{shown}");
}

#[test]
fn duplicate_yaml_keys_are_refused() {
    let text = format!("{EXAMPLE}\nadmin: 0.0.0.0:15020\n");
    let e = parse(&text).expect_err("a second `admin` must not silently win");
    assert!(e.to_string().contains("duplicate field `admin`"), "{e}");
}

#[test]

fn duplicate_map_keys_are_refused() {
    // In a map too: two conditions on one claim must not collapse into the last.
    let text = EXAMPLE.replace(
        "groups: {any_of: [admins]}",
        "groups: {any_of: [admins]}\n            groups: {present: true}",
    );
    assert_ne!(text, EXAMPLE);
    let e = parse(&text).expect_err("duplicate claim key");
    let shown = e.to_string();
    assert!(shown.contains("duplicate") && shown.contains("groups"), "{shown}");
}

#[test]
fn claims_cannot_be_forwarded_as_routing_or_framing_headers() {
    for header in [
        "host",
        "Content-Length",
        "authorization",
        "transfer-encoding",
        "x-request-id",
    ] {
        let text = EXAMPLE.replace(
            "forward_claims: {x-user-email: email}",
            &format!("forward_claims: {{{header}: email}}"),
        );
        assert_ne!(text, EXAMPLE);
        let e = parse(&text).expect_err("reserved header");
        assert!(e.to_string().contains("reserved header"), "{header}: {e}");
    }
}

#[test]
fn netns_workloads_are_accepted_when_their_policy_protects_ports() {
    let ok = edit(
        "workloads[0]",
        Some("{name: orders, labels: {app: orders}, netns: /proc/1/ns/net, ips: [10.0.0.2]}"),
    );
    let c = parse(&ok).expect("netns workload");
    assert_eq!(
        c.workloads[0].ips,
        vec!["10.0.0.2".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(c.ebpf.pin_dir, std::path::PathBuf::from("/sys/fs/bpf/nodeward"));
    let no_ports = edit_text(&ok, "policies[0].ports", Some("[]"));
    let e = parse(&no_ports).expect_err("nothing to protect");
    let shown = e.to_string();
    assert!(
        shown.contains("workloads[0].netns") && shown.contains("lists no `ports`"),
        "{shown}"
    );
}

#[test]
fn kubernetes_section_defaults_and_node_name_from_the_environment() {
    let c = example();
    let k = &c.kubernetes;
    assert_eq!(k.opt_in(), ("nodeward.io/enabled", "true"));
    assert_eq!(k.policy_annotation, "nodeward.io/policy");
    assert_eq!(k.proc_root, Path::new("/proc"));
    assert_eq!(k.cgroup_root, Path::new("/sys/fs/cgroup"));
    assert_eq!(k.kubeconfig, None);

    let on = edit("kubernetes", Some("{enabled: true}"));
    let env = |k: &str| (k == "NODE_NAME").then(|| "node-7".to_string());
    let c = Config::parse_with_env(&on, Path::new(FILE), env).expect("NODE_NAME fills node_name");
    assert_eq!(c.kubernetes.node_name.as_deref(), Some("node-7"));
    assert!(
        c.to_yaml().contains("node_name: node-7"),
        "check prints the effective node name"
    );
    // An explicit node name wins over the environment.
    let explicit = edit("kubernetes", Some("{enabled: true, node_name: node-1}"));
    let c = Config::parse_with_env(&explicit, Path::new(FILE), env).expect("explicit node name");
    assert_eq!(c.kubernetes.node_name.as_deref(), Some("node-1"));
    // An empty NODE_NAME is no name.
    let e = Config::parse_with_env(&on, Path::new(FILE), |_| Some(String::new())).expect_err("empty NODE_NAME");
    assert!(e.to_string().contains("key `kubernetes.node_name`"), "{e}");

    let full = edit(
        "kubernetes",
        Some(
            "{enabled: true, node_name: node-1, opt_in_label: 'example.com/protect=yes', \
             policy_annotation: example.com/policy, kubeconfig: /etc/kube/config, \
             proc_root: /host/proc, cgroup_root: /host/sys/fs/cgroup}",
        ),
    );
    let c = parse(&full).expect("every kubernetes key");
    assert_eq!(c.kubernetes.opt_in(), ("example.com/protect", "yes"));
    assert_eq!(parse(&c.to_yaml()).expect("round trip"), c);
}

#[test]
fn a_static_workload_may_name_its_policy_and_policies_may_protect_container_ports() {
    // Labels select no policy, but the explicit `policy` binds it.
    let text = edit_text(
        &edit("workloads[0].policy", Some("orders")),
        "workloads[0].labels",
        Some("{app: x}"),
    );
    let c = parse(&text).expect("explicit policy");
    assert_eq!(c.workloads[0].policy.as_deref(), Some("orders"));
    assert_eq!(
        bound_policy(&c, &c.workloads[0]).map(|p| p.name.as_str()),
        Some("orders")
    );
    let c = parse(&edit("policies[0].container_ports", Some("true"))).expect("container_ports");
    assert!(c.policies[0].container_ports);
    assert!(!example().policies[0].container_ports);
}
