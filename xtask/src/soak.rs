//! `cargo xtask soak [--duration 10m]`: a bounded soak of one agent process
//! (issue 6, item 5). A dev IdP and an echo upstream run in this process;
//! `nodeward run` (release build) is a child whose RSS is sampled from /proc.
//! Workers drive mixed traffic (valid tokens of several users over HTTP/1.1
//! and h2c, expired, forged, random-kid, wrong-audience and tampered tokens,
//! anonymous routes, denied users) where every request has a known expected
//! status; meanwhile the config file is rewritten (an admin rule that lets
//! group `ops` in, or not) and the IdP rotates its keys with overlap.
//!
//! Checks, each a non-zero exit when violated: zero wrong decisions (a status
//! other than the one expected at that time; requests whose answer depends on
//! a config change in progress accept either answer and are counted apart),
//! zero lost requests (transport errors, and the agent's own decision count
//! must equal the requests answered), reloads and rotations all applied, and
//! flat memory (the last third's highest RSS sample at most 25% + 4 MiB over
//! the first third's).
//!
//! [`train`] drives the same agent, clients and checks with a node's usual
//! mix instead (mostly cached tokens, some cache misses), as fast as it
//! answers: the training run of the shipped PGO build (`cargo xtask dist`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nodeward_dev_idp::{DevIdp, MintRequest};
use nodeward_testkit::{EchoUpstream, TestIdp, metric};
use serde_json::{Value, json};

use crate::proc::{ChildProc, free_ports};

const USAGE: &str = "\
usage: cargo xtask soak [--duration D] [--rate N] [--workers N] [--nodeward BIN]

  --duration D     how long to drive traffic, e.g. 45s, 10m (default 10m)
  --rate N         requests per second offered in total (default 200)
  --workers N      concurrent clients (default 8)
  --nodeward BIN   soak this binary instead of building one (cargo build --release)";

/// Memory is flat when the last third's peak is within this of the first third's.
const RSS_GROWTH_PCT: u64 = 25;
const RSS_SLACK_KIB: u64 = 4 * 1024;
/// A reload or a rotation that takes longer than this to show is a failure.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);
const READY_TIMEOUT: Duration = Duration::from_secs(20);

struct Settings {
    duration: Duration,
    /// Requests per second offered in total; `None`: as fast as answered.
    rate: Option<u64>,
    workers: usize,
    nodeward: Option<PathBuf>,
    /// The classes each worker cycles through, in order.
    schedule: &'static [Class],
    /// `LLVM_PROFILE_FILE` for an instrumented agent ([`train`]).
    profile_file: Option<PathBuf>,
}

