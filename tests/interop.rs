//! Interoperability with a real, certified OpenID provider implementation:
//! panva's `oidc-provider` (npm, pinned in tests/interop/package.json) issues
//! RFC 9068 JWT access tokens through the client-credentials grant; nodeward
//! must accept them, forward the identity, and pick up a rotated signing key
//! with one refetch.
//!
//! Needs Node.js and `npm ci --prefix tests/interop` (`.ci/run` and
//! `cargo xtask test` do it). Without them this test fails loudly: it never
//! passes without having run.

use nodeward_testkit::interop::NodeServer;
use nodeward_testkit::{EchoUpstream, TestAgent, client, metric};
use serde_json::{Value, json};

const AUDIENCE: &str = "urn:nodeward:orders";

/// Starts the provider on `port` (a new signing key first when `rotate`).
async fn start_provider(port: u16, jwks_file: &std::path::Path, rotate: bool) -> NodeServer {
    let jwks = jwks_file.to_str().expect("utf8 path");
    let mut env = vec![("JWKS_FILE", jwks)];
    if rotate {
        env.push(("ROTATE", "1"));
    }
    NodeServer::start("oidc-provider.mjs", port, &env, None)
        .await
        .unwrap_or_else(|e| panic!("oidc-provider: {e}"))
}

/// A client-credentials access token for our resource.
async fn token(issuer: &str) -> String {
    let resp = client()
        .post(format!("{issuer}/token"))
        .basic_auth("nodeward-test", Some("nodeward-test-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&resource={}&scope=orders%3Aread",
            AUDIENCE.replace(':', "%3A")
        ))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    body["access_token"].as_str().expect("access_token").to_string()
}

fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().expect("header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("b64");
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    v["kid"].as_str().expect("kid").to_string()
}

fn config(issuer: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        r#"admin: 127.0.0.1:0
providers:
  - name: panva
    issuer: {issuer}
    audiences: ["{AUDIENCE}"]
    refresh: {{min_interval: 1s, unknown_kid_cooldown: 100ms}}
policies:
  - name: orders
    selector: {{app: orders}}
    rules:
      - name: admin
        paths: ["/admin/**"]
        require: {{claims: {{groups: {{any_of: [admins]}}, client_id: {{equals: nodeward-test}}}}}}
      - name: read
        require: {{claims: {{scope: {{all_of: ["orders:read"]}}}}}}
    forward_claims: {{x-user-email: email, x-client-id: client_id}}
workloads:
  - name: orders
    labels: {{app: orders}}
    listen: 127.0.0.1:0
    upstream: {upstream}
"#
    )
}

#[tokio::test]
async fn oidc_provider_tokens_are_accepted_and_rotation_is_followed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let keys = tempfile::tempdir().expect("tempdir");
    let jwks_file = keys.path().join("jwks.json");
    let provider = start_provider(port, &jwks_file, false).await;

    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&issuer, up.addr)).await;
    agent.wait_ready().await;
    let url = agent.url("orders");

    let first = token(&issuer).await;
    for path in ["/orders", "/admin/keys"] {
        let resp = client()
            .get(format!("{url}{path}"))
            .bearer_auth(&first)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let echo: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        assert_eq!(echo["headers"]["x-nodeward-sub"], json!(["nodeward-test"]));
        assert_eq!(echo["headers"]["x-nodeward-iss"], json!([issuer]));
        assert_eq!(echo["headers"]["x-client-id"], json!(["nodeward-test"]));
        assert_eq!(echo["headers"]["x-user-email"], json!(["nodeward-test@example.com"]));
    }
    // A token with a forged signature is refused.
    let mut tampered = first.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let resp = client()
        .get(format!("{url}/orders"))
        .bearer_auth(&tampered)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);

    // Rotate: the provider restarts signing with a new key B (A still published).
    provider.stop().await;
    let provider = start_provider(port, &jwks_file, true).await;
    let second = token(&issuer).await;
    assert_ne!(kid(&first), kid(&second), "the provider signs with the rotated key");
    let resp = client()
        .get(format!("{url}/orders"))
        .bearer_auth(&second)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "rotated key accepted after the refetch");
    let resp = client()
        .get(format!("{url}/orders"))
        .bearer_auth(&first)
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.status(),
        200,
        "the old key is still published, so its tokens still pass"
    );
    let m = agent.metrics().await;
    assert_eq!(
        metric(&m, "nodeward_jwks_on_demand_fetches_total{provider=\"panva\"}"),
        Some(1.0),
        "{m}"
    );
    provider.stop().await;
}

