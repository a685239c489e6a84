//! What the live run checks through Prometheus's HTTP API (and `promtool`)
//! once the traffic is over and scraped. Each check prints one line and adds
//! a failure when it does not hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::dashboard::{self, Dashboard, Intervals};
use super::env::{Env, NAMESPACE};
use super::prometheus::{JOB, NODE, Prometheus};
use super::traffic::Report;
use super::{promtool, report};

/// Metrics the rules use that the live run's traffic does not make (their
/// series appear with the first event they count), and where they are
/// exercised instead.
const NOT_YET: &[(&str, &str)] = &[
    (
        "nodeward_rbac_reviews_total",
        "the live run has no kubernetes_rbac rule (tests/kubernetes_identity.rs exercises it)",
    ),
    (
        "nodeward_egress_token_fetches_total",
        "the live run enrols no egress (tests/outbound.rs and tests/egress_tokens.rs exercise it)",
    ),
];

/// Rule evaluation runs every second; alerts appear within a few.
const ALERTS_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Checks<'a> {
    pub prom: &'a Prometheus,
    pub env: &'a Env,
    pub failures: Vec<String>,
}

impl Checks<'_> {
    fn check(&mut self, ok: bool, what: &str, detail: &str) {
        report(&mut self.failures, ok, what, detail);
    }

    /// One active target, healthy, with the labels the scrape config gives it,
    /// every scrape of the run successful.
    pub async fn target(&mut self) -> anyhow::Result<()> {
        let data = self.prom.api("targets", &[("state", "active")]).await?;
        let targets = data["activeTargets"].as_array().cloned().unwrap_or_default();
        let t = targets.first().cloned().unwrap_or_default();
        let want_url = format!("http://{}/metrics", self.env.admin_addr);
        let ok = targets.len() == 1
            && t["health"] == "up"
            && t["lastError"].as_str().is_some_and(str::is_empty)
            && t["scrapeUrl"] == want_url.as_str()
            && t["labels"]["job"] == JOB
            && t["labels"]["instance"] == self.env.admin_addr.as_str()
            && t["labels"]["node"] == NODE;
        self.check(
            ok,
            &format!("/api/v1/targets: one target, up, {want_url}, labels job/instance/node"),
            &serde_json::to_string_pretty(&targets)?,
        );
        let q = format!(
            "count_over_time(up{{job=\"{JOB}\"}}[1h]) and sum_over_time(up{{job=\"{JOB}\"}}[1h]) == count_over_time(up{{job=\"{JOB}\"}}[1h])"
        );
        let scrapes = self.prom.query(&q, None).await?;
        let n = scrapes.first().and_then(|s| s.points.first()).map_or(0.0, |p| p.1);
        self.check(
            n >= 2.0,
            &format!("{n} scrapes, every one successful (at least 2 needed)"),
            &format!("{q} gave {n}: a scrape failed, or too few happened"),
        );
        Ok(())
    }

    /// The series a reader of the dashboard and the alerts relies on, with
    /// their labels, found through `/api/v1/series`.
    pub async fn series(&mut self) -> anyhow::Result<()> {
        let mut want: Vec<String> = [
            r#"nodeward_requests_total{workload="orders",decision="allow",reason="authorized"}"#,
            r#"nodeward_requests_total{workload="orders",decision="allow",reason="anonymous"}"#,
            r#"nodeward_requests_total{workload="orders",decision="audit_deny",reason="claim_mismatch"}"#,
            r#"nodeward_requests_total{workload="billing",decision="allow",reason="authorized"}"#,
            r#"nodeward_decision_duration_seconds_bucket{workload="orders",le="+Inf"}"#,
            r#"nodeward_decision_duration_seconds_count{workload="billing"}"#,
            r#"nodeward_upstream_errors_total{workload="billing",kind="connect"}"#,
            r#"nodeward_connections_total{workload="orders"}"#,
            "nodeward_token_cache_hits_total",
            "nodeward_token_cache_misses_total",
            "nodeward_token_cache_entries",
            r#"nodeward_jwks_fetches_total{provider="corp",result="ok"}"#,
            r#"nodeward_jwks_fetches_total{provider="corp",result="status"}"#,
            r#"nodeward_jwks_on_demand_fetches_total{provider="corp"}"#,
            r#"nodeward_jwks_on_demand_rate_limited_total{provider="corp"}"#,
            r#"nodeward_jwks_keys{provider="corp"}"#,
            r#"nodeward_jwks_age_seconds{provider="corp"}"#,
            r#"nodeward_provider_ready{provider="corp"}"#,
            "nodeward_ready",
            r#"nodeward_workloads{state="serving"}"#,
            r#"nodeward_config_reloads_total{result="ok"}"#,
            r#"nodeward_config_reloads_total{result="rejected"}"#,
            r#"nodeward_kubernetes_watch_events_total{type="restarted"}"#,
            "nodeward_kubernetes_api_errors_total",
            "nodeward_kubernetes_synced",
            "nodeward_audit_buffered_bytes",
            "nodeward_audit_backpressure_waits_total",
            "nodeward_process_cpu_seconds_total",
            "nodeward_process_resident_memory_bytes",
            "nodeward_process_open_fds",
        ]
        .map(String::from)
        .to_vec();
        for reason in [
            "missing_token",
            "malformed_token",
            "token_expired",
            "wrong_audience",
            "unknown_issuer",
            "unknown_kid",
            "claim_mismatch",
        ] {
            want.push(format!(
                r#"nodeward_requests_total{{workload="orders",decision="deny",reason="{reason}"}}"#
            ));
        }
        for (pod, state) in [
            ("orders-pending", "waiting"),
            ("node-exporter", "refused"),
            ("orders-lost", "failed"),
        ] {
            want.push(pod_series(pod, state));
        }
        if self.env.steered.is_some() {
            want.push(pod_series("orders-steered", "enrolled"));
            want.push(pod_series("ghost", "deny_all"));
            let ghost = format!("{NAMESPACE}/ghost");
            let steered = format!("{NAMESPACE}/orders-steered");
            want.push(format!(
                r#"nodeward_requests_total{{workload="{ghost}",decision="deny",reason="no_policy"}}"#
            ));
            want.push(format!(
                r#"nodeward_requests_total{{workload="{steered}",decision="allow",reason="authorized"}}"#
            ));
            for verdict in ["steered", "passed", "dropped_fail_closed"] {
                for w in [&ghost, &steered] {
                    want.push(format!(
                        r#"nodeward_ebpf_connections_total{{workload="{w}",verdict="{verdict}"}}"#
                    ));
                }
            }
            want.push(r#"nodeward_workloads{state="enrolled"}"#.into());
            want.push("nodeward_enrolment_duration_seconds_count".into());
        }
        let mut missing = Vec::new();
        for m in &want {
            let found = self.prom.series(m).await?;
            let targeted = found.iter().all(|l| {
                l.get("job").map(String::as_str) == Some(JOB)
                    && l.get("instance") == Some(&self.env.admin_addr)
                    && l.get("node").map(String::as_str) == Some(NODE)
            });
            if found.len() != 1 || !targeted {
                missing.push(format!("{m}: {} series {found:?}", found.len()));
            }
        }
        self.check(
            missing.is_empty(),
            &format!(
                "/api/v1/series: {} expected series, each exactly once with the target's labels",
                want.len()
            ),
            &missing.join("\n"),
        );
        Ok(())
    }

    /// Values the run determines: exactly, or within bounds it sets.
    pub async fn values(&mut self, t: &Report) -> anyhow::Result<()> {
        let sent = t.decisions() as f64;
        let exact = |q: &str, v: f64| (q.to_owned(), v, v);
        let mut want: Vec<(String, f64, f64)> = vec![
            exact(&format!("sum(nodeward_requests_total{{job=\"{JOB}\"}})"), sent),
            exact("nodeward_ready", 1.0),
            exact("nodeward_provider_ready{provider=\"corp\"}", 1.0),
            exact("nodeward_kubernetes_synced", 1.0),
            exact("nodeward_workloads{state=\"serving\"}", 2.0),
            exact("sum(nodeward_kubernetes_pods{state=\"failed\"})", 1.0),
            exact("nodeward_config_reloads_total{result=\"rejected\"}", 1.0),
        ];
        if self.env.steered.is_some() {
            let (steered, passed) = t.steered_connections();
            want.push(exact("nodeward_workloads{state=\"enrolled\"}", 2.0));
            want.push(exact(
                "sum(nodeward_ebpf_connections_total{verdict=\"dropped_fail_closed\"})",
                0.0,
            ));
            // One connection per request to the steered pods.
            want.push(exact(
                "sum(nodeward_ebpf_connections_total{verdict=\"steered\"})",
                steered as f64,
            ));
            // The pod's calls to itself, and the agent's own pooled
            // connections to the app, which come from the pod's address too.
            want.push((
                "sum(nodeward_ebpf_connections_total{verdict=\"passed\"})".into(),
                passed as f64,
                (passed + steered) as f64,
            ));
        }
        let mut wrong = Vec::new();
        for (q, lo, hi) in &want {
            let got = self.prom.query(q, None).await?;
            let got = got.first().and_then(|s| s.points.first()).map(|p| p.1);
            if !got.is_some_and(|v| (*lo..=*hi).contains(&v)) {
                wrong.push(format!("{q} = {got:?}, expected {lo}..={hi}"));
            }
        }
        self.check(
            wrong.is_empty(),
            &format!(
                "{} values the run fixes (decisions counted = {sent} requests sent, readiness, pods, reloads{})",
                want.len(),
                if self.env.steered.is_some() {
                    ", eBPF connections"
                } else {
                    ""
                }
            ),
            &wrong.join("\n"),
        );
        Ok(())
    }

    /// Every nodeward family's type and help as Prometheus read them.
    pub async fn metadata(&mut self, exposition: &str) -> anyhow::Result<()> {
        let data = self.prom.api("metadata", &[]).await?;
        let mut wrong = Vec::new();
        let families: BTreeSet<&str> = exposition
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for name in &families {
            let want = if name.ends_with("_total") {
                "counter"
            } else if name.ends_with("_duration_seconds") {
                "histogram"
            } else {
                "gauge"
            };
            let meta = &data[*name][0];
            if meta["type"] != want || meta["help"].as_str().is_none_or(str::is_empty) {
                wrong.push(format!("{name}: {meta}, expected type {want} and a help text"));
            }
        }
        self.check(
            wrong.is_empty() && !families.is_empty(),
            &format!("/api/v1/metadata: {} families, types by name (_total counter, _duration_seconds histogram, else gauge), each with help", families.len()),
            &wrong.join("\n"),
        );
        Ok(())
    }

    pub fn promtool_metrics(&mut self, exposition: &str, dir: &Path) -> anyhow::Result<()> {
        let (ok, out) = promtool(dir, &["check", "metrics"], Some(exposition.as_bytes()))?;
        self.check(
            ok && out.trim().is_empty(),
            &format!(
                "promtool check metrics < /metrics ({} lines): no complaint",
                exposition.lines().count()
            ),
            &out,
        );
        Ok(())
    }

    /// Every metric name the rules and the dashboard use is one the agent exports.
    pub fn names_exist(&mut self, exposition: &str, texts: &[String]) {
        let exported: BTreeSet<&str> = exposition
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut used = BTreeSet::new();
        for t in texts {
            let mut rest = t.as_str();
            while let Some(i) = rest.find("nodeward_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                used.insert(name);
            }
        }
        let mut unknown = Vec::new();
        for name in &used {
            if exported.contains(name.as_str()) {
                continue;
            }
            if self.env.steered.is_none() && needs_ebpf(name) {
                println!("NOT CHECKED (--no-ebpf: no steered pod): {name} is not exported without one");
                continue;
            }
            match NOT_YET.iter().find(|(n, _)| n == name) {
                Some((_, why)) => println!("note {name} is used but has no series in this run: {why}"),
                None => unknown.push(name.clone()),
            }
        }
        self.check(
            unknown.is_empty(),
            &format!(
                "the {} metric names the rules and the dashboard use are exported",
                used.len()
            ),
            &format!("not in /metrics: {unknown:?}"),
        );
    }

    /// Every panel query at the end of the run, first with every variable at
    /// "All" (each must return series), then with each variable at a real
    /// value from its own `label_values` query (each must evaluate).
    pub async fn dashboard(&mut self, d: &Dashboard, iv: &Intervals, at: f64) -> anyhow::Result<Values> {
        let all: BTreeMap<String, String> = d
            .variables
            .iter()
            .filter(|v| v.kind == "query")
            .map(|v| (v.name.clone(), v.all_value.clone().unwrap_or_else(|| ".*".into())))
            .collect();
        let mut bad = Vec::new();
        let mut unchecked = Vec::new();
        for (p, t) in d.queries() {
            let expr = dashboard::substitute(&t.expr, &all, iv)?;
            match self.prom.query(&expr, Some(at)).await {
                Err(e) => bad.push(format!("{:?} {}: {expr}: {e:#}", p.title, t.ref_id)),
                Ok(s) if s.is_empty() && needs_ebpf(&expr) && self.env.steered.is_none() => {
                    unchecked.push(format!("{:?} {}", p.title, t.ref_id));
                }
                Ok(s) if s.is_empty() => bad.push(format!("{:?} {}: no series: {expr}", p.title, t.ref_id)),
                Ok(_) => {}
            }
        }
        for u in &unchecked {
            println!("NOT CHECKED (--no-ebpf: no steered pod, so no eBPF series): panel {u}");
        }
        let n = d.queries().count();
        self.check(
            bad.is_empty(),
            &format!("dashboard: {n} panel queries with every variable at All: each answers with series"),
            &bad.join("\n"),
        );

        // The variables' own queries, each with the ones before it set.
        let mut values = BTreeMap::new();
        let mut problems = Vec::new();
        for v in d.variables.iter().filter(|v| v.kind == "query") {
            let Some((selector, label)) = v.query.as_deref().and_then(dashboard::parse_label_values) else {
                problems.push(format!("variable {}: no label_values query", v.name));
                continue;
            };
            let selector = dashboard::substitute(&selector, &values, iv)?;
            let data = self
                .prom
                .api(&format!("label/{label}/values"), &[("match[]", &selector)])
                .await?;
            let found: Vec<String> = data
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            // A value that has data in most panels: the agent, and `orders`.
            let pick = found
                .iter()
                .find(|x| **x == self.env.admin_addr || x.as_str() == "orders")
                .or(found.first());
            match pick {
                Some(x) => {
                    println!("     variable {} = {x:?} (of {found:?})", v.name);
                    values.insert(v.name.clone(), dashboard::regex_value(x));
                }
                None => problems.push(format!("variable {}: {selector} has no {label} values", v.name)),
            }
        }
        let mut empty = 0;
        for (p, t) in d.queries() {
            let expr = dashboard::substitute(&t.expr, &values, iv)?;
            match self.prom.query(&expr, Some(at)).await {
                Err(e) => problems.push(format!("{:?} {}: {expr}: {e:#}", p.title, t.ref_id)),
                Ok(s) => empty += usize::from(s.is_empty()),
            }
        }
        self.check(
            problems.is_empty(),
            &format!("dashboard: every variable has values, and the {n} queries evaluate with them ({empty} empty for that selection)"),
            &problems.join("\n"),
        );
        Ok(all)
    }

    /// Every rule loaded and evaluated without error.
    pub async fn rules(&mut self, alerts: &[String]) -> anyhow::Result<()> {
        let data = self.prom.api("rules", &[]).await?;
        let mut seen = BTreeSet::new();
        let mut bad = Vec::new();
        for g in data["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                let name = r["name"].as_str().unwrap_or_default().to_owned();
                let evaluated = r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001"));
                if r["health"] != "ok" || !evaluated {
                    bad.push(format!("{name}: health {} {}", r["health"], r["lastError"]));
                }
                seen.insert(name);
            }
        }
        let want: BTreeSet<String> = alerts.iter().cloned().collect();
        if seen != want {
            bad.push(format!("loaded {seen:?}, the rules file has {want:?}"));
        }
        self.check(
            bad.is_empty(),
            &format!(
                "/api/v1/rules: the {} alerts loaded and evaluated against the agent's series, health ok",
                want.len()
            ),
            &bad.join("\n"),
        );
        Ok(())
    }

    /// The alerts this run's traffic raises are pending or firing, with the
    /// labels that name the cause; every other alert is inactive.
    pub async fn alerts(&mut self, alerts: &[String]) -> anyhow::Result<()> {
        let mut expected: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("NodewardOnDemandRefetchRateLimited", vec![("provider", "corp")]),
            ("NodewardJwksFetchFailures", vec![("provider", "corp")]),
            ("NodewardUpstreamErrors", vec![("workload", "billing")]),
            (
                "NodewardPodEnrolmentFailed",
                vec![("namespace", NAMESPACE), ("pod", "orders-lost")],
            ),
            ("NodewardConfigReloadRejected", vec![]),
        ];
        if self.env.steered.is_some() {
            expected.push(("NodewardPodDenyAll", vec![("namespace", NAMESPACE), ("pod", "ghost")]));
        }
        let deadline = Instant::now() + ALERTS_TIMEOUT;
        let active = loop {
            let data = self.prom.api("alerts", &[]).await?;
            let active: Vec<BTreeMap<String, String>> = data["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["state"] == "pending" || a["state"] == "firing")
                .map(|a| {
                    let mut l: BTreeMap<String, String> = a["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    l.insert("state".into(), a["state"].as_str().unwrap_or_default().into());
                    l
                })
                .collect();
            let all_there = expected.iter().all(|e| matches(&active, e).is_some());
            if all_there || Instant::now() >= deadline {
                break active;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut problems = Vec::new();
        for e in &expected {
            match matches(&active, e) {
                Some(a) => println!("     {} is {} ({:?})", e.0, a["state"], e.1),
                None => problems.push(format!("{} {:?} is not pending or firing", e.0, e.1)),
            }
        }
        for a in &active {
            let name = a.get("alertname").map(String::as_str).unwrap_or_default();
            if !expected.iter().any(|e| e.0 == name) {
                problems.push(format!(
                    "{name} is {} but nothing in this run should raise it: {a:?}",
                    a["state"]
                ));
            }
        }
        for e in &expected {
            if !alerts.iter().any(|a| a == e.0) {
                problems.push(format!("{} is expected here but not in the rules file", e.0));
            }
        }
        let quiet = alerts.len() - expected.len();
        self.check(
            problems.is_empty(),
            &format!(
                "/api/v1/alerts: the {} alerts the traffic raises are active, the other {quiet} inactive",
                expected.len()
            ),
            &problems.join("\n"),
        );
        Ok(())
    }
}

pub type Values = BTreeMap<String, String>;

fn pod_series(pod: &str, state: &str) -> String {
    format!(r#"nodeward_kubernetes_pods{{namespace="{NAMESPACE}",pod="{pod}",state="{state}"}}"#)
}

/// Series that only exist with a steered workload.
pub fn needs_ebpf(expr: &str) -> bool {
    expr.contains("nodeward_ebpf_connections_total") || expr.contains("nodeward_enrolment_duration_seconds")
}

fn matches<'a>(
    active: &'a [BTreeMap<String, String>],
    (name, labels): &(&str, Vec<(&str, &str)>),
) -> Option<&'a BTreeMap<String, String>> {
    active.iter().find(|a| {
        a.get("alertname").map(String::as_str) == Some(*name)
            && labels.iter().all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
    })
}

/// The admin endpoint's `/metrics`, as Prometheus scraped it.
pub async fn exposition(env: &Env) -> anyhow::Result<String> {
    nodeward_testkit::client()
        .get(format!("{}/metrics", env.admin_url()))
        .send()
        .await
        .context("GET /metrics")?
        .text()
        .await
        .context("reading /metrics")
}
