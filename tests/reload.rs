//! Hot reload: a broken file is refused, counted, and the old configuration
//! keeps serving; a good one applies to new requests while in-flight ones
//! finish under the configuration they started with.

use std::time::Duration;

use nodeward::{Reload, Reloader};
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, example_config, metric};
use serde_json::json;

#[tokio::test]
async fn broken_file_is_refused_and_the_old_config_keeps_serving() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = example_config(&idp.issuer(), up.addr);
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nodeward.yaml");
    // The file on disk names the agent's actual state_dir, so a reload keeps it.
    let on_disk = |y: &str| format!("state_dir: {}\n{y}", agent.state_dir.path().display());
    std::fs::write(&file, on_disk(&yaml)).expect("write");
    let mut reloader = Reloader::new(&file, Some(std::fs::read(&file).expect("read")));
    assert_eq!(reloader.check(agent.agent.control(), false).await, Reload::Unchanged);

    let token = idp.token(json!({"aud": "orders"}));
    let get = |path: &'static str| {
        let url = url.clone();
        let token = token.clone();
        async move {
            client()
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/orders").await, 200);

    for broken in [
        "providers: [".to_string(),                                 // not YAML
        yaml.replace("audiences: [orders]", "audiences: []"),       // invalid value
        yaml.replace("forward_claims", "forward_claimz"),           // unknown key
        yaml.replace("paths: [\"/healthz\"]", "paths: [\"/a/[\"]"), // bad glob
    ] {
        std::fs::write(&file, on_disk(&broken)).expect("write");
        match reloader.check(agent.agent.control(), false).await {
            Reload::Rejected(why) => assert!(why.contains("nodeward.yaml"), "error names the file: {why}"),
            other => panic!("broken config applied: {other:?}"),
        }
        assert_eq!(get("/orders").await, 200, "old config still serves");
    }
    let m = agent.metrics().await;
    assert_eq!(
        metric(&m, "nodeward_config_reloads_total{result=\"rejected\"}"),
        Some(4.0),
        "{m}"
    );

    // A good change applies: /orders now needs group `buyers`.
    let stricter = yaml.replace(
        "      - name: default\n        require: {providers: [corp]}",
        "      - name: default\n        require: {claims: {groups: {any_of: [buyers]}}}",
    );
    assert_ne!(stricter, yaml);
    std::fs::write(&file, on_disk(&stricter)).expect("write");
    assert_eq!(reloader.check(agent.agent.control(), false).await, Reload::Applied);
    assert_eq!(get("/orders").await, 403);
    let m = agent.metrics().await;
    assert_eq!(metric(&m, "nodeward_config_reloads_total{result=\"ok\"}"), Some(1.0));
}

#[tokio::test]
async fn in_flight_requests_survive_a_reload() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = example_config(&idp.issuer(), up.addr);
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    let token = idp.token(json!({"aud": "orders"}));
    let slow = tokio::spawn(client().get(format!("{url}/slow/600")).bearer_auth(&token).send());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Reload into a config that denies everything on this workload.
    let deny_all = yaml.replace(
        "      - name: default\n        require: {providers: [corp]}",
        "      - name: default\n        deny: true",
    );
    let config = TestAgent::config(&deny_all, agent.state_dir.path());
    agent.agent.apply(config).await.expect("apply");
    let resp = slow.await.expect("join").expect("in-flight request finishes");
    assert_eq!(resp.status(), 200, "decided before the reload, served after it");
    let now = client()
        .get(format!("{url}/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(now.status(), 403);
    let body = now.text().await.expect("body");
    assert!(body.contains("rule_denies"), "{body}");
}
