//! The service-account issuer: discovery and JWKS as the apiserver serves
//! them, token claims as `pkg/serviceaccount/claims.go` writes them (and a
//! standard JWT verifier accepts them), TokenRequest's defaults, limits,
//! clamping, extension and bindings.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use nodeward_testkit::kubeapi::DEFAULT_ISSUER;
use serde_json::{Value, json};

use super::*;

async fn get(fake: &FakeKubeApi, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{}{path}", fake.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    within(path, req.send()).await.expect("request to the fake")
}

async fn json_of(response: reqwest::Response) -> Value {
    let body = within("body", response.bytes()).await.expect("a body");
    serde_json::from_slice(&body).expect("a JSON body")
}

#[tokio::test]
async fn issuer_discovery_and_jwks_need_a_credential_and_rotate() {
    let fake = FakeKubeApi::start().await;
    for path in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        assert_eq!(get(&fake, path, None).await.status(), 401, "{path} anonymous");
        assert_eq!(
            get(&fake, path, Some("garbage")).await.status(),
            401,
            "{path} bad token"
        );
    }
    let response = get(&fake, "/.well-known/openid-configuration", Some(fake.token())).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "public, max-age=3600");
    let discovery = json_of(response).await;
    assert_eq!(
        discovery,
        json!({
            "issuer": DEFAULT_ISSUER,
            "jwks_uri": format!("{}/openid/v1/jwks", fake.url()),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    );
    let response = get(&fake, "/openid/v1/jwks", Some(fake.token())).await;
    assert_eq!(response.headers()["content-type"], "application/jwk-set+json");
    let jwks = json_of(response).await;
    let key = &jwks["keys"][0];
    assert_eq!(
        (&key["kty"], &key["alg"], &key["use"]),
        (&json!("RSA"), &json!("RS256"), &json!("sig"))
    );
    assert_eq!(
        key["kid"].as_str().map(str::len),
        Some(43),
        "base64url SHA-256 of the key"
    );
    assert_eq!(jwks, fake.service_account_jwks());

    // Every service account may read discovery (the default
    // system:service-account-issuer-discovery binding), not the rest.
    let token = fake.service_account_token("shop", "orders", None, &[DEFAULT_ISSUER], Duration::from_secs(600));
    assert_eq!(get(&fake, "/openid/v1/jwks", Some(&token)).await.status(), 200);
    assert_eq!(get(&fake, "/api/v1/pods", Some(&token)).await.status(), 403);
    fake.set_anonymous_discovery(true);
    assert_eq!(get(&fake, "/openid/v1/jwks", None).await.status(), 200);
    assert_eq!(get(&fake, "/api/v1/pods", None).await.status(), 401);

    // Through kube's client too, with the kubeconfig's credentials.
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    let text = within(
        "discovery",
        client.request_text(
            http::Request::get("/.well-known/openid-configuration")
                .body(Vec::new())
                .expect("request"),
        ),
    )
    .await
    .expect("discovery through kube");
    assert!(text.contains("/openid/v1/jwks"));

    fake.set_service_account_issuer(&fake.url());
    let discovery = json_of(get(&fake, "/.well-known/openid-configuration", None).await).await;
    assert_eq!(discovery["issuer"], fake.url().as_str());

    // Rotation: the old public key stays until dropped.
    let before = fake.service_account_jwks()["keys"][0]["kid"].clone();
    fake.rotate_service_account_key(true);
    let keys = fake.service_account_jwks()["keys"].as_array().cloned().expect("keys");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kid"], before);
    let minted = fake.service_account_token("shop", "orders", None, &["x"], Duration::from_secs(600));
    let header = jwt_claims(&format!("x.{}", minted.split('.').next().expect("header")));
    assert_eq!(header["kid"], keys[1]["kid"], "the new key signs");
    assert_eq!(header["alg"], "RS256");
    fake.rotate_service_account_key(false);
    assert_eq!(fake.service_account_jwks()["keys"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn tokens_carry_the_apiserver_claims_and_verify_with_jsonwebtoken() {
    let fake = FakeKubeApi::start().await;
    let node_uid = fake.apply_node("node-1");
    let sa_uid = fake.apply_service_account("shop", "orders");
    fake.apply_pod(
        PodBuilder::new("shop", "orders-1")
            .node("node-1")
            .service_account("orders")
            .uid("11111111-2222-4333-8444-555555555555")
            .build(),
    );
    let token = fake.service_account_token(
        "shop",
        "orders",
        Some(("orders-1", "11111111-2222-4333-8444-555555555555")),
        &["payments"],
        Duration::from_secs(900),
    );
    let claims = jwt_claims(&token);
    let iat = claims["iat"].as_i64().expect("iat");
    assert!((iat - unix_now()).abs() <= 2);
    assert_eq!(claims["iss"], DEFAULT_ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:shop:orders");
    assert_eq!(claims["aud"], json!(["payments"]), "an array even for one audience");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 900));
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["jti"].as_str().map(str::len), Some(36), "a UUID");
    assert_eq!(
        claims["kubernetes.io"],
        json!({
            "namespace": "shop",
            "serviceaccount": {"name": "orders", "uid": sa_uid},
            "pod": {"name": "orders-1", "uid": "11111111-2222-4333-8444-555555555555"},
            "node": {"name": "node-1", "uid": node_uid},
        })
    );

    // A standard verifier accepts it against the JWKS.
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(fake.service_account_jwks()).expect("a JWK set");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the signing key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["payments"]);
    validation.set_issuer(&[DEFAULT_ISSUER]);
    let verified = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("verifies");
    assert_eq!(verified.claims["sub"], "system:serviceaccount:shop:orders");
    validation.set_audience(&["elsewhere"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &key, &validation).is_err());

    // A pod the fake does not store: no node claim.
    let token = fake.service_account_token("shop", "orders", Some(("gone", "u")), &["x"], Duration::from_secs(600));
    assert_eq!(jwt_claims(&token)["kubernetes.io"]["node"], Value::Null);
}

fn token_request(audiences: &[&str], seconds: Option<i64>, bound: Option<(&str, &str, Option<&str>)>) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: seconds,
            bound_object_ref: bound.map(|(kind, name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
                name: Some(name.into()),
                uid: uid.map(str::to_string),
            }),
        },
        ..Default::default()
    }
}

