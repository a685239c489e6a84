//! A real Prometheus for the live run: Debian's `prometheus` as a child
//! process on a free loopback port, with its storage in the run's temporary
//! directory, scraping one agent every second and evaluating the alert rules
//! every second; and a small client for the HTTP API (`/api/v1/...`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::proc::{ChildProc, free_ports};

/// Prometheus opens its TSDB and loads the rules in well under a second here;
/// a busy CI machine gets twenty.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const API_TIMEOUT: Duration = Duration::from_secs(10);

pub const JOB: &str = "nodeward";
/// The `node` label the monitors in deploy/monitoring add by relabelling.
pub const NODE: &str = "observe-node";

pub struct Prometheus {
    proc: ChildProc,
    pub url: String,
    http: reqwest::Client,
}

/// One series of a query result: labels, and (time, value) samples.
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

fn config(target: &str, rules: &Path) -> anyhow::Result<String> {
    // JSON strings are valid YAML scalars: safe for any path.
    let rules = serde_json::to_string(&rules.to_string_lossy())?;
    Ok(format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
scrape_configs:
  - job_name: {JOB}
    # As deploy/monitoring's monitors: the agent's own namespace/pod labels
    # (nodeward_kubernetes_pods) win over the target's.
    honor_labels: true
    static_configs:
      - targets: ["{target}"]
        labels: {{node: {NODE}}}
"#
    ))
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) with the rules file loaded.
    pub async fn start(dir: &Path, target: &str, rules: &Path) -> anyhow::Result<Self> {
        let [port] = free_ports()?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config(target, rules)?).context("writing prometheus.yml")?;
        let (ok, out) = super::promtool(dir, &["check", "config", "prometheus.yml"], None)?;
        anyhow::ensure!(ok, "promtool check config prometheus.yml:\n{out}");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut proc = ChildProc::spawn("prometheus", &mut cmd, &dir.join("prometheus.stderr"))?;
        let url = format!("http://127.0.0.1:{port}");
        let http = nodeward_testkit::client();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Err(e) = proc.check_running() {
                bail!("{e:#}\nprometheus's stderr ends with:\n{}", proc.stderr_tail(20));
            }
            let ready = http.get(format!("{url}/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "prometheus not ready after {START_TIMEOUT:?}\nstderr:\n{}",
                    proc.stderr_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { proc, url, http })
    }

    /// `GET /api/v1/<path>` with query parameters; the `data` of a success.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), params)
            .with_context(|| format!("/api/v1/{path} with {params:?}"))?;
        let resp = self
            .http
            .get(url)
            .timeout(API_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("GET /api/v1/{path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("/api/v1/{path} answered {status}: {text}"))?;
        if v["status"] != "success" {
            bail!(
                "{} ({}): {}",
                v["errorType"],
                status,
                v["error"].as_str().unwrap_or(&text)
            );
        }
        Ok(v["data"].clone())
    }

    /// An instant query at `time` (Unix seconds; now when `None`).
    pub async fn query(&self, expr: &str, time: Option<f64>) -> anyhow::Result<Vec<Series>> {
        let t = time.map(|t| format!("{t:.3}"));
        let mut params = vec![("query", expr)];
        if let Some(t) = &t {
            params.push(("time", t));
        }
        let data = self.api("query", &params).await?;
        series(&data)
    }

    pub async fn query_range(&self, expr: &str, start: f64, end: f64, step: f64) -> anyhow::Result<Vec<Series>> {
        let (start, end, step) = (format!("{start:.3}"), format!("{end:.3}"), format!("{step}"));
        let data = self
            .api(
                "query_range",
                &[("query", expr), ("start", &start), ("end", &end), ("step", &step)],
            )
            .await?;
        series(&data)
    }

    /// The label sets of the series `matcher` selects.
    pub async fn series(&self, matcher: &str) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        let data = self.api("series", &[("match[]", matcher)]).await?;
        Ok(data.as_array().into_iter().flatten().map(labels).collect())
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        self.proc.stderr_tail(n)
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.proc.stop()?;
        // Prometheus exits 0 on SIGTERM after closing its TSDB.
        anyhow::ensure!(
            status.success(),
            "prometheus did not exit cleanly on SIGTERM ({status})"
        );
        Ok(())
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn point(v: &Value) -> Option<(f64, f64)> {
    let t = v[0].as_f64()?;
    // Prometheus sends values as strings: "1.5", "NaN", "+Inf".
    let x = v[1].as_str()?.parse().ok()?;
    Some((t, x))
}

/// A `vector`, `matrix` or `scalar` result as series.
fn series(data: &Value) -> anyhow::Result<Vec<Series>> {
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => Ok(result
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| Series {
                labels: labels(&s["metric"]),
                points: match s["values"].as_array() {
                    Some(values) => values.iter().filter_map(point).collect(),
                    None => point(&s["value"]).into_iter().collect(),
                },
            })
            .collect()),
        Some("scalar") => Ok(vec![Series {
            labels: BTreeMap::new(),
            points: point(result).into_iter().collect(),
        }]),
        other => bail!("unexpected result type {other:?}"),
    }
}
