//! What a rule matched is exactly what the workload receives (issue 10,
//! defects 1–3 and the HTTP weak spots), over real sockets: HTTP/1.1 as raw
//! bytes on TCP (no client library normalises a target, fixes a method's
//! case or drops a header first) and h2c (`:path` and `:method` as given).
//!
//! The upstream that matters is a *normalising* one: Python's http.server
//! serving a directory with a secret under `/admin/`, behind the contract's
//! policy shape (`/public/**` anonymous, `/admin/**` group admins,
//! `/internal/**` deny, any valid token otherwise). Every attack spelling
//! of the issue is refused 400 or judged as the path the file server will
//! read; the secret only ever reaches an admin. The echo upstream shows the
//! rest byte for byte: the forwarded path and query, methods, hop-by-hop
//! and forwarding headers, claim header encodings, token sources.
//!
//! Token trust (audiences, the cache, secrets, reloads, explain, JWKS) is
//! `token_trust.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use nodeward_testkit::wire::{
    BOTH, FRAME_HEADERS, FRAME_RST_STREAM, Http1Response, PROTOCOL_ERROR, Proto, Reply, exchange, h2_raw_frames,
    h2_request, send,
};
use nodeward_testkit::{AuditCapture, AuditFlush, EchoUpstream, StaticFiles, TestAgent, TestIdp, metric};
use serde_json::{Value, json};

const SECRET: &str = "TOP-SECRET: only group admins may read this\n";
const INTERNAL: &str = "INTERNAL: never served through nodeward\n";
const HELLO: &str = "hello from /public\n";

/// The contract-style rules, plus a POST-only rule and a GET-only anonymous
/// one for the method checks.
const RULES: &str = r#"    rules:
      - {name: public, paths: ["/public/**"], allow: anonymous}
      - name: admin
        paths: ["/admin/**"]
        require: {claims: {groups: {any_of: [admins]}}}
      - {name: internal, paths: ["/internal/**"], deny: true}
      - name: writes
        paths: ["/orders/**"]
        methods: [POST]
        require: {claims: {groups: {any_of: [writers]}}}
      - {name: docs, paths: ["/docs/**"], methods: [GET], allow: anonymous}
      - {name: default, require: {providers: [corp]}}
"#;

/// Four workloads: `files` (the static server), and three views of the echo
/// upstream: `echo` (defaults, plain claim headers), `echo-json` (JSON claim
/// headers), `echo-forward` (`forward_token: true`).
fn config(issuer: &str, files: SocketAddr, echo: SocketAddr) -> String {
    let policy = |name: &str, extra: &str| format!("  - name: {name}\n    selector: {{app: {name}}}\n{RULES}{extra}");
    let policies = [
        policy("files", "    forward_claims: {x-user-email: email}\n"),
        policy(
            "echo",
            "    forward_claims: {x-user-email: email, x-groups: groups, x-name: name}\n",
        ),
        policy(
            "echo-json",
            "    forward_claims:\n      x-groups: {claim: groups, encoding: json}\n      x-name: {claim: name, encoding: json}\n",
        ),
        policy("echo-forward", "    forward_token: true\n"),
    ]
    .concat();
    // One loopback address each: two workloads cannot both listen on 127.0.0.1:0.
    let workload = |n: u8, name: &str, upstream: SocketAddr| {
        format!("  - {{name: {name}, labels: {{app: {name}}}, listen: 127.0.0.{n}:0, upstream: {upstream}}}\n")
    };
    let workloads = [
        workload(1, "files", files),
        workload(2, "echo", echo),
        workload(3, "echo-json", echo),
        workload(4, "echo-forward", echo),
    ]
    .concat();
    format!(
        r#"admin: 127.0.0.1:0
providers:
  - name: corp
    issuer: {issuer}
    audiences: [orders]
    token_from:
      - {{header: authorization, prefix: Bearer}}
      - {{cookie: session}}
      - {{query: access_token}}
policies:
{policies}workloads:
{workloads}"#
    )
}

struct Env {
    idp: TestIdp,
    _files: StaticFiles,
    _echo: EchoUpstream,
    agent: TestAgent,
    audit: AuditCapture,
    _flush: AuditFlush,
    yaml: String,
}

