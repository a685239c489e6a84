//! Test support shared by the integration tests, the benchmarks and the demo:
//! a dev IdP on loopback, an upstream that echoes what it received, and an
//! in-process agent on ephemeral ports; `netns` has the fixtures of the
//! root-only network-namespace tests, `cgroup` those of the cgroup
//! (egress) ones, `kubeapi` a fake Kubernetes API, `shaped` providers shaped
//! like real IdPs (every JWS algorithm, their JWKS and token habits).
//!
//! Its own crate, a dev-dependency only, so none of it (nor the dev IdP it
//! drives) is ever linked into the privileged agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use nodeward::config::Config;
use nodeward::{Agent, Audit};
use nodeward_dev_idp::{DevIdp, MintRequest};

/// A dev IdP serving on 127.0.0.1 with a random port.
pub struct TestIdp {
    pub idp: Arc<DevIdp>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestIdp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind idp");
        Self::start_on(listener).await
    }

    /// Serves on an existing listener (to restart an IdP on the same port).
    pub async fn start_on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("idp addr");
        let idp = Arc::new(DevIdp::new(format!("http://{addr}")).expect("idp keys"));
        Self::serve(idp, listener).await
    }

    /// Serves an existing IdP (same keys) on `listener`.
    pub async fn serve(idp: Arc<DevIdp>, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("idp addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn({
            let idp = idp.clone();
            async move {
                let _ = nodeward_dev_idp::serve(idp, listener, async move {
                    let _ = rx.await;
                })
                .await;
            }
        });
        Self {
            idp,
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub fn issuer(&self) -> String {
        self.idp.issuer().to_string()
    }

    /// Mints an RS256 token with `claims` merged over the defaults.
    pub fn token(&self, claims: Value) -> String {
        self.token_with("RS256", claims)
    }

    pub fn token_with(&self, alg: &str, claims: Value) -> String {
        let claims = match claims {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        self.idp
            .mint(&MintRequest {
                alg: Some(alg.into()),
                claims,
                ..MintRequest::default()
            })
            .expect("mint")
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(mut self) -> Arc<DevIdp> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        self.idp.clone()
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 upstream that answers every request with a JSON echo of its
/// method, path, headers (every value, in order) and body length.
/// `/slow/<ms>` waits that long first; `/status/<code>` answers that status.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    requests: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        Self::serve(listener)
    }

    /// Serves on an existing listener (e.g. one made inside a network namespace).
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("echo addr");
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        echo(req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, requests, task }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let mut status = 200;
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|m| m.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|m| m.parse::<u16>().ok()) {
        status = code;
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let list = headers.entry(name.as_str()).or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(l) = list {
            l.push(Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()));
        }
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let body = req.into_body().collect().await?.to_bytes();
    let out = json!({ "method": method, "path": path, "query": query, "headers": headers, "body_len": body.len() });
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The configuration example of the design contract, verbatim (comments
/// included): it must work as written. The agent's config unit tests read
/// the same file.
pub const CONTRACT_EXAMPLE: &str = include_str!("contract-example.yaml");

/// The contract's example configuration, pointed at `issuer` and `upstream`,
/// plus an audit-mode route (`/audit/**` needs group `auditors`) and ports 0.
pub fn example_config(issuer: &str, upstream: SocketAddr) -> String {
    format!(
        r#"admin: 127.0.0.1:0
providers:
  - name: corp
    issuer: {issuer}
    audiences: [orders]
policies:
  - name: orders
    selector: {{app: orders}}
    ports: [8080]
    rules:
      - name: health
        paths: ["/healthz"]
        allow: anonymous
      - name: admin
        paths: ["/admin/**"]
        methods: [POST, DELETE]
        require:
          providers: [corp]
          claims:
            groups: {{any_of: [admins]}}
      - name: reports
        paths: ["/audit/**"]
        mode: audit
        require:
          claims:
            groups: {{any_of: [auditors]}}
      - name: default
        require: {{providers: [corp]}}
    forward_claims: {{x-user-email: email}}
workloads:
  - name: orders
    labels: {{app: orders}}
    listen: 127.0.0.1:0
    upstream: {upstream}
"#
    )
}

/// An agent running in this process, with its own temporary state directory.
pub struct TestAgent {
    pub agent: Agent,
    pub state_dir: tempfile::TempDir,
}

impl TestAgent {
    /// Starts from YAML; `state_dir` is set to a fresh temporary directory.
    pub async fn start(yaml: &str) -> Self {
        let state_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(yaml, state_dir).await
    }

    /// Starts with a given state directory (to test the disk copy across restarts).
    pub async fn start_in(yaml: &str, state_dir: tempfile::TempDir) -> Self {
        Self::start_with(yaml, state_dir, Audit::tracing()).await
    }

    /// Starts with audit lines going to `audit` (e.g. [`AuditCapture`]).
    pub async fn start_with(yaml: &str, state_dir: tempfile::TempDir, audit: Audit) -> Self {
        let config = Self::config(yaml, state_dir.path());
        let agent = Agent::start(config, audit).await.expect("agent starts");
        Self { agent, state_dir }
    }

    pub fn config(yaml: &str, state_dir: &std::path::Path) -> Config {
        let mut config = Config::parse(yaml, std::path::Path::new("test.yaml")).expect("test config is valid");
        config.state_dir = state_dir.to_path_buf();
        config
    }

    /// `http://<listener of workload>`.
    pub fn url(&self, workload: &str) -> String {
        format!(
            "http://{}",
            self.agent.workload_addr(workload).expect("workload is listening")
        )
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.agent.admin_addr())
    }

    /// Waits (bounded) until /readyz says ready.
    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if self.agent.not_ready().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agent not ready after 5s: {:?}", self.agent.not_ready());
    }

    /// The Prometheus text from /metrics.
    pub async fn metrics(&self) -> String {
        let resp = client()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .expect("metrics");
        resp.text().await.expect("metrics body")
    }

    pub async fn shutdown(self) -> tempfile::TempDir {
        self.agent.shutdown().await;
        self.state_dir
    }
}

/// The value of one sample line in Prometheus text, e.g.
/// `metric(&text, "nodeward_jwks_keys{provider=\"corp\"}")`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// An HTTP client for tests: no proxy from the environment, short timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// Keeps an [`AuditCapture`]'s writer thread running; dropping it flushes.
pub struct AuditFlush {
    _guard: Box<dyn Send>,
}

/// The agent's audit lines, as the binary writes them, kept in memory.
#[derive(Clone, Default)]
pub struct AuditCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl AuditCapture {
    /// An [`Audit`] writing here, and what keeps its writer thread running
    /// (keep it until the lines are read; dropping it flushes).
    pub fn audit(&self) -> (Audit, AuditFlush) {
        let (audit, guard) =
            Audit::writer(Box::new(self.clone()), nodeward::AuditLimits::default()).expect("audit writer");
        (
            audit,
            AuditFlush {
                _guard: Box::new(guard),
            },
        )
    }

    /// Every line so far, parsed (the writer flushes every few ms; this
    /// waits, bounded, until at least `n` lines are there).
    pub async fn lines(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let lines = self.parsed();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.parsed()
    }

    fn parsed(&self) -> Vec<Value> {
        let bytes = self.0.lock().expect("audit capture").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// Everything written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("audit capture")).into_owned()
    }
}

impl std::io::Write for AuditCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("audit capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub mod cgroup;
pub mod interop;
pub mod kubeapi;
pub mod netns;
pub mod pod;
pub mod process;
pub mod resources;
pub mod shaped;
mod static_files;
pub mod wire;

pub use static_files::StaticFiles;
