//! The dashboards as files: valid Grafana JSON wired to the provisioned datasource,
//! every query valid PromQL (Prometheus's own parser, through `promtool`), counters and
//! histograms read the way they must be. Whether the metrics they name exist is checked
//! against the running services in `observability.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use mm_deploy_tests::dashboards::{self, Dashboard};
use mm_deploy_tests::{promql, repo, run_bounded};

/// The dashboards the project promises, by uid.
const REQUIRED: [&str; 6] =
    ["mm-overview", "mm-gateway", "mm-matchmaking", "mm-orchestrator", "mm-harness", "mm-runtime"];

/// Grafana's own variables, which need no templating entry.
const BUILTIN_VARIABLES: [&str; 4] = ["__rate_interval", "__interval", "__range", "__name"];

fn all() -> Vec<Dashboard> {
    let all = dashboards::load_all();
    assert!(!all.is_empty(), "no dashboards in grafana/dashboards");
    all
}

#[test]
fn every_dashboard_is_valid_grafana_json() {
    let all = all();
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for board in &all {
        let json = &board.json;
        let file = &board.file;
        let uid = json["uid"].as_str().unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uid.len() <= 40 && !uid.is_empty(), "{file}: Grafana uids are 1-40 characters");
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} is used twice");
        let title = json["title"].as_str().unwrap_or_else(|| panic!("{file}: no title"));
        assert!(titles.insert(title.to_owned()), "{file}: title {title} is used twice");
        let schema = json["schemaVersion"].as_u64().unwrap_or_else(|| panic!("{file}: no schemaVersion"));
        assert!(schema >= 36, "{file}: schemaVersion {schema} predates datasource references by uid");
        assert!(
            json["tags"].as_array().is_some_and(|tags| tags.iter().any(|tag| tag == "matchmaking-sim")),
            "{file}: tag `matchmaking-sim` (the dashboards link to each other by it)"
        );

        let mut ids = BTreeSet::new();
        let panels = board.panels();
        assert!(panels.len() > 3, "{file}: a dashboard worth the name has panels");
        for panel in panels {
            let name = format!("{file}: panel {:?}", panel["title"]);
            let id = panel["id"].as_u64().unwrap_or_else(|| panic!("{name}: no id"));
            assert!(ids.insert(id), "{name}: id {id} is used twice");
            let grid = &panel["gridPos"];
            let (x, w, h) = (grid["x"].as_u64(), grid["w"].as_u64(), grid["h"].as_u64());
            let (Some(x), Some(w), Some(h)) = (x, w, h) else { panic!("{name}: gridPos needs x, y, w, h") };
            assert!(
                grid["y"].is_u64() && w > 0 && h > 0 && x + w <= 24,
                "{name}: gridPos outside the 24 columns"
            );
            let kind = panel["type"].as_str().unwrap_or_default();
            assert!(
                ["row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"]
                    .contains(&kind),
                "{name}: unknown panel type {kind:?}"
            );
            if kind == "row" || kind == "text" {
                continue;
            }
            assert_eq!(panel["datasource"]["uid"], "prometheus", "{name}: the provisioned datasource");
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{name}: no targets"));
            assert!(!targets.is_empty(), "{name}: no targets");
            let mut ref_ids = BTreeSet::new();
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "{name}: a target without a query");
                assert!(ref_ids.insert(target["refId"].to_string()), "{name}: refId used twice");
                if let Some(datasource) = target.get("datasource") {
                    assert_eq!(datasource["uid"], "prometheus", "{name}: target datasource");
                }
            }
        }

        let defined: BTreeSet<&str> = board.variables().iter().filter_map(|v| v["name"].as_str()).collect();
        for variable in board.variables() {
            if variable["type"] == "query" {
                assert_eq!(variable["datasource"]["uid"], "prometheus", "{file}: variable datasource");
            }
        }
        for query in board.queries() {
            for used in variables_in(&query.expr) {
                assert!(
                    defined.contains(used.as_str()) || BUILTIN_VARIABLES.contains(&used.as_str()),
                    "{}: `${used}` is not a variable of this dashboard",
                    query.place
                );
            }
        }
    }
    for uid in REQUIRED {
        assert!(uids.contains(uid), "dashboard {uid} is missing");
    }
}

