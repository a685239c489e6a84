//! The node's outbound tokens (`nodeward::credentials`) against the fake
//! Kubernetes API's TokenRequest, in process (no root): a pod's token is
//! requested once however many connections want it at once, bound to the
//! pod with the rule's audience; an outage is one failed request shared by
//! everyone waiting, then retried; a token is replaced ahead of its expiry
//! while the old one keeps serving; a deleted pod's token is refused.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use nodeward::config::{EgressRule, KubernetesConfig};
use nodeward::credentials::{CredentialMetrics, Credentials, Lookup, Subject, Want};
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use serde_json::Value;

const NODE: &str = "node-1";
const UID: &str = "11111111-2222-4333-8444-555555555555";

async fn setup() -> (FakeKubeApi, Credentials, tempfile::TempDir) {
    let api = FakeKubeApi::start().await;
    api.apply_node(NODE);
    api.apply_service_account("shop", "orders");
    api.apply_pod(
        PodBuilder::new("shop", "orders-0")
            .uid(UID)
            .node(NODE)
            .service_account("orders")
            .running("10.0.0.7")
            .build(),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let k8s = KubernetesConfig {
        kubeconfig: Some(kubeconfig),
        ..KubernetesConfig::default()
    };
    let client = nodeward::k8s::client(&k8s).await.expect("kube client");
    let creds = Credentials::new(Some(client), CredentialMetrics::unregistered());
    (api, creds, dir)
}

fn want(audience: &str) -> Arc<Want> {
    let rule: EgressRule = serde_yaml_ng::from_str(&format!(
        "name: payments\nto: {{ports: [8080]}}\ntoken: {{service_account: {{audience: {audience}}}}}\n"
    ))
    .expect("rule");
    let subject = Subject {
        workload: "shop/orders-0".into(),
        namespace: "shop".into(),
        service_account: Some("orders".into()),
        pod: Some(("orders-0".into(), UID.into())),
    };
    Arc::new(Want::new(subject, &rule.token))
}

/// TokenRequests the API server received for shop/orders (refused ones too).
fn requests(api: &FakeKubeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v1/namespaces/shop/serviceaccounts/orders/token")
        .count()
}

fn claims(authorization: &http::HeaderValue) -> Value {
    let token = authorization
        .to_str()
        .expect("ascii")
        .strip_prefix("Bearer ")
        .expect("a bearer token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&json).expect("claims")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_bound_token() {
    let (api, creds, _dir) = setup().await;
    let want = want("payments");
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (creds, want) = (creds.clone(), want.clone());
            tokio::spawn(async move { creds.authorization(&want, None).await })
        })
        .collect();
    let mut values = Vec::new();
    for c in calls {
        let (value, _) = c.await.expect("join").expect("a token");
        values.push(value);
    }
    assert_eq!(requests(&api), 1, "50 concurrent calls, one TokenRequest");
    assert!(values.windows(2).all(|w| w[0] == w[1]), "everyone got the same token");
    assert!(values[0].is_sensitive(), "marked sensitive: never logged");
    let c = claims(&values[0]);
    assert_eq!(c["aud"], serde_json::json!(["payments"]));
    assert_eq!(c["sub"], "system:serviceaccount:shop:orders");
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "orders-0");
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], UID);
    let lifetime = c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 3600, "the rule's default expiration");

    // A later call is a hit; another audience is another token.
    let (_, lookup) = creds.authorization(&want, None).await.expect("token");
    assert_eq!(lookup, Lookup::Hit);
    let (other, _) = creds.authorization(&self::want("ledger"), None).await.expect("token");
    assert_eq!(claims(&other)["aud"], serde_json::json!(["ledger"]));
    assert_eq!(requests(&api), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_one_shared_failure_then_a_retry() {
    let (api, creds, _dir) = setup().await;
    api.set_failing_for("/api/v1/namespaces/shop/serviceaccounts", Some(503));
    let want = want("payments");
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (creds, want) = (creds.clone(), want.clone());
            tokio::spawn(async move { creds.authorization(&want, None).await })
        })
        .collect();
    for c in calls {
        let err = c.await.expect("join").expect_err("the API is down");
        assert_eq!(err.kind(), "kubernetes", "{err}");
    }
    assert_eq!(requests(&api), 1, "twenty waiting calls, one failed TokenRequest");
    api.set_failing_for("/api/v1/namespaces/shop/serviceaccounts", None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    creds
        .authorization(&want, None)
        .await
        .expect("recovered after the retry window");
    assert_eq!(requests(&api), 2);

    // A deleted pod gets no new bound token: the API server refuses it, so
    // nothing can be sent in its name.
    assert!(api.delete_pod("shop", "orders-0"));
    let err = creds
        .authorization(&self::want("vault"), None)
        .await
        .expect_err("pod gone");
    assert_eq!(err.kind(), "kubernetes", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_replaced_ahead_of_its_expiry() {
    let (api, creds, _dir) = setup().await;
    // The API server caps lifetimes (--service-account-max-token-expiration):
    // a 15 s token is due for renewal after 12 s.
    api.set_max_token_expiration(Some(Duration::from_secs(15)));
    let want = want("payments");
    let (first, _) = creds.authorization(&want, None).await.expect("token");
    tokio::time::sleep(Duration::from_millis(12_300)).await;
    // Due: this call still gets the current token, and starts the renewal.
    let (again, lookup) = creds.authorization(&want, None).await.expect("token");
    assert_eq!((again == first, lookup), (true, Lookup::Hit));
    let mut renewed = None;
    for _ in 0..100 {
        let (value, _) = creds.authorization(&want, None).await.expect("token");
        if value != first {
            renewed = Some(value);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let renewed = renewed.expect("a new token before the old one expired");
    assert!(claims(&renewed)["exp"].as_i64() > claims(&first)["exp"].as_i64());
    assert_eq!(requests(&api), 2, "one renewal, however many calls saw it due");
}
