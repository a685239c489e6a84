//! The `nodeward` binary's commands as a user runs them: `check` prints the
//! effective config or a precise error, `explain` prints the decision and
//! why, `dev-idp` refuses to serve beyond loopback without the flag.

use std::process::{Command, Output};

use nodeward::testing::{TestIdp, example_config};
use serde_json::json;

fn nodeward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodeward"))
        .args(args)
        .output()
        .expect("run nodeward")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const CONTRACT_EXAMPLE: &str = r#"
admin: 127.0.0.1:15020          # /metrics /healthz /readyz
state_dir: /var/lib/nodeward    # discovery + JWKS disk cache
providers:
  - name: corp
    issuer: http://127.0.0.1:9000          # discovery at issuer + /.well-known/openid-configuration
    audiences: [orders]
policies:
  - name: orders
    selector: {app: orders}
    ports: [8080]
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
    forward_claims: {x-user-email: email}
workloads:
  - name: orders
    labels: {app: orders}
    listen: 127.0.0.1:15006     # reverse-proxy mode; `netns: /var/run/netns/orders` for eBPF steering
    upstream: 127.0.0.1:8080
"#;

#[test]
fn check_accepts_the_contract_example_and_prints_the_effective_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nodeward.yaml");
    std::fs::write(&file, CONTRACT_EXAMPLE).expect("write");
    let out = nodeward(&["check", "--config", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let effective = text(&out.stdout);
    // Defaults are filled in and printed.
    for expected in [
        "clock_skew: 1m",
        "max_staleness: 1day",
        "header_read_timeout: 10s",
        "max_entries: 100000",
        "mode: enforce",
    ] {
        assert!(effective.contains(expected), "missing {expected:?} in:\n{effective}");
    }
}

#[test]
fn check_names_the_file_the_key_and_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    let cases = [
        (
            CONTRACT_EXAMPLE.replace("audiences: [orders]", "audiences: []"),
            "providers[0].audiences",
        ),
        (
            CONTRACT_EXAMPLE.replace("methods: [POST, DELETE]", "methods: [post]"),
            "policies[0].rules[1].methods[0]",
        ),
        (
            CONTRACT_EXAMPLE.replace("issuer: http://127.0.0.1:9000", "issuer: http://idp.example.com"),
            "providers[0].issuer",
        ),
        (
            CONTRACT_EXAMPLE.replace("forward_claims:", "forward_claim:"),
            "policies[0]",
        ),
        (
            CONTRACT_EXAMPLE.replace(
                "providers: [corp]\n          claims",
                "providers: [corpp]\n          claims",
            ),
            "require.providers[0]",
        ),
    ];
    for (yaml, key) in cases {
        std::fs::write(&file, yaml).expect("write");
        let out = nodeward(&["check", "--config", file.to_str().expect("utf8")]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.contains("bad.yaml") && err.contains(key),
            "expected file and key {key:?} in: {err}"
        );
    }
    let out = nodeward(&["check", "--config", "/nonexistent/nodeward.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn explain_prints_the_decision_the_rule_and_why() {
    let idp = TestIdp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nodeward.yaml");
    let yaml = format!(
        "state_dir: {}\n{}",
        dir.path().display(),
        example_config(&idp.issuer(), "127.0.0.1:9".parse().expect("addr"))
    );
    std::fs::write(&file, yaml).expect("write");
    let config = file.to_str().expect("utf8").to_string();
    let token = idp.token(json!({"aud": "orders", "sub": "alice", "groups": ["dev"]}));

    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodeward(&args)
        })
    };
    let base = |method: &str, path: &str| -> Vec<String> {
        [
            "explain",
            "--config",
            &config,
            "--workload",
            "orders",
            "--method",
            method,
            "--path",
            path,
        ]
        .map(String::from)
        .to_vec()
    };

    let out = run(base("GET", "/orders")).await.expect("join");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("decision: DENY 401") && s.contains("reason:   missing_token") && s.contains("rule:     default"),
        "{s}"
    );

    let mut args = base("POST", "/admin/users");
    args.extend(["--token".to_string(), token.clone()]);
    let out = run(args).await.expect("join");
    let s = text(&out.stdout);
    assert!(s.contains("decision: DENY 403"), "{s}");
    assert!(s.contains("claim groups lacks \"admins\""), "{s}");
    assert!(s.contains("caller:   iss=") && s.contains("sub=alice"), "{s}");
    assert!(s.contains("admin [matches]") && s.contains("health [skipped]"), "{s}");
    assert!(
        !s.contains(&token) && !text(&out.stderr).contains(&token),
        "never print the token"
    );

    let out = run(base("GET", "/healthz")).await.expect("join");
    assert!(text(&out.stdout).contains("decision: ALLOW"));
}

#[test]
fn dev_idp_refuses_non_loopback_without_the_flag() {
    let out = nodeward(&["dev-idp", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--allow-non-loopback"),
        "{}",
        text(&out.stderr)
    );
}
