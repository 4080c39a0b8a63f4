//! The whole backend under `nats/nats-server.conf`'s per-service users, watched by a real
//! Prometheus, while the harness plays matches through it:
//!
//! - the stack works under the permissions: the run has no error, and neither nats-server
//!   nor any service logged a permissions violation;
//! - a client without credentials is the operator: it discovers every micro service
//!   (`nats micro ls`) and reads `servers` (`nats kv watch servers`) with no flags;
//! - `promtool check metrics` is clean on every service's `/metrics`;
//! - every metric a dashboard or an alert rule names is exported by some service;
//! - every dashboard query runs in Prometheus against the scraped data without error,
//!   and returns data (except error-only selectors), and every alert rule evaluates.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use mm_deploy_tests::dashboards;
use mm_deploy_tests::exposition::{self, scrape};
use mm_deploy_tests::nats_users::{self, UserClient};
use mm_deploy_tests::prometheus::Prometheus;
use mm_deploy_tests::{promql, repo, run_bounded};
use mm_shared::probe::wait_until;
use mm_shared::protocol::{buckets, subjects};
use mm_testkit::{RedisServer, ServiceProcess, free_port};

/// The harness's run, set through the environment like any config: fast scenarios, so
/// matches, games and purchases all happen within seconds.
const HARNESS_ENV: [(&str, &str); 11] = [
    ("MM_HARNESS__SPAWN_INTERVAL", "1ms"),
    ("MM_HARNESS__DRAIN", "4s"),
    ("MM_HARNESS__PROGRESS", "never"),
    ("MM_HARNESS__RATES__MATCHMAKING", "0.5"),
    ("MM_HARNESS__RATES__FETCH_STORE", "0.3"),
    ("MM_HARNESS__RATES__LOGOUT", "0.02"),
    ("MM_HARNESS__FOLLOW_UPS__FETCH_STORE__STORE_PURCHASE", "1.0"),
    ("MM_HARNESS__THINK__MIN", "10ms"),
    ("MM_HARNESS__THINK__MAX", "100ms"),
    ("MM_HARNESS__MATCHMAKING__POLL_WAIT", "2s"),
    ("MM_HARNESS__IN_GAME__MESSAGE_INTERVAL", "200ms"),
];

/// Queries that legitimately return nothing in a healthy run: they select error answers only.
const ERROR_ONLY: [&str; 2] = [r#"status=~"5..""#, r#"status=~"[45]..""#];

fn local() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn start(name: &str, args: &[&str], env: &[(&str, String)], health: &str) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let mut process = ServiceProcess::start(name, args, &env).unwrap_or_else(|err| panic!("{name}: {err}"));
    process.wait_healthy(health).unwrap_or_else(|err| panic!("{name} healthy: {err}"));
    process
}

/// The backend's three services, each as its own NATS user, on free local ports.
struct Backend {
    gateway: String,
    matchmaker: String,
    orchestrator: String,
    processes: [ServiceProcess; 3],
}

/// `user`'s environment: the servers' URLs and its NATS credentials.
fn user_env(nats_url: &str, redis_url: &str, user: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![("MM_NATS__URL", nats_url.to_owned()), ("MM_REDIS__URL", redis_url.to_owned())];
    env.extend(nats_users::client_env(user));
    env
}