async fn env() -> Env {
    let idp = TestIdp::start().await;
    let files = StaticFiles::start(&[
        ("admin/secret.txt", SECRET),
        ("internal/keys.txt", INTERNAL),
        ("public/hello.txt", HELLO),
    ]);
    let echo = EchoUpstream::start().await;
    let yaml = config(&idp.issuer(), files.addr, echo.addr);
    let audit = AuditCapture::default();
    let (sink, flush) = audit.audit();
    let agent = TestAgent::start_with(&yaml, tempfile::tempdir().expect("tempdir"), sink).await;
    agent.wait_ready().await;
    Env {
        idp,
        _files: files,
        _echo: echo,
        agent,
        audit,
        _flush: flush,
        yaml,
    }
}

impl Env {
    fn addr(&self, workload: &str) -> SocketAddr {
        self.agent.agent.workload_addr(workload).expect("listening")
    }

    fn token(&self, sub: &str, groups: &[&str]) -> String {
        self.idp
            .token(json!({"aud": "orders", "sub": sub, "email": format!("{sub}@example.com"), "groups": groups}))
    }
}

/// What one request must get.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    /// Refused by nodeward: status, reason, rule.
    Refused(u16, String, Option<String>),
    /// Forwarded; the upstream answered 200 with exactly this body.
    Served(String),
    /// Forwarded; the upstream answered this (error) status.
    Upstream(u16),
}

fn refused(status: u16, reason: &str, rule: Option<&str>) -> Want {
    Want::Refused(status, reason.to_string(), rule.map(String::from))
}

fn served(body: &str) -> Want {
    Want::Served(body.to_string())
}

fn got(r: &Reply) -> Want {
    match r.refusal() {
        Some((status, reason, rule)) => Want::Refused(status, reason, rule),
        None if r.status == 200 => Want::Served(r.body.clone()),
        None => Want::Upstream(r.status),
    }
}

/// Where a spelling lands once normalised.
#[derive(Debug, Clone)]
enum Lands {
    /// `/admin/secret.txt`: judged by the admin rule.
    Admin,
    /// Refused before any rule: 400 `invalid_path`.
    Invalid,
    /// `/internal/keys.txt`: the deny rule.
    Internal,
    /// Explicit outcomes for no token, a user token, an admin token.
    Exactly([Want; 3]),
}

impl Lands {
    fn want(&self, who: usize) -> Want {
        match self {
            Self::Admin => [
                refused(401, "missing_token", Some("admin")),
                refused(403, "claim_mismatch", Some("admin")),
                served(SECRET),
            ][who]
                .clone(),
            Self::Invalid => refused(400, "invalid_path", None),
            Self::Internal => refused(403, "rule_denies", Some("internal")),
            Self::Exactly(w) => w[who].clone(),
        }
    }
}

