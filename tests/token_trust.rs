//! What a token is trusted for, over real sockets (issue 10, defects 4–8
//! and the token weak spots), HTTP/1.1 and h2c: per-policy audiences,
//! checked on every request, cache hit or not; the token cache never
//! answering for a token a fresh validation would refuse (stale keys, a
//! rotated shared secret, a reload racing a validation); `nodeward
//! explain` giving the proxy's answer; discovered `jwks_uri`s and
//! redirects held to the scheme rule; an older JWKS fetch never
//! reinstalling a removed key; RSA keys with `e = 1`; unambiguous claim
//! paths; the `typ` allowlist.
//!
//! Request shapes (paths, methods, headers) are `normalization.rs`.

#[path = "support/provider.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use nodeward::config::Config;
use nodeward::provider::{Provider, ProviderMetrics};
use nodeward::{Reload, Reloader};
use nodeward_dev_idp::{DevIdp, MintRequest};
use nodeward_testkit::process::AgentProcess;
use nodeward_testkit::wire::{BOTH, Proto, Reply, free_port, send};
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, metric};
use serde_json::{Value, json};
use support::{Script, ScriptedIdp};

/// One provider `corp` (with `provider` lines added under it) and, for each
/// `(name, policy lines)`, a policy and a reverse-proxy workload of that
/// name in front of `upstream` (the first on 127.0.0.1, the next on
/// 127.0.0.2, ...). The policy lines are indented four spaces
/// and default to one rule: any valid token.
fn config(issuer: &str, upstream: SocketAddr, provider: &str, policies: &[(&str, &str)]) -> String {
    let mut out =
        format!("admin: 127.0.0.1:0\nproviders:\n  - name: corp\n    issuer: {issuer}\n{provider}policies:\n");
    for (name, lines) in policies {
        let lines = if lines.is_empty() {
            "    rules:\n      - {name: default, require: {providers: [corp]}}\n"
        } else {
            lines
        };
        out.push_str(&format!("  - name: {name}\n    selector: {{app: {name}}}\n{lines}"));
    }
    out.push_str("workloads:\n");
    // One loopback address each: two workloads cannot both listen on 127.0.0.1:0.
    for (i, (name, _)) in policies.iter().enumerate() {
        out.push_str(&format!(
            "  - {{name: {name}, labels: {{app: {name}}}, listen: 127.0.0.{}:0, upstream: {upstream}}}\n",
            i + 1
        ));
    }
    out
}

fn addr(agent: &TestAgent, workload: &str) -> SocketAddr {
    agent.agent.workload_addr(workload).expect("listening")
}

