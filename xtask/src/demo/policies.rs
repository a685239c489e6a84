//! The eBPF demo's IdentityPolicy chapter. With no cluster here, the agent's
//! pod and IdentityPolicy watches talk to the testkit's fake Kubernetes API
//! (in this process, over real HTTP): the `shop` pod of the simulated node
//! becomes the Kubernetes pod `shop/catalog-0` (a process in its namespace,
//! listed in a cgroup tree the demo writes, as the kubelet's would be), an
//! app team's IdentityPolicy `shop/catalog` binds it, its status says so, a
//! broken policy is refused with `nodeward check`'s message, and a broken
//! update of `catalog` leaves the pod on its last good rules. The same
//! policy shows the Kubernetes identity of issue 12: a service-account
//! caller (a projected token minted by the fake API server, accepted by a
//! namespace rule) and requests decided by the cluster's RBAC (a
//! SubjectAccessReview the fake answers from the Role and RoleBinding the
//! demo applies, for the corporate user mapped by `claim_mappings`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nodeward_testkit::kubeapi::{FakeKubeApi, PodBuilder};
use serde_json::{Value, json};

use super::node::Node;
use crate::proc::DevIdp;

/// The simulated node's name in the fake API.
pub const NODE_NAME: &str = "demo-node";
/// The demo's pod that the chapter turns into a Kubernetes pod.
pub const POD: &str = "shop";
const UID: &str = "5a0b7c1d-0000-4000-8000-00000000ca7a";
const WAIT: Duration = Duration::from_secs(20);

/// What the platform grants: `oidc:alice@example.com` (corp's `email`,
/// mapped by `claim_mappings`) may `get` the `catalog` service's proxy
/// subresource in `shop`, which the `stock` rule asks about.
const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: catalog-stock-reader, namespace: shop}
rules:
  - apiGroups: [""]
    resources: ["services/proxy"]
    resourceNames: ["catalog"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: catalog-stock-readers, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: catalog-stock-reader}
subjects:
  - {kind: User, name: "oidc:alice@example.com", apiGroup: rbac.authorization.k8s.io}
"#;

