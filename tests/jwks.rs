//! The shared JWKS cache against a real (dev) provider over loopback: key
//! rotation, provider down at start (disk copy) and later (stale keys),
//! the rate-limited refetch under a flood of random kids, cache invalidation
//! when a key leaves the JWKS, readiness and metrics.

use std::time::Duration;

use nodeward_dev_idp::MintRequest;
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, metric};
use serde_json::json;

#[path = "support/provider.rs"]
mod support;

use support::status;

/// The example config with fast refresh bounds and this kid cooldown.
fn config(issuer: &str, upstream: std::net::SocketAddr, cooldown: &str) -> String {
    support::config(
        issuer,
        upstream,
        &format!("unknown_kid_cooldown: {cooldown}, fetch_timeout: 2s"),
    )
}

#[tokio::test]
async fn rotated_key_is_picked_up_by_one_refetch() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&idp.issuer(), up.addr, "100ms")).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    assert_eq!(status(&url, &idp.token(json!({"aud": "orders"}))).await.0, 200);
    let before = idp.idp.stats().jwks_fetches;

    idp.idp.rotate(false).expect("rotate");
    let fresh = idp.token(json!({"aud": "orders"}));
    assert_eq!(status(&url, &fresh).await.0, 200, "new kid accepted after the refetch");
    assert_eq!(idp.idp.stats().jwks_fetches, before + 1, "exactly one refetch");
    let m = agent.metrics().await;
    assert_eq!(
        metric(&m, "nodeward_jwks_on_demand_fetches_total{provider=\"corp\"}"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn cached_tokens_die_with_their_key() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&idp.issuer(), up.addr, "100ms")).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    let old = idp.token(json!({"aud": "orders"}));
    assert_eq!(status(&url, &old).await.0, 200);
    assert_eq!(status(&url, &old).await.0, 200, "now cached");

    // The provider drops the old key (compromise response); a token with the
    // new kid makes the agent refetch and learn it.
    idp.idp.rotate(false).expect("rotate");
    assert_eq!(status(&url, &idp.token(json!({"aud": "orders"}))).await.0, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (s, body) = status(&url, &old).await;
    assert_eq!(
        s, 401,
        "a token verified by a removed key is no longer served from cache: {body}"
    );
    assert_eq!(body["reason"], "unknown_kid");
}

#[tokio::test]
async fn random_kid_flood_stays_rate_limited_and_valid_traffic_flows() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&idp.issuer(), up.addr, "10s")).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    let valid = idp.token(json!({"aud": "orders"}));
    let before = idp.idp.stats().jwks_fetches;

    let mut tasks = Vec::new();
    for i in 0..300 {
        let mut header = serde_json::Map::new();
        header.insert("kid".into(), json!(format!("random-{i}")));
        let token = idp
            .idp
            .mint(&MintRequest {
                claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
                header,
                ..MintRequest::default()
            })
            .expect("mint");
        let url = url.clone();
        tasks.push(tokio::spawn(async move { status(&url, &token).await }));
    }
    for t in tasks {
        let (s, body) = t.await.expect("join");
        assert_eq!(s, 401);
        assert_eq!(body["reason"], "unknown_kid");
    }
    assert_eq!(status(&url, &valid).await.0, 200, "valid traffic unaffected");
    let fetched = idp.idp.stats().jwks_fetches - before;
    assert!(
        fetched <= 1,
        "300 random kids caused {fetched} JWKS fetches; at most one per cooldown"
    );

    // The refused refetches are what an operator sees of the flood: one more
    // random kid within the cooldown is one more refusal, and no fetch.
    let limited = "nodeward_jwks_on_demand_rate_limited_total{provider=\"corp\"}";
    let m = agent.metrics().await;
    let refused = metric(&m, limited).expect("the counter is exported");
    let on_demand = metric(&m, "nodeward_jwks_on_demand_fetches_total{provider=\"corp\"}").unwrap_or(0.0);
    assert!(
        refused + on_demand >= 1.0 && refused + on_demand <= 300.0,
        "{refused} refused + {on_demand} made for 300 random kids: {m}"
    );
    let mut header = serde_json::Map::new();
    header.insert("kid".into(), json!("random-once-more"));
    let token = idp
        .idp
        .mint(&MintRequest {
            claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
            header,
            ..MintRequest::default()
        })
        .expect("mint");
    assert_eq!(status(&url, &token).await.0, 401);
    let m = agent.metrics().await;
    assert_eq!(metric(&m, limited), Some(refused + 1.0), "{m}");
    assert_eq!(idp.idp.stats().jwks_fetches - before, fetched, "and no fetch");
}