/// `GET /orders` with `Authorization: Bearer token`.
async fn get(proto: Proto, at: SocketAddr, token: &str) -> Reply {
    send(
        proto,
        at,
        "GET",
        "/orders",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// 200, or the refusal's status and reason.
fn outcome(r: &Reply) -> (u16, Option<String>) {
    match r.refusal() {
        Some((status, reason, _)) => (status, Some(reason)),
        None => (r.status, None),
    }
}

fn ok() -> (u16, Option<String>) {
    (200, None)
}

fn refused(status: u16, reason: &str) -> (u16, Option<String>) {
    (status, Some(reason.to_string()))
}

fn counter(m: &str, series: &str) -> f64 {
    metric(m, series).unwrap_or(0.0)
}

async fn readyz(agent: &TestAgent) -> u16 {
    client()
        .get(format!("{}/readyz", agent.admin_url()))
        .send()
        .await
        .expect("readyz")
        .status()
        .as_u16()
}

/// Polls `cond` every 50 ms for at most `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(limit: Duration, mut cond: impl FnMut() -> F) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond().await
}

/// A provider lists `[orders, payments]`; each workload's policy narrows it.
/// A token minted for one workload is refused by the other, on the first
/// request (validation) and on every later one (cache hits).
#[tokio::test]
async fn a_policy_audience_narrows_what_a_workload_accepts_cached_or_not() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let rules = "    rules:\n      - {name: default, require: {providers: [corp]}}\n";
    let orders = format!("    audiences: [orders]\n{rules}");
    let payments = format!("    audiences: [payments]\n{rules}");
    let yaml = config(
        &idp.issuer(),
        up.addr,
        "    audiences: [orders, payments]\n",
        &[("orders", &orders), ("payments", &payments), ("shop", "")],
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let for_orders = idp.token(json!({"aud": "orders"}));
    let for_payments = idp.token(json!({"aud": "payments"}));
    let for_both = idp.token(json!({"aud": ["orders", "payments"]}));
    let for_billing = idp.token(json!({"aud": "billing"}));
    let wrong = || refused(401, "wrong_audience");
    #[rustfmt::skip]
    let table = [
        ("orders",   [ok(),    wrong(), ok(), wrong()]),
        ("payments", [wrong(), ok(),    ok(), wrong()]),
        // No policy audiences: the provider's list.
        ("shop",     [ok(),    ok(),    ok(), wrong()]),
    ];
    let tokens = [&for_orders, &for_payments, &for_both, &for_billing];
    let misses = |m: &str| counter(m, "nodeward_token_cache_misses_total");
    let hits = |m: &str| counter(m, "nodeward_token_cache_hits_total");
    for pass in 0..3 {
        let before = agent.metrics().await;
        for proto in BOTH {
            for (workload, wants) in &table {
                for (token, want) in tokens.iter().zip(wants) {
                    let r = get(proto, addr(&agent, workload), token).await;
                    assert_eq!(&outcome(&r), want, "pass {pass}, {proto:?} at {workload}: {r:?}");
                }
            }
        }
        let after = agent.metrics().await;
        if pass > 0 {
            // Every answer of a later pass came from the cache.
            assert_eq!(misses(&after), misses(&before), "pass {pass}");
            assert_eq!(hits(&after) - hits(&before), 24.0, "pass {pass}");
        }
    }
}

/// The provider goes down past `max_staleness`: fresh tokens get `no_keys`
/// and `/readyz` 503, and so does a token verified (and cached) earlier.
#[tokio::test]
async fn a_cached_token_is_refused_once_the_keys_are_stale() {
    let idp = ScriptedIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = config(
        &idp.issuer(),
        up.addr,
        "    audiences: [orders]\n    refresh: {min_interval: 1s, max_interval: 1s, max_staleness: 2s, fetch_timeout: 1s, unknown_kid_cooldown: 100ms}\n",
        &[("orders", "")],
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");
    let cached = idp.token();
    for proto in BOTH {
        assert_eq!(outcome(&get(proto, at, &cached).await), ok(), "{proto:?}");
    }
    let hits = counter(&agent.metrics().await, "nodeward_token_cache_hits_total");
    assert!(hits >= 1.0, "the token was served from the cache");

    idp.set_discovery(Script::Status(503));
    idp.set_jwks(Script::Status(503));
    assert!(
        eventually(Duration::from_secs(15), || async { readyz(&agent).await == 503 }).await,
        "not ready once the keys are older than max_staleness"
    );
    let fresh = mint(&idp.idp, json!({"aud": "orders", "sub": "fresh"}));
    for proto in BOTH {
        for token in [&cached, &fresh] {
            assert_eq!(
                outcome(&get(proto, at, token).await),
                refused(401, "no_keys"),
                "{proto:?}: no token outlives the keys"
            );
        }
    }
    // The provider is back: the same token verifies again.
    idp.set_discovery(Script::Live);
    idp.set_jwks(Script::Live);
    assert!(eventually(Duration::from_secs(15), || async { readyz(&agent).await == 200 }).await);
    for proto in BOTH {
        assert_eq!(outcome(&get(proto, at, &cached).await), ok(), "{proto:?}");
    }
}

/// An HS256 token for `issuer`, signed with `secret`.
fn hs256(issuer: &str, secret: &[u8], sub: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"iss": issuer, "aud": "orders", "sub": sub, "iat": now, "exp": now + 300});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

const SECRETS: [&[u8]; 3] = [
    b"first shared secret, 32 bytes long",
    b"second shared secret, also long enough",
    b"third shared secret, rotated by a file change",
];

/// `hs_secret_file` is re-read on reload: forced (what SIGHUP does), and
/// when the reloader sees the file change. Until then the old secret
/// verifies; after, tokens of the old secret are refused, cached ones too.
#[tokio::test]
async fn a_rotated_hs_secret_applies_on_a_forced_reload_and_on_a_file_change() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, SECRETS[0]).expect("write secret");
    let yaml = config(
        &idp.issuer(),
        up.addr,
        &format!(
            "    audiences: [orders]\n    algorithms: [RS256, HS256]\n    hs_secret_file: {}\n",
            secret.display()
        ),
        &[("orders", "")],
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");
    let file = dir.path().join("nodeward.yaml");
    std::fs::write(
        &file,
        format!("state_dir: {}\n{yaml}", agent.state_dir.path().display()),
    )
    .expect("write");
    let tokens: Vec<String> = SECRETS.iter().map(|s| hs256(&idp.issuer(), s, "svc")).collect();
    let check = |want: [(u16, Option<String>); 3], when: &'static str| {
        let tokens = tokens.clone();
        async move {
            for proto in BOTH {
                for (i, (token, want)) in tokens.iter().zip(&want).enumerate() {
                    assert_eq!(
                        &outcome(&get(proto, at, token).await),
                        want,
                        "{when}: {proto:?}, secret {i}"
                    );
                }
            }
        }
    };
    let bad = || refused(401, "bad_signature");
    check([ok(), bad(), bad()], "at start").await;

    // The secret rotates; a reloader that already knows the new content
    // (as after a reload that raced the write) sees no change by itself...
    std::fs::write(&secret, SECRETS[1]).expect("rotate");
    let mut reloader = Reloader::new(&file, Some(std::fs::read(&file).expect("read")));
    assert_eq!(reloader.check(agent.agent.control(), false).await, Reload::Unchanged);
    check([ok(), bad(), bad()], "rotated, not reloaded").await;
    // ...and SIGHUP (a forced reload) applies it.
    assert_eq!(reloader.check(agent.agent.control(), true).await, Reload::Applied);
    check([bad(), ok(), bad()], "after the forced reload").await;

    // A change of the file alone is noticed and applied.
    std::fs::write(&secret, SECRETS[2]).expect("rotate");
    assert_eq!(reloader.check(agent.agent.control(), false).await, Reload::Applied);
    check([bad(), bad(), ok()], "after the file changed").await;
    assert_eq!(reloader.check(agent.agent.control(), false).await, Reload::Unchanged);
}

