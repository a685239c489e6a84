//! SubjectAccessReview answered from RBAC objects, against the RBAC
//! authorizer's rules (`rbac.go`, `rule.go`, `evaluation_helpers.go`): which
//! binding allows, in the authorizer's words; Role vs ClusterRole vs a
//! RoleBinding to a ClusterRole; subresources, resourceNames,
//! nonResourceURL wildcards; ServiceAccount subjects by name and by group;
//! the validation of reviews and of RBAC objects written through the API.

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};

use super::*;

/// One binding per way a subject gets a permission.
const RBAC: &str = include_str!("rbac.yaml");

/// `(namespace, verb, group, resource, subresource, name)`.
type Res<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

fn resource_spec(
    user: &str,
    groups: &[&str],
    (ns, verb, group, resource, sub, name): Res<'_>,
) -> SubjectAccessReviewSpec {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    SubjectAccessReviewSpec {
        user: opt(user),
        groups: (!groups.is_empty()).then(|| groups.iter().map(|g| g.to_string()).collect()),
        resource_attributes: Some(ResourceAttributes {
            namespace: opt(ns),
            verb: opt(verb),
            group: opt(group),
            resource: opt(resource),
            subresource: opt(sub),
            name: opt(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn path_spec(user: &str, groups: &[&str], verb: &str, path: &str) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: Some(user.to_string()),
        groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        non_resource_attributes: Some(NonResourceAttributes {
            verb: Some(verb.to_string()),
            path: Some(path.to_string()),
        }),
        ..Default::default()
    }
}

async fn ask(api: &Api<SubjectAccessReview>, spec: SubjectAccessReviewSpec) -> kube::Result<SubjectAccessReviewStatus> {
    let review = SubjectAccessReview {
        spec,
        ..Default::default()
    };
    let answer = within("SubjectAccessReview", api.create(&PostParams::default(), &review)).await?;
    Ok(answer.status.expect("a status"))
}

/// (allowed, reason) of a review; checks RBAC never sets `denied`.
async fn decide(api: &Api<SubjectAccessReview>, spec: SubjectAccessReviewSpec) -> (bool, String) {
    let status = ask(api, spec).await.expect("review answered");
    assert_eq!(status.denied, None, "RBAC has no opinion, never a deny");
    (status.allowed, status.reason.unwrap_or_default())
}

const SA_SHOP_ORDERS: &str = "system:serviceaccount:shop:orders";
const SA_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:shop",
    "system:authenticated",
];

#[tokio::test]
async fn subject_access_review_decides_by_rbac_with_the_authorizers_reasons() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let api: Api<SubjectAccessReview> = Api::all(client(&fake, &dir).await);
    assert_eq!(fake.apply_yaml(RBAC).expect("RBAC applies").len(), 12);
    let allowed = |reason: &str| (true, reason.to_string());
    let denied = (false, String::new());
    let cases: Vec<(SubjectAccessReviewSpec, (bool, String))> = vec![
        // A ClusterRoleBinding to a group, on a subresource.
        (
            resource_spec("alice", &["oidc:devs"], ("shop", "get", "", "services", "proxy", "web")),
            allowed(
                r#"RBAC: allowed by ClusterRoleBinding "devs-read-proxies" of ClusterRole "proxy-reader" to Group "oidc:devs""#,
            ),
        ),
        (
            resource_spec("alice", &["oidc:devs"], ("shop", "get", "", "services", "", "web")),
            denied.clone(),
        ),
        (
            resource_spec(
                "alice",
                &["oidc:devs"],
                ("shop", "delete", "", "services", "proxy", "web"),
            ),
            denied.clone(),
        ),
        (
            resource_spec("alice", &[], ("shop", "get", "", "services", "proxy", "web")),
            denied.clone(),
        ),
        // A Role in its namespace only, limited by resourceNames.
        (
            resource_spec("bob", &[], ("shop", "delete", "", "services", "", "orders")),
            allowed(r#"RBAC: allowed by RoleBinding "bob-orders/shop" of Role "orders-admin" to User "bob""#),
        ),
        (
            resource_spec("bob", &[], ("shop", "get", "", "services", "", "payments")),
            denied.clone(),
        ),
        (
            resource_spec("bob", &[], ("shop", "list", "", "services", "", "")),
            denied.clone(),
        ),
        (
            resource_spec("bob", &[], ("other", "get", "", "services", "", "orders")),
            denied.clone(),
        ),
        (
            resource_spec("bob", &[], ("", "get", "", "services", "", "orders")),
            denied.clone(),
        ),
        // A RoleBinding to a ClusterRole grants it in that namespace, to a
        // ServiceAccount subject named without its namespace.
        (
            resource_spec(
                SA_SHOP_ORDERS,
                SA_GROUPS,
                ("shop", "create", "", "services", "proxy", "payments"),
            ),
            allowed(
                r#"RBAC: allowed by RoleBinding "sa-proxy/shop" of ClusterRole "proxy-reader" to ServiceAccount "orders/shop""#,
            ),
        ),
        (
            resource_spec(
                SA_SHOP_ORDERS,
                SA_GROUPS,
                ("other", "get", "", "services", "proxy", "x"),
            ),
            denied.clone(),
        ),
        (
            resource_spec(
                "system:serviceaccount:other:orders",
                &[],
                ("shop", "get", "", "services", "proxy", "x"),
            ),
            denied.clone(),
        ),
        // Service accounts through their groups.
        (
            resource_spec(SA_SHOP_ORDERS, SA_GROUPS, ("prod", "list", "", "events", "", "")),
            allowed(
                r#"RBAC: allowed by ClusterRoleBinding "shop-sas-events" of ClusterRole "event-reader" to Group "system:serviceaccounts:shop""#,
            ),
        ),
        (
            resource_spec(SA_SHOP_ORDERS, &[], ("prod", "list", "", "events", "", "")),
            denied.clone(),
        ),
        // `*/scale` and a ServiceAccount subject with its namespace.
        (
            resource_spec(
                "system:serviceaccount:kube-system:ops",
                &[],
                ("prod", "update", "apps", "deployments", "scale", "web"),
            ),
            allowed(
                r#"RBAC: allowed by ClusterRoleBinding "ops-scale" of ClusterRole "scaler" to ServiceAccount "ops/kube-system""#,
            ),
        ),
        (
            resource_spec(
                "system:serviceaccount:kube-system:ops",
                &[],
                ("prod", "update", "apps", "deployments", "", "web"),
            ),
            denied.clone(),
        ),
        // Non-resource URLs, with the trailing `*` as a prefix.
        (
            path_spec("carl", &["system:authenticated"], "get", "/healthz"),
            allowed(
                r#"RBAC: allowed by ClusterRoleBinding "authenticated-health" of ClusterRole "health" to Group "system:authenticated""#,
            ),
        ),
        (
            path_spec("carl", &["system:authenticated"], "get", "/healthz/ready"),
            denied.clone(),
        ),
        (
            path_spec("carl", &["system:authenticated"], "get", "/api/v1/orders"),
            allowed(
                r#"RBAC: allowed by ClusterRoleBinding "authenticated-health" of ClusterRole "health" to Group "system:authenticated""#,
            ),
        ),
        (
            path_spec("carl", &["system:authenticated"], "post", "/healthz"),
            denied.clone(),
        ),
        (
            path_spec("carl", &["system:authenticated"], "get", "/apis"),
            denied.clone(),
        ),
        // system:masters passes before RBAC, with no reason.
        (
            resource_spec("root", &["system:masters"], ("", "delete", "", "nodes", "", "n")),
            (true, String::new()),
        ),
        // A binding to a missing role: no opinion, and the resolution error.
        (
            resource_spec("carol", &[], ("shop", "get", "", "pods", "", "")),
            (
                false,
                r#"RBAC: role.rbac.authorization.k8s.io "ghost" not found"#.to_string(),
            ),
        ),
    ];
    let asked = cases.len();
    for (spec, want) in cases {
        let what = format!("{spec:?}");
        assert_eq!(decide(&api, spec).await, want, "{what}");
    }

    // Every review is recorded with what was asked.
    let log = fake.subject_access_reviews();
    assert_eq!(log.len(), asked);
    let first = log[0].spec.resource_attributes.as_ref().expect("resource attributes");
    assert_eq!(
        (
            first.verb.as_deref(),
            first.resource.as_deref(),
            first.subresource.as_deref(),
            first.name.as_deref()
        ),
        (Some("get"), Some("services"), Some("proxy"), Some("web"))
    );
    assert_eq!(log[0].spec.groups.as_deref(), Some(&["oidc:devs".to_string()][..]));
    assert!(log[0].status.as_ref().is_some_and(|s| s.allowed));
}

#[tokio::test]
async fn reviews_and_rbac_writes_are_validated_and_follow_the_api() {
    let fake = FakeKubeApi::start().await;
    let dir = TempDir::new().expect("tempdir");
    let client = client(&fake, &dir).await;
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let invalid = |spec: SubjectAccessReviewSpec| {
        let api = api.clone();
        async move {
            let err = ask(&api, spec).await.expect_err("invalid review");
            let (code, reason, message) = api_status(&err);
            assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
            message
        }
    };
    let mut nobody = resource_spec("", &[], ("shop", "get", "", "pods", "", ""));
    assert_eq!(
        invalid(nobody.clone()).await,
        r#"SubjectAccessReview.authorization.k8s.io "" is invalid: spec.user: Invalid value: "": at least one of user or group must be specified"#
    );
    nobody.user = Some("u".into());
    nobody.non_resource_attributes = Some(NonResourceAttributes::default());
    assert!(
        invalid(nobody.clone())
            .await
            .contains("cannot be specified in combination with resourceAttributes")
    );
    nobody.resource_attributes = None;
    nobody.non_resource_attributes = None;
    assert!(
        invalid(nobody)
            .await
            .contains("exactly one of nonResourceAttributes or resourceAttributes must be specified")
    );

    // RBAC objects through the API: validated, and every change counts at
    // the next review.
    let roles: Api<Role> = Api::namespaced(client.clone(), "shop");
    let role = |name: &str, rule: PolicyRule| Role {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        rules: Some(vec![rule]),
    };
    let urls = PolicyRule {
        non_resource_urls: Some(vec!["/x".into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    };
    let err = within("bad role", roles.create(&PostParams::default(), &role("bad", urls)))
        .await
        .expect_err("refused");
    assert_eq!(
        api_status(&err).2,
        r#"Role.rbac.authorization.k8s.io "bad" is invalid: rules[0].nonResourceURLs: Invalid value: ["/x"]: namespaced rules cannot apply to non-resource URLs"#
    );
    let pods = PolicyRule {
        api_groups: Some(vec!["".into()]),
        resources: Some(vec!["pods".into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    };
    within("role", roles.create(&PostParams::default(), &role("pod-reader", pods)))
        .await
        .expect("created");
    let dave = || resource_spec("dave", &[], ("shop", "get", "", "pods", "", "p"));
    assert_eq!(decide(&api, dave()).await, (false, String::new()));
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), "shop");
    let binding = |role: &str| RoleBinding {
        metadata: ObjectMeta {
            name: Some("dave-pods".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: String::new(),
            kind: "Role".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: "dave".into(),
            ..Default::default()
        }]),
    };
    let created = within(
        "binding",
        bindings.create(&PostParams::default(), &binding("pod-reader")),
    )
    .await
    .expect("created");
    assert_eq!(created.role_ref.api_group, "rbac.authorization.k8s.io", "defaulted");
    assert_eq!(
        created.subjects.as_ref().and_then(|s| s[0].api_group.as_deref()),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(
        decide(&api, dave()).await,
        (
            true,
            r#"RBAC: allowed by RoleBinding "dave-pods/shop" of Role "pod-reader" to User "dave""#.to_string()
        )
    );
    let mut changed = created.clone();
    changed.role_ref.name = "other".into();
    let err = within(
        "roleRef",
        bindings.replace("dave-pods", &PostParams::default(), &changed),
    )
    .await
    .expect_err("immutable");
    assert!(api_status(&err).2.contains("roleRef: Invalid value"), "{err}");
    assert!(api_status(&err).2.ends_with("cannot change roleRef"), "{err}");
    within("delete", bindings.delete("dave-pods", &DeleteParams::default()))
        .await
        .expect("deleted");
    assert_eq!(
        decide(&api, dave()).await,
        (false, String::new()),
        "the binding is gone"
    );

    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let crb = |kind: &str, subject: Subject| ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: kind.into(),
            name: "r".into(),
        },
        subjects: Some(vec![subject]),
    };
    let user = Subject {
        kind: "User".into(),
        name: "u".into(),
        ..Default::default()
    };
    let sa = Subject {
        kind: "ServiceAccount".into(),
        name: "sa".into(),
        ..Default::default()
    };
    for (object, want) in [
        (
            crb("Role", user),
            r#"roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole""#,
        ),
        (crb("ClusterRole", sa), "subjects[0].namespace: Required value"),
    ] {
        let err = within("bad binding", cluster_bindings.create(&PostParams::default(), &object))
            .await
            .expect_err(want);
        assert!(api_status(&err).2.ends_with(want), "{err}");
    }

    // The failure knobs apply to reviews.
    fake.set_authorizer_error(Some("webhook authorizer: connection refused"));
    let status = ask(&api, dave()).await.expect("answered");
    assert_eq!(
        status.evaluation_error.as_deref(),
        Some("webhook authorizer: connection refused")
    );
    assert!(!status.allowed);
    let masters = ask(
        &api,
        resource_spec("root", &["system:masters"], ("", "get", "", "pods", "", "")),
    )
    .await
    .expect("answered");
    assert_eq!(
        (masters.allowed, masters.evaluation_error),
        (true, None),
        "an allow never carries it"
    );
    fake.set_authorizer_error(None);
    fake.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    ask(&api, dave()).await.expect("slow but answered");
    assert!(started.elapsed() >= Duration::from_millis(300));
    fake.set_latency(Duration::ZERO);
    fake.set_failing_for("/apis/authorization.k8s.io", Some(500));
    assert_eq!(ask(&api, dave()).await.err().as_ref().and_then(api_code), Some(500));
    within("pods", Api::<Pod>::all(client.clone()).list(&ListParams::default()))
        .await
        .expect("the rest still served");
    fake.set_failing_for("/apis/authorization.k8s.io", None);
    fake.set_failing(Some(403));
    assert_eq!(ask(&api, dave()).await.err().as_ref().and_then(api_code), Some(403));
    fake.set_failing(None);
    ask(&api, dave()).await.expect("back");
}
