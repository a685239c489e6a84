//! The Grafana dashboard as this tool reads it: panels with their queries,
//! the template variables, a structural lint, and turning a panel's query
//! into plain PromQL the way Grafana would (variables and `$__` intervals
//! substituted).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

pub struct Dashboard {
    pub panels: Vec<Panel>,
    pub variables: Vec<Variable>,
    /// The `uid` every panel and target must use for its data source.
    datasource_uid: Option<String>,
    raw_datasources: Vec<(String, Option<String>)>,
}

pub struct Panel {
    pub id: u64,
    pub title: String,
    pub kind: String,
    /// Grafana's grid: 24 columns, rows of ~30 px.
    pub grid: Grid,
    pub unit: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub targets: Vec<Target>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

pub struct Target {
    pub ref_id: String,
    pub expr: String,
    pub legend: String,
}

pub struct Variable {
    pub name: String,
    pub kind: String,
    /// `label_values(SELECTOR, LABEL)` of a query variable.
    pub query: Option<String>,
    pub all_value: Option<String>,
}

/// Grafana's built-in interval variables, as this tool sets them for a run
/// scraped every second (`$__rate_interval` is at least four scrapes).
pub struct Intervals {
    pub rate: String,
    pub range: String,
    pub interval: String,
}

pub fn load(path: &Path) -> anyhow::Result<Dashboard> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Dashboard::from_json(&v)
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl Dashboard {
    pub fn from_json(v: &Value) -> anyhow::Result<Self> {
        let mut panels = Vec::new();
        let mut raw_datasources = Vec::new();
        let mut all = Vec::new();
        // Rows may nest their panels when collapsed.
        for p in v["panels"].as_array().context("the dashboard has no panels")? {
            all.push(p);
            all.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in all {
            let kind = str_of(&p["type"]);
            let grid = &p["gridPos"];
            let num = |k: &str| grid[k].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(u32::MAX);
            let title = str_of(&p["title"]);
            if kind != "row" {
                raw_datasources.push((
                    format!("panel {title:?}"),
                    p["datasource"]["uid"].as_str().map(String::from),
                ));
            }
            let targets = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    raw_datasources.push((
                        format!("panel {title:?} target {}", str_of(&t["refId"])),
                        t["datasource"]["uid"].as_str().map(String::from),
                    ));
                    Target {
                        ref_id: str_of(&t["refId"]),
                        expr: str_of(&t["expr"]),
                        legend: str_of(&t["legendFormat"]),
                    }
                })
                .collect();
            let defaults = &p["fieldConfig"]["defaults"];
            panels.push(Panel {
                id: p["id"].as_u64().unwrap_or(0),
                title,
                kind,
                grid: Grid {
                    x: num("x"),
                    y: num("y"),
                    w: num("w"),
                    h: num("h"),
                },
                unit: defaults["unit"].as_str().unwrap_or("short").to_owned(),
                min: defaults["min"].as_f64(),
                max: defaults["max"].as_f64(),
                targets,
            });
        }
        let variables = v["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Variable {
                name: str_of(&t["name"]),
                kind: str_of(&t["type"]),
                query: t["query"]["query"].as_str().or(t["query"].as_str()).map(String::from),
                all_value: t["allValue"].as_str().map(String::from),
            })
            .collect::<Vec<_>>();
        let datasource_uid = variables
            .iter()
            .find(|v| v.kind == "datasource")
            .map(|v| format!("${{{}}}", v.name));
        Ok(Self {
            panels,
            variables,
            datasource_uid,
            raw_datasources,
        })
    }

    /// Every (panel, target) with a query, rows left out.
    pub fn queries(&self) -> impl Iterator<Item = (&Panel, &Target)> {
        self.panels
            .iter()
            .filter(|p| p.kind != "row")
            .flat_map(|p| p.targets.iter().map(move |t| (p, t)))
    }

    /// What would make Grafana show a broken or misleading dashboard.
    pub fn lint(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut ids = BTreeSet::new();
        for p in &self.panels {
            let name = format!("panel {} {:?}", p.id, p.title);
            if p.id == 0 || !ids.insert(p.id) {
                out.push(format!("{name}: id missing or not unique"));
            }
            if p.title.trim().is_empty() {
                out.push(format!("{name}: no title"));
            }
            let g = p.grid;
            if g.w == 0 || g.h == 0 || g.x.saturating_add(g.w) > 24 || g.y == u32::MAX {
                out.push(format!("{name}: gridPos {g:?} is not inside the 24-column grid"));
            }
            if p.kind == "row" {
                continue;
            }
            if !["timeseries", "stat", "bargauge", "table"].contains(&p.kind.as_str()) {
                out.push(format!(
                    "{name}: type {:?} is not one this tool checks and renders",
                    p.kind
                ));
            }
            if p.targets.is_empty() {
                out.push(format!("{name}: no queries"));
            }
            let mut refs = BTreeSet::new();
            for t in &p.targets {
                if t.expr.trim().is_empty() || !refs.insert(t.ref_id.as_str()) || t.ref_id.is_empty() {
                    out.push(format!(
                        "{name}: target {:?} has no query or a duplicate refId",
                        t.ref_id
                    ));
                }
            }
        }
        for (i, a) in self.panels.iter().enumerate() {
            for b in &self.panels[i + 1..] {
                let (a, b) = (a.grid, b.grid);
                let overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
                if overlap {
                    out.push(format!("panels at {a:?} and {b:?} overlap"));
                }
            }
        }
        match &self.datasource_uid {
            None => out.push("no data source variable: panels would be bound to one installation's uid".into()),
            Some(uid) => {
                for (where_, got) in &self.raw_datasources {
                    if got.as_deref() != Some(uid.as_str()) {
                        out.push(format!("{where_}: data source uid {got:?}, not {uid:?}"));
                    }
                }
            }
        }
        // Every variable a query uses is defined, and every query variable is used.
        let defined: BTreeSet<&str> = self.variables.iter().map(|v| v.name.as_str()).collect();
        let mut used = BTreeSet::new();
        let texts = self
            .queries()
            .map(|(_, t)| t.expr.as_str())
            .chain(self.variables.iter().filter_map(|v| v.query.as_deref()));
        for text in texts {
            for name in variable_refs(text) {
                if !name.starts_with("__") && !defined.contains(name.as_str()) {
                    out.push(format!("query {text:?} uses ${name}, which is not defined"));
                }
                used.insert(name);
            }
        }
        for v in &self.variables {
            if v.kind == "query" {
                if !used.contains(&v.name) {
                    out.push(format!("variable {} is defined but no query uses it", v.name));
                }
                if v.query.as_deref().and_then(parse_label_values).is_none() {
                    out.push(format!(
                        "variable {}: query {:?} is not label_values(SELECTOR, LABEL)",
                        v.name, v.query
                    ));
                }
                if v.all_value.as_deref() != Some(".*") {
                    out.push(format!(
                        "variable {}: allValue must be .* (its queries match with =~)",
                        v.name
                    ));
                }
            }
        }
        out
    }
}