/// Every spelling of issue 10 (and neighbours), with where it must land.
fn spellings() -> Vec<(String, Lands)> {
    use Lands::*;
    let not_found = || Want::Upstream(404);
    let hello = || served(HELLO);
    let table = vec![
        // The plain paths, as controls.
        ("/admin/secret.txt", Admin),
        ("/internal/keys.txt", Internal),
        ("/public/hello.txt", Exactly([hello(), hello(), hello()])),
        // Dot segments, literal and encoded: resolved, then judged as /admin.
        ("/public/../admin/secret.txt", Admin),
        ("/public/%2e%2e/admin/secret.txt", Admin),
        ("/public/%2E%2E/admin/secret.txt", Admin),
        ("/public/.%2e/admin/secret.txt", Admin),
        ("/public/%2e./admin/secret.txt", Admin),
        ("/public/../../admin/secret.txt", Admin),
        ("/x/../admin/secret.txt", Admin),
        ("/./admin/secret.txt", Admin),
        ("/admin/./secret.txt", Admin),
        ("/public/%2e/../admin/secret.txt", Admin),
        // Merged slashes, decoded unreserved characters.
        ("//admin/secret.txt", Admin),
        ("/admin//secret.txt", Admin),
        ("///public/..//admin/secret.txt", Admin),
        ("/%61dmin/secret.txt", Admin),
        ("/%61%64%6D%69%6E/secret%2Etxt", Admin),
        // A fragment never reaches anyone.
        ("/admin/secret.txt#top", Admin),
        // Deny rules hold the same way.
        ("/public/../internal/keys.txt", Internal),
        ("/public/%2e%2e/internal/keys.txt", Internal),
        ("//internal/keys.txt", Internal),
        // What servers read differently: refused by default.
        ("/public/..%2Fadmin/secret.txt", Invalid),
        ("/public/..%2fadmin/secret.txt", Invalid),
        ("/public/%2e%2e%2Fadmin/secret.txt", Invalid),
        ("/admin%2Fsecret.txt", Invalid),
        ("/admin;jsessionid=1/secret.txt", Invalid),
        ("/admin/secret.txt;x=1", Invalid),
        ("/public/..;/admin/secret.txt", Invalid),
        ("/public/..%3B/admin/secret.txt", Invalid),
        ("/admin\\secret.txt", Invalid),
        ("/public\\..\\admin\\secret.txt", Invalid),
        ("/public/..%5Cadmin/secret.txt", Invalid),
        ("/admin/secret.txt%00", Invalid),
        ("/admin/secret.txt%00.html", Invalid),
        ("/admin%zz/secret.txt", Invalid),
        ("/admin/secret.txt%", Invalid),
        // Double encoding decodes once: a public path to the rules and,
        // decoded once by the file server, still no file.
        (
            "/public/%252e%252e/admin/secret.txt",
            Exactly([not_found(), not_found(), not_found()]),
        ),
        // Case-sensitive by default, like the file server.
        (
            "/ADMIN/secret.txt",
            Exactly([refused(401, "missing_token", Some("default")), not_found(), not_found()]),
        ),
    ];
    table.into_iter().map(|(t, l)| (t.to_string(), l)).collect()
}