/// The binary: SIGHUP re-reads a rotated `hs_secret_file` (with a reload
/// interval of an hour, nothing else would).
#[tokio::test]
async fn sighup_to_the_binary_applies_a_rotated_hs_secret() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, SECRETS[0]).expect("write secret");
    let (admin, listen) = (free_port(), free_port());
    let yaml = config(
        &idp.issuer(),
        up.addr,
        &format!(
            "    audiences: [orders]\n    algorithms: [RS256, HS256]\n    hs_secret_file: {}\n",
            secret.display()
        ),
        &[("orders", "")],
    )
    .replace(
        "admin: 127.0.0.1:0",
        &format!("admin: 127.0.0.1:{admin}\nstate_dir: {}", dir.path().display()),
    )
    .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{listen}"));
    let file = dir.path().join("nodeward.yaml");
    std::fs::write(&file, yaml).expect("write");
    let agent = AgentProcess::spawn(
        env!("CARGO_BIN_EXE_nodeward-under-test"),
        &file,
        &["--reload-interval", "1h"],
        SocketAddr::from(([127, 0, 0, 1], admin)),
    );
    agent.wait_ready().await;
    let at = SocketAddr::from(([127, 0, 0, 1], listen));
    let old = hs256(&idp.issuer(), SECRETS[0], "svc");
    let new = hs256(&idp.issuer(), SECRETS[1], "svc");
    assert_eq!(outcome(&get(Proto::H1, at, &old).await), ok());
    std::fs::write(&secret, SECRETS[1]).expect("rotate");
    assert_eq!(outcome(&get(Proto::H1, at, &new).await), refused(401, "bad_signature"));
    agent.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            outcome(&get(Proto::H1, at, &new).await) == ok()
        })
        .await,
        "the new secret verifies after SIGHUP"
    );
    for proto in BOTH {
        assert_eq!(
            outcome(&get(proto, at, &old).await),
            refused(401, "bad_signature"),
            "{proto:?}"
        );
        assert_eq!(outcome(&get(proto, at, &new).await), ok(), "{proto:?}");
    }
    let out = agent.terminate().await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Which audience list a reload narrows.
