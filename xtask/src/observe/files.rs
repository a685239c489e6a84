//! The checks that need no agent: the PrometheusRule is what the rules file
//! makes, `promtool check rules` and `promtool test rules` pass, every alert
//! has a firing and a silent test case, the tests catch a broken alert, and
//! the dashboard is well formed.

use std::path::Path;

use anyhow::Context as _;
use serde_yaml_ng::Value;

use super::{dashboard, promtool, report};

pub const ALERTS_DIR: &str = "deploy/monitoring/alerts";
pub const RULES: &str = "nodeward.rules.yaml";
const TESTS: &str = "nodeward.rules.test.yaml";
const PROMETHEUS_RULE: &str = "prometheusrule.yaml";
pub const DASHBOARD: &str = "deploy/monitoring/dashboard/nodeward.json";

/// Where the PrometheusRule's `spec` starts: the rules file from its `groups:` on.
const GROUPS: &str = "groups:\n";

const PROMETHEUS_RULE_HEAD: &str = "\
# GENERATED from nodeward.rules.yaml by `cargo xtask observe --sync`: edit
# that file, then sync. CI fails when this file is not what it makes.
# The PrometheusRule for clusters running the Prometheus Operator; the same
# rules as a plain rules file: nodeward.rules.yaml. Runbooks: docs/operations.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: nodeward
  labels:
    app.kubernetes.io/name: nodeward
    app.kubernetes.io/part-of: nodeward
    # Many Prometheus installs only pick rules with their release label,
    # e.g. `release: kube-prometheus-stack`: add it here if yours does.
spec:
";

/// The PrometheusRule made from the rules file's text: its `groups:` and
/// everything after, comments included, two spaces in under `spec:`.
pub fn prometheus_rule(rules: &str) -> anyhow::Result<String> {
    let start = rules
        .match_indices(GROUPS)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || rules[..i].ends_with('\n'))
        .with_context(|| format!("{RULES} has no top-level `groups:` line"))?;
    let mut out = String::from(PROMETHEUS_RULE_HEAD);
    for line in rules[start..].lines() {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

pub fn sync(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(ALERTS_DIR);
    let rules = std::fs::read_to_string(dir.join(RULES)).with_context(|| format!("reading {RULES}"))?;
    let path = dir.join(PROMETHEUS_RULE);
    std::fs::write(&path, prometheus_rule(&rules)?).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {ALERTS_DIR}/{PROMETHEUS_RULE} from {RULES}");
    Ok(())
}

/// Runs every file check, printing one line each; returns the failures.
pub fn check(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    let dir = root.join(ALERTS_DIR);
    let rules_text = std::fs::read_to_string(dir.join(RULES)).with_context(|| format!("reading {RULES}"))?;
    let generated = prometheus_rule(&rules_text)?;
    let committed = std::fs::read_to_string(dir.join(PROMETHEUS_RULE)).unwrap_or_default();
    report(
        &mut failures,
        committed == generated,
        &format!("{ALERTS_DIR}/{PROMETHEUS_RULE} is what {RULES} makes"),
        "it differs: run `cargo xtask observe --sync` and commit both files",
    );

    let (ok, out) = promtool(&dir, &["check", "rules", RULES], None)?;
    report(
        &mut failures,
        ok && !has_warning(&out),
        &format!("promtool check rules {RULES}"),
        &out,
    );
    let (ok, out) = promtool(&dir, &["test", "rules", TESTS], None)?;
    report(&mut failures, ok, &format!("promtool test rules {TESTS}"), &out);

    let alerts = alert_names(&rules_text)?;
    let tests: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(TESTS)).with_context(|| format!("reading {TESTS}"))?)
            .with_context(|| format!("{TESTS} is not YAML"))?;
    let uncovered = coverage(&alerts, &tests);
    report(
        &mut failures,
        uncovered.is_empty(),
        &format!(
            "every one of the {} alerts has a firing and a silent case in {TESTS}",
            alerts.len()
        ),
        &uncovered.join("\n"),
    );
    let missed = mutations(&dir, &rules_text, &alerts)?;
    report(
        &mut failures,
        missed.is_empty(),
        &format!(
            "the rule tests fail when any alert's expression is broken ({} mutants)",
            alerts.len()
        ),
        &missed.join("\n"),
    );

    let d = dashboard::load(&root.join(DASHBOARD))?;
    let problems = d.lint();
    report(
        &mut failures,
        problems.is_empty(),
        &format!(
            "{DASHBOARD}: {} panels in {} rows, {} queries, well formed",
            d.panels.iter().filter(|p| p.kind != "row").count(),
            d.panels.iter().filter(|p| p.kind == "row").count(),
            d.queries().count()
        ),
        &problems.join("\n"),
    );
    Ok(failures)
}

