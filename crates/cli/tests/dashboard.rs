//! The Grafana dashboard (`deploy/grafana/gpuslice-dashboard.json`): every query, its
//! variables' included, parses as PromQL and names only series, and labels of them, that
//! the device plugin serves on a node with pods (a real scrape, [`pod_node_scrape`]); every
//! legend names only labels its query's result has; and the panels the dashboard is for
//! are there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use promql_parser::label::Labels;
use promql_parser::parser::{self, Expr, LabelModifier};
use serde_json::Value;

use crate::plugin_metrics::{pod_node_scrape, served_labels};

/// Label names per metric name, as the exporter serves them.
type Served = BTreeMap<String, BTreeSet<String>>;

fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/gpuslice-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, those in rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        out.push(panel);
    }
    out
}

/// A query with Grafana's variables replaced by what PromQL can parse: a range for the
/// interval variables, a value for the others (they only stand in label values).
fn substitute(query: &str) -> String {
    let mut text = query
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    while let Some(start) = text.find('$') {
        let rest = &text[start + 1..];
        let (name_len, skip) = match rest.strip_prefix('{') {
            Some(inner) => (inner.find('}').expect("a closing brace"), 2),
            None => (
                rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len()),
                0,
            ),
        };
        assert!(name_len > 0, "a lone $ in {query}");
        text.replace_range(start..start + 1 + name_len + skip, "x");
    }
    text
}

fn names(labels: &Labels) -> BTreeSet<String> {
    labels.labels.iter().cloned().collect()
}

/// Checks the selectors and label lists of `expr` against `served`; returns the label names
/// its result has. `where_` names the query in messages.
fn check(expr: &Expr, served: &Served, where_: &str) -> BTreeSet<String> {
    match expr {
        Expr::VectorSelector(vs) => {
            let name = vs
                .name
                .as_deref()
                .unwrap_or_else(|| panic!("{where_}: a selector without a metric name"));
            let labels = served
                .get(name)
                .unwrap_or_else(|| panic!("{where_}: {name} is not served"));
            for matcher in vs
                .matchers
                .matchers
                .iter()
                .chain(vs.matchers.or_matchers.iter().flatten())
            {
                assert!(
                    labels.contains(&matcher.name),
                    "{where_}: {name} has no label {} (it has {labels:?})",
                    matcher.name
                );
            }
            labels.clone()
        }
        Expr::MatrixSelector(ms) => check(&Expr::VectorSelector(ms.vs.clone()), served, where_),
        Expr::Paren(p) => check(&p.expr, served, where_),
        Expr::Unary(u) => check(&u.expr, served, where_),
        Expr::Subquery(s) => check(&s.expr, served, where_),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => BTreeSet::new(),
        Expr::Call(call) => {
            assert!(
                !call.func.name.starts_with("label_"),
                "{where_}: {} makes labels this test does not follow",
                call.func.name
            );
            let results: Vec<_> = call
                .args
                .args
                .iter()
                .map(|a| check(a, served, where_))
                .collect();
            results
                .into_iter()
                .find(|r| !r.is_empty())
                .unwrap_or_default()
        }
        Expr::Aggregate(agg) => {
            let inner = check(&agg.expr, served, where_);
            if let Some(param) = &agg.param {
                check(param, served, where_);
            }
            match &agg.modifier {
                Some(LabelModifier::Include(by)) => {
                    let by = names(by);
                    let missing: Vec<_> = by.difference(&inner).collect();
                    assert!(
                        missing.is_empty(),
                        "{where_}: by {missing:?}, not labels of {inner:?}"
                    );
                    by
                }
                Some(LabelModifier::Exclude(without)) => {
                    inner.difference(&names(without)).cloned().collect()
                }
                None => BTreeSet::new(),
            }
        }
        Expr::Binary(binary) => {
            let lhs = check(&binary.lhs, served, where_);
            let rhs = check(&binary.rhs, served, where_);
            let modifier = binary.modifier.as_ref();
            if let Some(matching) = modifier.and_then(|m| m.matching.as_ref()) {
                let listed = names(matching.labels());
                for side in [&lhs, &rhs] {
                    let missing: Vec<_> = listed.difference(side).collect();
                    assert!(
                        missing.is_empty(),
                        "{where_}: on/ignoring {missing:?}, not labels of {side:?}"
                    );
                }
            }
            if let Some(extra) = modifier.and_then(|m| m.card.labels()) {
                let missing: Vec<_> = names(extra)
                    .difference(&rhs.union(&lhs).cloned().collect())
                    .cloned()
                    .collect();
                assert!(
                    missing.is_empty(),
                    "{where_}: group_left/right {missing:?} not served"
                );
            }
            // Vector against scalar keeps the vector's labels; vector against vector, one
            // to one, the left's.
            if lhs.is_empty() { rhs } else { lhs }
        }
        Expr::Extension(_) => panic!("{where_}: not PromQL"),
    }
}