/// Outbound identity with a client's credentials (issue 16): the node's
/// token cache asks the provider's discovered token endpoint for a
/// client-credentials token (RFC 8707 `resource`, scope), once for every
/// caller, and the token is one nodeward itself accepts. A wrong secret is
/// the provider's refusal, with its error code, never a request without a
/// token.
#[tokio::test]
async fn egress_client_credentials_come_from_the_providers_token_endpoint() {
    use std::sync::Arc;

    use nodeward::config::EgressRule;
    use nodeward::credentials::{CredentialMetrics, Credentials, Lookup, Subject, Want};
    use nodeward::provider::{Provider, ProviderMetrics};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks_file = dir.path().join("jwks.json");
    let oidc = start_provider(port, &jwks_file, false).await;

    let up = EchoUpstream::start().await;
    let yaml = config(&issuer, up.addr);
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let cfg = TestAgent::config(&yaml, dir.path());
    let provider = Arc::new(
        Provider::new(
            cfg.providers[0].clone(),
            dir.path(),
            ProviderMetrics::unregistered("panva"),
            None,
        )
        .expect("provider"),
    );
    provider.refresh().await.expect("discovery");
    let secret = dir.path().join("client-secret");
    let want = |secret_file: &std::path::Path| {
        let rule: EgressRule = serde_yaml_ng::from_str(&format!(
            "name: orders\nto: {{ports: [8080]}}\ntoken:\n  client_credentials: {{provider: panva, client_id: nodeward-test, \
             client_secret_file: {}, scope: \"orders:read\", resource: \"{AUDIENCE}\"}}\n",
            secret_file.display()
        ))
        .expect("rule");
        let caller = |pod: &str| Subject {
            workload: format!("shop/{pod}").into(),
            namespace: "shop".into(),
            service_account: Some("orders".into()),
            pod: Some((pod.into(), format!("uid-{pod}").into())),
        };
        (
            Arc::new(Want::new(caller("a"), &rule.token)),
            Arc::new(Want::new(caller("b"), &rule.token)),
        )
    };
    let creds = Credentials::new(None, CredentialMetrics::unregistered());

    std::fs::write(&secret, "nodeward-test-secret\n").expect("secret");
    let (a, b) = want(&secret);
    let (value, lookup) = creds.authorization(&a, Some(&provider)).await.expect("a token");
    assert_eq!(lookup, Lookup::Miss);
    let (same, lookup) = creds.authorization(&b, Some(&provider)).await.expect("a token");
    assert_eq!(
        (same == value, lookup),
        (true, Lookup::Hit),
        "a client's token is shared by its callers"
    );
    let resp = client()
        .get(format!("{}/orders", agent.url("orders")))
        .header("authorization", value)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "the provider's token passes nodeward's own checks");
    let echo: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    assert_eq!(echo["headers"]["x-client-id"], json!(["nodeward-test"]));

    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret").expect("secret");
    let (c, _) = want(&wrong);
    let err = creds
        .authorization(&c, Some(&provider))
        .await
        .expect_err("wrong secret");
    assert_eq!(err.kind(), "refused", "{err}");
    assert!(err.to_string().contains("invalid_client"), "{err}");
    assert!(
        !err.to_string().contains("not-the-secret"),
        "the secret is never in an error: {err}"
    );
    oidc.stop().await;
}

