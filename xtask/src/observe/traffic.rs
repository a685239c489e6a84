//! The live run's traffic, of the demo's kind, in phases so that every panel
//! has something to show and the alerts something to react to:
//!
//! - always: allowed requests (cached tokens of three users), an admin
//!   allowed and one refused (403), anonymous `/healthz`, no token, a
//!   malformed, an expired, a wrong-audience and a foreign-issuer token
//!   (401s), an audit-mode denial, requests to `billing` whose app is down
//!   (502), fresh tokens (cache misses), and, as root, the steered pods (one
//!   allowed, one deny-all 403; a new connection each, as the program counts
//!   connections) and the allowed pod calling its own address (which the
//!   program passes to the app, no decision);
//! - 30–70 % of the run: a flood of tokens with random kids (on-demand
//!   refetches, most refused by the cooldown);
//! - 40–70 %: the IdP answers 503 (the refetches fail; held keys still verify);
//! - at 50 %: a broken configuration file (rejected), restored at 55 %;
//! - 70–100 %: twice the allowed traffic.
//!
//! Every request has a known expected status; any other is a wrong decision
//! and fails the run, since metrics of a broken agent prove nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use nodeward_dev_idp::MintRequest;
use serde_json::{Value, json};

use super::env::Env;

const TICK: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Allowed,
    AdminAllowed,
    AdminDenied,
    Anonymous,
    NoToken,
    Malformed,
    Expired,
    WrongAudience,
    UnknownIssuer,
    AuditDenied,
    UpstreamDown,
    FreshToken,
    RandomKid,
    Steered,
    SteeredDenyAll,
    /// From inside the pod to its own address: passed by the program, straight to the app.
    PodSelf,
}

impl Kind {
    fn expected(self) -> u16 {
        match self {
            Kind::Allowed
            | Kind::AdminAllowed
            | Kind::Anonymous
            | Kind::AuditDenied
            | Kind::FreshToken
            | Kind::Steered
            | Kind::PodSelf => 200,
            Kind::AdminDenied | Kind::SteeredDenyAll => 403,
            Kind::UpstreamDown => 502,
            _ => 401,
        }
    }
}

pub struct Report {
    /// Unix seconds: when the traffic started and stopped.
    pub start: f64,
    pub end: f64,
    pub by_kind: BTreeMap<String, (u64, u64)>,
    pub wrong: Vec<String>,
}

impl Report {
    pub fn sent(&self) -> u64 {
        self.by_kind.values().map(|(ok, bad)| ok + bad).sum()
    }

    fn count(&self, kind: Kind) -> u64 {
        self.by_kind.get(&format!("{kind:?}")).map_or(0, |(ok, bad)| ok + bad)
    }

    /// Requests the agent decided on (the pod's calls to itself bypass it).
    pub fn decisions(&self) -> u64 {
        self.sent() - self.count(Kind::PodSelf)
    }