#[derive(Clone, Copy, Debug)]
enum Narrowed {
    /// The provider's `audiences` (a new provider replaces the old one).
    Provider,
    /// The policy's `audiences` (the provider, and its cache entries, stay).
    Policy,
}

/// A validation that started under the old configuration finishes after a
/// reload removed the token's audience: the request it belongs to is
/// decided under the old configuration, but no later request is — the
/// verification it cached does not outlive the configuration it was made
/// under. Driven deterministically: the token has a kid the agent has not
/// seen, so validating it waits on a JWKS fetch that the provider answers
/// slowly, and the reload happens while it waits.
async fn reload_racing_a_validation(narrowed: Narrowed) {
    let idp = ScriptedIdp::start().await;
    let up = EchoUpstream::start().await;
    let refresh = "    refresh: {min_interval: 1s, max_interval: 1h, unknown_kid_cooldown: 100ms, fetch_timeout: 5s}\n";
    let rules = "    rules:\n      - {name: default, require: {providers: [corp]}}\n";
    let before = config(
        &idp.issuer(),
        up.addr,
        &format!("    audiences: [orders, payments]\n{refresh}"),
        &[("orders", "")],
    );
    let after = match narrowed {
        Narrowed::Provider => before.replace("audiences: [orders, payments]", "audiences: [orders]"),
        Narrowed::Policy => before.replace(rules, &format!("    audiences: [orders]\n{rules}")),
    };
    assert_ne!(before, after);
    let agent = TestAgent::start(&before).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");

    idp.idp.rotate(true).expect("rotate");
    let token = mint(&idp.idp, json!({"aud": "payments", "sub": "racer"}));
    let orders = mint(&idp.idp, json!({"aud": "orders", "sub": "racer"}));
    idp.set_jwks(Script::Slow(Duration::from_secs(2)));
    let fetched = idp.jwks_requests();
    let racing = token.clone();
    let in_flight = tokio::spawn(async move { get(Proto::H1, at, &racing).await });
    assert!(
        eventually(Duration::from_secs(5), || async { idp.jwks_requests() > fetched }).await,
        "the validation is waiting on the slow JWKS fetch"
    );
    idp.set_jwks(Script::Live);
    let config = TestAgent::config(&after, agent.state_dir.path());
    agent.agent.apply(config).await.expect("reload");
    let r = in_flight.await.expect("join");
    assert_eq!(
        outcome(&r),
        ok(),
        "{narrowed:?}: decided under the configuration it started with"
    );

    for round in 0..2 {
        for proto in BOTH {
            assert_eq!(
                outcome(&get(proto, at, &token).await),
                refused(401, "wrong_audience"),
                "{narrowed:?}, {proto:?}, round {round}: the audience was removed"
            );
            assert_eq!(outcome(&get(proto, at, &orders).await), ok(), "{narrowed:?}, {proto:?}");
        }
    }
}

#[tokio::test]
async fn a_reload_racing_a_validation_keeps_no_stale_provider_audience() {
    reload_racing_a_validation(Narrowed::Provider).await;
}

#[tokio::test]
async fn a_reload_racing_a_validation_keeps_no_stale_policy_audience() {
    reload_racing_a_validation(Narrowed::Policy).await;
}

/// `nodeward explain` runs the proxy's pipeline: with a bare token header
/// (`token_from: {header: x-token, prefix: ""}`) it gives the answer the
/// proxy gives, for each request, and names the path the upstream receives.
#[tokio::test]
async fn explain_gives_the_proxys_answer_with_a_bare_token_header() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let rules = r#"    rules:
      - {name: public, paths: ["/public/**"], allow: anonymous}
      - name: admin
        paths: ["/admin/**"]
        require: {claims: {groups: {any_of: [admins]}}}
      - {name: internal, paths: ["/internal/**"], deny: true}
      - {name: default, require: {providers: [corp]}}