#[test]
fn counters_and_histograms_are_read_through_rate() {
    for board in all() {
        for query in board.queries().iter().filter(|query| !query.variable) {
            let raw = promql::raw_counter_reads(&query.expr);
            assert!(
                raw.is_empty(),
                "{}: {raw:?} read without rate()/increase(): {}",
                query.place,
                query.expr
            );
            if query.expr.contains("histogram_quantile") {
                assert!(
                    query.expr.contains("_bucket") && query.expr.contains("by (le"),
                    "{}: histogram_quantile over rate(<histogram>_bucket) summed by le: {}",
                    query.place,
                    query.expr
                );
            }
        }
    }
}

/// Prometheus's parser is the judge: every expression becomes a recording rule and
/// `promtool check rules` must accept the file.
#[test]
fn every_query_is_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut count = 0;
    for board in all() {
        for query in board.queries().iter().filter(|query| !query.variable) {
            count += 1;
            let expr = promql::for_prometheus(&query.expr, "1m");
            rules.push_str(&format!(
                "      - record: dashboard_query_{count}\n        expr: {}\n",
                serde_json::to_string(&expr).expect("a JSON string is a YAML string")
            ));
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("queries.yml");
    std::fs::write(&file, &rules).expect("written");
    let check =
        run_bounded(Command::new("promtool").arg("check").arg("rules").arg(&file), Duration::from_secs(60));
    assert!(check.success(), "promtool rejects a dashboard query:\n{}\n{rules}", check.output());
    assert!(check.stdout.contains(&format!("{count} rules found")), "{}", check.output());
}

#[test]
fn grafana_provisioning_points_at_these_dashboards() {
    let datasource = std::fs::read_to_string(repo().join("grafana/provisioning/datasources/prometheus.yaml"))
        .expect("datasource provisioning");
    assert!(datasource.contains("uid: prometheus"), "{datasource}");
    assert!(datasource.contains("url: http://prometheus:9090"), "{datasource}");
    let provider = std::fs::read_to_string(repo().join("grafana/provisioning/dashboards/dashboards.yaml"))
        .expect("dashboard provisioning");
    let path = provider
        .lines()
        .find_map(|line| line.trim().strip_prefix("path:"))
        .map(str::trim)
        .expect("the provider names a path");
    let compose = std::fs::read_to_string(repo().join("compose.yaml")).expect("compose.yaml");
    assert!(
        compose.contains(&format!("./grafana/dashboards:{path}:ro")),
        "compose.yaml must mount grafana/dashboards where the provider reads ({path})"
    );
    assert!(compose.contains("./grafana/provisioning:/etc/grafana/provisioning:ro"), "provisioning mount");
}

/// Names of `$name` / `${name}` variables used in `expr`.
fn variables_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        let after = rest[at + 1..].trim_start_matches('{');
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            names.push(name);
        }
        rest = &rest[at + 1..];
    }
    names
}

#[test]
fn the_overview_shows_what_the_issue_asks_for() {
    let overview = all().into_iter().find(|board| board.json["uid"] == "mm-overview").expect("overview");
    let exprs: Vec<String> = overview.queries().into_iter().map(|query| query.expr).collect();
    let uses = |needle: &str| exprs.iter().any(|expr| expr.contains(needle));
    let expected: BTreeMap<&str, &str> = BTreeMap::from([
        ("players", "mm_harness_players"),
        ("queue depth", "mm_matchmaker_queue_depth"),
        ("time to match", "mm_matchmaker_time_in_queue_seconds_bucket"),
        ("matches per minute", "mm_matchmaker_matches_total"),
        ("live game servers", "mm_orchestrator_servers"),
        ("error rates", "mm_gateway_http_requests_total{status=~\"5..\"}"),
    ]);
    for (what, needle) in expected {
        assert!(uses(needle), "the overview must show {what} ({needle})");
    }
    let runtime = all().into_iter().find(|board| board.json["uid"] == "mm-runtime").expect("runtime");
    let runtime_exprs: String = runtime.queries().into_iter().map(|query| query.expr).collect();
    for needle in [
        "mm_process_cpu_seconds_total",
        "mm_process_resident_memory_bytes",
        "mm_process_threads",
        "mm_process_open_fds",
        "mm_runtime_",
    ] {
        assert!(runtime_exprs.contains(needle), "the runtime dashboard must show {needle}");
    }
}
