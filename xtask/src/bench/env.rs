//! The processes a benchmark starts: the dev IdP, NGINX (as the upstream
//! app, as a bare proxy, as a JWT-validating proxy with njs) and nodeward.
//! Each runs as its own process under a [`ChildProc`] guard, so an error or a
//! panic never leaves one behind, and each reports the PIDs whose CPU time
//! and memory the benchmark reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::procfs;
use crate::proc::ChildProc;

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// 100 agents starting at once on a busy 2-core machine take a while.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The example config's one provider is `corp`.
const PROVIDER_READY: &str = "nodeward_provider_ready{provider=\"corp\"}";
const NJS_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_js_module.so";

/// The audience and claims every benchmark token carries.
pub const AUDIENCE: &str = "orders";

pub use crate::proc::DevIdp as Idp;

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct IdpStats {
    pub discovery_fetches: u64,
    pub jwks_fetches: u64,
}

/// A 24-hour token signed with the current `alg` key of the dev IdP at `url`.
pub async fn mint(http: &reqwest::Client, url: &str, alg: &str, claims: Value) -> anyhow::Result<String> {
    let body = json!({"alg": alg, "ttl": "24h", "claims": claims});
    let resp = http
        .post(format!("{url}/mint"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .context("POST /mint")?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "POST /mint answered {status}: {text}");
    let v: Value = serde_json::from_str(&text).context("POST /mint answered no JSON")?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .context("POST /mint answered no token")
}

impl Idp {
    pub async fn get_json(&self, http: &reqwest::Client, path: &str) -> anyhow::Result<Value> {
        let text = http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .with_context(|| format!("GET {path} from the dev IdP"))?
            .text()
            .await?;
        serde_json::from_str(&text).with_context(|| format!("dev IdP {path}: not JSON: {text}"))
    }

    pub async fn stats(&self, http: &reqwest::Client) -> anyhow::Result<IdpStats> {
        Ok(serde_json::from_value(self.get_json(http, "/stats").await?)?)
    }
}

/// Which NGINX configuration to run.
pub enum NginxRole<'a> {
    /// The app behind every scenario: `return 200`, one worker.
    Upstream,
    /// A bare reverse-proxy hop to the app.
    Proxy { upstream: SocketAddr },
    /// The proxy hop plus RS256 validation in njs via `auth_request`.
    NjsJwt {
        upstream: SocketAddr,
        spki_b64: &'a str,
        issuer: &'a str,
        kid: &'a str,
    },
}

/// An `nginx` master (in the foreground) and its workers.
pub struct Nginx {
    pub addr: SocketAddr,
    pub master: u32,
    proc: ChildProc,
}

impl Nginx {
    pub async fn start(name: &str, role: &NginxRole<'_>, port: u16, dir: &Path) -> anyhow::Result<Self> {
        Self::start_at(name, role, SocketAddr::from(([127, 0, 0, 1], port)), None, dir).await
    }

    /// nginx listening on `addr`, inside the network namespace `netns`
    /// (`ip netns exec`, which execs nginx: the PIDs are nginx's) or in ours.
    pub async fn start_at(
        name: &str,
        role: &NginxRole<'_>,
        addr: SocketAddr,
        netns: Option<&str>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let prefix = dir.join(name);
        std::fs::create_dir_all(prefix.join("tmp")).with_context(|| format!("creating {}", prefix.display()))?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(role, addr, &prefix)?)?;
        if let NginxRole::NjsJwt {
            spki_b64, issuer, kid, ..
        } = role
        {
            std::fs::write(prefix.join("jwt.js"), njs_script(spki_b64, issuer, kid))?;
        }
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nginx"]);
                c
            }
            None => Command::new("nginx"),
        };
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .args(["-g", "daemon off;"]);
        let mut proc = ChildProc::spawn(name, &mut cmd, &prefix.join("stderr"))
            .context("starting nginx (Debian: apt-get install nginx libnginx-mod-http-js; .ci/run installs them)")?;
        let pid_file = prefix.join("nginx.pid");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Err(e) = proc.check_running() {
                bail!(
                    "{e:#}\n{name} stderr: {}\nerror.log: {}",
                    proc.stderr_tail(10),
                    std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
                );
            }
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok());
            if let Some(master) = pid
                && std::net::TcpStream::connect(addr).is_ok()
            {
                return Ok(Self { addr, master, proc });
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {addr} within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Master and workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = vec![self.master];
        p.extend(procfs::children(self.master));
        p
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        self.proc.stop()?;
        Ok(())
    }
}