async fn attack_spellings(proto: Proto) {
    let e = env().await;
    let addr = e.addr("files");
    let user = e.token("bob", &["dev"]);
    let admin = e.token("root", &["admins"]);
    let mut spellings = spellings();
    if proto == Proto::H1 {
        // Absolute-form request targets exist only in HTTP/1.1.
        let host = format!("http://{addr}");
        for (path, lands) in [
            ("/admin/secret.txt", Lands::Admin),
            ("/public/../admin/secret.txt", Lands::Admin),
            ("/public/..%2Fadmin/secret.txt", Lands::Invalid),
        ] {
            spellings.push((format!("{host}{path}"), lands));
        }
    }
    let mut wrong = Vec::new();
    for (target, lands) in spellings {
        for (who, token) in [None, Some(&user), Some(&admin)].into_iter().enumerate() {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let r = send(proto, addr, "GET", &target, &headers).await;
            let want = lands.want(who);
            let leaked = r.body.contains(SECRET) || r.body.contains(INTERNAL);
            if got(&r) != want || (leaked && want != served(SECRET)) {
                wrong.push(format!(
                    "{target} as {}: want {want:?}, got {r:?}",
                    ["anonymous", "user", "admin"][who]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{proto:?}: {} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn attack_spellings_never_reach_the_secret_over_http1() {
    attack_spellings(Proto::H1).await;
}

#[tokio::test]
async fn attack_spellings_never_reach_the_secret_over_h2c() {
    attack_spellings(Proto::H2).await;
}

/// The upstream gets the normalised path (escapes of reserved characters
/// kept, upper-case; unreserved ones decoded) and the query byte for byte,
/// whatever it holds.
#[tokio::test]
async fn the_upstream_gets_the_normalised_path_and_the_query_byte_for_byte() {
    let e = env().await;
    let addr = e.addr("echo");
    let auth = format!("Bearer {}", e.token("bob", &["dev"]));
    let query = "q=%2F..%2e&&a=1;b=2&c=%zz&d=a+b&e=%E2%82%AC&/../=x?y";
    let cases = [
        ("/orders/./a/%7Ex/..//b%3a", "/orders/a/b%3A"),
        ("/orders/%61/caf%c3%a9/", "/orders/a/caf%C3%A9/"),
        ("//orders/../orders/x/%2e", "/orders/x/"),
        ("/orders/a%20b/%25", "/orders/a%20b/%25"),
    ];
    for proto in BOTH {
        for (path, forwarded) in cases {
            let r = send(
                proto,
                addr,
                "GET",
                &format!("{path}?{query}"),
                &[("authorization", &auth)],
            )
            .await;
            let echo = r.echoed();
            assert_eq!(echo["path"], forwarded, "{proto:?} {path}");
            assert_eq!(
                echo["query"], query,
                "{proto:?} {path}: the query is forwarded byte for byte"
            );
        }
        let r = send(proto, addr, "GET", "/orders/x", &[("authorization", &auth)]).await;
        assert_eq!(r.echoed()["query"], Value::Null, "{proto:?}: no query stays no query");
        let r = send(proto, addr, "GET", "/orders/x?", &[("authorization", &auth)]).await;
        assert_eq!(r.echoed()["path"], "/orders/x", "{proto:?}");
    }
    // Absolute-form (RFC 9112 §3.2.2), as a client talking to a proxy
    // sends it: the upstream still gets an origin-form path and the query,
    // also when the URI has no path at all.
    for (target, path, query) in [
        (
            format!("http://{addr}/orders/x?{query}"),
            "/orders/x",
            Value::from(query),
        ),
        (format!("http://{addr}?{query}"), "/", Value::from(query)),
        (format!("http://{addr}"), "/", Value::Null),
    ] {
        let head =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
        let raw = exchange(addr, head.as_bytes(), Duration::from_secs(10)).await;
        let r = Http1Response::parse(&raw).unwrap_or_else(|| panic!("{target}: no response {raw:?}"));
        let echo: Value = r.json();
        assert_eq!(
            (r.status, &echo["path"], &echo["query"]),
            (200, &Value::from(path), &query),
            "{target}: {raw}"
        );
    }
}

/// Standard methods in another case are refused (a rule listing POST must
/// not be skipped by `post`, and the upstream may still run its POST
/// handler); a rule listing GET covers HEAD, as frameworks answer HEAD with
/// the GET handler.
#[tokio::test]
async fn methods_in_another_case_are_refused_and_a_get_rule_covers_head() {
    let e = env().await;
    let addr = e.addr("echo");
    let user = format!("Bearer {}", e.token("bob", &["dev"]));
    let writer = format!("Bearer {}", e.token("wendy", &["writers"]));
    let invalid = || Some(refused(400, "invalid_method", None));
    let no_token = || Some(refused(401, "missing_token", Some("default")));
    for proto in BOTH {
        // `None`: forwarded, and the upstream saw this very method.
        let cases: Vec<(&str, &str, Option<&str>, Option<Want>)> = vec![
            ("post", "/orders/1", Some(&writer), invalid()),
            ("Post", "/orders/1", Some(&writer), invalid()),
            ("pOST", "/orders/1", Some(&user), invalid()),
            ("get", "/docs/x", None, invalid()),
            ("delete", "/orders/1", Some(&writer), invalid()),
            (
                "POST",
                "/orders/1",
                Some(&user),
                Some(refused(403, "claim_mismatch", Some("writes"))),
            ),
            ("GET", "/docs/x", None, None),
            ("HEAD", "/docs/x", None, None),
            ("POST", "/docs/x", None, no_token()),
            ("OPTIONS", "/docs/x", None, no_token()),
            // Extension methods are case-sensitive (RFC 9110 §9.1): no rule
            // lists them, so the default rule judges both spellings.
            ("PURGE", "/docs/x", None, no_token()),
            ("purge", "/docs/x", None, no_token()),
        ];
        for (method, path, auth, want) in cases {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let r = send(proto, addr, method, path, &headers).await;
            match want {
                None if method == "HEAD" => {
                    assert_eq!((r.status, r.refusal()), (200, None), "{proto:?} {method} {path}: {r:?}");
                }
                None => assert_eq!(r.echoed()["method"], method, "{proto:?} {method} {path}"),
                Some(want) => assert_eq!(got(&r), want, "{proto:?} {method} {path}: {r:?}"),
            }
        }
        // A writer's POST goes through as POST.
        let r = send(proto, addr, "POST", "/orders/1", &[("authorization", &writer)]).await;
        assert_eq!(r.echoed()["method"], "POST", "{proto:?}");
    }
}

/// Hop-by-hop removal happens first, so a `Connection` header can remove
/// only what the client itself sent: never the identity nodeward adds, and
/// naming a header that routes or frames the request is refused.
#[tokio::test]
async fn a_connection_header_cannot_remove_identity_or_reroute_over_http1() {
    let e = env().await;
    let addr = e.addr("echo");
    let auth = format!("Bearer {}", e.token("bob", &["dev"]));
    let r = send(
        Proto::H1,
        addr,
        "GET",
        "/orders/1",
        &[
            ("authorization", &auth),
            (
                "Connection",
                "x-nodeward-sub, x-nodeward-iss, x-user-email, x-groups, x-forwarded-for",
            ),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    let h = &r.echoed()["headers"];
    assert_eq!(h["x-nodeward-sub"], json!(["bob"]), "{h}");
    assert_eq!(h["x-nodeward-iss"], json!([e.idp.issuer()]), "{h}");
    assert_eq!(h["x-user-email"], json!(["bob@example.com"]), "{h}");
    assert_eq!(h["x-groups"], json!(["dev"]), "{h}");
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]), "{h}");

    // A token the client itself declared hop-by-hop is gone before anything reads it.
    let r = send(
        Proto::H1,
        addr,
        "GET",
        "/orders/1",
        &[("authorization", &auth), ("Connection", "authorization")],
    )
    .await;
    assert_eq!(got(&r), refused(401, "missing_token", Some("default")), "{r:?}");

    for listed in ["host", "Host", "content-length", "x-a, HOST"] {
        let r = send(
            Proto::H1,
            addr,
            "GET",
            "/orders/1",
            &[("authorization", &auth), ("Connection", listed)],
        )
        .await;
        assert_eq!(
            got(&r),
            refused(400, "invalid_header", None),
            "Connection: {listed}: {r:?}"
        );
    }
}

/// HTTP/2 has no `Connection` header (RFC 9113 §8.2.2): a request carrying
/// one is malformed and reset by the agent's h2 layer before any service
/// sees it. The h2 library refuses to send one, so it goes as raw frames.
#[tokio::test]
async fn a_connection_header_over_h2c_is_a_protocol_error() {
    let e = env().await;
    let addr = e.addr("echo");
    let requests = |m: &str| {
        metric(
            m,
            "nodeward_requests_total{decision=\"allow\",reason=\"anonymous\",workload=\"echo\"}",
        )
    };
    let before = requests(&e.agent.metrics().await);
    // Control: the same frames without `connection` are answered (HEADERS).
    assert_eq!(h2_raw_frames(addr, "/docs/x", &[]).await, (FRAME_HEADERS, 0));
    let frame = h2_raw_frames(addr, "/docs/x", &[("connection", "x-nodeward-sub")]).await;
    assert_eq!(frame, (FRAME_RST_STREAM, PROTOCOL_ERROR), "the stream is reset");
    let after = requests(&e.agent.metrics().await);
    assert_eq!(
        after.unwrap_or(0.0),
        before.unwrap_or(0.0) + 1.0,
        "only the control request reached the proxy"
    );
}

/// From an untrusted peer, `X-Forwarded-*`, `X-Real-IP` and `Forwarded`
/// are replaced by what nodeward saw; from a peer in `trusted_proxies` they
/// are kept and nodeward's hop is appended.
#[tokio::test]
async fn forwarding_headers_are_replaced_unless_the_peer_is_a_trusted_proxy() {
    let e = env().await;
    let forged = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7;proto=https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
    ];
    let check_replaced = |h: &Value, why: &str| {
        assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]), "{why}: {h}");
        for name in ["x-real-ip", "forwarded", "x-forwarded-host", "x-forwarded-proto"] {
            assert!(h.get(name).is_none(), "{why}: {name} reached the upstream: {h}");
        }
    };
    for proto in BOTH {
        let r = send(proto, e.addr("echo"), "GET", "/docs/x", &forged).await;
        check_replaced(&r.echoed()["headers"], &format!("{proto:?}, no trusted proxies"));
    }
    // Loopback is the trusted load balancer now.
    let yaml = e.yaml.replace(
        "admin: 127.0.0.1:0\n",
        "admin: 127.0.0.1:0\ntrusted_proxies: [127.0.0.1/32]\n",
    );
    e.agent
        .agent
        .apply(TestAgent::config(&yaml, e.agent.state_dir.path()))
        .await
        .expect("apply");
    for proto in BOTH {
        let r = send(proto, e.addr("echo"), "GET", "/docs/x", &forged).await;
        let h = &r.echoed()["headers"];
        assert_eq!(
            h["x-forwarded-for"],
            json!(["203.0.113.7", "127.0.0.1"]),
            "{proto:?}: {h}"
        );
        assert_eq!(h["x-real-ip"], json!(["203.0.113.7"]), "{proto:?}: {h}");
        assert_eq!(h["forwarded"], json!(["for=203.0.113.7;proto=https"]), "{proto:?}: {h}");
        assert_eq!(h["x-forwarded-host"], json!(["evil.example"]), "{proto:?}: {h}");
    }
    // A trusted range that does not hold the peer trusts nobody here.
    let yaml = e.yaml.replace(
        "admin: 127.0.0.1:0\n",
        "admin: 127.0.0.1:0\ntrusted_proxies: [10.0.0.0/8]\n",
    );
    e.agent
        .agent
        .apply(TestAgent::config(&yaml, e.agent.state_dir.path()))
        .await
        .expect("apply");
    for proto in BOTH {
        let r = send(proto, e.addr("echo"), "GET", "/docs/x", &forged).await;
        check_replaced(&r.echoed()["headers"], &format!("{proto:?}, 10.0.0.0/8 trusted"));
    }
}

/// Claims become headers in an encoding that cannot be misread: plain text
/// refuses what it cannot carry faithfully (a comma inside an array
/// element, CR/LF, non-ASCII) with 403 `claim_not_forwardable`, instead of
/// forwarding something else; `encoding: json` carries any value.
#[tokio::test]
async fn claim_headers_are_unambiguous_or_the_request_is_refused() {
    let e = env().await;
    let mint = |groups: Value, name: &str| {
        format!(
            "Bearer {}",
            e.idp
                .token(json!({"aud": "orders", "sub": "carol", "groups": groups, "name": name}))
        )
    };
    let comma = mint(json!(["viewers,admins"]), "Carol");
    let two = mint(json!(["viewers", "admins"]), "Carol");
    let crlf = mint(json!(["viewers"]), "Carol\r\nx-nodeward-sub: root");
    let accent = mint(json!(["viewers"]), "Zoë");
    let unforwardable = refused(403, "claim_not_forwardable", Some("default"));
    for proto in BOTH {
        let plain = |auth: &str| {
            let auth = auth.to_string();
            let addr = e.addr("echo");
            async move { send(proto, addr, "GET", "/orders/1", &[("authorization", &auth)]).await }
        };
        let r = plain(&two).await;
        let h = &r.echoed()["headers"];
        assert_eq!(
            (&h["x-groups"], &h["x-name"]),
            (&json!(["viewers,admins"]), &json!(["Carol"])),
            "{proto:?}"
        );
        for (what, auth) in [("comma", &comma), ("CR/LF", &crlf), ("non-ASCII", &accent)] {
            let r = plain(auth).await;
            assert_eq!(got(&r), unforwardable, "{proto:?} plain {what}: {r:?}");
            assert!(
                r.json()["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("encoding: json")),
                "{r:?}"
            );
            assert_eq!(r.json()["sub"], "carol", "{proto:?}: the refusal names the caller");
        }

        let json_view = |auth: &str| {
            let auth = auth.to_string();
            let addr = e.addr("echo-json");
            async move {
                send(proto, addr, "GET", "/orders/1", &[("authorization", &auth)])
                    .await
                    .echoed()
            }
        };
        let h = json_view(&comma).await["headers"].clone();
        assert_eq!(h["x-groups"], json!([r#"["viewers,admins"]"#]), "{proto:?}");
        let h = json_view(&two).await["headers"].clone();
        assert_eq!(h["x-groups"], json!([r#"["viewers","admins"]"#]), "{proto:?}");
        let h = json_view(&crlf).await["headers"].clone();
        assert_eq!(h["x-name"], json!([r#""Carol\r\nx-nodeward-sub: root""#]), "{proto:?}");
        assert_eq!(
            h["x-nodeward-sub"],
            json!(["carol"]),
            "{proto:?}: no header was injected"
        );
        let h = json_view(&accent).await["headers"].clone();
        assert_eq!(h["x-name"], json!([r#""Zo\u00eb""#]), "{proto:?}");
    }
}

/// Asterisk-form and CONNECT are not requests for a resource: refused 501,
/// never forwarded as if they were.
#[tokio::test]
async fn connect_and_asterisk_requests_are_refused() {
    let e = env().await;
    let addr = e.addr("echo");
    let unsupported = (501, Some("unsupported_request".to_string()));
    for head in [
        "OPTIONS * HTTP/1.1\r\nHost: nodeward.test\r\nConnection: close\r\n\r\n",
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
        "CONNECT nodeward.test:443 HTTP/1.1\r\nHost: nodeward.test:443\r\nConnection: close\r\n\r\n",
    ] {
        let raw = exchange(addr, head.as_bytes(), Duration::from_secs(10)).await;
        let r = Http1Response::parse(&raw).unwrap_or_else(|| panic!("{head:?}: no response {raw:?}"));
        assert_eq!(
            (r.status, r.json()["reason"].as_str().map(String::from)),
            unsupported,
            "{head:?}: {raw}"
        );
    }
    let authority: http::uri::Authority = addr.to_string().parse().expect("authority");
    let asterisk = http::Uri::from_parts({
        let mut p = http::uri::Parts::default();
        p.scheme = Some(http::uri::Scheme::HTTP);
        p.authority = Some(authority.clone());
        p.path_and_query = Some(http::uri::PathAndQuery::from_static("*"));
        p
    })
    .expect("uri");
    for (method, uri) in [
        (http::Method::OPTIONS, asterisk),
        (http::Method::CONNECT, http::Uri::from(authority)),
    ] {
        let (status, body) = h2_request(addr, method.clone(), uri).await;
        assert_eq!(
            (status, body["reason"].as_str().map(String::from)),
            unsupported,
            "h2 {method}: {body}"
        );
    }
}

/// Cookie and query token sources verify like the header, and every token
/// source is removed before forwarding: the upstream gets the identity
/// headers, not a token it could replay. Query tokens never reach an audit
/// line (the audit path has no query).
#[tokio::test]
async fn cookie_and_query_tokens_are_accepted_and_stripped_before_forwarding() {
    let e = env().await;
    let addr = e.addr("echo");
    let token = e.token("dave", &["dev"]);
    for proto in BOTH {
        let cookie = format!("theme=dark; session={token}; lang=en");
        let r = send(proto, addr, "GET", "/orders/c", &[("cookie", &cookie)]).await;
        let h = &r.echoed()["headers"];
        assert_eq!(h["x-nodeward-sub"], json!(["dave"]), "{proto:?}: {h}");
        assert_eq!(h["cookie"], json!(["theme=dark; lang=en"]), "{proto:?}: {h}");

        let target = format!("/orders/q?a=1&access_token={token}&b=%2F");
        let echo = send(proto, addr, "GET", &target, &[]).await.echoed();
        assert_eq!(echo["headers"]["x-nodeward-sub"], json!(["dave"]), "{proto:?}");
        assert_eq!(
            (&echo["path"], &echo["query"]),
            (&json!("/orders/q"), &json!("a=1&b=%2F")),
            "{proto:?}"
        );
        let echo = send(proto, addr, "GET", &format!("/orders/q?access_token={token}"), &[])
            .await
            .echoed();
        assert_eq!(echo["query"], Value::Null, "{proto:?}: nothing left, no `?`");

        // The Authorization header is not forwarded by default either.
        let auth = format!("Bearer {token}");
        let h = send(proto, addr, "GET", "/orders/h", &[("authorization", &auth)])
            .await
            .echoed()["headers"]
            .clone();
        assert!(h.get("authorization").is_none(), "{proto:?}: {h}");
        assert_eq!(h["x-nodeward-sub"], json!(["dave"]), "{proto:?}");

        // A bad token in a cookie is judged (and refused) like any other.
        let r = send(proto, addr, "GET", "/orders/c", &[("cookie", "session=not-a-jwt")]).await;
        assert_eq!(got(&r), refused(401, "malformed_token", Some("default")), "{proto:?}");
        // A path refused before any rule: still no query in the audit line.
        let r = send(proto, addr, "GET", &format!("/orders/%2F?access_token={token}"), &[]).await;
        assert_eq!(got(&r), refused(400, "invalid_path", None), "{proto:?}");
    }
    let lines = e.audit.lines(12).await;
    assert_eq!(lines.len(), 12, "one audit line per request: {lines:?}");
    let text = e.audit.text();
    let signature = token.rsplit('.').next().expect("signature");
    assert!(
        !text.contains(signature) && !text.contains("access_token"),
        "a query token reached the audit log: {text}"
    );
    assert!(
        lines.iter().any(|l| l["path"] == "/orders/q" && l["sub"] == "dave"),
        "{lines:?}"
    );
}

/// `forward_token: true` forwards the verified token, as the client sent
/// it, from the source it was read from; an unverified token is never
/// forwarded, not even on an anonymous route, and other sources are still
/// stripped.
#[tokio::test]
async fn only_a_verified_token_is_forwarded_and_only_when_the_policy_says_so() {
    let e = env().await;
    let addr = e.addr("echo-forward");
    let token = e.token("erin", &["dev"]);
    let other = e.token("mallory", &["dev"]);
    let auth = format!("Bearer {token}");
    for proto in BOTH {
        // Verified, on an authenticated and on an anonymous route.
        for path in ["/orders/1", "/docs/x"] {
            let h = send(proto, addr, "GET", path, &[("authorization", &auth)])
                .await
                .echoed()["headers"]
                .clone();
            assert_eq!(h["authorization"], json!([auth.clone()]), "{proto:?} {path}: {h}");
            assert_eq!(h["x-nodeward-sub"], json!(["erin"]), "{proto:?} {path}");
        }
        // Unverified on an anonymous route: forwarded request, no token.
        for bad in ["Bearer not-a-jwt", "Bearer eyJhbGciOiJub25lIn0.e30."] {
            let h = send(proto, addr, "GET", "/docs/x", &[("authorization", bad)])
                .await
                .echoed()["headers"]
                .clone();
            assert!(h.get("authorization").is_none(), "{proto:?} {bad}: {h}");
            assert!(h.get("x-nodeward-sub").is_none(), "{proto:?}: {h}");
        }
        // The verified header is kept; a second token in a cookie is not.
        let cookie = format!("session={other}; theme=dark");
        let h = send(
            proto,
            addr,
            "GET",
            "/orders/1",
            &[("authorization", &auth), ("cookie", &cookie)],
        )
        .await
        .echoed()["headers"]
            .clone();
        assert_eq!(h["authorization"], json!([auth.clone()]), "{proto:?}: {h}");
        assert_eq!(h["cookie"], json!(["theme=dark"]), "{proto:?}: {h}");
        // A query token, verified, stays in the query it came in.
        let echo = send(proto, addr, "GET", &format!("/orders/q?x=1&access_token={token}"), &[])
            .await
            .echoed();
        assert_eq!(echo["query"], format!("x=1&access_token={token}"), "{proto:?}");
    }
    // The default policy (echo) never forwards it.
    for proto in BOTH {
        let h = send(proto, e.addr("echo"), "GET", "/docs/x", &[("authorization", &auth)])
            .await
            .echoed()["headers"]
            .clone();
        assert!(h.get("authorization").is_none(), "{proto:?}: {h}");
    }
}