/// promtool prints lint findings as warnings and still exits 0.
fn has_warning(out: &str) -> bool {
    out.lines().any(|l| l.to_ascii_lowercase().contains("warning"))
}

/// The alert names of a rules file, in order.
pub fn alert_names(rules: &str) -> anyhow::Result<Vec<String>> {
    let v: Value = serde_yaml_ng::from_str(rules).with_context(|| format!("{RULES} is not YAML"))?;
    let mut names = Vec::new();
    for group in v["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            if let Some(a) = rule["alert"].as_str() {
                names.push(a.to_owned());
            }
        }
    }
    anyhow::ensure!(!names.is_empty(), "{RULES} has no alerts");
    Ok(names)
}

/// Alerts without an eval that expects them firing, or one that expects silence.
fn coverage(alerts: &[String], tests: &Value) -> Vec<String> {
    let evals: Vec<&Value> = tests["tests"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .collect();
    let mut out = Vec::new();
    for a in alerts {
        let mine = || evals.iter().filter(|e| e["alertname"].as_str() == Some(a.as_str()));
        let firing = mine().any(|e| e["exp_alerts"].as_sequence().is_some_and(|s| !s.is_empty()));
        let silent = mine().any(|e| e["exp_alerts"].as_sequence().is_some_and(Vec::is_empty));
        if !firing {
            out.push(format!("{a}: no case where it fires"));
        }
        if !silent {
            out.push(format!("{a}: no case where it must stay silent"));
        }
    }
    out
}

/// For each alert, the rules with that alert's expression replaced by one
/// that never fires: `promtool test rules` must fail on every one. Returns
/// the mutants the tests did not catch.
fn mutations(dir: &Path, rules: &str, alerts: &[String]) -> anyhow::Result<Vec<String>> {
    let scratch = tempfile::Builder::new()
        .prefix("nodeward-rules-mutants-")
        .tempdir()
        .context("creating a temporary directory")?;
    std::fs::copy(dir.join(TESTS), scratch.path().join(TESTS)).with_context(|| format!("copying {TESTS}"))?;
    let mut missed = Vec::new();
    for alert in alerts {
        let mut v: Value = serde_yaml_ng::from_str(rules)?;
        for group in v["groups"].as_sequence_mut().into_iter().flatten() {
            for rule in group["rules"].as_sequence_mut().into_iter().flatten() {
                if rule["alert"].as_str() == Some(alert.as_str()) {
                    rule["expr"] = Value::from("vector(0) > 1");
                }
            }
        }
        std::fs::write(scratch.path().join(RULES), serde_yaml_ng::to_string(&v)?)?;
        let (passed, _) = promtool(scratch.path(), &["test", "rules", TESTS], None)?;
        if passed {
            missed.push(format!("{alert}: the tests pass with an expression that never fires"));
        }
    }
    Ok(missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_rule_carries_the_groups_with_their_comments() {
        let rules = "# head comment\ngroups:\n  - name: g\n    rules:\n      # why\n      - alert: A\n\n        expr: up == 0\n";
        let out = prometheus_rule(rules).expect("made");
        assert!(out.starts_with(PROMETHEUS_RULE_HEAD));
        let body = out.strip_prefix(PROMETHEUS_RULE_HEAD).expect("head");
        assert_eq!(
            body,
            "  groups:\n    - name: g\n      rules:\n        # why\n        - alert: A\n\n          expr: up == 0\n"
        );
        assert!(!out.contains("head comment"), "the file's own header stays out");
        let parsed: Value = serde_yaml_ng::from_str(&out).expect("YAML");
        assert_eq!(parsed["spec"]["groups"][0]["rules"][0]["alert"], Value::from("A"));
    }

    #[test]
    fn a_rules_file_without_groups_is_refused() {
        assert!(prometheus_rule("rules: []\n").is_err());
        assert!(prometheus_rule("x: 1\n  groups:\n").is_err(), "not at the top level");
    }

    #[test]
    fn coverage_names_the_missing_cases() {
        let tests: Value = serde_yaml_ng::from_str(
            "tests:\n  - alert_rule_test:\n      - {alertname: A, exp_alerts: [{exp_labels: {}}]}\n      - {alertname: A, exp_alerts: []}\n      - {alertname: B, exp_alerts: [{exp_labels: {}}]}\n",
        )
        .expect("yaml");
        let alerts = ["A", "B", "C"].map(String::from);
        assert_eq!(
            coverage(&alerts, &tests),
            [
                "B: no case where it must stay silent",
                "C: no case where it fires",
                "C: no case where it must stay silent"
            ]
        );
    }
}
