//! TokenReview's verdicts as `pkg/serviceaccount/jwt.go` and `claims.go`
//! reach them: audiences, times, signature, issuer, and the bound pod and
//! service account still existing with their uid; the user it reports.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{DeleteParams, PostParams};
use nodeward_testkit::kubeapi::DEFAULT_ISSUER;
use serde_json::json;

use super::*;

async fn review(api: &Api<TokenReview>, token: &str, audiences: &[&str]) -> TokenReviewStatus {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: (!audiences.is_empty()).then(|| audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..Default::default()
    };
    within("TokenReview", api.create(&PostParams::default(), &review))
        .await
        .expect("TokenReview answered")
        .status
        .expect("a status")
}

fn error_of(status: &TokenReviewStatus) -> (bool, &str) {
    (
        status.authenticated.unwrap_or(false),
        status.error.as_deref().unwrap_or(""),
    )
}

#[tokio::test]
async fn token_review_checks_signature_audiences_times_and_bindings() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    let api: Api<TokenReview> = Api::all(client.clone());
    let node_uid = fake.apply_node("node-1");
    let sa_uid = fake.apply_service_account("shop", "orders");
    fake.apply_pod(
        PodBuilder::new("shop", "orders-1")
            .node("node-1")
            .service_account("orders")
            .build(),
    );
    let pod_uid = fake
        .get_pod("shop", "orders-1")
        .and_then(|p| p.metadata.uid)
        .expect("uid");
    let token = fake.service_account_token(
        "shop",
        "orders",
        Some(("orders-1", &pod_uid)),
        &["nodeward"],
        Duration::from_secs(600),
    );
    let jti = jwt_claims(&token)["jti"].as_str().expect("jti").to_string();

    let status = review(&api, &token, &["other", "nodeward"]).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences.as_deref(), Some(&["nodeward".to_string()][..]));
    let user = status.user.expect("user");
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:shop:orders"));
    assert_eq!(user.uid.as_deref(), Some(sa_uid.as_str()));
    assert_eq!(
        user.groups.expect("groups"),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:shop",
            "system:authenticated"
        ]
    );
    let extra = user.extra.expect("extra");
    let one = |k: &str| extra.get(k).map(|v| v.join(","));
    assert_eq!(
        one("authentication.kubernetes.io/pod-name").as_deref(),
        Some("orders-1")
    );
    assert_eq!(one("authentication.kubernetes.io/pod-uid"), Some(pod_uid.clone()));
    assert_eq!(one("authentication.kubernetes.io/node-name").as_deref(), Some("node-1"));
    assert_eq!(one("authentication.kubernetes.io/node-uid"), Some(node_uid));
    assert_eq!(
        one("authentication.kubernetes.io/credential-id"),
        Some(format!("JTI={jti}"))
    );

    // No audiences in the review: the API audiences.
    let status = review(&api, &token, &[]).await;
    assert_eq!(
        error_of(&status),
        (
            false,
            "[invalid bearer token, token audiences [\"nodeward\"] is invalid for the target audiences [\"https://kubernetes.default.svc.cluster.local\"]]"
        )
    );
    assert!(status.user.is_some_and(|u| u.username.is_none()), "an empty user");

    let now = unix_now();
    let signed = |exp: i64, nbf: i64| {
        fake.sign_service_account_claims(&json!({
            "iss": DEFAULT_ISSUER, "sub": "system:serviceaccount:shop:orders", "aud": ["nodeward"],
            "exp": exp, "iat": nbf, "nbf": nbf,
            "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "orders", "uid": sa_uid}},
        }))
    };
    let expired = review(&api, &signed(now - 120, now - 700), &["nodeward"]).await;
    assert_eq!(
        error_of(&expired),
        (false, "[invalid bearer token, service account token has expired]")
    );
    let leeway = review(&api, &signed(now - 30, now - 700), &["nodeward"]).await;
    assert_eq!(leeway.authenticated, Some(true), "60 s of leeway: {leeway:?}");
    let early = review(&api, &signed(now + 900, now + 300), &["nodeward"]).await;
    assert_eq!(
        error_of(&early),
        (false, "[invalid bearer token, service account token is not valid yet]")
    );
    // Another signature of the right length: valid base64url, wrong bytes.
    let (signed_part, signature) = token.rsplit_once('.').expect("three parts");
    let tampered = format!("{signed_part}.AAAA{}", &signature[4..]);
    let bad = review(&api, &tampered, &["nodeward"]).await;
    assert_eq!(
        error_of(&bad),
        (
            false,
            "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"
        )
    );
    let foreign = review(&api, "not.a.jwt", &["nodeward"]).await;
    assert_eq!(error_of(&foreign), (false, "invalid bearer token"));

    // The kubeconfig token is an audience-agnostic static token.
    let admin = review(&api, fake.token(), &[]).await;
    assert_eq!(admin.authenticated, Some(true));
    assert!(
        admin
            .user
            .and_then(|u| u.groups)
            .is_some_and(|g| g.contains(&"system:masters".to_string()))
    );
    let not_api_audience = review(&api, fake.token(), &["nodeward"]).await;
    assert_eq!(
        error_of(&not_api_audience),
        (false, "invalid bearer token"),
        "static tokens serve the API audiences only"
    );

    // The bound pod and the service account must still be there.
    fake.delete_pod("shop", "orders-1");
    let gone = review(&api, &token, &["nodeward"]).await;
    assert_eq!(
        error_of(&gone),
        (
            false,
            "[invalid bearer token, service account token has been invalidated]"
        )
    );
    fake.apply_pod(PodBuilder::new("shop", "orders-1").service_account("orders").build());
    let new_uid = fake
        .get_pod("shop", "orders-1")
        .and_then(|p| p.metadata.uid)
        .expect("uid");
    let replaced = review(&api, &token, &["nodeward"]).await;
    let want =
        format!("[invalid bearer token, pod UID ({new_uid}) does not match service account pod ref claim ({pod_uid})]");
    assert_eq!(error_of(&replaced), (false, want.as_str()));
    let sa_api: Api<ServiceAccount> = Api::namespaced(client, "shop");
    within("delete sa", sa_api.delete("orders", &DeleteParams::default()))
        .await
        .expect("deleted");
    let unbound = fake.service_account_token("shop", "orders", None, &["nodeward"], Duration::from_secs(600));
    let new_sa = fake
        .get_object("v1", "ServiceAccount", Some("shop"), "orders")
        .expect("recreated by the helper");
    fake.delete_object("v1", "ServiceAccount", Some("shop"), "orders");
    let status = review(&api, &unbound, &["nodeward"]).await;
    assert_eq!(
        error_of(&status),
        (false, "[invalid bearer token, serviceaccounts \"orders\" not found]")
    );
    let recreated = fake.apply_service_account("shop", "orders");
    let status = review(&api, &unbound, &["nodeward"]).await;
    let old = new_sa["metadata"]["uid"].as_str().expect("uid");
    let want = format!("[invalid bearer token, service account UID ({recreated}) does not match claim ({old})]");
    assert_eq!(error_of(&status), (false, want.as_str()));

    // Refused as the apiserver refuses; counted; subject to the knobs.
    let empty = within("empty", api.create(&PostParams::default(), &TokenReview::default())).await;
    assert_eq!(
        empty.map_err(|e| api_status(&e)).err(),
        Some((
            400,
            "BadRequest".into(),
            "token is required for TokenReview in authentication".into()
        ))
    );
    assert_eq!(
        fake.token_reviews().len(),
        13,
        "every answered review, not the refused one"
    );
    assert_eq!(
        fake.token_reviews()[0].spec.audiences.as_deref(),
        Some(&["other".to_string(), "nodeward".to_string()][..])
    );
    fake.set_latency_for("/apis/authentication.k8s.io", Duration::from_millis(300));
    let started = Instant::now();
    review(&api, &unbound, &["nodeward"]).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    fake.set_failing_for("/apis/authentication.k8s.io", Some(500));
    let review_req = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: None,
        },
        ..Default::default()
    };
    let err = within("failing", api.create(&PostParams::default(), &review_req))
        .await
        .expect_err("outage");
    assert_eq!(api_code(&err), Some(500));
    let pods: Api<Pod> = Api::all(client_from(&fake.write_kubeconfig(dir.path())).await);
    within("pods still served", pods.list(&ListParams::default()))
        .await
        .expect("only reviews fail");
}