pub fn nginx_conf(role: &NginxRole<'_>, listen: SocketAddr, prefix: &Path) -> anyhow::Result<String> {
    let p = prefix.to_str().context("non-UTF-8 temporary path")?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    // The app gets one worker (a small service); the proxies get one per
    // core, like nodeward's runtime gets one worker thread per core.
    let (workers, modules, http_extra, location, extra_locations) = match role {
        NginxRole::Upstream => (1, "", String::new(), "return 200 \"ok\\n\";".to_owned(), String::new()),
        NginxRole::Proxy { upstream } => (
            cpus,
            "",
            upstream_block(*upstream),
            PROXY_PASS.to_owned(),
            String::new(),
        ),
        NginxRole::NjsJwt { upstream, .. } => (
            cpus,
            "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;",
            format!(
                "{}\n    js_import jwt from {p}/jwt.js;\n    js_var $jwt_sub;",
                upstream_block(*upstream)
            ),
            format!(
                "auth_request /_jwt;\n            proxy_set_header X-Nodeward-Sub $jwt_sub;\n            {PROXY_PASS}"
            ),
            "location = /_jwt {\n            internal;\n            js_content jwt.verify;\n        }".to_owned(),
        ),
    };
    if matches!(role, NginxRole::NjsJwt { .. }) && !Path::new(NJS_MODULE).exists() {
        bail!("{NJS_MODULE} is missing (Debian: apt-get install libnginx-mod-http-js)");
    }
    // The proxies log one line per request to /dev/null, as nodeward's audit
    // line goes to /dev/null here; the app does not log.
    let access_log = if matches!(role, NginxRole::Upstream) {
        "off"
    } else {
        "/dev/null"
    };
    Ok(format!(
        r#"# generated by `cargo xtask bench`
{modules}
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {access_log};
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    {http_extra}
    server {{
        listen {listen} backlog=4096;
        location / {{
            {location}
        }}
        {extra_locations}
    }}
}}
"#
    ))
}

/// Pooled HTTP/1.1 connections to the app, as nodeward pools them.
const PROXY_PASS: &str = "proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";";

fn upstream_block(upstream: SocketAddr) -> String {
    format!(
        "upstream app {{\n        server {upstream};\n        keepalive 256;\n        keepalive_requests 1000000;\n    }}"
    )
}