/// Outbound identity by RFC 8693 token exchange (issue 16): the calling
/// pod's service-account token (a TokenRequest of the fake Kubernetes API,
/// audience: the provider) is the subject, the agent's own token (a file)
/// the actor; oidc-provider verifies both against the cluster issuer's keys
/// and issues an access token for the resource, `sub` the pod's service
/// account, `act` the agent. nodeward accepts it like any other.
#[tokio::test]
async fn egress_token_exchange_makes_the_pods_token_a_providers_token() {
    use std::sync::Arc;

    use base64::Engine as _;
    use nodeward::config::{EgressRule, KubernetesConfig};
    use nodeward::credentials::{CredentialMetrics, Credentials, Subject, Want};
    use nodeward::provider::{Provider, ProviderMetrics};
    use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};

    let api = FakeKubeApi::start().await;
    api.set_anonymous_discovery(true);
    api.apply_node("node-1");
    api.apply_service_account("shop", "orders");
    api.apply_pod(
        PodBuilder::new("shop", "orders-0")
            .uid("uid-orders-0")
            .node("node-1")
            .service_account("orders")
            .running("10.0.0.7")
            .build(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks_file = dir.path().join("jwks.json");
    let subject_jwks = format!("{}/openid/v1/jwks", api.url());
    let oidc = NodeServer::start(
        "oidc-provider.mjs",
        0,
        &[
            ("JWKS_FILE", jwks_file.to_str().expect("utf8")),
            ("SUBJECT_JWKS", &subject_jwks),
        ],
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("oidc-provider: {e}"));
    let issuer = oidc.url.clone();

    let up = EchoUpstream::start().await;
    let yaml = config(&issuer, up.addr);
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let cfg = TestAgent::config(&yaml, dir.path());
    let provider = Arc::new(
        Provider::new(
            cfg.providers[0].clone(),
            dir.path(),
            ProviderMetrics::unregistered("panva"),
            None,
        )
        .expect("provider"),
    );
    provider.refresh().await.expect("discovery");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let kube = nodeward::k8s::client(&KubernetesConfig {
        kubeconfig: Some(kubeconfig),
        ..KubernetesConfig::default()
    })
    .await
    .expect("kube client");
    // The agent's own identity, as a projected token volume would hold it.
    let actor = dir.path().join("agent-token");
    let agent_token = api.service_account_token(
        "nodeward",
        "nodeward",
        None,
        &[&issuer],
        std::time::Duration::from_secs(3600),
    );
    std::fs::write(&actor, &agent_token).expect("actor token");
    let secret = dir.path().join("exchange-secret");
    std::fs::write(&secret, "nodeward-exchange-secret").expect("secret");
    let rule: EgressRule = serde_yaml_ng::from_str(&format!(
        "name: orders\nto: {{ports: [8080]}}\ntoken:\n  exchange: {{provider: panva, subject_audience: \"{issuer}\", \
         actor_token_file: {}, client_id: nodeward-exchange, client_secret_file: {}, resource: \"{AUDIENCE}\", \
         scope: \"orders:read\"}}\n",
        actor.display(),
        secret.display()
    ))
    .expect("rule");
    let want = Arc::new(Want::new(
        Subject {
            workload: "shop/orders-0".into(),
            namespace: "shop".into(),
            service_account: Some("orders".into()),
            pod: Some(("orders-0".into(), "uid-orders-0".into())),
        },
        &rule.token,
    ));
    let creds = Credentials::new(Some(kube), CredentialMetrics::unregistered());
    let (value, _) = creds
        .authorization(&want, Some(&provider))
        .await
        .unwrap_or_else(|e| panic!("exchange: {e}"));
    let token = value.to_str().expect("ascii").strip_prefix("Bearer ").expect("bearer");
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["sub"], "system:serviceaccount:shop:orders", "{claims}");
    assert_eq!(
        claims["act"]["sub"], "system:serviceaccount:nodeward:nodeward",
        "{claims}"
    );
    assert_eq!(claims["aud"], AUDIENCE, "{claims}");

    let resp = client()
        .get(format!("{}/orders", agent.url("orders")))
        .header("authorization", value)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "the exchanged token passes nodeward's own checks");
    let echo: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    assert_eq!(
        echo["headers"]["x-nodeward-sub"],
        json!(["system:serviceaccount:shop:orders"])
    );

    // Without a valid subject (another issuer's audience) the provider refuses.
    let wrong: EgressRule = serde_yaml_ng::from_str(&format!(
        "name: orders\nto: {{ports: [8080]}}\ntoken:\n  exchange: {{provider: panva, subject_audience: somebody-else, \
         client_id: nodeward-exchange, client_secret_file: {}, resource: \"{AUDIENCE}\"}}\n",
        secret.display()
    ))
    .expect("rule");
    let err = creds
        .authorization(
            &Arc::new(Want::new(want.subject.clone(), &wrong.token)),
            Some(&provider),
        )
        .await
        .expect_err("a subject token for another audience");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    oidc.stop().await;
}
