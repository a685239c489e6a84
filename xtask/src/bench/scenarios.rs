//! The scenarios of the throughput/latency matrix and how one run of one
//! scenario goes: start the proxy under test, check one request answers as
//! expected, warm up, measure with wrk while reading the proxy's and the
//! app's CPU time, read peak memory, stop the proxy.
//!
//! Adding a scenario is one entry in [`all`]; a new kind of proxy is one
//! more [`Proxy`] variant with its start in [`start_proxy`]: everything after
//! (load, measurement, report, chart) only sees a target address and the
//! PIDs to measure. `nodeward-steered-cached` is such a variant: the agent
//! behind eBPF SK_LOOKUP steering, with its app inside a pod-like network
//! namespace (root only; skipped with a message otherwise).
//! `nodeward-rbac-cached` is another: the agent asks the cluster's RBAC
//! (the testkit's fake Kubernetes API, in this process) about every request,
//! answered from its SubjectAccessReview cache after the first.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use nodeward_testkit::kubeapi::FakeKubeApi;
use nodeward_testkit::netns::{NetnsGuard, PinDir};
use serde::Serialize;

use super::env::{
    ConfigKnobs, Nginx, NginxRole, Nodeward, RBAC_NAMESPACE, Workload, free_ports, nodeward_config, rbac_config,
    steered_config,
};
use super::procfs;
use super::wrk::{self, Load};
use super::{Bench, Settings};

/// What sits between wrk and the app.
#[derive(Clone, Copy)]
pub enum Proxy {
    /// Nothing: wrk talks to the app (the floor).
    Direct,
    NginxBare,
    NginxNjs,
    /// `nodeward run` in reverse-proxy mode; `cache_entries` overrides
    /// `token_cache.max_entries` (0 for the cache-miss scenarios).
    Nodeward {
        cache_entries: Option<u64>,
    },
    /// `nodeward run` with one eBPF-steered workload: wrk dials the pod IP
    /// and port over a veth into a fresh network namespace, the SK_LOOKUP
    /// program hands the connection to the agent's listener there, and the
    /// agent forwards to the app (the same nginx `return 200`) listening on
    /// the pod IP inside the namespace. Root only.
    NodewardSteered,
    /// `nodeward run` in reverse-proxy mode with a `kubernetes_rbac` rule
    /// (issue 12): the same policy as [`Proxy::Nodeward`] plus one
    /// SubjectAccessReview per (user, attributes), asked of the testkit's
    /// fake API server (see [`BENCH_RBAC`]) and then answered from the
    /// agent's cache for the whole run (allowed answers live 5 min).
    NodewardRbac,
    /// `nodeward run` with one egress-enrolled pod (issue 16): wrk runs as
    /// the pod's application and calls another pod with `Host: host`; the
    /// egress programs steer it to the agent. Root only (`egress.rs`).
    NodewardEgress {
        host: &'static str,
    },
}

/// The RBAC objects of `nodeward-rbac-cached`: the benchmark token's mapped
/// user (`oidc:` + its `email` claim) may `get` the `orders` workload's
/// `services/proxy` in its namespace.
const BENCH_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: orders-caller}
rules:
  - apiGroups: [""]
    resources: ["services/proxy"]
    resourceNames: ["orders"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: orders-callers, namespace: NAMESPACE}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: orders-caller}
subjects:
  - {kind: User, name: "oidc:bench@example.com", apiGroup: rbac.authorization.k8s.io}
"#;

/// `nodeward-rbac-cached`'s parts: the testkit's fake API server with
/// [`BENCH_RBAC`] applied, and `yaml` (a nodeward configuration) with its
/// `kubernetes_rbac` rule and a kubeconfig for that server (written in
/// `dir`). The server must outlive the agent.
pub(super) async fn with_rbac(yaml: &str, dir: &Path) -> anyhow::Result<(FakeKubeApi, String)> {
    let api = FakeKubeApi::start().await;
    api.apply_yaml(&BENCH_RBAC.replace("NAMESPACE", RBAC_NAMESPACE))
        .context("the RBAC objects for the fake API server")?;
    let yaml = rbac_config(yaml, &api.write_kubeconfig(dir))?;
    Ok((api, yaml))
}