/// Starts the matchmaker, an orchestrator node `node` (process driver, `extra` on top)
/// and the gateway, each healthy before the next.
fn start_backend(nats_url: &str, redis_url: &str, node: &str, extra: &[(&'static str, &str)]) -> Backend {
    let (gateway, matchmaker, orchestrator) = (local(), local(), local());
    let mut env = user_env(nats_url, redis_url, "matchmaker");
    env.push(("MM_MATCHMAKER__ADMIN_LISTEN", matchmaker.clone()));
    let matchmaker_process = start("matchmaker", &[], &env, &matchmaker);
    let mut env = user_env(nats_url, redis_url, "orchestrator");
    env.extend([
        ("MM_ORCHESTRATOR__ADMIN_LISTEN", orchestrator.clone()),
        ("MM_ORCHESTRATOR__DRIVER", "process".to_owned()),
        ("MM_ORCHESTRATOR__NODE", node.to_owned()),
        ("MM_ORCHESTRATOR__PUBLIC_URL", format!("ws://{gateway}")),
    ]);
    env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
    let orchestrator_process = start("orchestrator", &[], &env, &orchestrator);
    let mut env = user_env(nats_url, redis_url, "gateway");
    env.push(("MM_GATEWAY__LISTEN", gateway.clone()));
    let gateway_process = start("gateway", &[], &env, &gateway);
    Backend {
        gateway,
        matchmaker,
        orchestrator,
        processes: [matchmaker_process, orchestrator_process, gateway_process],
    }
}

#[test]
fn the_stack_under_permissions_exports_what_dashboards_and_alerts_read() {
    let mut nats = nats_users::start_server();
    let redis = RedisServer::start().expect("redis-server");
    let base = |user: &str| user_env(&nats.url(), &redis.url(), user);
    let backend =
        start_backend(&nats.url(), &redis.url(), "observed", &[("MM_ORCHESTRATOR__GAME__DURATION", "3s")]);
    let Backend { gateway, matchmaker, orchestrator, .. } = &backend;

    // Ports of the harnesses, so Prometheus scrapes them from their first second.
    let (harness, failing) = (local(), local());
    let services = [
        ("gateway", gateway.as_str()),
        ("matchmaker", matchmaker.as_str()),
        ("orchestrator", orchestrator.as_str()),
        ("harness", harness.as_str()),
        ("failing harness", failing.as_str()),
    ];
    let alerts = repo().join("grafana/alerts.yml");
    let prometheus = Prometheus::start(
        &[
            ("gateway", vec![gateway.clone()]),
            ("matchmaker", vec![matchmaker.clone()]),
            ("orchestrator", vec![orchestrator.clone()]),
            ("harness", vec![harness.clone(), failing.clone()]),
        ],
        &[alerts.as_path()],
    );

    // The harness, with its own user; and a second one pointed at a closed port, whose
    // failures export the failure counters a healthy run never creates.
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let mut env = base("harness");
    env.push(("MM_HARNESS__ADMIN_LISTEN", harness.clone()));
    env.push(("MM_HARNESS__REPORT", report.to_str().expect("UTF-8").to_owned()));
    env.extend(HARNESS_ENV.iter().map(|(key, value)| (*key, (*value).to_owned())));
    let gateway_url = format!("http://{gateway}");
    let mut harness_process = start(
        "harness",
        &["--players", "20", "--duration", "14s", "--gateway", &gateway_url],
        &env,
        &harness,
    );
    let closed = format!("http://127.0.0.1:{}", free_port());
    let failing_process = start(
        "harness",
        &["--standalone", "--players", "2", "--duration", "60s", "--gateway", &closed],
        &[("MM_HARNESS__ADMIN_LISTEN", failing.clone()), ("MM_HARNESS__PROGRESS", "never".to_owned())],
        &failing,
    );

    // A match was played (first echoes arrived), purchases were made, failures counted.
    let played = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        exposition::sum(&scrape("harness", &harness), "mm_harness_time_to_play_seconds_count") >= 10.0
            && exposition::sum(&scrape("failing harness", &failing), "mm_harness_scenario_failures_total")
                > 0.0
    });
    assert!(played, "no match was played within 60 s:\n{}", harness_process.log());
    // Prometheus has seen it too, and holds enough samples of every target for rates.
    let seen = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        prometheus.query("sum(mm_harness_time_to_play_seconds_count) >= 10").is_ok_and(|r| !r.is_empty())
            && prometheus.query("count(up == 1) == 5").is_ok_and(|r| !r.is_empty())
            && prometheus.query("min(count_over_time(up[15s])) >= 5").is_ok_and(|r| !r.is_empty())
    });
    assert!(seen, "prometheus did not see the stack:\n{}\n{}", prometheus.api("targets"), prometheus.log());

    // promtool on every /metrics, and what they export together.
    let mut exported = BTreeMap::new();
    for (what, addr) in services {
        let page = scrape(what, addr);
        let lint = run_bounded(
            Command::new("sh")
                .arg("-c")
                .arg("promtool check metrics < \"$0\"")
                .arg(write_temp(&dir, what, &page)),
            Duration::from_secs(30),
        );
        assert!(
            lint.success() && lint.stdout.trim().is_empty() && lint.stderr.trim().is_empty(),
            "promtool check metrics is not clean for {what}:\n{}",
            lint.output()
        );
        exported.extend(exposition::families(&page));
    }

    // Every metric a dashboard or an alert names is exported.
    let mut missing = BTreeSet::new();
    for board in dashboards::load_all() {
        for query in board.queries() {
            for name in promql::metric_names(&query.expr) {
                if !promql::is_exported(&name, &exported) {
                    missing.insert(format!("{name} ({})", query.place));
                }
            }
        }
    }
    let alert_text = std::fs::read_to_string(&alerts).expect("alerts.yml");
    for name in promql::metric_names(&alert_text) {
        if !promql::is_exported(&name, &exported) {
            missing.insert(format!("{name} (grafana/alerts.yml)"));
        }
    }
    assert!(missing.is_empty(), "named but exported by no service:\n{}", Vec::from_iter(missing).join("\n"));

    // Every dashboard query runs in Prometheus; all but error-only ones return data.
    let mut failed = Vec::new();
    let mut empty = Vec::new();
    let mut answered = 0;
    for board in dashboards::load_all() {
        for query in board.queries().into_iter().filter(|query| !query.variable) {
            let expr = promql::for_prometheus(&query.expr, "15s");
            match prometheus.query(&expr) {
                Err(err) => failed.push(format!("{}: {err}\n    {expr}", query.place)),
                Ok(result) if result.is_empty() && !ERROR_ONLY.iter().any(|s| expr.contains(s)) => {
                    empty.push(format!("{}: {expr}", query.place))
                }
                Ok(_) => answered += 1,
            }
        }
    }
    assert!(failed.is_empty(), "Prometheus refused dashboard queries:\n{}", failed.join("\n"));
    assert!(empty.is_empty(), "dashboard queries with no data ({answered} had data):\n{}", empty.join("\n"));

    // Every alert rule evaluates without error.
    let rules = prometheus.api("rules");
    let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
    let evaluated: Vec<(String, String)> = groups
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .map(|rule| {
            (rule["name"].as_str().unwrap_or("").to_owned(), rule["health"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(evaluated.len(), 8, "every alert rule is loaded: {rules}");
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(250), || {
        let rules = prometheus.api("rules");
        let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
        groups
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .all(|rule| rule["health"] == "ok")
    });
    assert!(ok, "alert rules that do not evaluate: {}", prometheus.api("rules"));

    operator_sees_everything(&nats.url());
    healthcheck_flag_answers(&services);

    // The run ends cleanly: no error of any kind, under the permissions.
    let ended = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        harness_process.process().exited().is_some()
    });
    assert!(ended, "the harness did not finish:\n{}", harness_process.log());
    let status = harness_process.process().exited();
    assert!(status.is_some_and(|s| s.success()), "harness failed ({status:?}):\n{}", harness_process.log());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written"))
            .expect("JSON report");
    assert_eq!(report["errors"], serde_json::json!({}), "no errors of any kind:\n{report}");
    assert!(report["scenarios"]["in_game"]["succeeded"].as_u64().unwrap_or(0) >= 10, "{report}");

    let nats_log = nats.process().log();
    assert!(!nats_log.contains("Violation"), "nats-server refused something a service needs:\n{nats_log}");
    let [matchmaker_process, orchestrator_process, gateway_process] = &backend.processes;
    for (name, process) in [
        ("matchmaker", matchmaker_process),
        ("orchestrator", orchestrator_process),
        ("gateway", gateway_process),
        ("harness", &harness_process),
    ] {
        assert!(!process.log().contains("Permissions Violation"), "{name} was refused:\n{}", process.log());
    }
    drop(failing_process);
}

