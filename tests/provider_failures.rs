//! Provider failures over real HTTP (issue 6, item 2): a provider that is
//! slow, answers garbage, huge or never-ending bodies, serves duplicate kids
//! and keys unfit for signing, rotates keys with overlap, or is down when the
//! agent starts. Each case checks what requests see (status, reason, how
//! long they wait), `nodeward_jwks_fetches_total{result}` and `/readyz`.
//!
//! `jwks.rs` has the happy rotation, the random-kid flood, connection-refused
//! providers and the disk copy across restarts; `tls.rs` the TLS failures.

#[path = "support/provider.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use nodeward_dev_idp::DevIdp;
use nodeward_testkit::{EchoUpstream, TestAgent, client, metric};
use serde_json::{Value, json};
use support::{Script, ScriptedIdp, config, status, token_with_kid};

const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

fn fetches(m: &str, result: &str) -> f64 {
    metric(
        m,
        &format!("nodeward_jwks_fetches_total{{provider=\"corp\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn readyz(agent: &TestAgent) -> (u16, String) {
    let resp = client()
        .get(format!("{}/readyz", agent.admin_url()))
        .send()
        .await
        .expect("readyz");
    (resp.status().as_u16(), resp.text().await.expect("readyz body"))
}

/// A request with a kid nobody knows: it makes the agent refetch (once the
/// cooldown has passed) and is refused whatever the refetch brings.
async fn refetch(idp: &ScriptedIdp, url: &str, n: usize) -> (u16, Value) {
    tokio::time::sleep(Duration::from_millis(150)).await; // past the 100ms cooldown
    status(url, &token_with_kid(&idp.idp, &format!("nobody-{n}"), None)).await
}

struct Env {
    idp: ScriptedIdp,
    agent: TestAgent,
    url: String,
    _up: EchoUpstream,
}

async fn env(refresh: &str) -> Env {
    let idp = ScriptedIdp::start().await;
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(&idp.issuer(), up.addr, refresh)).await;
    agent.wait_ready().await;
    let url = agent.url("orders");
    Env {
        idp,
        agent,
        url,
        _up: up,
    }
}

/// A provider that answers after longer than `fetch_timeout`: tokens with a
/// known kid never wait for it, and a burst of tokens with unknown kids each
/// waits at most about two fetches (one in flight, one of its own), not one
/// fetch per request in the queue ahead of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_holds_no_request_beyond_a_bound() {
    let e = env("unknown_kid_cooldown: 100ms, fetch_timeout: 2s").await;
    let known = e.idp.token();
    assert_eq!(status(&e.url, &known).await.0, 200);
    e.idp.set_jwks(Script::Slow(Duration::from_secs(60)));
    let requests_before = e.idp.jwks_requests();

    let mut burst = Vec::new();
    for i in 0..20 {
        let url = e.url.clone();
        let token = token_with_kid(&e.idp.idp, &format!("new-{i}"), None);
        burst.push(tokio::spawn(async move {
            let start = Instant::now();
            let (s, body) = status(&url, &token).await;
            (s, body, start.elapsed())
        }));
    }
    // Meanwhile a known kid is answered from the keys held, without waiting.
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(status(&e.url, &known).await.0, 200);
        assert!(
            start.elapsed() < FETCH_TIMEOUT,
            "a known kid waited {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Discovery and JWKS each bounded by fetch_timeout; at most one fetch in
    // flight ahead and one own: 4 x 2s, plus slack for a loaded machine.
    let bound = FETCH_TIMEOUT * 4 + Duration::from_secs(2);
    let mut slowest = Duration::ZERO;
    for t in burst {
        let (s, body, took) = t.await.expect("join");
        assert_eq!(s, 401, "{body}");
        assert_eq!(body["reason"], "unknown_kid");
        slowest = slowest.max(took);
    }
    eprintln!("slow provider: slowest of 20 unknown-kid requests took {slowest:?} (bound {bound:?})");
    assert!(
        slowest <= bound,
        "an unknown-kid request waited {slowest:?} (> {bound:?})"
    );
    let m = e.agent.metrics().await;
    assert!(fetches(&m, "timeout") >= 1.0, "{m}");
    let on_demand = metric(&m, "nodeward_jwks_on_demand_fetches_total{provider=\"corp\"}").unwrap_or(0.0);
    assert!(on_demand <= 3.0, "20 requests caused {on_demand} on-demand fetches");
    let at_provider = e.idp.jwks_requests() - requests_before;
    assert!(
        at_provider <= 3,
        "20 requests caused {at_provider} JWKS requests at the provider"
    );
    assert_eq!(readyz(&e.agent).await.0, 200, "stale keys still verify: ready");
    assert_eq!(status(&e.url, &known).await.0, 200);
}

/// Documents that are not what they claim: each refetch fails with the
/// matching result label, the keys held stay, and the agent stays ready.
#[tokio::test]
async fn garbage_documents_are_refused_and_the_last_good_keys_kept() {
    let e = env("unknown_kid_cooldown: 100ms, fetch_timeout: 2s").await;
    let known = e.idp.token();
    assert_eq!(status(&e.url, &known).await.0, 200);
    let discovery_doc = e.idp.idp.discovery().to_string();
    let body = |s: &str| Script::Body(Bytes::from(s.to_string()));
    let cases: Vec<(&str, bool, Script, &str)> = vec![
        (
            "HTML",
            false,
            body("<html><body>Service Unavailable</body></html>"),
            "bad_jwks",
        ),
        ("JSON without keys", false, body(r#"{"issuer":"x"}"#), "bad_jwks"),
        (
            "keys not an array",
            false,
            body(r#"{"keys":"all of them"}"#),
            "bad_jwks",
        ),
        ("empty key list", false, body(r#"{"keys":[]}"#), "bad_jwks"),
        (
            "broken RSA parameters",
            false,
            body(r#"{"keys":[{"kty":"RSA","kid":"k","n":"@@@","e":"AQAB"}]}"#),
            "bad_jwks",
        ),
        (
            "the discovery document instead",
            false,
            Script::Body(Bytes::from(discovery_doc)),
            "bad_jwks",
        ),
        ("truncated JSON", false, body(r#"{"keys":[{"kty":"RSA","#), "bad_jwks"),
        ("HTTP 500", false, Script::Status(500), "status"),
        ("discovery not JSON", true, body("not json"), "bad_discovery"),
        (
            "discovery for another issuer",
            true,
            body(r#"{"issuer":"https://evil.example","jwks_uri":"https://evil.example/jwks"}"#),
            "bad_discovery",
        ),
        (
            "discovery without jwks_uri",
            true,
            body(&format!(r#"{{"issuer":"{}"}}"#, e.idp.issuer())),
            "bad_discovery",
        ),
        ("discovery HTTP 404", true, Script::Status(404), "status"),
    ];
    for (n, (what, on_discovery, script, result)) in cases.into_iter().enumerate() {
        let before = fetches(&e.agent.metrics().await, result);
        if on_discovery {
            e.idp.set_discovery(script);
        } else {
            e.idp.set_jwks(script);
        }
        let (s, body) = refetch(&e.idp, &e.url, n).await;
        assert_eq!(
            (s, body["reason"].as_str()),
            (401, Some("unknown_kid")),
            "{what}: {body}"
        );
        let m = e.agent.metrics().await;
        assert_eq!(
            fetches(&m, result),
            before + 1.0,
            "{what}: one fetch with result={result}\n{m}"
        );
        assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(3.0), "{what}");
        assert_eq!(
            status(&e.url, &known).await.0,
            200,
            "{what}: the last good keys still verify"
        );
        assert_eq!(readyz(&e.agent).await.0, 200, "{what}");
        e.idp.set_discovery(Script::Live);
        e.idp.set_jwks(Script::Live);
    }
}

/// Bodies past `max_response_bytes` (declared, or chunked without a length)
/// and a body that trickles forever: refused (too_large / timeout) without
/// holding the request past the bound, keys kept.
#[tokio::test]
async fn huge_and_endless_bodies_are_cut_off() {
    let e = env("unknown_kid_cooldown: 100ms, fetch_timeout: 2s, max_response_bytes: 65536").await;
    let known = e.idp.token();
    assert_eq!(status(&e.url, &known).await.0, 200);
    let cases = [
        (
            "declared 1 MiB",
            Script::Body(Bytes::from(vec![b' '; 1 << 20])),
            "too_large",
        ),
        ("chunked 64 MiB", Script::Chunked { total: 64 << 20 }, "too_large"),
        ("trickling forever", Script::Trickle, "timeout"),
    ];
    for (n, (what, script, result)) in cases.into_iter().enumerate() {
        let before = fetches(&e.agent.metrics().await, result);
        e.idp.set_jwks(script);
        let start = Instant::now();
        let (s, body) = refetch(&e.idp, &e.url, n).await;
        let took = start.elapsed();
        assert_eq!(
            (s, body["reason"].as_str()),
            (401, Some("unknown_kid")),
            "{what}: {body}"
        );
        assert!(
            took < FETCH_TIMEOUT * 2 + Duration::from_secs(2),
            "{what}: waited {took:?}"
        );
        let m = e.agent.metrics().await;
        assert_eq!(fetches(&m, result), before + 1.0, "{what}: result={result}\n{m}");
        assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(3.0), "{what}");
        assert_eq!(status(&e.url, &known).await.0, 200, "{what}");
        assert_eq!(readyz(&e.agent).await.0, 200, "{what}");
        e.idp.set_jwks(Script::Live);
    }
}

/// The RS256 public JWK of another dev IdP, with `extra` members set.
fn foreign_jwk(other: &DevIdp, extra: Value) -> Value {
    let mut jwk = other.jwks()["keys"][0].clone();
    if let (Some(j), Some(x)) = (jwk.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            j.insert(k.clone(), v.clone());
        }
    }
    jwk
}

/// A live JWKS with a duplicate kid (another key under the provider's RS256
/// kid), an encryption key, a symmetric key, an unsupported curve, an
/// unknown alg and an alg that does not fit its key: the agent keeps exactly
/// the provider's three signing keys (the first of a duplicated kid), refuses
/// tokens of every other key, and the fetch counts as ok. A JWKS of only
/// such keys is refused as a whole (bad_jwks) and the held keys stay.
#[tokio::test]
async fn duplicate_kids_and_unfit_keys_are_refused_one_by_one() {
    let e = env("unknown_kid_cooldown: 100ms, fetch_timeout: 2s").await;
    let iss = e.idp.issuer();
    let our_kid = e.idp.idp.current_kid("RS256").expect("kid");
    let impostor = DevIdp::new("http://impostor").expect("keys");
    let encrypter = DevIdp::new("http://encrypter").expect("keys");
    let unfit = [
        foreign_jwk(&impostor, json!({"kid": our_kid})),
        foreign_jwk(&encrypter, json!({"kid": "enc-1", "use": "enc"})),
        foreign_jwk(&encrypter, json!({"kid": "ops-1", "key_ops": ["encrypt"]})),
        json!({"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}),
        json!({"kty": "EC", "kid": "p521-1", "crv": "P-521", "x": "AQ", "y": "AQ"}),
        foreign_jwk(&encrypter, json!({"kid": "rs1-1", "alg": "RS1"})),
        foreign_jwk(&encrypter, json!({"kid": "es-on-rsa", "alg": "ES256"})),
        json!({"kty": "PQC", "kid": "future-1"}),
    ];
    let mut keys: Vec<Value> = e.idp.idp.jwks()["keys"].as_array().cloned().unwrap_or_default();
    keys.extend(unfit.iter().cloned());
    let before_ok = fetches(&e.agent.metrics().await, "ok");
    e.idp
        .set_jwks(Script::Body(Bytes::from(json!({ "keys": keys }).to_string())));
    let (s, _) = refetch(&e.idp, &e.url, 0).await;
    assert_eq!(s, 401);
    let m = e.agent.metrics().await;
    assert_eq!(
        fetches(&m, "ok"),
        before_ok + 1.0,
        "a JWKS with usable keys is taken\n{m}"
    );
    assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(3.0), "{m}");

    assert_eq!(status(&e.url, &e.idp.token()).await.0, 200, "the provider's own key");
    for alg in ["ES256", "EdDSA"] {
        let t = e.idp.idp.mint(&nodeward_dev_idp::MintRequest {
            alg: Some(alg.into()),
            claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
            ..Default::default()
        });
        assert_eq!(status(&e.url, &t.expect("mint")).await.0, 200, "{alg}");
    }
    // The impostor's key came second under our kid: never used.
    let (s, body) = status(&e.url, &token_with_kid(&impostor, &our_kid, Some(&iss))).await;
    assert_eq!((s, body["reason"].as_str()), (401, Some("bad_signature")), "{body}");
    for kid in ["enc-1", "ops-1", "rs1-1", "es-on-rsa"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (s, body) = status(&e.url, &token_with_kid(&encrypter, kid, Some(&iss))).await;
        assert_eq!(
            (s, body["reason"].as_str()),
            (401, Some("unknown_kid")),
            "{kid}: {body}"
        );
    }

    // Nothing but unfit keys: refused as a whole, nobody locked out.
    let before_bad = fetches(&e.agent.metrics().await, "bad_jwks");
    // (Without the impostor: alone, it is a fine signing key.)
    e.idp
        .set_jwks(Script::Body(Bytes::from(json!({ "keys": unfit[1..] }).to_string())));
    let (s, _) = refetch(&e.idp, &e.url, 1).await;
    assert_eq!(s, 401);
    let m = e.agent.metrics().await;
    assert_eq!(fetches(&m, "bad_jwks"), before_bad + 1.0, "{m}");
    assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(3.0));
    assert_eq!(status(&e.url, &e.idp.token()).await.0, 200);
    assert_eq!(readyz(&e.agent).await.0, 200);
}

/// Rotation with overlap: the provider publishes new keys beside the old
/// ones — tokens of both verify — then retires the old ones: their tokens
/// (cached ones included) are refused, the new ones still verify.
#[tokio::test]
async fn rotation_with_overlap_then_retirement() {
    let e = env("unknown_kid_cooldown: 100ms, fetch_timeout: 2s").await;
    let old_kids: Vec<String> = ["RS256", "ES256", "EdDSA"]
        .iter()
        .map(|a| e.idp.idp.current_kid(a).expect("kid"))
        .collect();
    let old = e.idp.token();
    assert_eq!(status(&e.url, &old).await.0, 200);
    assert_eq!(status(&e.url, &old).await.0, 200, "now cached");

    e.idp.idp.rotate(true).expect("rotate with overlap");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let new = e.idp.token();
    assert_eq!(
        status(&e.url, &new).await.0,
        200,
        "the new kid is learnt by one refetch"
    );
    assert_eq!(status(&e.url, &old).await.0, 200, "the old key still published");
    let m = e.agent.metrics().await;
    assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(6.0), "{m}");

    e.idp.set_jwks(Script::LiveWithout(old_kids));
    let (s, _) = refetch(&e.idp, &e.url, 0).await;
    assert_eq!(s, 401);
    let m = e.agent.metrics().await;
    assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(3.0), "{m}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (s, body) = status(&e.url, &old).await;
    assert_eq!((s, body["reason"].as_str()), (401, Some("unknown_kid")), "{body}");
    assert_eq!(status(&e.url, &new).await.0, 200);
    assert_eq!(readyz(&e.agent).await.0, 200);
}

/// Discovery failing (HTTP 503) when the agent starts with no disk copy: not
/// ready, requests refused with `no_keys` and a reason naming the provider;
/// once discovery answers, the refresh loop alone makes the agent ready.
#[tokio::test]
async fn discovery_down_at_start_without_disk_copy_then_back() {
    let idp = ScriptedIdp::start().await;
    idp.set_discovery(Script::Status(503));
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(
        &idp.issuer(),
        up.addr,
        "unknown_kid_cooldown: 100ms, fetch_timeout: 2s",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, text) = readyz(&agent).await;
    assert_eq!(code, 503);
    assert!(text.contains("provider corp has no usable keys"), "{text}");
    let (s, body) = status(&agent.url("orders"), &idp.token()).await;
    assert_eq!((s, body["reason"].as_str()), (401, Some("no_keys")), "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("provider corp has no usable keys"), "{body}");
    let m = agent.metrics().await;
    assert!(fetches(&m, "status") >= 1.0, "{m}");
    assert_eq!(metric(&m, "nodeward_provider_ready{provider=\"corp\"}"), Some(0.0));

    idp.set_discovery(Script::Live);
    // No request needed: the refresh loop retries within min_interval (1s).
    agent.wait_ready().await;
    assert_eq!(readyz(&agent).await.0, 200);
    assert_eq!(status(&agent.url("orders"), &idp.token()).await.0, 200);
    let m = agent.metrics().await;
    assert!(fetches(&m, "ok") >= 1.0, "{m}");
    assert_eq!(metric(&m, "nodeward_provider_ready{provider=\"corp\"}"), Some(1.0));
}

/// The same outage after a previous run left a disk copy: ready at once
/// from disk, tokens verify, while every fetch fails.
#[tokio::test]
async fn discovery_down_at_start_with_disk_copy_is_ready_from_disk() {
    let idp = ScriptedIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = config(&idp.issuer(), up.addr, "unknown_kid_cooldown: 100ms, fetch_timeout: 2s");
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let state_dir = agent.shutdown().await;

    idp.set_discovery(Script::Status(503));
    idp.set_jwks(Script::Status(503));
    let agent = TestAgent::start_in(&yaml, state_dir).await;
    assert!(agent.agent.not_ready().is_empty(), "ready from the disk copy");
    assert_eq!(readyz(&agent).await.0, 200);
    assert_eq!(status(&agent.url("orders"), &idp.token()).await.0, 200);
    let (s, body) = refetch(&idp, &agent.url("orders"), 0).await;
    assert_eq!((s, body["reason"].as_str()), (401, Some("unknown_kid")), "{body}");
    let m = agent.metrics().await;
    assert!(fetches(&m, "status") >= 1.0, "{m}");
    assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(3.0));
    assert_eq!(metric(&m, "nodeward_provider_ready{provider=\"corp\"}"), Some(1.0));
}
