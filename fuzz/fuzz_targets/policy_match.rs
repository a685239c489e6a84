//! A fixed policy against arbitrary requests and claims: rule matching on
//! any method and path, claim conditions on any JSON, and the identity
//! headers built from the claims. Input: `METHOD\nPATH\n{claims json}`.
#![no_main]

use std::sync::{Arc, LazyLock};

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use nodeward::config::{Algorithm, Config};
use nodeward::policy::Policy;
use nodeward::provider::{Key, Provider, ProviderMetrics};
use nodeward::token::VerifiedToken;

const CONFIG: &str = r#"
providers:
  - {name: corp, issuer: "https://idp.fuzz.test", audiences: [orders]}
  - {name: partner, issuer: "https://partner.fuzz.test", audiences: [orders]}
policies:
  - name: orders
    rules:
      - {name: health, paths: ["/healthz", "/static/*.css"], allow: anonymous}
      - {name: blocked, paths: ["/internal/**"], deny: true}
      - name: admin
        paths: ["/admin/**", "/v*/users/{a,b}/**"]
        methods: [POST, DELETE, PATCH]
        require:
          providers: [corp]
          claims:
            groups: {any_of: [admins, ops]}
            realm_access.roles: {all_of: [write, read]}
            email_verified: {equals: true}
      - name: scoped
        paths: ["/api/**"]
        require:
          claims:
            scope: {all_of: ["orders:read"]}
            tenant.id: {present: true}
            email: {equals: "a@x.io"}
      - {name: default, require: {providers: [corp, partner]}}
    forward_claims: {x-user-email: email, x-groups: groups, x-tenant: tenant.id, x-roles: realm_access.roles}
workloads:
  - {name: orders, listen: "127.0.0.1:15006", upstream: "127.0.0.1:8080"}
"#;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let cfg = Config::parse(CONFIG, std::path::Path::new("fuzz.yaml")).expect("fixed config");
    Policy::compile(&cfg.policies[0], &cfg.providers).expect("fixed policy")
});
static KEY: LazyLock<Arc<Key>> = LazyLock::new(|| Arc::new(Key::from_secret(&[7; 32], Algorithm::HS256).expect("key")));
/// The two providers of the fixed config (no network: nothing is fetched).
static PROVIDERS: LazyLock<Vec<Arc<Provider>>> = LazyLock::new(|| {
    let cfg = Config::parse(CONFIG, std::path::Path::new("fuzz.yaml")).expect("fixed config");
    let dir = std::env::temp_dir().join("nodeward-fuzz-policy");
    cfg.providers
        .into_iter()
        .map(|p| {
            let name = p.name.clone();
            Arc::new(Provider::new(p, &dir, ProviderMetrics::unregistered(&name), None).expect("provider"))
        })
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let (Some(method), Some(path)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let claims = lines
        .next()
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(c).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let policy = &*POLICY;
    let Some(rule) = policy.matching_rule(&method, path) else {
        return;
    };
    let provider = PROVIDERS[usize::from(claims.contains_key("partner"))].clone();
    let token = VerifiedToken {
        iss: provider.issuer(),
        provider,
        sub: claims.get("sub").and_then(|s| s.as_str()).map(String::from),
        exp: 1_800_000_000,
        audiences: vec!["orders".into()],
        claims,
        key: KEY.clone(),
        header_values: Default::default(),
    };
    if let Err(refusal) = rule.authorize(&token) {
        assert!(!refusal.reason.allows());
    }
    let mut h = HeaderMap::new();
    nodeward::strip_identity(&mut h, policy);
    // Every identity header built is a valid value, or the request is refused.
    if let Ok(identity) = nodeward::identity_headers(policy, &token) {
        for (name, value) in identity {
            h.insert(name, value);
        }
    }
});