/// `<binary> --healthcheck HOST:PORT`, what the container health checks run: exit 0 for a
/// healthy instance, 1 with the reason for none.
fn healthcheck_flag_answers(services: &[(&str, &str)]) {
    for (what, addr) in services {
        let binary = what.split(' ').next_back().unwrap_or(what);
        let binary = mm_testkit::project_bin(binary).expect("built");
        let ok = run_bounded(Command::new(&binary).args(["--healthcheck", addr]), Duration::from_secs(10));
        assert!(ok.success(), "{what} --healthcheck {addr}:\n{}", ok.output());
        let closed = format!("127.0.0.1:{}", free_port());
        let refused =
            run_bounded(Command::new(&binary).args(["--healthcheck", &closed]), Duration::from_secs(10));
        assert_eq!(refused.status.and_then(|status| status.code()), Some(1), "{}", refused.output());
        assert!(refused.stderr.contains(&closed), "says where it asked: {}", refused.output());
    }
}

fn write_temp(dir: &tempfile::TempDir, what: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(format!("{}.metrics", what.replace(' ', "-")));
    std::fs::write(&path, text).expect("written");
    path
}

/// No credentials: the operator of `no_auth_user`. What `nats micro ls` and
/// `nats kv watch servers` do, with no flags.
fn operator_sees_everything(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let operator = UserClient::connect(url, None).await.expect("no credentials connect as the operator");
        let inbox = operator.client.new_inbox();
        let mut pongs = operator.client.subscribe(inbox.clone()).await.expect("subscribe");
        operator.client.publish_with_reply("$SRV.PING", inbox, "".into()).await.expect("ping");
        let mut names = BTreeSet::new();
        let collect = async {
            while let Some(pong) = pongs.next().await {
                let pong: serde_json::Value = serde_json::from_slice(&pong.payload).unwrap_or_default();
                names.insert(pong["name"].as_str().unwrap_or("").to_owned());
                if names.len() >= 5 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), collect).await;
        let expected = [
            subjects::MATCHMAKING_SERVICE,
            subjects::STORE_SERVICE,
            subjects::SESSION_SERVICE,
            subjects::ORCHESTRATOR_SERVICE,
            subjects::PARTY_SERVICE,
        ];
        for service in expected {
            assert!(names.contains(service), "`nats micro ls` must list {service}: {names:?}");
        }
        let js = async_nats::jetstream::new(operator.client.clone());
        let nodes = js.get_key_value(buckets::NODES).await.expect("the operator opens `nodes`");
        assert!(nodes.get("observed").await.expect("read").is_some(), "the node's entry");
        let servers = js.get_key_value(buckets::SERVERS).await.expect("the operator opens `servers`");
        servers.watch_with_history(">").await.expect("`nats kv watch servers` works");
    });
}

