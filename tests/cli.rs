//! The `nodeward` binary's commands as a user runs them: `check` prints the
//! effective config or a precise error, `explain` prints the decision and
//! why; the binary has no dev IdP.

use std::process::{Command, Output};

use nodeward_testkit::{TestIdp, example_config};
use serde_json::json;

fn nodeward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodeward-under-test"))
        .args(args)
        .output()
        .expect("run nodeward")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

use nodeward_testkit::CONTRACT_EXAMPLE;

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

/// A `protected_resource` workload: `check` refuses token passthrough with
/// the key and why; `explain` says the metadata is answered by nodeward,
/// and shows the resource, the agent's client and that no token goes on.
#[tokio::test]
async fn check_and_explain_a_protected_resource() {
    let idp = TestIdp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tools.yaml");
    let yaml = format!(
        r#"state_dir: {}
providers: [{{name: corp, issuer: "{}", audiences: [orders]}}]
policies:
  - name: tools
    selector: {{app: tools}}
    protected_resource: {{resource: "http://tools.example/mcp", authorization_servers: [corp]}}
    rules: [{{name: call, paths: ["/mcp"], require: {{claims: {{scope: {{all_of: [tools.call]}}}}}}}}]
workloads: [{{name: tools, labels: {{app: tools}}, listen: "127.0.0.1:0", upstream: "127.0.0.1:9"}}]
"#,
        dir.path().display(),
        idp.issuer()
    );
    let config = file.to_str().expect("utf8").to_string();
    std::fs::write(&file, yaml.replace("rules:", "forward_token: true\n    rules:")).expect("write");
    let out = nodeward(&["check", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("tools.yaml")
            && err.contains("key `policies[0].forward_token`")
            && err.contains("token passthrough"),
        "{err}"
    );

    std::fs::write(&file, &yaml).expect("write");
    let token = idp.token(json!({"aud": "http://tools.example/mcp", "scope": "tools.call", "azp": "mcp-agent"}));
    let explain = move |method: &'static str, path: &'static str, token: Option<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "explain",
                "--config",
                &config,
                "--workload",
                "tools",
                "--method",
                method,
                "--path",
                path,
            ];
            if let Some(t) = &token {
                args.extend(["--token", t.as_str()]);
            }
            nodeward(&args)
        })
    };
    let out = explain("GET", "/.well-known/oauth-protected-resource/mcp", None)
        .await
        .expect("join");
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.starts_with("decision: ANSWERED BY NODEWARD"), "{s}");
    assert!(
        s.contains("metadata at http://tools.example/.well-known/oauth-protected-resource/mcp"),
        "{s}"
    );

    let out = explain("POST", "/mcp", Some(token.clone())).await.expect("join");
    let s = text(&out.stdout);
    assert!(s.contains("decision: ALLOW"), "{s}");
    assert!(
        s.contains("resource: http://tools.example/mcp (tokens must name it"),
        "{s}"
    );
    assert!(s.contains("client_id=mcp-agent"), "{s}");
    assert!(
        !s.to_ascii_lowercase().contains("authorization:"),
        "no token goes upstream: {s}"
    );
    assert!(!s.contains(&token), "never print the token");
}