    /// New connections to the steered pods' protected port: steered, and passed.
    pub fn steered_connections(&self) -> (u64, u64) {
        (
            self.count(Kind::Steered) + self.count(Kind::SteeredDenyAll),
            self.count(Kind::PodSelf),
        )
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

struct Tokens {
    users: Vec<String>,
    bob: String,
    alice: String,
    expired: String,
    wrong_audience: String,
    foreign: String,
}

impl Tokens {
    fn mint(env: &Env) -> Self {
        let user = |sub: &str, groups: Value| {
            env.idp
                .token(json!({"aud": "orders", "sub": sub, "email": format!("{sub}@example.com"), "groups": groups}))
        };
        let alice = user("alice", json!(["developers"]));
        let bob = user("bob", json!(["admins"]));
        let carol = user("carol", json!(["finance"]));
        let past = now() as u64 - 7200;
        Self {
            users: vec![alice.clone(), bob.clone(), carol],
            bob,
            expired: env
                .idp
                .token(json!({"aud": "orders", "sub": "alice", "iat": past, "exp": past + 3600})),
            wrong_audience: env.idp.token(json!({"aud": "billing", "sub": "alice"})),
            foreign: env.stranger.token(json!({"aud": "orders", "sub": "mallory"})),
            alice,
        }
    }
}

/// One request to send: where, with which token, what it should get.
struct Request {
    kind: Kind,
    method: http::Method,
    url: String,
    token: Option<String>,
}

pub async fn drive(env: &mut Env, duration: Duration) -> anyhow::Result<Report> {
    let http = nodeward_testkit::client();
    // The program counts connections: one per request to the steered pods.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .context("an HTTP client")?;
    let tokens = Tokens::mint(env);
    let mut report = Report {
        start: now(),
        end: 0.0,
        by_kind: BTreeMap::new(),
        wrong: Vec::new(),
    };
    let began = Instant::now();
    let (mut failing, mut broke, mut restored) = (false, false, false);
    let mut tick = 0u64;
    while began.elapsed() < duration {
        env.check_running()?;
        let f = began.elapsed().as_secs_f64() / duration.as_secs_f64();
        let idp_down = (0.4..0.7).contains(&f);
        if idp_down != failing {
            env.idp.idp.set_failure(idp_down.then_some(503));
            failing = idp_down;
        }
        if f >= 0.5 && !broke {
            // An unknown key: the agent must refuse the file and keep serving.
            let bad = env.config.replacen("providers:", "providerz:", 1);
            std::fs::write(&env.config_path, bad).context("writing the broken config")?;
            broke = true;
        }
        if f >= 0.55 && !restored {
            std::fs::write(&env.config_path, &env.config).context("restoring the config")?;
            restored = true;
        }
        let batch = batch(env, &tokens, tick, f)?;
        let mut tasks = tokio::task::JoinSet::new();
        for r in batch {
            let http = if matches!(r.kind, Kind::Steered | Kind::SteeredDenyAll) {
                fresh.clone()
            } else {
                http.clone()
            };
            let own = env.steered.as_ref().map(|s| (s.orders_netns.clone(), s.orders_addr));
            tasks.spawn(async move {
                if r.kind == Kind::PodSelf {
                    let got = match own {
                        Some((netns, addr)) => pod_self(&netns, addr).await,
                        None => (0, "no steered pod".into()),
                    };
                    return (r, got);
                }
                let mut req = http.request(r.method.clone(), &r.url);
                if let Some(t) = &r.token {
                    req = req.bearer_auth(t);
                }
                let got = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.text().await.unwrap_or_default();
                        (status, body)
                    }
                    Err(e) => (0, e.to_string()),
                };
                (r, got)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (r, (status, body)) = done.context("a request task panicked")?;
            let entry = report.by_kind.entry(format!("{:?}", r.kind)).or_default();
            if status == r.kind.expected() {
                entry.0 += 1;
            } else {
                entry.1 += 1;
                if report.wrong.len() < 10 {
                    let body: String = body.chars().take(200).collect();
                    report.wrong.push(format!(
                        "{:?} {} {}: expected {}, got {status} {body}",
                        r.kind,
                        r.method,
                        r.url,
                        r.kind.expected()
                    ));
                }
            }
        }
        tick += 1;
        // A fixed cadence, whatever the batch took.
        let next = TICK * u32::try_from(tick).unwrap_or(u32::MAX);
        if let Some(wait) = next.checked_sub(began.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    env.idp.idp.set_failure(None);
    report.end = now();
    Ok(report)
}

/// The requests of one tick at fraction `f` of the run.
fn batch(env: &Env, t: &Tokens, tick: u64, f: f64) -> anyhow::Result<Vec<Request>> {
    use http::Method;
    let mut out = Vec::new();
    let mut add = |kind, method: Method, url: String, token: Option<&str>| {
        out.push(Request {
            kind,
            method,
            url,
            token: token.map(str::to_owned),
        });
    };
    let orders = |path: &str| format!("{}{path}", env.orders_url);
    let allowed = if f >= 0.7 { 8 } else { 4 };
    for i in 0..allowed {
        let token = &t.users[(tick as usize + i) % t.users.len()];
        add(Kind::Allowed, Method::GET, orders("/orders"), Some(token));
    }
    add(Kind::AdminAllowed, Method::POST, orders("/admin/users"), Some(&t.bob));
    add(Kind::AdminDenied, Method::POST, orders("/admin/users"), Some(&t.alice));
    add(Kind::Anonymous, Method::GET, orders("/healthz"), None);
    add(Kind::NoToken, Method::GET, orders("/orders"), None);
    add(Kind::Malformed, Method::GET, orders("/orders"), Some("not-a-jwt"));
    add(Kind::AuditDenied, Method::GET, orders("/audit/report"), Some(&t.alice));
    add(
        Kind::UpstreamDown,
        Method::GET,
        format!("{}/orders", env.billing_url),
        Some(&t.alice),
    );
    if tick.is_multiple_of(5) {
        add(Kind::Expired, Method::GET, orders("/orders"), Some(&t.expired));
        add(
            Kind::WrongAudience,
            Method::GET,
            orders("/orders"),
            Some(&t.wrong_audience),
        );
        add(Kind::UnknownIssuer, Method::GET, orders("/orders"), Some(&t.foreign));
        // A token never seen before: a cache miss and a signature check.
        let fresh = env.idp.token(json!({"aud": "orders", "sub": format!("user-{tick}")}));
        add(Kind::FreshToken, Method::GET, orders("/orders"), Some(&fresh));
    }
    if (0.3..0.7).contains(&f) {
        for i in 0..8 {
            let mut header = serde_json::Map::new();
            header.insert("kid".into(), json!(format!("random-{tick}-{i}")));
            let token = env
                .idp
                .idp
                .mint(&MintRequest {
                    claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
                    header,
                    ..MintRequest::default()
                })
                .context("minting a random-kid token")?;
            add(Kind::RandomKid, Method::GET, orders("/orders"), Some(&token));
        }
    }
    if let Some(s) = &env.steered {
        add(
            Kind::Steered,
            Method::GET,
            format!("{}/orders", s.orders_url),
            Some(&t.alice),
        );
        add(Kind::Steered, Method::GET, format!("{}/healthz", s.orders_url), None);
        add(
            Kind::SteeredDenyAll,
            Method::GET,
            format!("{}/orders", s.ghost_url),
            Some(&t.alice),
        );
        if tick.is_multiple_of(2) {
            add(Kind::PodSelf, Method::GET, String::new(), None);
        }
    }
    Ok(out)
}

/// `GET /` from inside the pod to its own address on the protected port.
async fn pod_self(netns: &std::path::Path, addr: std::net::SocketAddr) -> (u16, String) {
    use nodeward_testkit::netns::{connect_from, get};
    let answer = async {
        let stream = connect_from(netns, None, addr, Duration::from_secs(2)).await?;
        get(stream).await
    };
    match answer.await {
        // The echo app answers with what it received: no identity, nodeward never saw it.
        Ok(body) if body.contains("\"headers\"") && !body.contains("x-nodeward-sub") => (200, body),
        Ok(body) => (0, body),
        Err(e) => (0, e.to_string()),
    }
}