"#;
    let yaml = config(
        &idp.issuer(),
        up.addr,
        "    audiences: [orders]\n    token_from: {header: x-token, prefix: \"\"}\n",
        &[("orders", rules)],
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");
    let file = agent.state_dir.path().join("nodeward.yaml");
    std::fs::write(
        &file,
        format!("state_dir: {}\n{yaml}", agent.state_dir.path().display()),
    )
    .expect("write");
    let user = idp.token(json!({"aud": "orders", "sub": "alice", "groups": ["dev"]}));
    let admin = idp.token(json!({"aud": "orders", "sub": "root", "groups": ["admins"]}));
    let bearer = format!("Bearer {user}");
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("GET", "/orders/1", Some(&user)),
        ("GET", "/orders/1?a=%2F&b", Some(&user)),
        ("GET", "/orders/1", None),
        ("GET", "/orders/1", Some("not-a-jwt")),
        // The bare header's whole value is the token: a scheme makes it malformed.
        ("GET", "/orders/1", Some(&bearer)),
        ("GET", "/public/../admin/x", Some(&user)),
        ("GET", "/public/%2e%2e/admin/x", Some(&admin)),
        ("GET", "/public/..%2Fadmin/x", Some(&admin)),
        ("GET", "//public/./x", None),
        ("GET", "/public/../internal/x", Some(&admin)),
        ("post", "/orders/1", Some(&user)),
        ("HEAD", "/orders/1", Some(&user)),
    ];
    let config_path = file.to_str().expect("utf8").to_string();
    for (method, target, token) in cases {
        let headers: Vec<(&str, &str)> = token.iter().map(|t| ("x-token", *t)).collect();
        let proxy = send(Proto::H1, at, method, target, &headers).await;
        let mut args = vec![
            "explain".to_string(),
            "--config".into(),
            config_path.clone(),
            "--workload".into(),
            "orders".into(),
            "--method".into(),
            method.into(),
            "--path".into(),
            target.into(),
        ];
        if let Some(t) = token {
            args.extend(["--token".to_string(), t.to_string()]);
        }
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_nodeward-under-test"))
                .args(&args)
                .output()
                .expect("run nodeward explain")
        })
        .await
        .expect("join");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{method} {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
        };
        let decision = field("decision:");
        let status: u16 = if decision.starts_with("ALLOW") {
            200
        } else {
            decision
                .strip_prefix("DENY ")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("decision {decision:?}"))
        };
        let rule = field("rule:");
        let what = format!("{method} {target} with {token:?}");
        match proxy.refusal() {
            Some((s, reason, proxy_rule)) => {
                assert_eq!(
                    (status, field("reason:"), rule),
                    (s, reason, proxy_rule.unwrap_or_else(|| "(none matched)".into())),
                    "{what}: explain says\n{text}"
                );
            }
            None => {
                assert_eq!((status, proxy.status), (200, 200), "{what}: explain says\n{text}");
                if method != "HEAD" {
                    let echo = proxy.echoed();
                    let forwarded = match echo["query"].as_str() {
                        Some(q) => format!("{}?{q}", echo["path"].as_str().expect("path")),
                        None => echo["path"].as_str().expect("path").to_string(),
                    };
                    assert_eq!(field("upstream:"), forwarded, "{what}: explain says\n{text}");
                }
            }
        }
    }
}

/// The chain of `e`'s messages, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// One refresh of the first provider of `yaml`, outside any agent: its error.
async fn refresh_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config::parse(yaml, std::path::Path::new("test.yaml"))
        .expect("valid")
        .providers[0]
        .clone();
    let p = Provider::new(cfg, dir.path(), ProviderMetrics::unregistered("corp"), None).expect("provider");
    match p.refresh().await {
        Ok(_) => "refreshed".into(),
        Err(e) => chain(&e),
    }
}