/// The fake API, the pod's "container" process and the cgroup tree naming it.
pub struct Cluster {
    pub api: FakeKubeApi,
    dir: tempfile::TempDir,
    process: Child,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Cluster {
    pub async fn start(node: &Node) -> anyhow::Result<Self> {
        let api = FakeKubeApi::start().await;
        api.apply(&nodeward::k8s::crd::crd())
            .map_err(|e| anyhow::anyhow!("registering the IdentityPolicy CRD: {e}"))?;
        api.apply_yaml(RBAC)
            .map_err(|e| anyhow::anyhow!("applying the demo's Role and RoleBinding: {e}"))?;
        let dir = tempfile::Builder::new().prefix("nodeward-demo-cgroups-").tempdir()?;
        let pod = node.pod(POD);
        let process = Command::new("ip")
            .args(["netns", "exec", &pod.netns, "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("ip netns exec sleep (the pod's container)")?;
        let cluster = Self { api, dir, process };
        // Wait until `ip netns exec` has entered the namespace, then list the process.
        let want = std::fs::metadata(&pod.path).map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        let start = Instant::now();
        let pid = cluster.process.id();
        while std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
            != Some(want)
        {
            if start.elapsed() > WAIT {
                bail!("the pod's process never entered {}", pod.netns);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let scope = cluster.dir.path().join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-ca7a.scope",
            UID.replace('-', "_")
        ));
        std::fs::create_dir_all(&scope)?;
        std::fs::write(scope.join("cgroup.procs"), format!("{pid}\n"))?;
        Ok(cluster)
    }

    /// The agent config's `kubernetes` section for the fake.
    pub fn config(&self, dir: &Path) -> anyhow::Result<String> {
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy());
        let kubeconfig = q(&self.api.write_kubeconfig(dir))?;
        let cgroups = q(self.dir.path())?;
        Ok(format!(
            "kubernetes:\n  enabled: true\n  node_name: {NODE_NAME}\n  kubeconfig: {kubeconfig}\n  proc_root: /proc\n  cgroup_root: {cgroups}\n"
        ))
    }

    fn policy(&self, name: &str, spec: Value) -> anyhow::Result<i64> {
        let o = self
            .api
            .apply(&json!({
                "apiVersion": "nodeward.io/v1alpha1", "kind": "IdentityPolicy",
                "metadata": {"name": name, "namespace": "shop"}, "spec": spec,
            }))
            .map_err(|e| anyhow::anyhow!("applying IdentityPolicy shop/{name}: {e}"))?;
        o["metadata"]["generation"].as_i64().context("a generation")
    }

    /// SubjectAccessReviews the fake API server was asked.
    fn reviews(&self) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/subjectaccessreviews"))
            .count()
    }

    fn status(&self, name: &str) -> Value {
        self.api
            .get_object("nodeward.io/v1alpha1", "IdentityPolicy", Some("shop"), name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    async fn until(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) -> anyhow::Result<()> {
        let start = Instant::now();
        while !cond(self) {
            if start.elapsed() > WAIT {
                bail!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Runs the chapter; returns how many checks failed.
    pub async fn tour(&self, node: &Node, idp: &DevIdp) -> anyhow::Result<usize> {
        println!(
            "\nIdentityPolicies: an app team's policy as a Kubernetes resource (nodeward.io/v1alpha1).
No cluster here, so the agent's pod and policy watches talk to a fake Kubernetes API
({}); pod {POD} of the node is the Kubernetes pod shop/catalog-0.",
            self.api.url()
        );
        let spec = |open: &str, provider: &str| {
            json!({"selector": {"app": "catalog"}, "ports": [8080], "audiences": ["catalog"], "rules": [
                {"name": "health", "paths": [open], "allow": "anonymous"},
                {"name": "admins", "methods": ["DELETE"], "require": {"providers": [provider], "claims": {"groups": {"any_of": ["catalog-admins"]}}}},
                {"name": "from-shop", "paths": ["/internal/**"], "require": {"providers": ["cluster"], "source": {"namespaces": ["shop"]}}},
                {"name": "stock", "paths": ["/stock/**"], "require": {"providers": [provider], "kubernetes_rbac": {"resource": {
                    "group": "", "resource": "services", "subresource": "proxy", "namespace": "{namespace}", "name": "{label:app}"}}}},
                {"name": "default", "require": {"providers": [provider]}},
            ]})
        };
        let generation = self.policy("catalog", spec("/healthz", "corp"))?;
        let yaml = serde_yaml_ng::to_string(&spec("/healthz", "corp"))?;
        println!("kubectl apply: IdentityPolicy shop/catalog (generation {generation}), spec:");
        for line in yaml.lines() {
            println!("    {line}");
        }
        let ip = node.pod(POD).ip.to_string();
        self.api.apply_pod(
            PodBuilder::new("shop", "catalog-0")
                .uid(UID)
                .node(NODE_NAME)
                .label("nodeward.io/enabled", "true")
                .label("app", "catalog")
                .running(&ip)
                .build(),
        );
        self.until("shop/catalog accepted with its pod", |c| {
            let s = c.status("catalog");
            s["pods"] == 1 && accepted(&s)["status"] == "True"
        })
        .await?;
        table(&[("catalog", self.status("catalog"))]);

        let base = format!("http://{ip}:8080");
        let token = mint(
            idp,
            json!({"aud": "catalog", "sub": "alice", "email": "alice@example.com"}),
        )
        .await?;
        let admin = mint(
            idp,
            json!({"aud": "catalog", "sub": "carol", "groups": ["catalog-admins"]}),
        )
        .await?;
        let orders = mint(idp, json!({"aud": "orders", "sub": "alice"})).await?;
        let bob = mint(idp, json!({"aud": "catalog", "sub": "bob", "email": "bob@example.com"})).await?;
        // Projected service-account tokens, as the kubelet mounts them.
        let sa = |ns: &str, name: &str| {
            self.api
                .service_account_token(ns, name, None, &["catalog"], Duration::from_secs(3600))
        };
        let (from_shop, from_web) = (sa("shop", "orders"), sa("web", "frontend"));
        let mut failed = 0;
        for (what, method, path, token, want) in [
            ("probe, no token", "GET", "/healthz", None, 200),
            ("no token", "GET", "/items", None, 401),
            ("token for catalog", "GET", "/items", Some(&token), 200),
            (
                "token for another audience (orders)",
                "GET",
                "/items",
                Some(&orders),
                401,
            ),
            ("not in catalog-admins", "DELETE", "/items/7", Some(&token), 403),
            ("in catalog-admins", "DELETE", "/items/7", Some(&admin), 200),
            (
                "service account shop/orders, namespace rule",
                "GET",
                "/internal/reindex",
                Some(&from_shop),
                200,
            ),
            (
                "service account web/frontend, another namespace",
                "GET",
                "/internal/reindex",
                Some(&from_web),
                403,
            ),
            (
                "alice: RBAC allows (RoleBinding catalog-stock-readers)",
                "GET",
                "/stock/7",
                Some(&token),
                200,
            ),
            ("bob: RBAC has no binding for him", "GET", "/stock/7", Some(&bob), 403),
        ] {
            failed += request(&base, what, method, path, token.map(String::as_str), want).await?;
        }
        let reviews = self.reviews();
        failed += request(&base, "alice again", "GET", "/stock/7", Some(&token), 200).await?;
        let cached = self.reviews() == reviews;
        println!(
            "     the fake API server answered {reviews} SubjectAccessReviews from its RBAC objects; \
             alice's second request {}",
            if cached {
                "was answered from the agent's per-node cache"
            } else {
                "asked again (FAIL: expected a cache hit)"
            }
        );
        failed += usize::from(reviews != 2 || !cached);

        println!("\nkubectl apply: IdentityPolicy shop/catalog-next, with a typo in a provider's name:");
        self.policy(
            "catalog-next",
            json!({"selector": {"app": "catalog-next"}, "rules": [
                {"name": "default", "require": {"providers": ["crop"]}},
            ]}),
        )?;
        self.until("catalog-next refused", |c| {
            accepted(&c.status("catalog-next"))["status"] == "False"
        })
        .await?;
        let next = self.status("catalog-next");
        failed += usize::from(
            !accepted(&next)["message"]
                .as_str()
                .is_some_and(|m| m.contains("no provider named \"crop\"")),
        );
        println!("kubectl apply: the same typo in an update of shop/catalog (and /healthz opened wider):");
        let broken = self.policy("catalog", spec("/**", "crop"))?;
        self.until("the update refused", |c| {
            let s = c.status("catalog");
            s["observedGeneration"] == broken && accepted(&s)["status"] == "False"
        })
        .await?;
        table(&[("catalog", self.status("catalog")), ("catalog-next", next)]);
        println!("the pod keeps the last accepted rules (generation {generation}), nothing is opened:");
        failed += request(&base, "no token, after the refused update", "GET", "/items", None, 401).await?;
        failed += request(&base, "token for catalog", "GET", "/items", Some(&token), 200).await?;
        Ok(failed)
    }
}

fn accepted(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Accepted")
        .cloned()
        .unwrap_or(Value::Null)
}

/// What `kubectl -n shop get identitypolicies -o wide` would show, plus the nodes' entries.
fn table(rows: &[(&str, Value)]) {
    println!("\n  $ kubectl -n shop get identitypolicies -o wide");
    println!(
        "  {:<14} {:<9} {:<9} {:<5} {:<10} MESSAGE",
        "NAME", "ACCEPTED", "REASON", "PODS", "CONFLICTS"
    );
    for (name, s) in rows {
        let c = accepted(s);
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        println!(
            "  {name:<14} {:<9} {:<9} {:<5} {:<10} {}",
            text(&c["status"]),
            text(&c["reason"]),
            text(&s["pods"]),
            text(&s["conflicts"]),
            text(&c["message"])
        );
    }
    for (name, s) in rows {
        if let Some(nodes) = s["nodes"].as_object() {
            for (node, entry) in nodes {
                println!("  {name}: status.nodes.{node} = {entry}");
            }
        }
    }
    println!();
}

async fn mint(idp: &DevIdp, claims: Value) -> anyhow::Result<String> {
    let body = reqwest::Client::new()
        .post(format!("{}/mint", idp.url))
        .header("content-type", "application/json")
        .body(json!({"claims": claims}).to_string())
        .send()
        .await?
        .bytes()
        .await?;
    let resp: Value = serde_json::from_slice(&body)?;
    resp["token"]
        .as_str()
        .map(str::to_owned)
        .context("the dev IdP minted no token")
}

/// One request to the pod; prints it and returns 1 if the status differs.
async fn request(
    base: &str,
    what: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    want: u16,
) -> anyhow::Result<usize> {
    let mut req = reqwest::Client::new()
        .request(method.parse()?, format!("{base}{path}"))
        .timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
    let reason = body["reason"].as_str().map(|r| format!(" {r}")).unwrap_or_default();
    let ok = status == want;
    println!(
        "{} host   -> {POD}:8080  {method} {path} ({what}) -> {status}{reason}{}",
        if ok { "ok  " } else { "FAIL" },
        if ok {
            String::new()
        } else {
            format!(" (expected {want})")
        }
    );
    Ok(usize::from(!ok))
}