impl Proxy {
    /// Why this proxy cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            Self::NodewardSteered if !nix::unistd::geteuid().is_root() => {
                Some("needs root (network namespaces, veth, eBPF SK_LOOKUP); run as root to measure it")
            }
            Self::NodewardEgress { .. } if !nix::unistd::geteuid().is_root() => {
                Some("needs root (network namespaces, cgroups, eBPF connect programs); run as root to measure it")
            }
            _ => None,
        }
    }
}

/// The port the steered workload's pod serves on (the example policy's port).
const POD_PORT: u16 = 8080;

/// Which tokens a scenario sends.
#[derive(Clone, Copy)]
pub enum Tokens {
    None,
    /// One RS256 token, valid for every route, reused by every request.
    Reused,
    /// A pre-minted pool for this algorithm, rotated through.
    Pool(&'static str),
}

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub proxy: Proxy,
    pub method: &'static str,
    pub path: &'static str,
    pub tokens: Tokens,
    /// Every response must have this status.
    pub expect: u16,
}

/// The matrix, in the order of the table.
pub fn all() -> Vec<Scenario> {
    let nodeward = Proxy::Nodeward { cache_entries: None };
    // With no room in the cache, every request verifies a signature (the
    // measured hit ratio is in the JSON and the table's notes).
    let no_cache = Proxy::Nodeward { cache_entries: Some(0) };
    let s = |name, what, proxy, method, path, tokens, expect| Scenario {
        name,
        what,
        proxy,
        method,
        path,
        tokens,
        expect,
    };
    vec![
        s(
            "direct",
            "wrk -> app (the floor)",
            Proxy::Direct,
            "GET",
            "/",
            Tokens::None,
            200,
        ),
        s(
            "nginx-proxy",
            "NGINX proxy hop, no auth",
            Proxy::NginxBare,
            "GET",
            "/",
            Tokens::None,
            200,
        ),
        s(
            "nginx-njs-rs256",
            "NGINX + njs RS256 validation (key imported per request)",
            Proxy::NginxNjs,
            "GET",
            "/",
            Tokens::Reused,
            200,
        ),
        s(
            "nodeward-anonymous",
            "anonymous route (/healthz)",
            nodeward,
            "GET",
            "/healthz",
            Tokens::None,
            200,
        ),
        s(
            "nodeward-cached",
            "valid token reused (cache hit)",
            nodeward,
            "GET",
            "/",
            Tokens::Reused,
            200,
        ),
        s(
            "nodeward-rbac-cached",
            "valid token reused, rule asks the cluster's RBAC (cached SubjectAccessReview)",
            Proxy::NodewardRbac,
            "GET",
            "/",
            Tokens::Reused,
            200,
        ),
        s(
            "nodeward-steered-cached",
            "eBPF-steered to the pod IP, valid token reused (cache hit)",
            Proxy::NodewardSteered,
            "GET",
            "/",
            Tokens::Reused,
            200,
        ),
        s(
            "nodeward-egress-plain",
            "a pod's own call, eBPF-steered through the agent's egress, no rule for its host (no token)",
            Proxy::NodewardEgress {
                host: super::egress::PLAIN_HOST,
            },
            "GET",
            "/",
            Tokens::None,
            200,
        ),
        s(
            "nodeward-egress-token",
            "the same call for a host a rule names: the pod's held service-account token attached",
            Proxy::NodewardEgress {
                host: super::egress::TOKEN_HOST,
            },
            "GET",
            "/",
            Tokens::None,
            200,
        ),
        s(
            "nodeward-miss-rs256",
            "fresh RS256 token per request",
            no_cache,
            "GET",
            "/",
            Tokens::Pool("RS256"),
            200,
        ),
        s(
            "nodeward-miss-es256",
            "fresh ES256 token per request",
            no_cache,
            "GET",
            "/",
            Tokens::Pool("ES256"),
            200,
        ),
        s(
            "nodeward-miss-eddsa",
            "fresh EdDSA token per request",
            no_cache,
            "GET",
            "/",
            Tokens::Pool("EdDSA"),
            200,
        ),
        s(
            "nodeward-denied",
            "valid token, rule denies (403)",
            nodeward,
            "POST",
            "/admin/users",
            Tokens::Reused,
            403,
        ),
    ]
}

