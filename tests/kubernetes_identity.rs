//! Kubernetes-native identity end to end, in process, over real sockets: the
//! fake Kubernetes API (service-account issuer behind a bearer token,
//! TokenReview, SubjectAccessReview over RBAC objects) + a dev IdP +
//! nodeward in reverse-proxy mode with `kubernetes.kubeconfig` + an echo
//! upstream. Service-account callers by namespace and service account,
//! bound tokens of deleted pods, RBAC allow / deny / cache / outage, claim
//! mappings, and one review for concurrent identical questions.

use std::time::Duration;

use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, metric};
use serde_json::{Value, json};

const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: payments-caller}
rules:
  - apiGroups: [""]
    resources: ["services/proxy"]
    resourceNames: ["payments"]
    verbs: ["get", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: payments-callers, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: payments-caller}
subjects:
  - {kind: User, name: "oidc:alice@example.com", apiGroup: rbac.authorization.k8s.io}
  - {kind: Group, name: "oidc:payers", apiGroup: rbac.authorization.k8s.io}
  - {kind: ServiceAccount, name: orders, namespace: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: metrics-reader}
rules:
  - nonResourceURLs: ["/metrics"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ops-read-metrics}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: metrics-reader}
subjects:
  - {kind: Group, name: "oidc:ops", apiGroup: rbac.authorization.k8s.io}
"#;

struct Env {
    api: FakeKubeApi,
    idp: TestIdp,
    _upstream: EchoUpstream,
    agent: TestAgent,
    url: String,
    _dir: tempfile::TempDir,
}

/// `rbac` and `review_ttl` are the agent's `kubernetes.rbac` section and the
/// cluster provider's `token_review_ttl`.
async fn env_with(rbac: &str, review_ttl: &str) -> Env {
    let api = FakeKubeApi::start().await;
    api.apply_yaml(RBAC).expect("RBAC objects");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let idp = TestIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let yaml = format!(
        r#"admin: 127.0.0.1:0
kubernetes:
  kubeconfig: {kubeconfig}
  rbac: {rbac}
providers:
  - name: cluster
    kubernetes_service_accounts: {{}}
    audiences: [nodeward]
    token_review: true
    token_review_ttl: {review_ttl}
  - name: corp
    issuer: {issuer}
    audiences: [payments]
    claim_mappings:
      username: {{claim: email, prefix: "oidc:"}}
      groups: {{claim: groups, prefix: "oidc:"}}
policies:
  - name: payments
    selector: {{app: payments}}
    rules:
      - name: from-shop
        paths: ["/internal/**"]
        require: {{providers: [cluster], source: {{namespaces: [shop]}}}}
      - name: orders-only
        paths: ["/orders-only/**"]
        require: {{providers: [cluster], source: {{service_accounts: [shop/orders]}}}}
      - name: api-by-rbac
        paths: ["/api/**"]
        require:
          providers: [corp, cluster]
          kubernetes_rbac:
            resource: {{group: "", resource: services, subresource: proxy, namespace: "{{namespace}}", name: "{{label:app}}"}}
      - name: metrics
        paths: ["/metrics"]
        require: {{providers: [corp], kubernetes_rbac: {{non_resource: true}}}}
workloads:
  - name: payments
    namespace: shop
    labels: {{app: payments}}
    listen: 127.0.0.1:0
    upstream: {upstream}
"#,
        kubeconfig = kubeconfig.display(),
        issuer = idp.issuer(),
        upstream = upstream.addr,
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let url = agent.url("payments");
    Env {
        api,
        idp,
        _upstream: upstream,
        agent,
        url,
        _dir: dir,
    }
}

async fn env() -> Env {
    env_with("{}", "30s").await
}

impl Env {
    /// A service-account token from the fake API server, for `ns/sa`, bound to `pod`.
    fn sa_token(&self, ns: &str, sa: &str, pod: Option<(&str, &str)>, audience: &str) -> String {
        self.api
            .service_account_token(ns, sa, pod, &[audience], Duration::from_secs(3600))
    }

    fn idp_token(&self, email: &str, groups: &[&str]) -> String {
        self.idp
            .token(json!({"aud": "payments", "sub": email, "email": email, "groups": groups}))
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str) -> (u16, Value) {
        let resp = client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token).await
    }

    /// SubjectAccessReviews the fake answered for `user`.
    fn reviews_for(&self, user: &str) -> usize {
        self.api
            .subject_access_reviews()
            .iter()
            .filter(|r| r.spec.user.as_deref() == Some(user))
            .count()
    }
}

fn header<'v>(echo: &'v Value, name: &str) -> Option<&'v str> {
    echo["headers"][name][0].as_str()
}

