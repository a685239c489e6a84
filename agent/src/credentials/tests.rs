use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::EgressRule;

fn token(yaml: &str) -> EgressToken {
    let rule: EgressRule =
        serde_yaml_ng::from_str(&format!("name: r\nto: {{ports: [80]}}\ntoken: {yaml}\n")).expect("rule");
    rule.token
}

fn pod(name: &str, uid: &str) -> Subject {
    Subject {
        workload: format!("shop/{name}").into(),
        namespace: "shop".into(),
        service_account: Some("orders".into()),
        pod: Some((name.into(), uid.into())),
    }
}

#[test]
fn keys_name_everything_that_changes_the_token() {
    let sa = token("{service_account: {audience: payments}}");
    let a = Want::new(pod("a", "u1"), &sa);
    assert_eq!(a.key(), Want::new(pod("a", "u1"), &sa).key(), "same caller, same token");
    assert_ne!(
        a.key(),
        Want::new(pod("b", "u2"), &sa).key(),
        "each pod its own bound token"
    );
    assert_ne!(
        a.key(),
        Want::new(pod("a", "u3"), &sa).key(),
        "a recreated pod (new UID) never gets the old token"
    );
    let other = token("{service_account: {audience: orders}}");
    assert_ne!(a.key(), Want::new(pod("a", "u1"), &other).key(), "another audience");
    let longer = token("{service_account: {audience: payments, expiration: 2h}}");
    assert_ne!(a.key(), Want::new(pod("a", "u1"), &longer).key(), "another lifetime");

    // A client's credentials are the client's, whoever calls.
    let cc = token("{client_credentials: {provider: corp, client_id: c, client_secret_file: /s}}");
    assert_eq!(
        Want::new(pod("a", "u1"), &cc).key(),
        Want::new(pod("b", "u2"), &cc).key()
    );
    let ex = token("{exchange: {provider: corp, subject_audience: corp}}");
    assert_ne!(
        Want::new(pod("a", "u1"), &ex).key(),
        Want::new(pod("b", "u2"), &ex).key()
    );
}

#[test]
fn tokens_refresh_ahead_and_are_not_sent_near_expiry() {
    let t = Token::new("abc", Duration::from_secs(100)).expect("token");
    let now = t.obtained;
    assert!(t.usable(now) && !t.refresh_due(now));
    assert!(t.refresh_due(now + Duration::from_secs(80)), "at 80 % of its life");
    assert!(t.usable(now + Duration::from_secs(89)));
    assert!(
        !t.usable(now + Duration::from_secs(91)),
        "within the margin of its expiry"
    );
    assert!(t.header.is_sensitive());
    assert_eq!(t.header.to_str().expect("ascii"), "Bearer abc");
    assert!(Token::new("a\nb", Duration::from_secs(100)).is_err());
    let _ = Instant::now();
}

#[test]
fn the_lifetime_of_a_jwt_is_its_exp() {
    use base64::Engine as _;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"));
    let lifetime = fetch::jwt_lifetime(&format!("e30.{payload}.sig")).expect("a JWT");
    assert!(
        (Duration::from_secs(295)..=Duration::from_secs(300)).contains(&lifetime),
        "{lifetime:?}"
    );
    assert_eq!(fetch::jwt_lifetime("opaque-token"), None);
}

#[tokio::test]
async fn without_an_api_client_a_service_account_token_fails_once_per_retry_window() {
    let creds = Credentials::new(None, CredentialMetrics::unregistered());
    let want = Arc::new(Want::new(
        pod("a", "u1"),
        &token("{service_account: {audience: payments}}"),
    ));
    let first = creds.authorization(&want, None).await.expect_err("no API");
    assert_eq!(first.kind(), "config");
    let second = creds.authorization(&want, None).await.expect_err("still no API");
    assert!(
        Arc::ptr_eq(&first, &second),
        "the remembered failure, not a second attempt"
    );
}