/// The `{{label}}` names a legend uses.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

#[test]
fn every_dashboard_query_names_only_series_and_labels_the_plugin_serves() {
    let served = served_labels(&pod_node_scrape());
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let query = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            let where_ = format!("panel {title:?}, query {query}");
            let expr =
                parser::parse(&substitute(query)).unwrap_or_else(|e| panic!("{where_}: {e}"));
            let result = check(&expr, &served, &where_);
            for label in legend_labels(target["legendFormat"].as_str().unwrap_or("")) {
                assert!(
                    result.contains(&label),
                    "{where_}: the legend names {label}, not in {result:?}"
                );
            }
            used.extend(
                served
                    .keys()
                    .filter(|m| query.contains(m.as_str()))
                    .cloned(),
            );
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");

    // The variables: label_values(SELECTOR, LABEL), each label served by its metric.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .expect("a query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{query}: label_values(SELECTOR, LABEL) expected"));
        let (selector, label) = inner.rsplit_once(',').expect("SELECTOR, LABEL");
        let where_ = format!("variable {}", variable["name"]);
        let expr = parser::parse(&substitute(selector)).unwrap_or_else(|e| panic!("{where_}: {e}"));
        assert!(
            matches!(expr, Expr::VectorSelector(_)),
            "{where_}: a selector"
        );
        let labels = check(&expr, &served, &where_);
        assert!(
            labels.contains(label.trim()),
            "{where_}: {label} not served by {selector}"
        );
    }

    // What the dashboard is for: memory against quota, GPU time against share, throttled
    // time, refusals; capacity and allocation per GPU.
    for metric in [
        "gpuslice_memory_used_bytes",
        "gpuslice_memory_limit_bytes",
        "gpuslice_gpu_time_seconds_total",
        "gpuslice_compute_share_ratio",
        "gpuslice_throttled_seconds_total",
        "gpuslice_oom_refusals_total",
        "gpuslice_gpu_memory_total_bytes",
        "gpuslice_gpu_memory_quota_allocated_bytes",
        "gpuslice_gpu_slices",
        "gpuslice_gpu_slices_allocated",
    ] {
        assert!(used.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn a_query_naming_what_is_not_served_is_caught() {
    let mut served = Served::new();
    served.insert(
        "gpuslice_memory_used_bytes".into(),
        ["tenant", "pod"].map(String::from).into(),
    );
    let ok = parser::parse("sum by (pod) (gpuslice_memory_used_bytes{tenant=\"a\"})").unwrap();
    assert_eq!(check(&ok, &served, "ok"), ["pod".to_string()].into());
    for bad in [
        "gpuslice_memory_usage_bytes",
        "gpuslice_memory_used_bytes{namespace=\"a\"}",
        "sum by (namespace) (gpuslice_memory_used_bytes)",
        "gpuslice_memory_used_bytes / on (gpu) gpuslice_memory_used_bytes",
    ] {
        let expr = parser::parse(bad).unwrap();
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&expr, &served, bad)));
        assert!(caught.is_err(), "{bad} passed");
    }
    assert_eq!(
        substitute("rate(m{pod=~\"$pod\", x=\"${node}\"}[$__rate_interval])"),
        "rate(m{pod=~\"x\", x=\"x\"}[5m])"
    );
    assert_eq!(legend_labels("{{pod}} on {{ gpu }}"), ["pod", "gpu"]);
}