/// `explain --pod` reads the pod from the API server and binds it as the pod
/// watch does (labels, the policy annotation, deny-all without a policy);
/// `--labels` does the same offline; a pod that is not protected says why.
#[tokio::test]
async fn explain_binds_a_pod_as_the_pod_watch_does() {
    use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};

    let idp = TestIdp::start().await;
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let file = dir.path().join("nodeward.yaml");
    let yaml = format!(
        "state_dir: {}\nkubernetes: {{enabled: true, node_name: node-1, kubeconfig: {}}}\n{}",
        dir.path().display(),
        kubeconfig.display(),
        example_config(&idp.issuer(), "127.0.0.1:9".parse().expect("addr"))
    );
    std::fs::write(&file, yaml).expect("write");
    let config = file.to_str().expect("utf8").to_string();
    api.apply_pod(
        PodBuilder::new("shop", "orders-1")
            .node("node-1")
            .label("app", "orders")
            .running("10.0.0.7")
            .build(),
    );
    let mut typo = PodBuilder::new("shop", "typo-1")
        .node("node-1")
        .label("app", "orders")
        .annotation("nodeward.io/policy", "ordres")
        .running("10.0.0.8")
        .build();
    // A deny-all pod is closed on the ports it declares.
    if let Some(c) = typo.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        c.ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            container_port: 8080,
            ..Default::default()
        }]);
    }
    api.apply_pod(typo);
    api.apply_pod(
        PodBuilder::new("shop", "pending-1")
            .node("node-1")
            .label("app", "orders")
            .build(),
    );
    let token = idp.token(json!({"aud": "orders", "sub": "alice", "groups": ["dev"]}));

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodeward(&args)
        })
    };
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "explain",
            "--config",
            &config,
            "--method",
            "POST",
            "--path",
            "/admin/users",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };

    // The pod's labels select the `orders` policy; `--workload ns/name` means the pod too.
    for subject in [["--pod", "shop/orders-1"], ["--workload", "shop/orders-1"]] {
        let out = run(args(&[subject[0], subject[1], "--token", &token]))
            .await
            .expect("join");
        let s = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            s.contains("workload: shop/orders-1") && s.contains("policy:   orders"),
            "{s}"
        );
        assert!(
            s.contains("decision: DENY 403") && s.contains("claim groups lacks \"admins\""),
            "{s}"
        );
        assert!(
            !s.contains(&token) && !text(&out.stderr).contains(&token),
            "never print the token"
        );
    }

    // An annotation naming a policy that does not exist: deny-all, and why.
    let out = run(args(&["--pod", "shop/typo-1", "--token", &token]))
        .await
        .expect("join");
    let s = text(&out.stdout);
    assert!(
        s.contains("decision: DENY 403") && s.contains("reason:   no_policy"),
        "{s}"
    );
    assert!(s.contains("\"ordres\""), "the detail names the missing policy: {s}");

    // Not running: not protected, and the error says so.
    let out = run(args(&["--pod", "shop/pending-1"])).await.expect("join");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not protected") && err.contains("waiting"), "{err}");

    // Unknown pod: the API's answer, not a guess.
    let out = run(args(&["--pod", "shop/nope"])).await.expect("join");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot read pod shop/nope"),
        "{}",
        text(&out.stderr)
    );

    // Offline, by labels: the same binding without the API server.
    let out = run(args(&["--labels", "app=orders,tier=web", "--token", &token]))
        .await
        .expect("join");
    let s = text(&out.stdout);
    assert!(
        s.contains("policy:   orders") && s.contains("decision: DENY 403"),
        "{s}"
    );
    let out = run(args(&["--labels", "app=other"])).await.expect("join");
    assert!(
        text(&out.stdout).contains("reason:   no_policy"),
        "{}",
        text(&out.stdout)
    );
    let out = run(args(&["--labels", "app=other", "--policy", "orders"]))
        .await
        .expect("join");
    assert!(text(&out.stdout).contains("policy:   orders"), "{}", text(&out.stdout));
}