async fn request_token(api: &Api<ServiceAccount>, name: &str, req: &TokenRequest) -> kube::Result<TokenRequest> {
    within(
        "TokenRequest",
        api.create_subresource("token", name, &PostParams::default(), req),
    )
    .await
}

/// (exp - iat, warnafter - iat) of an issued token.
fn lifetime(answer: &TokenRequest) -> (i64, Option<i64>) {
    let claims = jwt_claims(&answer.status.as_ref().expect("status").token);
    let iat = claims["iat"].as_i64().expect("iat");
    let exp = claims["exp"].as_i64().expect("exp");
    (
        exp - iat,
        claims["kubernetes.io"]["warnafter"].as_i64().map(|w| w - iat),
    )
}

/// Seconds from now to `status.expirationTimestamp`.
fn status_expiry(answer: &TokenRequest) -> i64 {
    let at = &answer.status.as_ref().expect("status").expiration_timestamp.0;
    at.as_second() - unix_now()
}

#[tokio::test]
async fn token_request_defaults_limits_extension_and_bindings() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<ServiceAccount> = Api::namespaced(client(&fake, &dir).await, "shop");
    let err = request_token(&api, "orders", &token_request(&[], None, None))
        .await
        .expect_err("no such service account");
    assert_eq!(
        api_status(&err),
        (404, "NotFound".into(), "serviceaccounts \"orders\" not found".into())
    );

    fake.apply_service_account("shop", "orders");
    let answer = request_token(&api, "orders", &token_request(&[], None, None))
        .await
        .expect("token");
    assert_eq!(answer.spec.expiration_seconds, Some(3600), "defaulted");
    assert_eq!(answer.spec.audiences, [DEFAULT_ISSUER], "the API audiences");
    assert_eq!(lifetime(&answer), (3600, None));
    assert!((3598..=3601).contains(&status_expiry(&answer)));
    assert_eq!(answer.metadata.name.as_deref(), Some("orders"));
    assert_eq!(
        jwt_claims(&answer.status.expect("status").token)["aud"],
        json!([DEFAULT_ISSUER])
    );

    for (seconds, why) in [
        (599, "may not specify a duration less than 10 minutes"),
        ((1 << 32) + 1, "may not specify a duration larger than 2^32 seconds"),
    ] {
        let err = request_token(&api, "orders", &token_request(&["x"], Some(seconds), None))
            .await
            .expect_err("out of range");
        let (code, reason, message) = api_status(&err);
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
        assert_eq!(
            message,
            format!(
                "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: {seconds}: {why}"
            )
        );
    }
    let answer = request_token(&api, "orders", &token_request(&["x"], Some(600), None))
        .await
        .expect("600 s");
    assert_eq!(lifetime(&answer), (600, None));

    // Bound to a pod: must exist, run as this account, have that uid.
    let pod = PodBuilder::new("shop", "orders-1")
        .node("node-1")
        .service_account("orders")
        .build();
    fake.apply_pod(pod);
    let pod_uid = fake
        .get_pod("shop", "orders-1")
        .and_then(|p| p.metadata.uid)
        .expect("uid");
    let bound = request_token(
        &api,
        "orders",
        &token_request(&["x"], None, Some(("Pod", "orders-1", Some(&pod_uid)))),
    )
    .await
    .expect("pod-bound token");
    let claims = jwt_claims(&bound.status.as_ref().expect("status").token);
    assert_eq!(
        claims["kubernetes.io"]["pod"],
        json!({"name": "orders-1", "uid": pod_uid})
    );
    assert_eq!(
        claims["kubernetes.io"]["node"],
        json!({"name": "node-1"}),
        "no Node object: the name only"
    );
    let cases: [(TokenRequest, u16, &str); 4] = [
        (
            token_request(&["x"], None, Some(("Pod", "orders-1", Some("not-the-uid")))),
            409,
            "Operation cannot be fulfilled on Pod \"orders-1\": the UID in the bound object reference (not-the-uid) does not match the UID in record. The object might have been deleted and then recreated",
        ),
        (
            token_request(&["x"], None, Some(("Pod", "ghost", None))),
            404,
            "pods \"ghost\" not found",
        ),
        (
            token_request(&["x"], None, Some(("ConfigMap", "c", None))),
            400,
            "cannot bind token to object of type /v1, Kind=ConfigMap",
        ),
        (
            token_request(&["x"], None, Some(("Secret", "s", None))),
            404,
            "secrets \"s\" not found",
        ),
    ];
    for (req, code, message) in cases {
        let err = request_token(&api, "orders", &req).await.expect_err(message);
        let (got_code, _, got) = api_status(&err);
        assert_eq!((got_code, got.as_str()), (code, message));
    }
    fake.apply_service_account("shop", "other");
    let err = request_token(
        &api,
        "other",
        &token_request(&["x"], None, Some(("Pod", "orders-1", None))),
    )
    .await
    .expect_err("another account's pod");
    assert_eq!(
        api_status(&err).2,
        "cannot bind token for serviceaccount \"other\" to pod running with different serviceaccount name."
    );
    let secret_uid = fake.apply_secret("shop", "s");
    let answer = request_token(
        &api,
        "orders",
        &token_request(&["x"], None, Some(("Secret", "s", None))),
    )
    .await
    .expect("secret-bound");
    let claims = jwt_claims(&answer.status.expect("status").token);
    assert_eq!(
        claims["kubernetes.io"]["secret"],
        json!({"name": "s", "uid": secret_uid})
    );

    // The kubelet's 3607 s for the API audiences is extended to a year;
    // the status keeps the asked expiry.
    let pod_ref = Some(("Pod", "orders-1", None));
    let answer = request_token(&api, "orders", &token_request(&[], Some(3607), pod_ref))
        .await
        .expect("extended");
    assert_eq!(lifetime(&answer), (365 * 24 * 3600, Some(3607)));
    assert!((3605..=3608).contains(&status_expiry(&answer)));
    let answer = request_token(&api, "orders", &token_request(&["payments"], Some(3607), pod_ref))
        .await
        .expect("other audience");
    assert_eq!(lifetime(&answer), (3607, None), "not extended for other audiences");
    let answer = request_token(&api, "orders", &token_request(&[], Some(3607), None))
        .await
        .expect("unbound");
    assert_eq!(lifetime(&answer), (3607, None), "not extended without a pod");
    fake.set_extend_token_expiration(false);
    let answer = request_token(&api, "orders", &token_request(&[], Some(3607), pod_ref))
        .await
        .expect("no extension");
    assert_eq!(lifetime(&answer), (3607, None));

    fake.set_max_token_expiration(Some(Duration::from_secs(3600)));
    let answer = request_token(&api, "orders", &token_request(&["x"], Some(7200), None))
        .await
        .expect("clamped");
    assert_eq!(answer.spec.expiration_seconds, Some(3600));
    assert_eq!(lifetime(&answer), (3600, None));

    let counts = fake.token_requests();
    assert_eq!(
        counts.get(&("shop".to_string(), "orders".to_string())),
        Some(&16),
        "refused requests count too"
    );
    assert_eq!(counts.get(&("shop".to_string(), "other".to_string())), Some(&1));
}