/// A `jwks_uri` learnt from discovery, and every redirect, are held to the
/// rule configured URLs are: plain http only for loopback (or with
/// `allow_insecure_http`). Refused, the agent has no keys (fail closed);
/// loopback targets, as controls, are followed.
#[tokio::test]
async fn discovered_jwks_uris_and_redirects_obey_the_scheme_rule() {
    let idp = ScriptedIdp::start().await;
    let up = EchoUpstream::start().await;
    let port = idp.addr.port();
    let refresh = "    refresh: {min_interval: 1s, max_interval: 1h, unknown_kid_cooldown: 100ms, fetch_timeout: 2s}\n";
    let discovered = config(
        &idp.issuer(),
        up.addr,
        &format!("    audiences: [orders]\n{refresh}"),
        &[("orders", "")],
    );
    let configured = config(
        &idp.issuer(),
        up.addr,
        &format!("    audiences: [orders]\n    jwks_uri: http://127.0.0.1:{port}/jwks\n{refresh}"),
        &[("orders", "")],
    );
    let token = idp.token();
    let remote = "http://jwks.example.test/jwks";
    for (what, yaml, refused_script, allowed_script, needle) in [
        (
            "discovered",
            &discovered,
            Script::Body(Bytes::from(
                json!({"issuer": idp.issuer(), "jwks_uri": remote}).to_string(),
            )),
            Script::Body(Bytes::from(
                json!({"issuer": idp.issuer(), "jwks_uri": format!("http://localhost:{port}/live/jwks")}).to_string(),
            )),
            format!("jwks_uri \"{remote}\": plain http is only allowed for loopback"),
        ),
        (
            "redirected",
            &configured,
            Script::Redirect(remote.into()),
            Script::Redirect(format!("http://localhost:{port}/live/jwks")),
            format!("redirect to {remote} refused: plain http is only allowed for loopback"),
        ),
    ] {
        let set = |s: Script| match what {
            "discovered" => idp.set_discovery(s),
            _ => idp.set_jwks(s),
        };
        set(refused_script);
        let err = refresh_error(yaml).await;
        assert!(err.contains(&needle), "{what}: {err}");

        let agent = TestAgent::start(yaml).await;
        assert_eq!(readyz(&agent).await, 503, "{what}: no keys, not ready");
        let at = addr(&agent, "orders");
        for proto in BOTH {
            assert_eq!(
                outcome(&get(proto, at, &token).await),
                refused(401, "no_keys"),
                "{what} {proto:?}"
            );
        }
        let m = agent.metrics().await;
        let result = if what == "discovered" {
            "bad_discovery"
        } else {
            "network"
        };
        let series = format!("nodeward_jwks_fetches_total{{provider=\"corp\",result=\"{result}\"}}");
        assert!(counter(&m, &series) >= 1.0, "{what}: {m}");
        assert_eq!(
            counter(&m, "nodeward_jwks_fetches_total{provider=\"corp\",result=\"ok\"}"),
            0.0
        );

        // Control: a loopback target is followed; the next request's refetch gets the keys.
        set(allowed_script);
        tokio::time::sleep(Duration::from_millis(150)).await;
        for proto in BOTH {
            assert_eq!(outcome(&get(proto, at, &token).await), ok(), "{what} {proto:?}");
        }
        set(Script::Live);
    }
}

fn fetches(m: &str, result: &str) -> f64 {
    counter(
        m,
        &format!("nodeward_jwks_fetches_total{{provider=\"corp\",result=\"{result}\"}}"),
    )
}