/// CPU and memory of one component over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub cpu_s: f64,
    pub cpu_s_per_10k: f64,
    /// Sum of VmHWM over the component's processes (nginx: master + workers).
    pub peak_rss_kb: u64,
}

/// The token cache's counters over the measured window (nodeward only).
#[derive(Debug, Clone, Serialize)]
pub struct CacheCounts {
    pub hits: f64,
    pub misses: f64,
    /// RBAC decisions from the agent's SubjectAccessReview cache, and not.
    pub rbac_hits: f64,
    pub rbac_misses: f64,
    /// Outbound requests sent with the rule's token, and without one (no rule).
    pub egress_sent: f64,
    pub egress_passthrough: f64,
}

/// One measured run of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub repeat: usize,
    pub wrk: wrk::Run,
    /// The proxy under test (absent for `direct`).
    pub proxy: Option<Usage>,
    pub app: Usage,
    pub cache: Option<CacheCounts>,
    /// Busy CPU seconds of the whole machine over the window, and the part
    /// not accounted for by wrk, the proxy and the app: other people's work.
    pub machine_busy_s: f64,
    pub other_cpu_s: f64,
    pub steal_s: f64,
}

/// A running proxy: where wrk sends, and what to measure.
enum Running {
    Direct,
    Nginx(Nginx),
    Nodeward(Nodeward),
    Steered(Box<Steered>),
    /// The agent and the fake API server it asks (stopped after the agent).
    Rbac(Nodeward, Box<FakeKubeApi>),
    Egress(Box<super::egress::Egress>),
}

/// The steered scenario's pieces. Fields drop in order after `stop`: the
/// pins (program, map, links), then the namespace and its veth.
struct Steered {
    agent: Nodeward,
    /// The app inside the namespace.
    app: Nginx,
    _pins: PinDir,
    _pod: NetnsGuard,
}

impl Running {
    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Direct => vec![],
            Self::Nginx(n) => n.pids(),
            Self::Nodeward(n) => vec![n.pid],
            Self::Steered(s) => vec![s.agent.pid],
            Self::Rbac(a, _) => vec![a.pid],
            Self::Egress(e) => vec![e.agent.pid],
        }
    }

    /// The `Host` wrk sends, when not the URL's.
    fn host(&self) -> Option<&'static str> {
        match self {
            Self::Egress(e) => Some(e.host),
            _ => None,
        }
    }

    /// Where wrk runs, when not on the host.
    fn within(&self) -> Option<wrk::Within<'_>> {
        match self {
            Self::Egress(e) => Some(e.within()),
            _ => None,
        }
    }

    /// The app this proxy forwards to: the shared one, or its own.
    fn app_pids(&self, b: &Bench) -> Vec<u32> {
        match self {
            Self::Steered(s) => s.app.pids(),
            Self::Egress(e) => e.app.pids(),
            _ => b.app.pids(),
        }
    }

    fn agent(&self) -> Option<&Nodeward> {
        match self {
            Self::Nodeward(a) | Self::Rbac(a, _) => Some(a),
            Self::Steered(s) => Some(&s.agent),
            Self::Egress(e) => Some(&e.agent),
            _ => None,
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Direct => Ok(()),
            Self::Nginx(n) => n.stop(),
            Self::Nodeward(n) => n.stop(),
            Self::Egress(e) => e.stop(),
            Self::Rbac(agent, api) => {
                let stopped = agent.stop();
                drop(api);
                stopped
            }
            Self::Steered(s) => {
                let Steered {
                    agent,
                    app,
                    _pins,
                    _pod,
                } = *s;
                let agent = agent.stop();
                let app = app.stop();
                drop(_pins);
                drop(_pod);
                agent.and(app)
            }
        }
    }
}

