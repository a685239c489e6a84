//! Tokens and JWKS shaped like the ones real providers issue, through the
//! running agent over real sockets: Entra ID (keys with `x5c`/`x5t` and no
//! `alg`, v2.0 issuer under a tenant path, `roles`/`scp`), Keycloak (an `enc`
//! key beside the `sig` one, nested `realm_access`/`resource_access`
//! roles), Okta (`scp` as a list, `cid`), AWS Cognito access tokens (no
//! `aud`: `client_id`, `token_use`, `cognito:groups`), Kubernetes
//! service-account tokens (the fake API's issuer, the `kubernetes.io`
//! claim), and one token per JWS algorithm Envoy verifies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nodeward_testkit::kubeapi::{DEFAULT_ISSUER, FakeKubeApi};
use nodeward_testkit::shaped::{ShapedIdp, SigningKey, hmac};
use nodeward_testkit::{EchoUpstream, TestAgent, client};
use serde_json::{Value, json};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An agent with one provider (`provider`: the inside of its YAML map,
/// `name: p` added) and one reverse-proxy workload whose policy has `rules`.
async fn agent(provider: &str, rules: &str, upstream: &EchoUpstream) -> TestAgent {
    let yaml = format!(
        "admin: 127.0.0.1:0\nproviders:\n  - {{name: p, {provider}}}\npolicies:\n  - name: api\n    selector: {{app: api}}\n    \
         rules:\n{rules}\n    forward_claims: {{x-user: sub}}\nworkloads:\n  - {{name: api, labels: {{app: api}}, \
         listen: '127.0.0.1:0', upstream: '{}'}}\n",
        upstream.addr
    );
    let a = TestAgent::start(&yaml).await;
    a.wait_ready().await;
    a
}

/// GET `path` with `token`: the status and the JSON body.
async fn call(agent: &TestAgent, path: &str, token: &str) -> (u16, Value) {
    let resp = client()
        .get(format!("{}{path}", agent.url("api")))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const ANY_TOKEN: &str = "      - {name: all, require: {providers: [p]}}";

#[tokio::test]
async fn entra_id_v2_tokens_with_x5c_keys_without_alg() {
    let key = SigningKey::generate("RS256");
    let mut jwk = key.jwk.clone();
    // Entra ID publishes `x5t` and `x5c`, `use`, `kid`, and no `alg`.
    let kid = "nOo3ZDrODXEK1jKWhXslHR_KXEg";
    jwk["kid"] = json!(kid);
    jwk["x5t"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk["x5c"] = json!([base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"not read"
    )]);
    let idp = ShapedIdp::start("/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0", json!({"keys": [jwk]})).await;
    let upstream = EchoUpstream::start().await;
    let client_id = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
    let rules = "      - {name: admin, paths: ['/admin/**'], require: {providers: [p], claims: {roles: {any_of: [Orders.Admin]}}}}\n      - {name: read, require: {providers: [p], claims: {scp: {any_of: [orders.read]}}}}";
    let a = agent(
        &format!("issuer: '{}', audiences: ['{client_id}']", idp.issuer),
        rules,
        &upstream,
    )
    .await;
    let claims = |roles: Value| {
        json!({
            "aud": client_id, "iss": idp.issuer, "iat": now(), "nbf": now(), "exp": now() + 3600,
            "aio": "AWQAm/8TAAAA", "azp": "00000003-0000-0000-c000-000000000000", "azpacr": "0",
            "name": "Alice", "oid": "00000000-0000-0000-0000-00000000a11c", "preferred_username": "alice@contoso.com",
            "rh": "0.AAAA", "roles": roles, "scp": "orders.read orders.write", "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
            "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "uti": "a1b2c3", "ver": "2.0",
        })
    };
    let header = json!({"typ": "JWT", "kid": kid, "x5t": kid});
    let (s, body) = call(&a, "/orders", &key.sign(&header, &claims(json!([])))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["headers"]["x-user"],
        json!(["AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ"])
    );
    let (s, body) = call(&a, "/admin/x", &key.sign(&header, &claims(json!(["Orders.Reader"])))).await;
    assert_eq!((s, &body["reason"]), (403, &json!("claim_mismatch")), "{body}");
    let (s, body) = call(&a, "/admin/x", &key.sign(&header, &claims(json!(["Orders.Admin"])))).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn keycloak_tokens_with_an_enc_key_beside_the_sig_key_and_nested_roles() {
    let sig = SigningKey::generate("RS256");
    let enc = SigningKey::generate("RS256");
    let mut sig_jwk = sig.jwk.clone();
    sig_jwk["kid"] = json!("kc-sig-1");
    sig_jwk["alg"] = json!("RS256");
    sig_jwk["use"] = json!("sig");
    let mut enc_jwk = enc.jwk.clone();
    enc_jwk["kid"] = json!("kc-enc-1");
    enc_jwk["alg"] = json!("RSA-OAEP");
    enc_jwk["use"] = json!("enc");
    let idp = ShapedIdp::start("/realms/shop", json!({"keys": [enc_jwk, sig_jwk]})).await;
    let upstream = EchoUpstream::start().await;
    let rules = "      - {name: admin, require: {providers: [p], claims: {realm_access.roles: {any_of: [admin]}, resource_access.orders.roles: {all_of: [write]}}}}";
    let a = agent(
        &format!("issuer: '{}', audiences: [orders]", idp.issuer),
        rules,
        &upstream,
    )
    .await;
    let claims = json!({
        "exp": now() + 300, "iat": now(), "auth_time": now(), "jti": "0b5f", "iss": idp.issuer,
        "aud": ["orders", "account"], "sub": "f:3c2e", "typ": "Bearer", "azp": "web", "sid": "7a1d",
        "acr": "1", "allowed-origins": ["https://shop.example"],
        "realm_access": {"roles": ["offline_access", "admin"]},
        "resource_access": {"orders": {"roles": ["read", "write"]}, "account": {"roles": ["view-profile"]}},
        "scope": "openid profile email", "email_verified": true, "preferred_username": "alice",
    });
    let (s, body) = call(&a, "/x", &sig.sign(&json!({"typ": "JWT", "kid": "kc-sig-1"}), &claims)).await;
    assert_eq!(s, 200, "{body}");
    // The encryption key never verifies a signature, even one it made.
    let (s, body) = call(&a, "/x", &enc.sign(&json!({"typ": "JWT", "kid": "kc-enc-1"}), &claims)).await;
    assert_eq!(s, 401, "{body}");
    assert!(
        body["reason"] == "unknown_kid" || body["reason"] == "bad_signature",
        "{body}"
    );
}

#[tokio::test]
async fn okta_access_tokens_with_scp_as_a_list() {
    let key = SigningKey::generate("RS256");
    let mut jwk = key.jwk.clone();
    jwk["kid"] = json!("okta-1");
    jwk["alg"] = json!("RS256");
    jwk["use"] = json!("sig");
    let idp = ShapedIdp::start("/oauth2/default", json!({"keys": [jwk]})).await;
    let upstream = EchoUpstream::start().await;
    let rules = "      - {name: read, require: {providers: [p], claims: {scp: {any_of: [orders.read]}, cid: {equals: 0oa1b2c3}}}}";
    let a = agent(
        &format!("issuer: '{}', audiences: ['api://default']", idp.issuer),
        rules,
        &upstream,
    )
    .await;
    let claims = |scp: Value| {
        json!({
            "ver": 1, "jti": "AT.x", "iss": idp.issuer, "aud": "api://default", "iat": now(), "exp": now() + 3600,
            "cid": "0oa1b2c3", "uid": "00u1", "scp": scp, "auth_time": now(), "sub": "alice@example.com",
        })
    };
    let header = json!({"kid": "okta-1"});
    assert_eq!(
        call(&a, "/x", &key.sign(&header, &claims(json!(["openid", "orders.read"]))))
            .await
            .0,
        200
    );
    let (s, body) = call(&a, "/x", &key.sign(&header, &claims(json!(["openid"])))).await;
    assert_eq!((s, &body["reason"]), (403, &json!("claim_mismatch")), "{body}");
}

#[tokio::test]
async fn cognito_access_tokens_carry_client_id_and_no_aud() {
    let key = SigningKey::generate("RS256");
    let mut jwk = key.jwk.clone();
    jwk["kid"] = json!("cognito-1");
    jwk["alg"] = json!("RS256");
    jwk["use"] = json!("sig");
    let idp = ShapedIdp::start("/us-east-1_AbCdEfGhI", json!({"keys": [jwk]})).await;
    let upstream = EchoUpstream::start().await;
    let client_id = "3n4b5urk1ft4fl3mg5e62d9ado";
    let rules = "      - {name: admins, require: {providers: [p], claims: {token_use: {equals: access}, '[\"cognito:groups\"]': {any_of: [admins]}}}}";
    let provider = format!(
        "issuer: '{}', audiences: ['{client_id}'], audience_claims: [client_id]",
        idp.issuer
    );
    let a = agent(&provider, rules, &upstream).await;
    let header = json!({"kid": "cognito-1"});
    let access = json!({
        "sub": "aaaaaaaa-bbbb", "cognito:groups": ["admins"], "iss": idp.issuer, "version": 2,
        "client_id": client_id, "origin_jti": "o1", "event_id": "e1", "token_use": "access",
        "scope": "orders/read", "auth_time": now(), "exp": now() + 3600, "iat": now(), "jti": "j1", "username": "alice",
    });
    let (s, body) = call(&a, "/x", &key.sign(&header, &access)).await;
    assert_eq!(s, 200, "{body}");
    // Another app client of the same pool.
    let mut other = access.clone();
    other["client_id"] = json!("someotherclient");
    let (s, body) = call(&a, "/x", &key.sign(&header, &other)).await;
    assert_eq!((s, &body["reason"]), (401, &json!("wrong_audience")), "{body}");
    // An ID token has `aud`, not `client_id`: the audience claim is missing, so it is refused.
    let mut id = access.clone();
    id["token_use"] = json!("id");
    id["aud"] = json!(client_id);
    if let Some(o) = id.as_object_mut() {
        o.remove("client_id");
    }
    let (s, body) = call(&a, "/x", &key.sign(&header, &id)).await;
    assert_eq!((s, &body["reason"]), (401, &json!("wrong_audience")), "{body}");
}

#[tokio::test]
async fn kubernetes_service_account_tokens_with_the_kubernetes_io_claim() {
    let api = FakeKubeApi::start().await;
    api.set_anonymous_discovery(true);
    let upstream = EchoUpstream::start().await;
    let rules = "      - {name: shop, require: {providers: [p], claims: {'[\"kubernetes.io\"].namespace': {equals: shop}, '/kubernetes.io/serviceaccount/name': {equals: orders}}}}";
    let provider = format!(
        "issuer: '{DEFAULT_ISSUER}', jwks_uri: '{}/openid/v1/jwks', audiences: [nodeward]",
        api.url()
    );
    let a = agent(&provider, rules, &upstream).await;
    let ttl = Duration::from_secs(3600);
    let token = api.service_account_token("shop", "orders", Some(("orders-0", "u-1")), &["nodeward"], ttl);
    let (s, body) = call(&a, "/x", &token).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["headers"]["x-user"], json!(["system:serviceaccount:shop:orders"]));
    let other = api.service_account_token("other", "orders", None, &["nodeward"], ttl);
    let (s, body) = call(&a, "/x", &other).await;
    assert_eq!((s, &body["reason"]), (403, &json!("claim_mismatch")), "{body}");
    let api_audience = api.service_account_token("shop", "orders", None, &[DEFAULT_ISSUER], ttl);
    let (s, body) = call(&a, "/x", &api_audience).await;
    assert_eq!((s, &body["reason"]), (401, &json!("wrong_audience")), "{body}");
}

/// A token of `alg` from a provider whose JWKS has that key (without `alg`
/// where the key type implies it), accepted; the same claims under another
/// key's signature refused.
async fn algorithm(alg: &'static str) {
    let key = SigningKey::generate(alg);
    let mut jwk = key.jwk.clone();
    jwk["kid"] = json!(format!("{alg}-1"));
    // RSA keys would default to RS256; PS* and RS384/512 must say theirs.
    if !matches!(alg, "ES256" | "ES384" | "ES512" | "EdDSA" | "RS256") {
        jwk["alg"] = json!(alg);
    }
    let idp = ShapedIdp::start("", json!({"keys": [jwk]})).await;
    let upstream = EchoUpstream::start().await;
    let a = agent(
        &format!("issuer: '{}', audiences: [api]", idp.issuer),
        ANY_TOKEN,
        &upstream,
    )
    .await;
    let claims = json!({"iss": idp.issuer, "aud": "api", "sub": alg, "exp": now() + 300, "iat": now()});
    let header = json!({"kid": format!("{alg}-1"), "typ": "JWT"});
    let (s, body) = call(&a, "/x", &key.sign(&header, &claims)).await;
    assert_eq!(s, 200, "{alg}: {body}");
    assert_eq!(body["headers"]["x-user"], json!([alg]));
    let forged = SigningKey::generate(alg).sign(&header, &claims);
    let (s, body) = call(&a, "/x", &forged).await;
    assert_eq!((s, &body["reason"]), (401, &json!("bad_signature")), "{alg}: {body}");
}

/// An HS* token verified with the provider's shared secret (its JWKS has
/// an RS256 key, which never verifies an HMAC).
async fn shared_secret(alg: &'static str) {
    let key = SigningKey::generate("RS256");
    let mut jwk = key.jwk.clone();
    jwk["kid"] = json!("rs-1");
    let idp = ShapedIdp::start("", json!({"keys": [jwk]})).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = b"a shared secret of 32 bytes or more, for every HS alg: 0123456789abcdef";
    let path = dir.path().join("hs.secret");
    std::fs::write(&path, secret).expect("secret");
    let upstream = EchoUpstream::start().await;
    let provider = format!(
        "issuer: '{}', audiences: [api], algorithms: [RS256, {alg}], hs_secret_file: '{}'",
        idp.issuer,
        path.display()
    );
    let a = agent(&provider, ANY_TOKEN, &upstream).await;
    let claims = json!({"iss": idp.issuer, "aud": "api", "sub": alg, "exp": now() + 300, "iat": now()});
    let (s, body) = call(&a, "/x", &hmac(alg, secret, &json!({"typ": "JWT"}), &claims)).await;
    assert_eq!(s, 200, "{alg}: {body}");
    let (s, body) = call(
        &a,
        "/x",
        &hmac(alg, b"another secret entirely, also long enough!", &json!({}), &claims),
    )
    .await;
    assert_eq!((s, &body["reason"]), (401, &json!("bad_signature")), "{alg}: {body}");
}

macro_rules! per_algorithm {
    ($($name:ident => $f:ident($alg:literal)),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $f($alg).await;
            }
        )*
    };
}

per_algorithm! {
    rs256 => algorithm("RS256"),
    rs384 => algorithm("RS384"),
    rs512 => algorithm("RS512"),
    ps256 => algorithm("PS256"),
    ps384 => algorithm("PS384"),
    ps512 => algorithm("PS512"),
    es256 => algorithm("ES256"),
    es384 => algorithm("ES384"),
    es512 => algorithm("ES512"),
    eddsa => algorithm("EdDSA"),
    hs256 => shared_secret("HS256"),
    hs384 => shared_secret("HS384"),
    hs512 => shared_secret("HS512"),
}