/// Two fetches overlap: the one that started first (the refresh loop's,
/// answered slowly, with the keys of then) finishes after a later one (an
/// on-demand refetch that saw a key removed). The older answer is not
/// installed: the removed key stays removed, in memory and on disk.
#[tokio::test]
async fn an_older_jwks_fetch_finishing_last_does_not_bring_back_a_removed_key() {
    let idp = ScriptedIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = config(
        &idp.issuer(),
        up.addr,
        "    audiences: [orders]\n    refresh: {min_interval: 1s, max_interval: 1h, unknown_kid_cooldown: 100ms, fetch_timeout: 8s}\n",
        &[("orders", "")],
    );
    let old = idp.token();
    // A first agent leaves a disk copy with the old keys...
    let first = TestAgent::start(&yaml).await;
    first.wait_ready().await;
    assert_eq!(outcome(&get(Proto::H1, addr(&first, "orders"), &old).await), ok());
    let state = first.shutdown().await;

    // ...so the next one is ready from it while its refresh loop's first
    // fetch (the keys of now: the old ones) is answered in 3 s.
    idp.set_jwks(Script::Slow(Duration::from_secs(3)));
    let seen = idp.jwks_requests();
    let agent = TestAgent::start_in(&yaml, state).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");
    assert!(
        eventually(Duration::from_secs(5), || async { idp.jwks_requests() > seen }).await,
        "the refresh loop's fetch is in flight"
    );
    // Meanwhile the provider drops the old keys; a token of a new key makes
    // an on-demand fetch, which sees that at once.
    idp.set_jwks(Script::Live);
    idp.idp.rotate(false).expect("rotate");
    let new = idp.token();
    assert_eq!(outcome(&get(Proto::H1, at, &new).await), ok());
    assert_eq!(outcome(&get(Proto::H1, at, &old).await), refused(401, "unknown_kid"));
    // Nothing else fetches now (the loop waits on the slow fetch, then for
    // the provider's max-age of 300 s): the next `ok` is the slow one.
    let ok_before = fetches(&agent.metrics().await, "ok");
    assert!(
        eventually(Duration::from_secs(8), || async {
            fetches(&agent.metrics().await, "ok") > ok_before
        })
        .await,
        "the slow fetch finished"
    );
    for proto in BOTH {
        assert_eq!(
            outcome(&get(proto, at, &old).await),
            refused(401, "unknown_kid"),
            "{proto:?}: the old answer did not reinstall the removed key"
        );
        assert_eq!(outcome(&get(proto, at, &new).await), ok(), "{proto:?}");
    }
    let m = agent.metrics().await;
    assert_eq!(metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"), Some(3.0), "{m}");

    // Nor was it written to the disk copy: restarted with the provider down,
    // the agent holds the new keys only.
    let state = agent.shutdown().await;
    idp.set_discovery(Script::Status(503));
    idp.set_jwks(Script::Status(503));
    let agent = TestAgent::start_in(&yaml, state).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");
    for proto in BOTH {
        assert_eq!(outcome(&get(proto, at, &new).await), ok(), "{proto:?}");
        assert_eq!(
            outcome(&get(proto, at, &old).await),
            refused(401, "unknown_kid"),
            "{proto:?}"
        );
    }
}

/// The EMSA-PKCS1-v1_5 encoding of SHA-256(`message`) for a 2048-bit key:
/// with a public exponent of 1, `s^e mod n` is `s`, so this is the
/// signature anyone can make for any message under such a key. (aws-lc-rs
/// also refuses `e < 3` when verifying — the token would get
/// `bad_signature` — but nodeward refuses the key when loading the JWKS,
/// so it never holds a key that cannot verify.)
fn e_one_forgery(message: &[u8]) -> Vec<u8> {
    const SHA256_PREFIX: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04,
        0x20,
    ];
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
    let mut em = vec![0x00, 0x01];
    em.resize(256 - SHA256_PREFIX.len() - 32 - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(&SHA256_PREFIX);
    em.extend_from_slice(digest.as_ref());
    assert_eq!(em.len(), 256);
    em
}

/// A JWKS that adds RSA keys with `e = 1` and an even `e` to the live
/// keys: both are skipped, so a token "signed" for the `e = 1` key (its
/// signature is just the padded digest) is refused as an unknown kid.
#[tokio::test]
async fn rsa_keys_with_exponent_one_or_even_are_never_installed() {
    let idp = ScriptedIdp::start().await;
    let up = EchoUpstream::start().await;
    let modulus = URL_SAFE_NO_PAD.encode([0xffu8; 256]);
    let mut jwks = idp.idp.jwks();
    let keys = jwks["keys"].as_array_mut().expect("keys");
    for (kid, e) in [("e-one", "AQ"), ("e-even", "AQAA")] {
        keys.push(json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": modulus, "e": e}));
    }
    idp.set_jwks(Script::Body(Bytes::from(jwks.to_string())));
    let yaml = config(&idp.issuer(), up.addr, "    audiences: [orders]\n", &[("orders", "")]);
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let m = agent.metrics().await;
    assert_eq!(
        metric(&m, "nodeward_jwks_keys{provider=\"corp\"}"),
        Some(3.0),
        "only the live keys: {m}"
    );

    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"e-one"}"#);
    let claims = json!({"iss": idp.issuer(), "aud": "orders", "sub": "mallory", "iat": now, "exp": now + 300});
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(e_one_forgery(input.as_bytes())));
    let at = addr(&agent, "orders");
    for proto in BOTH {
        assert_eq!(
            outcome(&get(proto, at, &forged).await),
            refused(401, "unknown_kid"),
            "{proto:?}"
        );
        assert_eq!(
            outcome(&get(proto, at, &idp.token()).await),
            ok(),
            "{proto:?}: the live keys work"
        );
    }
}