/// The names after `$` (or in `${…}`) in a query.
fn variable_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// `label_values(SELECTOR, LABEL)` → (SELECTOR, LABEL).
pub fn parse_label_values(q: &str) -> Option<(String, String)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_owned(), label.trim().to_owned()))
}

/// Grafana's escaping of a variable's value inside a PromQL regex string:
/// regex metacharacters get a backslash, written `\\` in the string literal.
pub fn regex_value(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if "\\^$*+?.()|[]{}/".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// `expr` with the variables (name → already formatted value) and Grafana's
/// interval variables substituted; fails on any `$` left over.
pub fn substitute(expr: &str, vars: &BTreeMap<String, String>, iv: &Intervals) -> anyhow::Result<String> {
    let mut out = expr
        .replace("$__rate_interval", &iv.rate)
        .replace("$__range", &iv.range)
        .replace("$__interval", &iv.interval);
    // Longest names first, so `$instance` never eats the start of `$instances`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &vars[name])
            .replace(&format!("${name}"), &vars[name]);
    }
    anyhow::ensure!(!out.contains('$'), "unsubstituted variable left in {out:?}");
    Ok(out)
}

/// A legend (`{{label}} text`) filled from a series' labels.
pub fn legend(format: &str, labels: &BTreeMap<String, String>) -> String {
    if format.trim().is_empty() {
        let inner: Vec<String> = labels
            .iter()
            .filter(|(k, _)| k.as_str() != "__name__")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!("{{{}}}", inner.join(", "));
    }
    let mut out = format.to_owned();
    while let Some(start) = out.find("{{") {
        let Some(len) = out[start..].find("}}") else { break };
        let name = out[start + 2..start + len].trim().to_owned();
        let value = labels.get(&name).cloned().unwrap_or_default();
        out.replace_range(start..start + len + 2, &value);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn intervals() -> Intervals {
        Intervals {
            rate: "15s".into(),
            range: "60s".into(),
            interval: "1s".into(),
        }
    }

    #[test]
    fn variables_and_intervals_are_substituted() {
        let vars = BTreeMap::from([
            ("instance".to_owned(), ".*".to_owned()),
            ("inst".to_owned(), "x".to_owned()),
        ]);
        let got = substitute(
            r#"rate(m{instance=~"$instance", i="${inst}"}[$__rate_interval]) + increase(m[$__range])"#,
            &vars,
            &intervals(),
        )
        .expect("substituted");
        assert_eq!(got, r#"rate(m{instance=~".*", i="x"}[15s]) + increase(m[60s])"#);
        assert!(substitute("m{a=~\"$nope\"}", &vars, &intervals()).is_err());
    }

    #[test]
    fn values_are_regex_escaped_as_grafana_does() {
        assert_eq!(regex_value("127.0.0.1:9090"), r"127\\.0\\.0\\.1:9090");
        assert_eq!(regex_value("shop/orders-1"), r"shop\\/orders-1");
    }

    #[test]
    fn legends_take_labels() {
        let labels = BTreeMap::from([
            ("workload".to_owned(), "orders".to_owned()),
            ("decision".to_owned(), "deny".to_owned()),
        ]);
        assert_eq!(legend("{{workload}} {{ decision }}", &labels), "orders deny");
        assert_eq!(legend("", &labels), "{decision=deny, workload=orders}");
    }

    #[test]
    fn lint_finds_what_grafana_would_show_broken() {
        let ds = json!({"type": "prometheus", "uid": "${datasource}"});
        let good = json!({
            "panels": [
                {"type": "row", "id": 1, "title": "r", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}},
                {"type": "stat", "id": 2, "title": "a", "datasource": ds, "gridPos": {"x": 0, "y": 1, "w": 12, "h": 4},
                 "targets": [{"refId": "A", "expr": "sum(up{instance=~\"$instance\"})", "datasource": ds}]},
            ],
            "templating": {"list": [
                {"name": "datasource", "type": "datasource"},
                {"name": "instance", "type": "query", "allValue": ".*", "query": {"query": "label_values(up, instance)"}},
            ]},
        });
        let d = Dashboard::from_json(&good).expect("parsed");
        assert_eq!(d.lint(), Vec::<String>::new());
        assert_eq!(d.queries().count(), 1);

        let mut bad = good.clone();
        bad["panels"][1]["gridPos"]["x"] = json!(20);
        bad["panels"][1]["targets"][0]["expr"] = json!("up{job=~\"$job\"}");
        bad["panels"][1]["datasource"]["uid"] = json!("P1809F7CD0C75ACF3");
        bad["panels"].as_array_mut().expect("panels").push(json!({
            "type": "graph", "id": 2, "title": "b", "datasource": ds, "gridPos": {"x": 0, "y": 0, "w": 4, "h": 4}, "targets": []
        }));
        let problems = Dashboard::from_json(&bad).expect("parsed").lint().join("\n");
        for want in [
            "not inside the 24-column grid",
            "uses $job, which is not defined",
            "data source uid Some(\"P1809F7CD0C75ACF3\")",
            "id missing or not unique",
            "type \"graph\"",
            "no queries",
            "overlap",
            "variable instance is defined but no query uses it",
        ] {
            assert!(problems.contains(want), "{want:?} not in:\n{problems}");
        }
    }
}