/// The pod namespace with the app on pod IP:8080, then the agent steering
/// that address to itself; returns once a request to the pod IP is answered
/// by the agent (it adds `x-request-id`), not by the app directly.
async fn start_steered(b: &Bench, s: &Scenario, dir: &Path, admin: u16) -> anyhow::Result<(Running, SocketAddr)> {
    // Guards first: whatever fails below, drop removes them.
    let pins = PinDir::new();
    let pod = NetnsGuard::new();
    let target = SocketAddr::new(pod.pod_ip(), POD_PORT);
    let app = Nginx::start_at(
        &format!("{}-app", s.name),
        &NginxRole::Upstream,
        target,
        Some(&pod.name),
        dir,
    )
    .await?;
    let knobs = ConfigKnobs::default();
    let base = nodeward_config(
        &b.idp.issuer,
        target,
        admin,
        &[Workload {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }],
        &dir.join(s.name),
        &knobs,
    )?;
    let yaml = steered_config(&base, &pod.path, &pins.path)?;
    let mut agent = match Nodeward::spawn(&b.bin, s.name, dir, &yaml, admin) {
        Ok(a) => a,
        Err(e) => {
            let _ = app.stop();
            return Err(e);
        }
    };
    // No listener to probe from here: it lives inside the namespace.
    let ready = match agent.wait_ready(&b.http, &[]).await {
        Ok(()) => wait_steered(b, target).await,
        Err(e) => Err(e),
    };
    let running = Running::Steered(Box::new(Steered {
        agent,
        app,
        _pins: pins,
        _pod: pod,
    }));
    match ready {
        Ok(()) => Ok((running, target)),
        Err(e) => {
            let _ = running.stop();
            Err(e)
        }
    }
}

