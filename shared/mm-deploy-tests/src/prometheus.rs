//! A real `prometheus` (Debian's package; `just setup` installs it) scraping a test's
//! services every second, so dashboards' queries and alert rules run against real data.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mm_testkit::{Spawned, free_port, require};
use serde_json::Value;
use tempfile::TempDir;

/// A running Prometheus with its own storage in a temp dir; killed on drop.
pub struct Prometheus {
    process: Spawned,
    addr: String,
    _dir: TempDir,
}

/// Scrape and evaluation interval: short, so a test has rates within seconds.
pub const INTERVAL: &str = "1s";

impl Prometheus {
    /// Starts it scraping each `(job, targets)` and evaluating the rule files `rules`
    /// (copied beside its config), and waits until it is ready.
    pub fn start(jobs: &[(&str, Vec<String>)], rules: &[&Path]) -> Self {
        let binary = require("prometheus", "Debian package prometheus").expect("prometheus installed");
        let dir = tempfile::Builder::new().prefix("mm-prometheus-").tempdir().expect("temp dir");
        let mut config = format!(
            "global:\n  scrape_interval: {INTERVAL}\n  scrape_timeout: {INTERVAL}\n  evaluation_interval: {INTERVAL}\n"
        );
        config.push_str("rule_files:\n");
        for rule in rules {
            let name = rule.file_name().expect("a rule file name");
            std::fs::copy(rule, dir.path().join(name)).expect("rule file copied");
            config.push_str(&format!("  - {}\n", name.to_string_lossy()));
        }
        config.push_str("scrape_configs:\n");
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|target| format!("\"{target}\"")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [{{ targets: [{}] }}]\n",
                targets.join(", ")
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config written");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut process = Spawned::start("prometheus", command, &dir.path().join("prometheus.log"))
            .expect("prometheus starts");
        let probe = addr.clone();
        process
            .wait_ready(Duration::from_secs(30), || {
                mm_shared::probe::http_get(&probe, "/-/ready", Duration::from_millis(500))
                    .is_ok_and(|answer| answer.status == 200)
            })
            .expect("prometheus ready");
        Self { process, addr, _dir: dir }
    }

    /// `GET /api/v1/<path>` as JSON.
    pub fn api(&self, path: &str) -> Value {
        let answer =
            mm_shared::probe::http_get(&self.addr, &format!("/api/v1/{path}"), Duration::from_secs(10))
                .unwrap_or_else(|err| panic!("prometheus /api/v1/{path}: {err}"));
        serde_json::from_str(&answer.body)
            .unwrap_or_else(|err| panic!("prometheus /api/v1/{path} answered {}: {err}", answer.body))
    }

    /// An instant query: its result vector, or Prometheus's error message.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self.api(&format!("query?query={}", crate::url_encode(expr)));
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        match &answer["data"]["result"] {
            Value::Array(result) => Ok(result.clone()),
            // A scalar or string result is one value.
            other => Ok(vec![other.clone()]),
        }
    }

    /// The log so far (it logs warnings and errors only).
    pub fn log(&self) -> String {
        self.process.log()
    }
}