impl Settings {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut s = Self {
            duration: Duration::from_secs(600),
            rate: Some(200),
            workers: 8,
            nodeward: None,
            schedule: &Class::ALL,
            profile_file: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
            match a.as_str() {
                "--duration" => {
                    let v = value()?;
                    s.duration = humantime::parse_duration(v).with_context(|| format!("--duration {v:?}"))?;
                }
                "--rate" => s.rate = Some(value()?.parse().context("--rate")?),
                "--workers" => s.workers = value()?.parse().context("--workers")?,
                "--nodeward" => s.nodeward = Some(value()?.into()),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        anyhow::ensure!(s.duration >= Duration::from_secs(10), "--duration must be at least 10s");
        anyhow::ensure!(
            s.rate != Some(0) && s.workers > 0,
            "--rate and --workers must be above zero"
        );
        Ok(s)
    }
}

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let set = Settings::parse(args)?;
    let bin = match &set.nodeward {
        Some(b) => std::path::absolute(b)?,
        None => build_release()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(soak(&bin, &set))?;
    println!("{}", report.table());
    let violations = report.violations();
    if violations.is_empty() {
        println!("soak passed");
        Ok(ExitCode::SUCCESS)
    } else {
        for v in &violations {
            println!("VIOLATION: {v}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// What a node's agent mostly sees, for [`train`]: tokens it has seen
/// before over kept-alive HTTP/1.1 connections, and among them h2c, writes
/// with a body, refusals (403, 401), anonymous routes and cache misses of
/// each key type. No unknown kids: each would cost a JWKS refetch.
const TRAINING: [Class; 24] = {
    use Class::*;
    [
        AliceH1,
        AliceH1,
        BobH2,
        AliceH1,
        AdminPost,
        AliceH1,
        AnonymousHealth,
        AliceH1,
        Fresh,
        AliceH1,
        AliceAdminDenied,
        AliceH1,
        BobH2,
        AliceH1,
        NoToken,
        AliceH1,
        AdminPost,
        AliceH1,
        AuditRoute,
        AliceH1,
        Fresh,
        AliceH1,
        Tampered,
        AnonymousHealth,
    ]
};

/// Drives the agent `bin` with [`TRAINING`]'s mix for `duration` as fast
/// as it answers, with the soak's config reloads and key rotations. An
/// instrumented build writes its profile to `profile_file` (`%p`, `%m`
/// expanded by the LLVM runtime) when it exits. Every answer is checked as
/// in a soak: a build that decides wrongly is neither one to optimise for
/// nor one to ship. Returns the number of requests answered.
pub fn train(bin: &Path, profile_file: Option<&Path>, duration: Duration) -> anyhow::Result<u64> {
    let set = Settings {
        duration,
        rate: None,
        workers: 8,
        nodeward: None,
        schedule: &TRAINING,
        profile_file: profile_file.map(Path::to_owned),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(soak(bin, &set))?;
    println!("{}", report.table());
    // Not the memory check: an instrumented build's is not the shipped one's.
    let violations = report.decisions_violations();
    if !violations.is_empty() {
        bail!("the training run went wrong: {}", violations.join("; "));
    }
    Ok(report.tallies.values().map(|t| t.sent - t.lost).sum())
}

fn build_release() -> anyhow::Result<PathBuf> {
    crate::bench::env::build_release("nodeward")
}

// === the agent under soak ===

/// The contract's example config on fixed ports, with the admin rule either
/// for `admins` only or for `admins` and `ops` (the reloaded difference).
fn config(issuer: &str, upstream: SocketAddr, admin: u16, listen: u16, ops_admin: bool) -> String {
    let groups = if ops_admin { "[admins, ops]" } else { "[admins]" };
    nodeward_testkit::example_config(issuer, upstream)
        .replace("admin: 127.0.0.1:0", &format!("admin: 127.0.0.1:{admin}"))
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{listen}"))
        .replace("groups: {any_of: [admins]}", &format!("groups: {{any_of: {groups}}}"))
        .replace(
            "    audiences: [orders]\n",
            "    audiences: [orders]\n    refresh: {min_interval: 5s, max_interval: 5m, unknown_kid_cooldown: 1s, fetch_timeout: 2s}\n",
        )
}

struct Agent {
    pid: u32,
    admin: String,
    proc: ChildProc,
}

impl Agent {
    /// `sh` writes its PID and `exec`s nodeward (so the PID is the agent's),
    /// with the audit log (stdout) on /dev/null. An instrumented build
    /// writes its profile to `profile` when it exits.
    fn spawn(bin: &Path, dir: &Path, config: &Path, admin: u16, profile: Option<&Path>) -> anyhow::Result<Self> {
        let pid_file = dir.join("agent.pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1"; shift; exec "$@" >/dev/null"#)
            .arg("sh")
            .arg(&pid_file)
            .arg(bin)
            .args(["run", "--reload-interval", "200ms", "--config"])
            .arg(config);
        if let Some(profile) = profile {
            cmd.env("LLVM_PROFILE_FILE", profile);
        }
        let proc = ChildProc::spawn("nodeward", &mut cmd, &dir.join("agent.stderr"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break pid;
            }
            anyhow::ensure!(Instant::now() < deadline, "nodeward wrote no PID file");
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Self {
            pid,
            admin: format!("http://127.0.0.1:{admin}"),
            proc,
        })
    }

    async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<String> {
        Ok(http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await?)
    }

    async fn wait_ready(&mut self, http: &reqwest::Client, listen: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Err(e) = self.proc.check_running() {
                bail!("{e:#}\nstderr:\n{}", self.proc.stderr_tail(20));
            }
            let ready = http
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let keys = self.metrics(http).await.unwrap_or_default();
            if ready
                && metric(&keys, "nodeward_provider_ready{provider=\"corp\"}") == Some(1.0)
                && tokio::net::TcpStream::connect(listen).await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "nodeward not ready after {READY_TIMEOUT:?}\nstderr:\n{}",
            self.proc.stderr_tail(20)
        )
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("reading /proc/{}/status (agent gone?)", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line")
    }
}

// === traffic ===

/// One kind of request, with what it expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    AliceH1,
    BobH2,
    AdminPost,
    OpsAdminPost,
    AliceAdminDenied,
    AuditRoute,
    AnonymousHealth,
    NoToken,
    Expired,
    Forged,
    RandomKid,
    WrongAudience,
    Tampered,
    /// A valid token never sent before: a cache miss (training only: a
    /// soak's stream of them would fill the token cache, which is not a leak).
    Fresh,
}

impl Class {
    const ALL: [Class; 13] = [
        Class::AliceH1,
        Class::BobH2,
        Class::AdminPost,
        Class::OpsAdminPost,
        Class::AliceAdminDenied,
        Class::AuditRoute,
        Class::AnonymousHealth,
        Class::NoToken,
        Class::Expired,
        Class::Forged,
        Class::RandomKid,
        Class::WrongAudience,
        Class::Tampered,
    ];

    fn label(self) -> &'static str {
        match self {
            Class::AliceH1 => "valid alice GET /orders (h1)",
            Class::BobH2 => "valid bob GET /orders (h2c)",
            Class::AdminPost => "admin carol POST /admin/x",
            Class::OpsAdminPost => "ops dave POST /admin/x (reloaded rule)",
            Class::AliceAdminDenied => "alice POST /admin/x (denied)",
            Class::AuditRoute => "alice GET /audit/x (audit mode)",
            Class::AnonymousHealth => "anonymous GET /healthz",
            Class::NoToken => "no token GET /orders",
            Class::Expired => "expired token",
            Class::Forged => "forged (other key, real kid)",
            Class::RandomKid => "random kid",
            Class::WrongAudience => "wrong audience",
            Class::Tampered => "tampered signature",
            Class::Fresh => "fresh token (RS256/ES256/EdDSA), a miss",
        }
    }

    fn request(self) -> (http::Method, &'static str) {
        match self {
            Class::AdminPost | Class::OpsAdminPost | Class::AliceAdminDenied => (http::Method::POST, "/admin/x"),
            Class::AuditRoute => (http::Method::GET, "/audit/x"),
            Class::AnonymousHealth => (http::Method::GET, "/healthz"),
            _ => (http::Method::GET, "/orders"),
        }
    }

    /// The expected status; `ops_admin` is whether the config in force lets `ops` in.
    fn expected(self, ops_admin: bool) -> u16 {
        match self {
            Class::AliceH1
            | Class::BobH2
            | Class::AdminPost
            | Class::AuditRoute
            | Class::AnonymousHealth
            | Class::Fresh => 200,
            Class::OpsAdminPost if ops_admin => 200,
            Class::OpsAdminPost | Class::AliceAdminDenied => 403,
            _ => 401,
        }
    }
}

/// The tokens of the current signing keys, re-minted after each rotation.
struct Tokens(BTreeMap<Class, String>);

impl Tokens {
    fn mint(idp: &DevIdp, stranger: &DevIdp) -> anyhow::Result<Self> {
        let mint = |who: &DevIdp, claims: Value, header: Value| -> anyhow::Result<String> {
            Ok(who.mint(&MintRequest {
                alg: Some("RS256".into()),
                ttl: Some(Duration::from_secs(3600)),
                claims: claims.as_object().cloned().unwrap_or_default(),
                header: header.as_object().cloned().unwrap_or_default(),
            })?)
        };
        let user = |sub: &str, groups: Value| json!({"aud": "orders", "sub": sub, "email": format!("{sub}@example.com"), "groups": groups});
        let kid = idp.current_kid("RS256")?;
        let mut t = BTreeMap::new();
        t.insert(Class::AliceH1, mint(idp, user("alice", json!(["users"])), json!({}))?);
        t.insert(Class::BobH2, mint(idp, user("bob", json!(["users"])), json!({}))?);
        t.insert(
            Class::AdminPost,
            mint(idp, user("carol", json!(["admins"])), json!({}))?,
        );
        t.insert(Class::OpsAdminPost, mint(idp, user("dave", json!(["ops"])), json!({}))?);
        t.insert(Class::AliceAdminDenied, t[&Class::AliceH1].clone());
        t.insert(Class::AuditRoute, t[&Class::AliceH1].clone());
        t.insert(
            Class::Expired,
            mint(
                idp,
                json!({"aud": "orders", "iat": 1_000_000, "exp": 1_000_100}),
                json!({}),
            )?,
        );
        t.insert(
            Class::Forged,
            mint(
                stranger,
                json!({"aud": "orders", "iss": idp.issuer()}),
                json!({"kid": kid}),
            )?,
        );
        t.insert(Class::WrongAudience, mint(idp, json!({"aud": "billing"}), json!({}))?);
        let mut tampered = t[&Class::AliceH1].clone();
        // Flip the first signature character: always a change, unlike the last one.
        let sig = tampered.rfind('.').context("a JWS has dots")? + 1;
        let flipped = if tampered.as_bytes()[sig] == b'A' { "B" } else { "A" };
        tampered.replace_range(sig..=sig, flipped);
        t.insert(Class::Tampered, tampered);
        Ok(Self(t))
    }
}

#[derive(Default, Clone)]
struct Tally {
    sent: u64,
    right: u64,
    wrong: u64,
    /// Answered during a config change in progress (either answer accepted).
    transitional: u64,
    lost: u64,
    /// The first few wrong answers, for the report.
    samples: Vec<String>,
}

struct Shared {
    tokens: RwLock<Arc<Tokens>>,
    idp: Arc<DevIdp>,
    /// The config in force: whether `ops` may use the admin route.
    ops_admin: AtomicBool,
    /// A reload is in progress: its dependent requests accept either answer.
    changing: AtomicBool,
    /// Counts the starts and ends of key rotations (odd: one in progress).
    /// A fresh token signed meanwhile may be of a key the agent has not
    /// fetched yet: [`Class::Fresh`] accepts a 401 when its exchange
    /// overlapped a rotation.
    rotation_epoch: AtomicU64,
    tallies: Mutex<BTreeMap<Class, Tally>>,
    random: AtomicU64,
}

impl Shared {
    fn record(&self, class: Class, f: impl FnOnce(&mut Tally)) {
        let mut t = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        f(t.entry(class).or_default());
    }
}

type H = Client<HttpConnector, Full<Bytes>>;

/// Sends `schedule`'s classes in turn, from its `first`, one per `period`
/// (`None`: each as soon as the last is answered), until `stop`.
async fn worker(
    sh: Arc<Shared>,
    h1: H,
    h2: H,
    base: String,
    (schedule, period): (&[Class], Option<Duration>),
    stop: Arc<AtomicBool>,
    first: usize,
) {
    let mut i = first;
    let mut tick = period.map(|p| {
        let mut tick = tokio::time::interval(p);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    while !stop.load(Ordering::Relaxed) {
        if let Some(tick) = &mut tick {
            tick.tick().await;
        }
        let class = schedule[i % schedule.len()];
        i += 1;
        let epoch_before = sh.rotation_epoch.load(Ordering::SeqCst);
        let token = match class {
            Class::AnonymousHealth | Class::NoToken => None,
            Class::Fresh => {
                // A token nobody sent before (its own jti), of each key type in turn.
                let n = sh.random.fetch_add(1, Ordering::Relaxed);
                let alg = ["RS256", "ES256", "EdDSA"][(n % 3) as usize];
                let claims =
                    json!({"aud": "orders", "sub": "erin", "email": "erin@example.com", "jti": format!("fresh-{n}")});
                sh.idp
                    .mint(&MintRequest {
                        alg: Some(alg.into()),
                        claims: claims.as_object().cloned().unwrap_or_default(),
                        ..MintRequest::default()
                    })
                    .ok()
            }
            Class::RandomKid => {
                let n = sh.random.fetch_add(1, Ordering::Relaxed);
                let header = json!({"kid": format!("soak-random-{n}")});
                sh.idp
                    .mint(&MintRequest {
                        claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
                        header: header.as_object().cloned().unwrap_or_default(),
                        ..MintRequest::default()
                    })
                    .ok()
            }
            c => sh
                .tokens
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .get(&c)
                .cloned(),
        };
        let (method, path) = class.request();
        // The admin route's POSTs carry a body, as writes do.
        let body = if method == http::Method::POST {
            Bytes::from_static(br#"{"qty":1}"#)
        } else {
            Bytes::new()
        };
        let mut req = http::Request::builder().method(method).uri(format!("{base}{path}"));
        if let Some(t) = &token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let Ok(req) = req.body(Full::new(body)) else {
            continue;
        };
        // Read the expectation on both sides of the exchange: a reload that
        // lands in between makes the answer legitimately either one.
        let changing_before = sh.changing.load(Ordering::SeqCst);
        let ops_before = sh.ops_admin.load(Ordering::SeqCst);
        let client = if class == Class::BobH2 { &h2 } else { &h1 };
        let answer = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
        let changing = changing_before || sh.changing.load(Ordering::SeqCst);
        let rotating = epoch_before % 2 == 1 || sh.rotation_epoch.load(Ordering::SeqCst) != epoch_before;
        let ops_after = sh.ops_admin.load(Ordering::SeqCst);
        let status = match answer {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                // Drain the body so the connection is reused.
                let _ = resp.into_body().collect().await;
                Some(status)
            }
            Ok(Err(e)) => {
                sh.record(class, |t| {
                    t.sent += 1;
                    t.lost += 1;
                    push_sample(&mut t.samples, format!("transport error: {e}"));
                });
                None
            }
            Err(_) => {
                sh.record(class, |t| {
                    t.sent += 1;
                    t.lost += 1;
                    push_sample(&mut t.samples, "no answer within 10s".into());
                });
                None
            }
        };
        let Some(status) = status else { continue };
        let depends = class.expected(true) != class.expected(false);
        sh.record(class, |t| {
            t.sent += 1;
            if class == Class::Fresh && rotating && status == 401 {
                t.transitional += 1;
            } else if depends && (changing || ops_before != ops_after) {
                if status == class.expected(true) || status == class.expected(false) {
                    t.transitional += 1;
                } else {
                    t.wrong += 1;
                    push_sample(&mut t.samples, format!("got {status} during a reload"));
                }
            } else if status == class.expected(ops_before) {
                t.right += 1;
            } else {
                t.wrong += 1;
                push_sample(
                    &mut t.samples,
                    format!("got {status}, expected {}", class.expected(ops_before)),
                );
            }
        });
    }
}

fn push_sample(samples: &mut Vec<String>, s: String) {
    if samples.len() < 5 {
        samples.push(s);
    }
}

// === the run ===

struct Report {
    duration: Duration,
    tallies: BTreeMap<Class, Tally>,
    decisions_counted: f64,
    reloads: (u64, u64),
    rotations: (u64, u64),
    /// (seconds since start, RSS KiB)
    rss: Vec<(f64, u64)>,
    errors: Vec<String>,
}

impl Report {
    fn thirds(&self) -> [u64; 3] {
        let n = self.rss.len();
        let third = |k: usize| {
            self.rss[k * n / 3..(k + 1) * n / 3]
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(0)
        };
        [third(0), third(1), third(2)]
    }

    fn violations(&self) -> Vec<String> {
        let mut v = self.decisions_violations();
        v.extend(self.memory_violations());
        v
    }

    /// Wrong or lost answers, uncounted decisions, unapplied changes, errors.
    fn decisions_violations(&self) -> Vec<String> {
        let mut v = self.errors.clone();
        let total = |f: fn(&Tally) -> u64| self.tallies.values().map(f).sum::<u64>();
        if total(|t| t.wrong) > 0 {
            v.push(format!("{} wrong decisions", total(|t| t.wrong)));
        }
        if total(|t| t.lost) > 0 {
            v.push(format!("{} lost requests", total(|t| t.lost)));
        }
        let answered = total(|t| t.sent - t.lost);
        if self.decisions_counted as u64 != answered {
            v.push(format!(
                "the agent counted {} decisions for {answered} answered requests",
                self.decisions_counted
            ));
        }
        if self.reloads.0 != self.reloads.1 {
            v.push(format!("{} of {} reloads applied", self.reloads.1, self.reloads.0));
        }
        if self.rotations.0 != self.rotations.1 {
            v.push(format!(
                "{} of {} key rotations picked up",
                self.rotations.1, self.rotations.0
            ));
        }
        v
    }

    /// Memory that is not flat.
    fn memory_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.rss.len() < 6 {
            v.push(format!("only {} RSS samples", self.rss.len()));
        } else {
            let [first, _, last] = self.thirds();
            let limit = first + first * RSS_GROWTH_PCT / 100 + RSS_SLACK_KIB;
            if last > limit {
                v.push(format!(
                    "memory not flat: last third peaked at {} KiB, over {limit} KiB (first third {first} KiB + {RSS_GROWTH_PCT}% + {RSS_SLACK_KIB} KiB)",
                    last
                ));
            }
        }
        v
    }

    fn table(&self) -> String {
        let mut out = format!(
            "\nsoak: {:.0} s of traffic\n{:<42} {:>8} {:>8} {:>6} {:>13} {:>5}\n",
            self.duration.as_secs_f64(),
            "class",
            "sent",
            "right",
            "wrong",
            "transitional",
            "lost"
        );
        for (class, t) in &self.tallies {
            out += &format!(
                "{:<42} {:>8} {:>8} {:>6} {:>13} {:>5}\n",
                class.label(),
                t.sent,
                t.right,
                t.wrong,
                t.transitional,
                t.lost
            );
            for s in &t.samples {
                out += &format!("    {s}\n");
            }
        }
        let sum = |f: fn(&Tally) -> u64| self.tallies.values().map(f).sum::<u64>();
        out += &format!(
            "{:<42} {:>8} {:>8} {:>6} {:>13} {:>5}\n",
            "total",
            sum(|t| t.sent),
            sum(|t| t.right),
            sum(|t| t.wrong),
            sum(|t| t.transitional),
            sum(|t| t.lost)
        );
        out += &format!(
            "agent's decision count (nodeward_requests_total): {}\nconfig reloads applied: {} of {}; key rotations picked up: {} of {}\n",
            self.decisions_counted, self.reloads.1, self.reloads.0, self.rotations.1, self.rotations.0
        );
        if !self.rss.is_empty() {
            let [a, b, c] = self.thirds();
            let min = self.rss.iter().map(|(_, r)| *r).min().unwrap_or(0);
            out += &format!(
                "agent RSS: {} samples, min {} KiB; peak per third {a} / {b} / {c} KiB\n",
                self.rss.len(),
                min
            );
            let step = (self.rss.len() / 12).max(1);
            let shown: Vec<String> = self
                .rss
                .iter()
                .step_by(step)
                .map(|(t, r)| format!("{t:.0}s:{}MiB", r / 1024))
                .collect();
            out += &format!("RSS samples: {}\n", shown.join(" "));
        }
        out
    }
}

async fn soak(bin: &Path, set: &Settings) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new().prefix("nodeward-soak-").tempdir()?;
    let http = nodeward_testkit::client();
    let idp = TestIdp::start().await;
    let stranger = DevIdp::new("http://stranger.invalid")?;
    let upstream = EchoUpstream::start().await;
    let [admin, listen] = free_ports()?;
    let listen_addr = SocketAddr::from(([127, 0, 0, 1], listen));
    let config_file = dir.path().join("nodeward.yaml");
    let write_config = |ops_admin: bool| -> anyhow::Result<()> {
        let yaml = config(&idp.issuer(), upstream.addr, admin, listen, ops_admin);
        // Write-then-rename: the agent's poller must never read half a file.
        let tmp = dir.path().join("nodeward.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &config_file)?;
        Ok(())
    };
    write_config(false)?;
    let mut agent = Agent::spawn(bin, dir.path(), &config_file, admin, set.profile_file.as_deref())?;
    agent.wait_ready(&http, listen_addr).await?;
    let rate = set
        .rate
        .map_or_else(|| "as many req/s as answered".to_owned(), |r| format!("~{r} req/s"));
    println!(
        "soak: nodeward pid {} on {listen_addr}, dev IdP {}, {} s at {rate} over {} workers",
        agent.pid,
        idp.issuer(),
        set.duration.as_secs(),
        set.workers
    );

    let shared = Arc::new(Shared {
        tokens: RwLock::new(Arc::new(Tokens::mint(&idp.idp, &stranger)?)),
        idp: idp.idp.clone(),
        ops_admin: AtomicBool::new(false),
        changing: AtomicBool::new(false),
        rotation_epoch: AtomicU64::new(0),
        tallies: Mutex::default(),
        random: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let h1: H = Client::builder(TokioExecutor::new()).build_http();
    let h2: H = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let period = set.rate.map(|r| Duration::from_secs_f64(set.workers as f64 / r as f64));
    let base = format!("http://{listen_addr}");
    let workers: Vec<_> = (0..set.workers)
        .map(|w| {
            tokio::spawn(worker(
                shared.clone(),
                h1.clone(),
                h2.clone(),
                base.clone(),
                (set.schedule, period),
                stop.clone(),
                w * 5,
            ))
        })
        .collect();

    let start = Instant::now();
    let reload_every = (set.duration / 8).max(Duration::from_secs(5));
    // Each overlap rotation adds three keys to the JWKS for good; the agent
    // takes at most 64, so rotate at most 12 times.
    let rotate_every = (set.duration / 12).max(Duration::from_secs(8));
    let sample_every = (set.duration / 60).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let (mut next_reload, mut next_rotate, mut next_sample) = (reload_every, rotate_every, Duration::ZERO);
    let mut rss = Vec::new();
    let mut errors = Vec::new();
    let (mut reloads, mut reloads_ok, mut rotations, mut rotations_ok) = (0u64, 0u64, 0u64, 0u64);
    while start.elapsed() < set.duration {
        let now = start.elapsed();
        if now >= next_sample {
            rss.push((now.as_secs_f64(), agent.rss_kib()?));
            next_sample += sample_every;
        }
        if now >= next_reload {
            next_reload += reload_every;
            reloads += 1;
            match reload(&agent, &http, &shared, &write_config).await {
                Ok(()) => reloads_ok += 1,
                Err(e) => errors.push(format!("reload {reloads}: {e:#}")),
            }
        }
        if now >= next_rotate {
            next_rotate += rotate_every;
            rotations += 1;
            shared.rotation_epoch.fetch_add(1, Ordering::SeqCst);
            let rotated = rotate(&idp.idp, &stranger, &shared, &http, &base).await;
            shared.rotation_epoch.fetch_add(1, Ordering::SeqCst);
            match rotated {
                Ok(()) => rotations_ok += 1,
                Err(e) => errors.push(format!("rotation {rotations}: {e:#}")),
            }
        }
        if let Err(e) = agent.proc.check_running() {
            errors.push(format!("{e:#}\nstderr:\n{}", agent.proc.stderr_tail(20)));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duration = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.context("worker panicked")?;
    }
    rss.push((start.elapsed().as_secs_f64(), agent.rss_kib()?));
    let m = agent.metrics(&http).await?;
    let decisions_counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("nodeward_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    let status = agent.proc.stop()?;
    if !status.success() {
        errors.push(format!("nodeward exited with {status} on SIGTERM"));
    }
    let tallies = shared.tallies.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(Report {
        duration,
        tallies,
        decisions_counted,
        reloads: (reloads, reloads_ok),
        rotations: (rotations, rotations_ok),
        rss,
        errors,
    })
}

/// Flips the admin rule in the config file and waits for the agent to apply
/// it (its reload counter), marking the change in progress meanwhile.
async fn reload(
    agent: &Agent,
    http: &reqwest::Client,
    shared: &Shared,
    write_config: &impl Fn(bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let ok = |m: &str| metric(m, "nodeward_config_reloads_total{result=\"ok\"}").unwrap_or(0.0);
    let rejected = |m: &str| metric(m, "nodeward_config_reloads_total{result=\"rejected\"}").unwrap_or(0.0);
    let before = agent.metrics(http).await?;
    let next = !shared.ops_admin.load(Ordering::SeqCst);
    shared.changing.store(true, Ordering::SeqCst);
    write_config(next)?;
    let deadline = Instant::now() + APPLY_TIMEOUT;
    let result = loop {
        let m = agent.metrics(http).await?;
        if rejected(&m) > rejected(&before) {
            break Err(anyhow::anyhow!("the agent rejected the config"));
        }
        if ok(&m) > ok(&before) {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("not applied within {APPLY_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shared.ops_admin.store(next, Ordering::SeqCst);
    shared.changing.store(false, Ordering::SeqCst);
    result
}

/// Rotates the IdP's keys with overlap the way a provider should: publish
/// the new keys, wait until the agent verifies a token of the new key (its
/// unknown-kid refetch, rate-limited by the cooldown), then sign with them.
/// Tokens of the old keys stay valid meanwhile (still published).
async fn rotate(
    idp: &DevIdp,
    stranger: &DevIdp,
    shared: &Shared,
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<()> {
    idp.rotate(true)?;
    let fresh = Tokens::mint(idp, stranger)?;
    let probe = fresh.0.get(&Class::AliceH1).context("alice's token")?.clone();
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        let status = http
            .get(format!("{base}/orders"))
            .bearer_auth(&probe)
            .send()
            .await
            .map(|r| r.status().as_u16());
        // The probe is one more request the agent decides: count it, apart.
        shared.record(Class::AliceH1, |t| t.sent += 1);
        match status {
            Ok(200) => {
                shared.record(Class::AliceH1, |t| t.transitional += 1);
                break;
            }
            Ok(401) => shared.record(Class::AliceH1, |t| t.transitional += 1),
            Ok(other) => {
                shared.record(Class::AliceH1, |t| t.wrong += 1);
                bail!("the new key's probe got {other}");
            }
            Err(e) => {
                shared.record(Class::AliceH1, |t| t.lost += 1);
                bail!("the new key's probe failed: {e}");
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "new keys not picked up within {APPLY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    *shared.tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
    Ok(())
}
