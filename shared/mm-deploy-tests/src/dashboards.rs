//! The Grafana dashboards of `grafana/dashboards/` as data: every panel, every query.

use std::path::PathBuf;

use serde_json::Value;

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// File name, for messages (`overview.json`).
    pub file: String,
    pub json: Value,
}

/// One PromQL expression a dashboard runs, and where it is.
#[derive(Debug, Clone)]
pub struct Query {
    /// `overview.json: "Queue depth"` or `overview.json: variable instance`.
    pub place: String,
    pub expr: String,
    /// A template variable's `label_values(...)` query, not plain PromQL.
    pub variable: bool,
}

/// `grafana/dashboards/`.
pub fn dir() -> PathBuf {
    crate::repo().join("grafana/dashboards")
}

/// Every `*.json` in `grafana/dashboards/`, sorted by name; panics (a test helper) on a
/// file that is not JSON, naming it.
pub fn load_all() -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("grafana/dashboards is readable")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{file}: {err}"));
            let json = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{file} is not JSON: {err}"));
            Dashboard { file, json }
        })
        .collect()
}

impl Dashboard {
    /// Every panel, rows' nested panels included (rows themselves too).
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for panel in panels.as_array().into_iter().flatten() {
                out.push(panel);
                walk(&panel["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// The template variables.
    pub fn variables(&self) -> Vec<&Value> {
        self.json["templating"]["list"].as_array().into_iter().flatten().collect()
    }

    /// Every query: each panel target's `expr`, and each query variable's query.
    pub fn queries(&self) -> Vec<Query> {
        let mut queries = Vec::new();
        for panel in self.panels() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push(Query {
                        place: format!("{}: {:?}", self.file, panel["title"].as_str().unwrap_or("")),
                        expr: expr.to_owned(),
                        variable: false,
                    });
                }
            }
        }
        for variable in self.variables() {
            let query = variable["query"]["query"].as_str().or_else(|| variable["query"].as_str());
            if let Some(expr) = query {
                queries.push(Query {
                    place: format!("{}: variable {}", self.file, variable["name"].as_str().unwrap_or("")),
                    expr: expr.to_owned(),
                    variable: true,
                });
            }
        }
        queries
    }
}