/// Until the agent answers on `target` (bounded): the app answers there too
/// before the program is attached, but only the agent adds `x-request-id`.
async fn wait_steered(b: &Bench, target: SocketAddr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut last = String::from("no answer yet");
    while std::time::Instant::now() < deadline {
        match b
            .http
            .get(format!("http://{target}/"))
            .bearer_auth(&b.reused_token)
            .send()
            .await
        {
            Ok(r) if r.headers().contains_key("x-request-id") => return Ok(()),
            Ok(r) => last = format!("{} without x-request-id (the app, not the agent)", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bail!("{target} was not steered into the agent within 15 s (last: {last})")
}

async fn start_proxy(b: &Bench, s: &Scenario, dir: &Path) -> anyhow::Result<(Running, SocketAddr)> {
    let [port, admin] = <[u16; 2]>::try_from(free_ports(2)?).map_err(|_| anyhow::anyhow!("port count"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Ok(match s.proxy {
        Proxy::Direct => (Running::Direct, b.app.addr),
        Proxy::NginxBare => {
            let role = NginxRole::Proxy { upstream: b.app.addr };
            (Running::Nginx(Nginx::start(s.name, &role, port, dir).await?), addr)
        }
        Proxy::NginxNjs => {
            let role = NginxRole::NjsJwt {
                upstream: b.app.addr,
                spki_b64: &b.rs256_spki,
                issuer: &b.idp.issuer,
                kid: &b.rs256_kid,
            };
            (Running::Nginx(Nginx::start(s.name, &role, port, dir).await?), addr)
        }
        Proxy::Nodeward { cache_entries } => {
            let knobs = ConfigKnobs {
                cache_entries,
                refresh: None,
            };
            let workloads = [Workload { listen: addr }];
            let yaml = nodeward_config(&b.idp.issuer, b.app.addr, admin, &workloads, &dir.join(s.name), &knobs)?;
            let mut agent = Nodeward::spawn(&b.bin, s.name, dir, &yaml, admin)?;
            agent.wait_ready(&b.http, &[addr]).await?;
            (Running::Nodeward(agent), addr)
        }
        Proxy::NodewardSteered => start_steered(b, s, dir, admin).await?,
        Proxy::NodewardEgress { host } => {
            let (e, target) = super::egress::start(b, s.name, dir, admin, host).await?;
            (Running::Egress(Box::new(e)), target)
        }
        Proxy::NodewardRbac => {
            let workloads = [Workload { listen: addr }];
            let base = nodeward_config(
                &b.idp.issuer,
                b.app.addr,
                admin,
                &workloads,
                &dir.join(s.name),
                &ConfigKnobs::default(),
            )?;
            let (api, yaml) = with_rbac(&base, dir).await?;
            let mut agent = Nodeward::spawn(&b.bin, s.name, dir, &yaml, admin)?;
            agent.wait_ready(&b.http, &[addr]).await?;
            (Running::Rbac(agent, Box::new(api)), addr)
        }
    })
}

fn tokens<'a>(b: &'a Bench, s: &Scenario) -> &'a [String] {
    match s.tokens {
        Tokens::None => &[],
        Tokens::Reused => std::slice::from_ref(&b.reused_token),
        Tokens::Pool(alg) => b.pools.get(alg).map_or(&[], Vec::as_slice),
    }
}

/// One request the way wrk will send it, to fail fast on a misconfiguration
/// instead of measuring a flood of errors.
async fn preflight(b: &Bench, s: &Scenario, target: SocketAddr) -> anyhow::Result<()> {
    let method = reqwest::Method::from_bytes(s.method.as_bytes())?;
    let mut req = b.http.request(method, format!("http://{target}{}", s.path));
    if let Some(t) = tokens(b, s).first() {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{}: preflight request", s.name))?;
    let status = resp.status().as_u16();
    if status != s.expect {
        let body = resp.text().await.unwrap_or_default();
        bail!("{}: preflight answered {status}, expected {}: {body}", s.name, s.expect);
    }
    Ok(())
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| procfs::stat(p).ok())
        .map(|s| s.cpu_ticks)
        .sum()
}

fn peak_rss_kb(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| procfs::status_kb(p, "VmHWM").ok()).sum()
}

async fn cache_counts(b: &Bench, agent: &Nodeward) -> anyhow::Result<CacheCounts> {
    let text = agent.metrics(&b.http).await?;
    let get = |m: &str| nodeward_testkit::metric(&text, m).unwrap_or(0.0);
    Ok(CacheCounts {
        hits: get("nodeward_token_cache_hits_total"),
        misses: get("nodeward_token_cache_misses_total"),
        rbac_hits: get("nodeward_rbac_cache_hits_total"),
        rbac_misses: get("nodeward_rbac_cache_misses_total"),
        egress_sent: get("nodeward_egress_requests_total{outcome=\"sent\",workload=\"caller\"}"),
        egress_passthrough: get("nodeward_egress_requests_total{outcome=\"passthrough\",workload=\"caller\"}"),
    })
}

pub async fn run_one(b: &Bench, set: &Settings, s: &Scenario, repeat: usize) -> anyhow::Result<RunResult> {
    let dir = b.dir.join(format!("{}-{repeat}", s.name));
    std::fs::create_dir_all(&dir)?;
    let (running, target) = start_proxy(b, s, &dir).await?;
    let result = measure(b, set, s, repeat, &running, target, &dir).await;
    let stopped = running.stop();
    let result = result?;
    stopped?;
    Ok(result)
}

async fn measure(
    b: &Bench,
    set: &Settings,
    s: &Scenario,
    repeat: usize,
    running: &Running,
    target: SocketAddr,
    dir: &Path,
) -> anyhow::Result<RunResult> {
    match running {
        Running::Egress(e) => super::egress::preflight(e, target).await?,
        _ => preflight(b, s, target).await?,
    }
    let load = Load {
        method: s.method,
        path: s.path,
        tokens: tokens(b, s),
        targets: &[],
        delay_ms: set.pace_ms,
        host: running.host(),
        threads: set.threads,
        connections: set.connections,
    };
    let script = dir.join("load.lua");
    std::fs::write(&script, load.script())?;
    let url = format!("http://{target}/");
    let within = running.within();
    wrk::run_within(
        within.as_ref(),
        &script,
        &url,
        &load,
        set.warmup,
        &dir.join("warmup.txt"),
        b.tick,
    )?;

    // nginx's workers are found now, after they have started.
    let proxy_pids = running.pids();
    let app_pids = running.app_pids(b);
    let cache_before = match running.agent() {
        Some(a) => Some(cache_counts(b, a).await?),
        None => None,
    };
    let (p0, a0, m0) = (cpu_ticks(&proxy_pids), cpu_ticks(&app_pids), procfs::system_cpu()?);
    let run = wrk::run_within(
        within.as_ref(),
        &script,
        &url,
        &load,
        set.duration,
        &b.raw_dir.join(format!("{}-{repeat}.txt", s.name)),
        b.tick,
    )?;
    let (p1, a1, m1) = (cpu_ticks(&proxy_pids), cpu_ticks(&app_pids), procfs::system_cpu()?);
    let cache = match (running.agent(), cache_before) {
        (Some(a), Some(c0)) => {
            let c1 = cache_counts(b, a).await?;
            Some(CacheCounts {
                hits: c1.hits - c0.hits,
                misses: c1.misses - c0.misses,
                rbac_hits: c1.rbac_hits - c0.rbac_hits,
                rbac_misses: c1.rbac_misses - c0.rbac_misses,
                egress_sent: c1.egress_sent - c0.egress_sent,
                egress_passthrough: c1.egress_passthrough - c0.egress_passthrough,
            })
        }
        _ => None,
    };

    check_statuses(s, &run)?;
    if matches!(s.proxy, Proxy::NodewardRbac) {
        // What is measured is the cached decision: every request of the
        // window answered from the RBAC cache, no review asked.
        let c = cache.as_ref().context("no RBAC cache counts")?;
        anyhow::ensure!(
            c.rbac_misses == 0.0 && c.rbac_hits >= run.summary.requests as f64,
            "{}: {} RBAC cache hits and {} misses for {} requests: not the cached decision",
            s.name,
            c.rbac_hits,
            c.rbac_misses,
            run.summary.requests
        );
    }
    if let Proxy::NodewardEgress { host } = s.proxy {
        // What is measured is what the scenario says: every request of the
        // window sent with the token, or every one without.
        let c = cache.as_ref().context("no egress counts")?;
        let (with, without) = (c.egress_sent, c.egress_passthrough);
        let all = run.summary.requests as f64;
        let right = if host == super::egress::TOKEN_HOST {
            with >= all && without == 0.0
        } else {
            without >= all && with == 0.0
        };
        anyhow::ensure!(
            right,
            "{}: {with} requests sent with a token and {without} without, for {all} requests",
            s.name
        );
    }
    let per_10k = |cpu: f64| {
        if run.summary.requests == 0 {
            0.0
        } else {
            cpu * 10_000.0 / run.summary.requests as f64
        }
    };
    let usage = |ticks: u64, pids: &[u32]| {
        let cpu_s = ticks as f64 * b.tick;
        Usage {
            cpu_s,
            cpu_s_per_10k: per_10k(cpu_s),
            peak_rss_kb: peak_rss_kb(pids),
        }
    };
    let proxy = (!proxy_pids.is_empty()).then(|| usage(p1 - p0, &proxy_pids));
    let app = usage(a1 - a0, &app_pids);
    let machine_busy_s = (m1.busy - m0.busy) as f64 * b.tick;
    let ours = run.wrk_cpu_s + app.cpu_s + proxy.as_ref().map_or(0.0, |p| p.cpu_s);
    Ok(RunResult {
        scenario: s.name.to_owned(),
        repeat,
        proxy,
        app,
        cache,
        machine_busy_s,
        other_cpu_s: (machine_busy_s - ours).max(0.0),
        steal_s: (m1.steal - m0.steal) as f64 * b.tick,
        wrk: run,
    })
}

/// Allowed scenarios must see no status >= 400, the denied one only those.
fn check_statuses(s: &Scenario, run: &wrk::Run) -> anyhow::Result<()> {
    let sm = &run.summary;
    anyhow::ensure!(sm.requests > 0, "{}: wrk completed no request", s.name);
    let bad = if s.expect >= 400 {
        sm.requests - sm.errors.status.min(sm.requests)
    } else {
        sm.errors.status
    };
    anyhow::ensure!(
        bad == 0,
        "{}: {bad} of {} responses did not have status {}",
        s.name,
        sm.requests,
        s.expect
    );
    if sm.errors.socket() > 0 {
        eprintln!("warning: {}: socket errors {:?}", s.name, sm.errors);
    }
    Ok(())
}