/// "No data" on a dashboard: a series a panel or an alert names that a service creates
/// only when its first event happens (a failure counter before the first failure). Every
/// service starts, nothing is asked of it, and every series any dashboard or alert names
/// (with the label values the query spells out) is on its `/metrics` already; so is the
/// harness's failure counter for every scenario and kind.
#[test]
fn every_series_dashboards_and_alerts_name_exists_from_start_up() {
    let nats = nats_users::start_server();
    let redis = RedisServer::start().expect("redis-server");
    let backend = start_backend(&nats.url(), &redis.url(), "idle", &[]);
    let Backend { gateway, matchmaker, orchestrator, .. } = &backend;
    let harness = local();
    // A harness that keeps no player: it starts, and nothing happens.
    let mut env = user_env(&nats.url(), &redis.url(), "harness");
    env.push(("MM_HARNESS__ADMIN_LISTEN", harness.clone()));
    env.push(("MM_HARNESS__PROGRESS", "never".to_owned()));
    let gateway_url = format!("http://{gateway}");
    let _harness =
        start("harness", &["--players", "0", "--duration", "60s", "--gateway", &gateway_url], &env, &harness);
    let services = [
        ("gateway", gateway.as_str()),
        ("matchmaker", matchmaker.as_str()),
        ("orchestrator", orchestrator.as_str()),
        ("harness", harness.as_str()),
    ];

    let mut named = BTreeMap::new();
    for board in dashboards::load_all() {
        for query in board.queries() {
            for selector in promql::selectors(&query.expr) {
                named.entry(selector).or_insert_with(|| query.place.clone());
            }
        }
    }
    let alerts = std::fs::read_to_string(repo().join("grafana/alerts.yml")).expect("alerts.yml");
    for selector in promql::selectors(&alerts) {
        named.entry(selector).or_insert_with(|| "grafana/alerts.yml".to_owned());
    }
    assert!(named.len() > 20, "the dashboards name the project's metrics: {named:?}");

    // The harness exports on its first stats tick (every second): give start-up a moment,
    // never any traffic.
    let mut missing = Vec::new();
    let mut exported = Vec::new();
    let settled = wait_until(Duration::from_secs(5), Duration::from_millis(250), || {
        exported = services.iter().flat_map(|(what, addr)| exposition::series(&scrape(what, addr))).collect();
        missing = named
            .iter()
            .filter(|(selector, _)| {
                !exported.iter().any(|series| {
                    series.name == selector.name
                        && selector.equal.iter().all(|(label, value)| series.labels.get(label) == Some(value))
                })
            })
            .map(|(selector, place)| format!("{selector} ({place})"))
            .collect();
        missing.is_empty()
    });
    assert!(
        settled,
        "named by a dashboard or alert but absent right after start-up:\n{}",
        missing.join("\n")
    );

    // The counter of the issue, in full: every scenario with every kind, at 0.
    let scenarios: BTreeSet<&str> = exported
        .iter()
        .filter(|series| series.name == "mm_harness_scenario_attempts_total")
        .filter_map(|series| series.labels.get("scenario").map(String::as_str))
        .collect();
    assert!(scenarios.len() >= 6, "{scenarios:?}");
    let failures: Vec<_> =
        exported.iter().filter(|series| series.name == "mm_harness_scenario_failures_total").collect();
    let kinds: BTreeSet<&str> =
        failures.iter().filter_map(|series| series.labels.get("kind").map(String::as_str)).collect();
    for kind in ["connect", "timeout", "http_5xx", "match_timeout", "echo_mismatch", "http_429"] {
        assert!(kinds.contains(kind), "kind {kind}: {kinds:?}");
    }
    for scenario in &scenarios {
        let of: BTreeSet<&str> = failures
            .iter()
            .filter(|series| series.labels.get("scenario").map(String::as_str) == Some(scenario))
            .filter_map(|series| series.labels.get("kind").map(String::as_str))
            .collect();
        assert_eq!(of, kinds, "mm_harness_scenario_failures_total of {scenario}: every kind");
    }
}