/// The agent's binary carries no token minter: the dev IdP is its own binary.
#[test]
fn the_agent_binary_has_no_dev_idp() {
    let help = nodeward(&["--help"]);
    assert!(help.status.success());
    assert!(!text(&help.stdout).contains("dev-idp"), "{}", text(&help.stdout));
    let out = nodeward(&["dev-idp", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success(), "`nodeward dev-idp` must not exist");
}

/// The contract example as a file in `dir`, on fixed ports, run as a
/// process: the agent, its IdP and upstream, and the workload's port. Keep
/// the whole value alive: dropping it stops the IdP and the upstream.
struct RunningExample {
    child: nodeward_testkit::process::AgentProcess,
    idp: TestIdp,
    _upstream: nodeward_testkit::EchoUpstream,
    listen: u16,
}

async fn run_example(dir: &std::path::Path, args: &[&str]) -> RunningExample {
    use nodeward_testkit::process::AgentProcess;
    use nodeward_testkit::wire::free_port;

    let idp = TestIdp::start().await;
    let upstream = nodeward_testkit::EchoUpstream::start().await;
    let (admin, listen) = (free_port(), free_port());
    let yaml = example_config(&idp.issuer(), upstream.addr)
        .replace(
            "admin: 127.0.0.1:0",
            &format!("admin: 127.0.0.1:{admin}\nstate_dir: {}", dir.display()),
        )
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{listen}"));
    let file = dir.join("nodeward.yaml");
    std::fs::write(&file, yaml).expect("write");
    let child = AgentProcess::spawn(
        env!("CARGO_BIN_EXE_nodeward-under-test"),
        &file,
        args,
        ([127, 0, 0, 1], admin).into(),
    );
    RunningExample {
        child,
        idp,
        _upstream: upstream,
        listen,
    }
}

/// `nodeward run` as a process: one JSON audit line per decision on stdout
/// naming the caller, never the token; logs on stderr; SIGTERM exits cleanly.
#[tokio::test]
async fn run_writes_one_audit_line_per_decision_and_never_the_token() {
    use nodeward_testkit::client;

    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_example(dir.path(), &[]).await;
    let (child, idp, listen) = (run.child, &run.idp, run.listen);
    child.wait_ready().await;

    let token = idp.token(json!({"aud": "orders", "sub": "alice", "email": "alice@example.com", "groups": ["dev"]}));
    let url = format!("http://127.0.0.1:{listen}");
    let ok = client()
        .get(format!("{url}/orders?secret=1"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("req");
    assert_eq!(ok.status(), 200);
    let denied = client()
        .post(format!("{url}/admin/users"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("req");
    assert_eq!(denied.status(), 403);
    let anonymous = client().get(format!("{url}/orders")).send().await.expect("req");
    assert_eq!(anonymous.status(), 401);

    let out = child.terminate().await;
    assert!(out.status.success(), "clean exit on SIGTERM: {:?}", out.status);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        !stdout.contains(&token) && !stderr.contains(&token),
        "a token was logged"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is JSON lines"))
        .collect();
    assert_eq!(lines.len(), 3, "one audit line per decision: {stdout}");
    assert!(lines.iter().all(|l| l["target"] == "audit"));
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["sub"], "alice");
    assert_eq!(lines[0]["email"], "alice@example.com");
    assert_eq!(lines[0]["iss"], idp.issuer());
    assert_eq!(lines[0]["path"], "/orders", "no query string in the audit log");
    assert!(lines[0]["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert!(lines[0]["request_id"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(lines[0]["latency_us"].is_u64());
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["reason"], "claim_mismatch");
    assert_eq!(lines[1]["rule"], "admin");
    assert_eq!(lines[2]["reason"], "missing_token");
}

/// A SIGHUP while the agent starts (a ConfigMap change racing a rollout)
/// is a reload, not the default action's kill: it is caught from the moment
/// SIGTERM is, before `Agent::start`, and applied once the agent runs.
#[tokio::test]
async fn a_sighup_while_starting_does_not_kill_the_agent() {
    use std::time::Duration;

    use nodeward_testkit::client;

    const SIGHUP: u32 = 1;
    const SIGTERM: u32 = 15;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_example(dir.path(), &["--reload-interval", "1h"]).await;
    let (child, listen) = (run.child, run.listen);
    // As soon as the first handler is in place, before the agent is up.
    let mut waited = 0;
    while !child.catches(SIGTERM) {
        assert!(waited < 10_000, "no SIGTERM handler within 10 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += 1;
    }
    assert!(child.catches(SIGHUP), "SIGHUP is caught as early as SIGTERM");
    child.signal("HUP");
    child.wait_ready().await;
    let up = client()
        .get(format!("http://127.0.0.1:{listen}/healthz"))
        .send()
        .await
        .expect("the agent serves after a SIGHUP at startup");
    assert_eq!(up.status(), 200);
    let out = child.terminate().await;
    assert!(out.status.success(), "clean exit: {:?}", out.status);
    assert!(
        text(&out.stderr).contains("configuration reloaded"),
        "the startup SIGHUP is applied once the agent runs: {}",
        text(&out.stderr)
    );
}