/// RS256 validation as a competent NGINX user writes it for Debian's njs
/// 0.7.9 (see shared/notes/nginx-njs.md): WebCrypto with the key imported
/// from SPKI on every request (no cross-request cache in this njs), every
/// `await` into a variable, the usual registered-claim checks, and the
/// subject handed to the proxied request.
fn njs_script(spki_b64: &str, issuer: &str, kid: &str) -> String {
    format!(
        r#"// generated by `cargo xtask bench`
const SPKI = '{spki_b64}';
const ISSUER = '{issuer}';
const AUDIENCE = '{AUDIENCE}';
const KID = '{kid}';

function part(s) {{
    return JSON.parse(Buffer.from(s, 'base64url').toString());
}}

async function verify(r) {{
    const auth = r.headersIn['Authorization'] || '';
    if (!auth.startsWith('Bearer ')) {{
        r.return(401);
        return;
    }}
    const parts = auth.slice(7).split('.');
    if (parts.length !== 3) {{
        r.return(401);
        return;
    }}
    let header, claims;
    try {{
        header = part(parts[0]);
        claims = part(parts[1]);
    }} catch (e) {{
        r.return(401);
        return;
    }}
    if (header.alg !== 'RS256' || header.kid !== KID) {{
        r.return(401);
        return;
    }}
    const key = await crypto.subtle.importKey('spki', Buffer.from(SPKI, 'base64'),
        {{name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256'}}, false, ['verify']);
    const ok = await crypto.subtle.verify({{name: 'RSASSA-PKCS1-v1_5'}}, key,
        Buffer.from(parts[2], 'base64url'), Buffer.from(parts[0] + '.' + parts[1]));
    if (!ok) {{
        r.return(401);
        return;
    }}
    const now = Math.floor(Date.now() / 1000);
    const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (typeof claims.exp !== 'number' || claims.exp <= now - 60
        || (typeof claims.nbf === 'number' && claims.nbf > now + 60)
        || claims.iss !== ISSUER || aud.indexOf(AUDIENCE) < 0) {{
        r.return(401);
        return;
    }}
    r.variables.jwt_sub = String(claims.sub);
    r.return(204);
}}

export default {{verify}};
"#
    )
}

/// One `nodeward run` process.
pub struct Nodeward {
    pub admin_url: String,
    pub pid: u32,
    proc: ChildProc,
}

impl Nodeward {
    /// Starts `nodeward run --config <dir>/<name>.yaml` with stdout (the
    /// audit log, one line per request) on /dev/null: a pipe nobody drains
    /// fast enough would stall the agent. `sh` writes its PID and `exec`s,
    /// so that PID is nodeward's. Does not wait for readiness.
    pub fn spawn(bin: &Path, name: &str, dir: &Path, yaml: &str, admin: u16) -> anyhow::Result<Self> {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        let pid_file = dir.join(format!("{name}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1"; shift; exec "$@" >/dev/null"#)
            .arg("sh")
            .arg(&pid_file)
            .arg(bin)
            .args(["run", "--config"])
            .arg(&config);
        let proc = ChildProc::spawn(name, &mut cmd, &dir.join(format!("{name}.stderr")))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break pid;
            }
            if Instant::now() > deadline {
                bail!("{name} wrote no PID file");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Self {
            admin_url: format!("http://127.0.0.1:{admin}"),
            pid,
            proc,
        })
    }

    /// Waits until every workload listener accepts connections, /readyz
    /// says ready and /metrics shows the provider's keys.
    ///
    /// /readyz alone is not enough: the agent serves it before its first
    /// config is applied, and with no providers yet it answers 200 (the
    /// report of issue 5 describes the fix).
    pub async fn wait_ready(&mut self, http: &reqwest::Client, listens: &[SocketAddr]) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Err(e) = self.proc.check_running() {
                bail!("{e:#}\n{} stderr:\n{}", self.proc.name(), self.proc.stderr_tail(20));
            }
            if let Some(down) = listens.iter().find(|a| std::net::TcpStream::connect(a).is_err()) {
                last = format!("workload listener {down} not accepting yet");
            } else {
                match http.get(format!("{}/readyz", self.admin_url)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let metrics = self.metrics(http).await.unwrap_or_default();
                        if nodeward_testkit::metric(&metrics, PROVIDER_READY) == Some(1.0) {
                            return Ok(());
                        }
                        last = format!("/readyz 200 but no {PROVIDER_READY} 1 in /metrics");
                    }
                    Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default().trim()),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} not ready after {READY_TIMEOUT:?} (last /readyz: {last})\nstderr:\n{}",
            self.proc.name(),
            self.proc.stderr_tail(20)
        )
    }

    pub async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<String> {
        Ok(http
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await?)
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.proc.stop()?;
        if !status.success() {
            eprintln!(
                "warning: {} exited with {status}; stderr:\n{}",
                self.proc.name(),
                self.proc.stderr_tail(10)
            );
        }
        Ok(())
    }
}

/// One workload of a nodeward config: where it listens.
pub struct Workload {
    pub listen: SocketAddr,
}

/// Knobs the scenarios turn on top of the contract's example config.
#[derive(Default)]
pub struct ConfigKnobs {
    /// `token_cache.max_entries` (cache-miss scenarios: 0).
    pub cache_entries: Option<u64>,
    /// `refresh: {min_interval, max_interval}` for the provider.
    pub refresh: Option<&'static str>,
}

/// The contract's example config (`nodeward_testkit::example_config`, the
/// same policy the tests and the demo use), with the benchmark's ports, a
/// state directory, one workload per entry of `workloads` (all behind the
/// one app, all selected by the one policy), and `knobs`.
pub fn nodeward_config(
    issuer: &str,
    upstream: SocketAddr,
    admin: u16,
    workloads: &[Workload],
    state_dir: &Path,
    knobs: &ConfigKnobs,
) -> anyhow::Result<String> {
    use serde_yaml_ng::{Mapping, Value as Y};
    let mut doc: Y = serde_yaml_ng::from_str(&nodeward_testkit::example_config(issuer, upstream))
        .context("parsing nodeward_testkit::example_config")?;
    let map = doc.as_mapping_mut().context("example config is not a mapping")?;
    map.insert("admin".into(), format!("127.0.0.1:{admin}").into());
    map.insert("state_dir".into(), state_dir.to_string_lossy().into_owned().into());
    if let Some(n) = knobs.cache_entries {
        let mut tc = Mapping::new();
        tc.insert("max_entries".into(), n.into());
        map.insert("token_cache".into(), Y::Mapping(tc));
    }
    if let Some(interval) = knobs.refresh {
        let provider = map
            .get_mut("providers")
            .and_then(|p| p.get_mut(0))
            .and_then(Y::as_mapping_mut)
            .context("example config has no provider")?;
        let mut r = Mapping::new();
        r.insert("min_interval".into(), interval.into());
        r.insert("max_interval".into(), interval.into());
        provider.insert("refresh".into(), Y::Mapping(r));
    }
    let template = map
        .get("workloads")
        .and_then(|w| w.get(0))
        .cloned()
        .context("example config has no workload")?;
    let list = workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut wl = template.clone();
            if let Some(m) = wl.as_mapping_mut() {
                if workloads.len() > 1 {
                    let name = m.get("name").and_then(Y::as_str).unwrap_or("w").to_owned();
                    m.insert("name".into(), format!("{name}-{i}").into());
                }
                m.insert("listen".into(), w.listen.to_string().into());
            }
            wl
        })
        .collect();
    map.insert("workloads".into(), Y::Sequence(list));
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// `yaml` (from [`nodeward_config`]) with its workloads replaced by one
/// eBPF-steered workload in the network namespace `netns` (same name, labels
/// and so policy as before; the app is reached at the original destination,
/// pod IP:8080 inside the namespace) and the eBPF pins under `pin_dir`.
pub fn steered_config(yaml: &str, netns: &Path, pin_dir: &Path) -> anyhow::Result<String> {
    use serde_yaml_ng::{Mapping, Value as Y};
    let mut doc: Y = serde_yaml_ng::from_str(yaml).context("parsing the nodeward config")?;
    let map = doc.as_mapping_mut().context("config is not a mapping")?;
    let mut ebpf = Mapping::new();
    ebpf.insert("pin_dir".into(), pin_dir.to_string_lossy().into_owned().into());
    map.insert("ebpf".into(), Y::Mapping(ebpf));
    let mut wl = map
        .get("workloads")
        .and_then(|w| w.get(0))
        .and_then(Y::as_mapping)
        .cloned()
        .context("config has no workload")?;
    wl.remove("listen");
    wl.remove("upstream");
    wl.insert("netns".into(), netns.to_string_lossy().into_owned().into());
    map.insert("workloads".into(), Y::Sequence(vec![Y::Mapping(wl)]));
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// The namespace the RBAC scenario's workload stands for.
pub const RBAC_NAMESPACE: &str = "shop";

/// `yaml` (from [`nodeward_config`]) with the cluster's RBAC in the way of
/// every token-carrying request: the agent talks to the API server of
/// `kubeconfig`, the provider maps `email` / `groups` to a Kubernetes user
/// (`oidc:` prefixed, as issue 12's contract shows), the workload stands for
/// namespace [`RBAC_NAMESPACE`], and the catch-all rule `default` also asks
/// whether that user may `get` the workload's `services/proxy` — the same
/// request as without the rule plus one SubjectAccessReview (then cached).
pub fn rbac_config(yaml: &str, kubeconfig: &Path) -> anyhow::Result<String> {
    use serde_yaml_ng::Value as Y;
    let mut doc: Y = serde_yaml_ng::from_str(yaml).context("parsing the nodeward config")?;
    let patch = |text: &str| serde_yaml_ng::from_str::<Y>(text).context("a constant YAML patch");
    let map = doc.as_mapping_mut().context("config is not a mapping")?;
    let mut kube = serde_yaml_ng::Mapping::new();
    kube.insert("kubeconfig".into(), kubeconfig.to_string_lossy().into_owned().into());
    map.insert("kubernetes".into(), Y::Mapping(kube));
    map.get_mut("providers")
        .and_then(|p| p.get_mut(0))
        .and_then(Y::as_mapping_mut)
        .context("config has no provider")?
        .insert(
            "claim_mappings".into(),
            patch(r#"{username: {claim: email, prefix: "oidc:"}, groups: {claim: groups, prefix: "oidc:"}}"#)?,
        );
    let rules = map
        .get_mut("policies")
        .and_then(|p| p.get_mut(0))
        .and_then(|p| p.get_mut("rules"))
        .and_then(Y::as_sequence_mut)
        .context("config has no policy rules")?;
    rules
        .iter_mut()
        .find(|r| r.get("name").and_then(Y::as_str) == Some("default"))
        .and_then(|r| r.get_mut("require"))
        .and_then(Y::as_mapping_mut)
        .context("config has no rule `default` with `require`")?
        .insert(
            "kubernetes_rbac".into(),
            patch(
                r#"{resource: {group: "", resource: services, subresource: proxy, namespace: "{namespace}", name: "{workload}"}}"#,
            )?,
        );
    for w in map
        .get_mut("workloads")
        .and_then(Y::as_sequence_mut)
        .context("config has no workloads")?
    {
        if let Some(w) = w.as_mapping_mut() {
            w.insert("namespace".into(), RBAC_NAMESPACE.into());
        }
    }
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// `n` distinct loopback ports that were free a moment ago (all held until
/// all are picked). Like `proc::free_ports`, for a count known at run time.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0 to find free ports")?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// `cargo build --release -p PACKAGE`, returning the binary cargo reports
/// (so CARGO_TARGET_DIR and friends are honoured).
pub fn build_release(package: &str) -> anyhow::Result<PathBuf> {
    build_profile(package, "release")
}

/// `cargo build --profile PROFILE -p PACKAGE`, returning the binary.
pub fn build_profile(package: &str, profile: &str) -> anyhow::Result<PathBuf> {
    println!("building {package} (cargo build --profile {profile} -p {package}) ...");
    let out = crate::cargo()
        .args([
            "build",
            "--profile",
            profile,
            "-p",
            package,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --profile {profile} -p {package} failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == package)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo build did not report a {package} executable"))
}