#[tokio::test]
async fn a_service_account_caller_is_admitted_by_its_namespace_and_name() {
    let e = env().await;
    let orders = e.sa_token("shop", "orders", None, "nodeward");
    let (status, echo) = e.get("/internal/charge", &orders).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(
        header(&echo, "x-nodeward-sub"),
        Some("system:serviceaccount:shop:orders")
    );
    assert_eq!(
        header(&echo, "x-nodeward-iss"),
        Some(e.api.service_account_issuer().as_str()),
        "the issuer came from the API server's discovery"
    );
    let (status, _) = e.get("/orders-only/x", &orders).await;
    assert_eq!(status, 200);

    let billing = e.sa_token("shop", "billing", None, "nodeward");
    let (status, body) = e.get("/orders-only/x", &billing).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("source_mismatch")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("shop/billing")),
        "{body}"
    );

    let dev = e.sa_token("dev", "orders", None, "nodeward");
    let (status, body) = e.get("/internal/charge", &dev).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("source_mismatch")),
        "{body}"
    );

    // A token the same API server minted for another audience.
    let other = e.sa_token("shop", "orders", None, "vault");
    let (status, body) = e.get("/internal/charge", &other).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("wrong_audience")),
        "{body}"
    );

    // An IdP token is no service account, whatever its claims say.
    let forged = e.idp.token(json!({
        "aud": "payments",
        "sub": "system:serviceaccount:shop:orders",
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "orders"}}
    }));
    let (status, body) = e.get("/internal/charge", &forged).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("provider_not_allowed")),
        "{body}"
    );
}

#[tokio::test]
async fn a_deleted_pods_token_is_refused_by_token_review() {
    let e = env_with("{}", "1s").await;
    let pod = PodBuilder::new("shop", "orders-1")
        .uid("5f1c9d1e-0000-4000-8000-000000000001")
        .service_account("orders")
        .running("10.0.0.7")
        .build();
    e.api.apply_pod(pod);
    let token = e.sa_token(
        "shop",
        "orders",
        Some(("orders-1", "5f1c9d1e-0000-4000-8000-000000000001")),
        "nodeward",
    );
    let (status, body) = e.get("/internal/x", &token).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = e.get("/internal/x", &token).await;
    assert_eq!(status, 200);
    assert_eq!(e.api.token_reviews().len(), 1, "the second request reuses the review");

    assert!(e.api.delete_pod("shop", "orders-1"));
    // Within the review's ttl the answer stands; after it, the API server is asked again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = e.get("/internal/x", &token).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    assert_eq!(e.api.token_reviews().len(), 2);

    // A token minted for a pod that no longer exists never passes.
    let stale = e.sa_token(
        "shop",
        "orders",
        Some(("orders-1", "5f1c9d1e-0000-4000-8000-000000000001")),
        "nodeward",
    );
    let (status, body) = e.get("/internal/x", &stale).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
}

#[tokio::test]
async fn rbac_allows_denies_and_reuses_its_answers() {
    let e = env().await;
    let alice = e.idp_token("alice@example.com", &["staff"]);
    let (status, echo) = e.get("/api/charges", &alice).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(e.reviews_for("oidc:alice@example.com"), 1);
    let asked = e.api.subject_access_reviews();
    let spec = &asked.last().expect("a review").spec;
    let attrs = spec.resource_attributes.as_ref().expect("resource attributes");
    assert_eq!(
        (
            attrs.verb.as_deref(),
            attrs.resource.as_deref(),
            attrs.subresource.as_deref(),
            attrs.namespace.as_deref(),
            attrs.name.as_deref()
        ),
        (
            Some("get"),
            Some("services"),
            Some("proxy"),
            Some("shop"),
            Some("payments")
        )
    );
    assert_eq!(
        spec.groups.as_deref(),
        Some(&["oidc:staff".to_string(), "system:authenticated".to_string()][..])
    );
    for _ in 0..5 {
        let (status, _) = e.get("/api/charges", &alice).await;
        assert_eq!(status, 200);
    }
    assert_eq!(e.reviews_for("oidc:alice@example.com"), 1, "cached: one review");

    // A group binding works too; POST is `create`, DELETE `delete` (not granted).
    let payer = e.idp_token("pat@example.com", &["payers"]);
    let (status, _) = e.call(reqwest::Method::POST, "/api/charges", &payer).await;
    assert_eq!(status, 200);
    let (status, body) = e.call(reqwest::Method::DELETE, "/api/charges/1", &payer).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("rbac_denied")), "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("verb=delete") && detail.contains("oidc:pat@example.com") && detail.contains("services/proxy"),
        "the 403 names what was asked: {detail}"
    );

    let bob = e.idp_token("bob@example.com", &["staff"]);
    let (status, body) = e.get("/api/charges", &bob).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("rbac_denied")), "{body}");
    let (status, _) = e.get("/api/charges", &bob).await;
    assert_eq!(status, 403);
    assert_eq!(e.reviews_for("oidc:bob@example.com"), 1, "denials are cached too");

    // The service account bound by the RoleBinding.
    let orders = e.sa_token("shop", "orders", None, "nodeward");
    let (status, body) = e.get("/api/charges", &orders).await;
    assert_eq!(status, 200, "{body}");
    let spec = e
        .api
        .subject_access_reviews()
        .into_iter()
        .rev()
        .find(|r| r.spec.user.as_deref() == Some("system:serviceaccount:shop:orders"))
        .expect("reviewed")
        .spec;
    assert_eq!(
        spec.groups.as_deref(),
        Some(
            &[
                "system:serviceaccounts".to_string(),
                "system:serviceaccounts:shop".to_string(),
                "system:authenticated".to_string()
            ][..]
        )
    );

    // Non-resource URL: the normalised path.
    let ops = e.idp_token("olga@example.com", &["ops"]);
    let (status, _) = e.get("//metrics", &ops).await;
    assert_eq!(status, 200);
    let spec = e.api.subject_access_reviews().last().expect("a review").spec.clone();
    let nr = spec.non_resource_attributes.expect("non-resource attributes");
    assert_eq!(
        (nr.path.as_deref(), nr.verb.as_deref()),
        (Some("/metrics"), Some("get"))
    );
    let (status, body) = e.get("/metrics", &alice).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("rbac_denied")), "{body}");

    let m = e.agent.metrics().await;
    assert_eq!(
        metric(&m, "nodeward_rbac_reviews_total{result=\"allowed\"}"),
        Some(4.0),
        "{m:.400}"
    );
    assert_eq!(metric(&m, "nodeward_rbac_reviews_total{result=\"denied\"}"), Some(3.0));
    assert!(metric(&m, "nodeward_rbac_cache_hits_total").is_some_and(|h| h >= 6.0));
}