/// `realm_access.roles` is always the nested claim; a top-level claim
/// literally named so is `["realm_access.roles"]`; a JSON Pointer says the
/// same as the dotted path. Neither can stand in for the other.
#[tokio::test]
async fn claim_paths_name_one_claim_each() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let rules = r#"    rules:
      - name: nested
        paths: ["/nested/**"]
        require: {claims: {realm_access.roles: {any_of: [admin]}}}
      - name: literal
        paths: ["/literal/**"]
        require:
          claims:
            '["realm_access.roles"]': {any_of: [admin]}
      - name: pointer
        paths: ["/pointer/**"]
        require: {claims: {"/realm_access/roles": {any_of: [admin]}}}
    forward_claims:
      x-roles: realm_access.roles
      x-literal: '["realm_access.roles"]'
"#;
    let yaml = config(
        &idp.issuer(),
        up.addr,
        "    audiences: [orders]\n",
        &[("orders", rules)],
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");
    let shadow =
        idp.token(json!({"aud": "orders", "realm_access.roles": ["admin"], "realm_access": {"roles": ["user"]}}));
    let nested = idp.token(json!({"aud": "orders", "realm_access": {"roles": ["admin"]}}));
    let denied = || refused(403, "claim_mismatch");
    for proto in BOTH {
        for (name, token, wants) in [
            ("top-level literal", &shadow, [denied(), ok(), denied()]),
            ("nested", &nested, [ok(), denied(), ok()]),
        ] {
            for (path, want) in ["/nested/x", "/literal/x", "/pointer/x"].into_iter().zip(wants) {
                let auth = format!("Bearer {token}");
                let r = send(proto, at, "GET", path, &[("authorization", &auth)]).await;
                assert_eq!(outcome(&r), want, "{proto:?} {name} at {path}: {r:?}");
            }
        }
        let auth = format!("Bearer {shadow}");
        let h = send(proto, at, "GET", "/literal/x", &[("authorization", &auth)])
            .await
            .echoed()["headers"]
            .clone();
        assert_eq!(
            (&h["x-roles"], &h["x-literal"]),
            (&json!(["user"]), &json!(["admin"])),
            "{proto:?}: {h}"
        );
    }
}

/// `typ: [at+jwt]` accepts RFC 9068 access tokens (any case, with or
/// without `application/`) and refuses ID-token-shaped `JWT` and untyped
/// tokens with `token_type_not_allowed`.
#[tokio::test]
async fn a_typ_allowlist_refuses_other_token_types() {
    let idp = TestIdp::start().await;
    let up = EchoUpstream::start().await;
    let yaml = config(
        &idp.issuer(),
        up.addr,
        "    audiences: [orders]\n    typ: [at+jwt]\n",
        &[("orders", "")],
    );
    let agent = TestAgent::start(&yaml).await;
    agent.wait_ready().await;
    let at = addr(&agent, "orders");
    let with_typ = |typ: Value| mint_with_header(&idp.idp, json!({"typ": typ}));
    let not_allowed = || refused(401, "token_type_not_allowed");
    for proto in BOTH {
        for (typ, want) in [
            (json!("JWT"), not_allowed()),
            (Value::Null, not_allowed()),
            (json!("at+jwt"), ok()),
            (json!("AT+JWT"), ok()),
            (json!("application/at+jwt"), ok()),
            (json!("at+jwt+x"), not_allowed()),
        ] {
            assert_eq!(
                outcome(&get(proto, at, &with_typ(typ.clone())).await),
                want,
                "{proto:?} typ {typ}"
            );
        }
    }
}

fn mint(idp: &DevIdp, claims: Value) -> String {
    idp.mint(&MintRequest {
        claims: claims.as_object().cloned().unwrap_or_default(),
        ..MintRequest::default()
    })
    .expect("mint")
}

fn mint_with_header(idp: &DevIdp, header: Value) -> String {
    idp.mint(&MintRequest {
        claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
        header: header.as_object().cloned().unwrap_or_default(),
        ..MintRequest::default()
    })
    .expect("mint")
}
