//! The eBPF demo's outbound chapter (issue 16): the `web` pod calls
//! `orders` with plain `curl http://orders:8080/internal/stock`, no token,
//! no code — and `orders` sees `web`'s identity. The agent steers web's
//! connection (a cgroup `connect4` program on web's cgroup) to its egress
//! listener inside web, attaches a TokenRequest token for web's service
//! account (the fake Kubernetes API mints it, with the audience `orders`'
//! policy accepts), and forwards; `orders`' own policy admits exactly that
//! service account on `/internal/**`. The same call from the host, which
//! has no such identity, is refused. With the agent stopped, web's call is
//! refused at `connect()`: never sent without the identity it carries.
//!
//! `web` stays un-enrolled inbound (its policy has no `ports`): the
//! chapter adds an outbound side only.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nodeward_testkit::cgroup::CgroupGuard;
use nodeward_testkit::kubeapi::FakeKubeApi;
use serde_json::Value;

use super::node::{Node, Pins};

/// The caller pod, its namespace and service account in the fake API.
pub const CALLER: &str = "web";
const NAMESPACE: &str = "shop";
/// The audience `orders`' rule for internal callers accepts.
pub const AUDIENCE: &str = "nodeward";

/// `web`'s cgroup: where its "application" (curl) runs, and where the
/// egress programs attach. Removed on drop.
pub struct Caller {
    pub cgroup: CgroupGuard,
}

impl Caller {
    pub fn new(api: &FakeKubeApi) -> Self {
        api.apply_service_account(NAMESPACE, CALLER);
        Self {
            cgroup: CgroupGuard::new(),
        }
    }

    /// The agent config's policy and workload for `web` (appended to the
    /// demo's `policies` and `workloads`).
    pub fn policy(&self) -> String {
        format!(
            r#"  - name: web
    selector: {{app: web}}
    egress:
      - name: orders
        to: {{hosts: [orders, orders.shop.svc.cluster.local], ports: [8080]}}
        token: {{service_account: {{audience: {AUDIENCE}}}}}
"#
        )
    }

    pub fn workload(&self, node: &Node) -> anyhow::Result<String> {
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy());
        Ok(format!(
            "  - {{name: web, namespace: {NAMESPACE}, service_account: {CALLER}, labels: {{app: web}}, netns: {}, cgroup: {}}}\n",
            q(&node.pod(CALLER).path)?,
            q(&self.cgroup.path)?
        ))
    }

    /// `curl` as web's application: joins web's cgroup, enters its
    /// namespace, with `orders` resolved to the orders pod (as cluster DNS
    /// would). Returns (exit code, status, body).
    async fn curl(&self, node: &Node, url: &str) -> anyhow::Result<(i32, u16, Value)> {
        let orders: IpAddr = node.pod("orders").ip.into();
        let script = format!(
            "echo $$ > {} && exec nsenter --net={} -- curl -sS -m 5 --resolve orders:8080:{orders} -w '\\n%{{http_code}}' {url}",
            self.cgroup.path.join("cgroup.procs").display(),
            node.pod(CALLER).path.display()
        );
        let out = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .await
            .context("running curl in the web pod (needs curl and nsenter)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((
            out.status.code().unwrap_or(-1),
            status.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }

    /// The tour while the agent runs; returns the failed checks.
    pub async fn tour(&self, node: &Node, pins: &Pins, api: &FakeKubeApi) -> anyhow::Result<usize> {
        println!(
            "\n== outbound identity: the web pod calls orders with plain curl, no token, no code change\n\
             policy web: egress rule `orders` (hosts orders, orders.shop.svc.cluster.local; port 8080):\n\
             \x20 its calls carry a TokenRequest token for service account shop/web, audience {AUDIENCE}\n\
             policy orders: /internal/** admits service account shop/web (provider cluster)\n"
        );
        let start = Instant::now();
        while !std::fs::read_dir(pins.path.join("egress/links")).is_ok_and(|mut d| d.next().is_some()) {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "web's egress never enrolled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut failed = 0;
        let mut check = |ok: bool, what: String| {
            failed += usize::from(!ok);
            println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        };
        for i in 0..3 {
            let (exit, status, body) = self.curl(node, "http://orders:8080/internal/stock").await?;
            let sub = body["headers"]["x-nodeward-sub"][0].as_str().unwrap_or("(none)");
            check(
                exit == 0 && status == 200 && sub == "system:serviceaccount:shop:web",
                format!(
                    "web    -> orders:8080  curl http://orders:8080/internal/stock (call {}) -> {status}, orders' app sees x-nodeward-sub: {sub}",
                    i + 1
                ),
            );
        }
        let requests = api
            .token_requests()
            .get(&(NAMESPACE.to_string(), CALLER.to_string()))
            .copied()
            .unwrap_or(0);
        check(
            requests == 1,
            format!(
                "TokenRequests the agent made for shop/web: {requests} (one per token lifetime, shared by every call)"
            ),
        );
        let from_host = reqwest::Client::new()
            .get(format!("http://{}:8080/internal/stock", node.pod("orders").ip))
            .send()
            .await?;
        let status = from_host.status().as_u16();
        check(
            status == 401,
            format!("host   -> orders:8080  the same request from the host, which has no such identity -> {status}"),
        );
        Ok(failed)
    }

    /// After the agent stopped: web's configured call is refused at
    /// `connect()` (the pins stay), not sent without its identity.
    pub async fn fail_closed(&self, node: &Node) -> anyhow::Result<usize> {
        let (exit, status, _) = self.curl(node, "http://orders:8080/internal/stock").await?;
        let ok = exit == 7 && status == 0;
        println!(
            "{} web    -> orders:8080  curl while nodeward is down -> {} (fail closed: refused, never sent without web's identity)",
            if ok { "ok  " } else { "FAIL" },
            if exit == 7 {
                "connect() refused".to_string()
            } else {
                format!("curl exit {exit}, status {status}")
            }
        );
        Ok(usize::from(!ok))
    }
}