#[tokio::test]
async fn an_unreachable_api_server_fails_closed_and_no_answer_outlives_its_ttl() {
    let e = env_with("{allow_ttl: 1s, deny_ttl: 1s, timeout: 500ms}", "30s").await;
    let alice = e.idp_token("alice@example.com", &[]);
    let (status, _) = e.get("/api/x", &alice).await;
    assert_eq!(status, 200);
    e.api.set_failing_for("/apis/authorization.k8s.io", Some(503));
    let carol = e.idp_token("carol@example.com", &["payers"]);
    let (status, body) = e.get("/api/x", &carol).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("rbac_unavailable")),
        "{body}"
    );
    // Alice's allow is reused within its ttl, and never after it.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = e.get("/api/x", &alice).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("rbac_unavailable")),
        "{body}"
    );
    // Slow is the same as down.
    e.api.set_failing_for("/apis/authorization.k8s.io", None);
    e.api
        .set_latency_for("/apis/authorization.k8s.io", Duration::from_secs(2));
    let (status, body) = e.get("/api/x", &carol).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("rbac_unavailable")),
        "{body}"
    );
    e.api.set_latency_for("/apis/authorization.k8s.io", Duration::ZERO);
    let (status, _) = e.get("/api/x", &carol).await;
    assert_eq!(status, 200, "back as soon as the API server answers");
    let m = e.agent.metrics().await;
    assert!(metric(&m, "nodeward_rbac_reviews_total{result=\"error\"}").is_some_and(|n| n >= 2.0));
}

#[tokio::test]
async fn concurrent_identical_questions_are_asked_once() {
    let e = env().await;
    e.api
        .set_latency_for("/apis/authorization.k8s.io", Duration::from_millis(300));
    let dave = e.idp_token("dave@example.com", &["payers"]);
    let calls = (0..20).map(|_| e.get("/api/x", &dave));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(e.reviews_for("oidc:dave@example.com"), 1);
}

#[tokio::test]
async fn mapped_names_that_pass_for_the_clusters_own_are_refused() {
    let e = env().await;
    // The prefix keeps an IdP's "system:masters" group from being the cluster's.
    let sneaky = e.idp_token("mallory@example.com", &["system:masters"]);
    let (status, body) = e.get("/api/x", &sneaky).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("rbac_denied")), "{body}");
    let spec = e
        .api
        .subject_access_reviews()
        .into_iter()
        .find(|r| r.spec.user.as_deref() == Some("oidc:mallory@example.com"))
        .expect("asked")
        .spec;
    assert!(
        spec.groups.unwrap_or_default().iter().all(|g| g != "system:masters"),
        "the group went out prefixed"
    );
    // A token without the username claim cannot become a user.
    let nameless = e.idp.token(json!({"aud": "payments", "sub": "x"}));
    let (status, body) = e.get("/api/x", &nameless).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("kubernetes_user_invalid")),
        "{body}"
    );
}