#[tokio::test]
async fn restart_with_provider_down_serves_from_the_disk_copy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let idp = TestIdp::start_on(listener).await;
    let up = EchoUpstream::start().await;
    let yaml = config(&idp.issuer(), up.addr, "10s");
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let token = idp.token(json!({"aud": "orders"}));
    let state_dir = agent.shutdown().await;
    let _keys = idp.stop().await; // provider now down

    let agent = TestAgent::start_in(&yaml, state_dir).await;
    assert!(agent.agent.not_ready().is_empty(), "ready from the disk copy");
    let ready = client()
        .get(format!("{}/readyz", agent.admin_url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    assert_eq!(status(&agent.url("orders"), &token).await.0, 200);
}

#[tokio::test]
async fn provider_down_at_start_without_copy_fails_closed_then_recovers() {
    // Reserve a port for the provider but do not serve yet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let issuer = format!("http://{addr}");
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&issuer, up.addr, "100ms")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client()
        .get(format!("{}/readyz", agent.admin_url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let text = ready.text().await.expect("body");
    assert!(text.contains("provider corp has no usable keys"), "{text}");
    let m = agent.metrics().await;
    assert!(
        metric(&m, "nodeward_jwks_fetches_total{provider=\"corp\",result=\"network\"}").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "nodeward_provider_ready{provider=\"corp\"}"), Some(0.0));
    assert_eq!(metric(&m, "nodeward_ready"), Some(0.0), "/readyz as a metric: {m}");

    // Any token is refused while no keys are known: fail closed.
    let stranger = TestIdp::start().await;
    let forged = stranger.token(json!({"aud": "orders", "iss": issuer}));
    let (s, body) = status(&agent.url("orders"), &forged).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["reason"], "no_keys");

    // The provider comes up; the next request's refetch (cooldown 100ms) finds keys.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let idp = TestIdp::start_on(listener).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        status(&agent.url("orders"), &idp.token(json!({"aud": "orders"})))
            .await
            .0,
        200
    );
    agent.wait_ready().await;
    assert_eq!(metric(&agent.metrics().await, "nodeward_ready"), Some(1.0));
    let (s, _) = status(&agent.url("orders"), &forged).await;
    assert_eq!(s, 401, "a token from another key is still refused");
}

#[tokio::test]
async fn provider_failing_later_keeps_the_last_good_keys() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&idp.issuer(), up.addr, "100ms")).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    idp.idp.set_failure(Some(503));
    // Force refetches: unknown kids trigger them (rate-limited, cooldown 100ms).
    for i in 0..3 {
        let mut header = serde_json::Map::new();
        header.insert("kid".into(), json!(format!("unknown-{i}")));
        let t = idp
            .idp
            .mint(&MintRequest {
                claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
                header,
                ..MintRequest::default()
            })
            .expect("mint");
        assert_eq!(status(&url, &t).await.0, 401);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_eq!(
        status(&url, &idp.token(json!({"aud": "orders"}))).await.0,
        200,
        "stale keys still verify"
    );
    let m = agent.metrics().await;
    assert!(
        metric(&m, "nodeward_jwks_fetches_total{provider=\"corp\",result=\"status\"}").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "nodeward_provider_ready{provider=\"corp\"}"), Some(1.0));
    assert!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}").is_some_and(|n| n >= 3.0));
}

#[tokio::test]
async fn every_algorithm_of_the_provider_is_accepted() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&idp.issuer(), up.addr, "10s")).await;
    agent.wait_ready().await;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let (s, body) = status(&agent.url("orders"), &idp.token_with(alg, json!({"aud": "orders"}))).await;
        assert_eq!(s, 200, "{alg}: {body}");
    }
}
