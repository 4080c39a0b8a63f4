//! Every scenario against the real stack: nats-server, redis-server, matchmaker,
//! orchestrator (process driver: game servers as child processes) and gateway, each a
//! real process on free ports, driven by the real harness binary.
//!
//! The players log in, shop and buy, queue, get matched in tens, play through the
//! gateway's WebSocket proxy until the game server ends the game (every echo checked by
//! the `in_game` scenario), and some log out and are replaced. The report must show all
//! of it and no error.

use std::process::Command;

use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port, project_bin};

mod browser;

struct Stack {
    _nats: NatsServer,
    _redis: RedisServer,
    _matchmaker: ServiceProcess,
    _orchestrator: ServiceProcess,
    _gateway: ServiceProcess,
    gateway: String,
    nats_url: String,
}

fn start(name: &str, env: &[(&str, String)], health: &str) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut process =
        ServiceProcess::start(name, &[], &env).unwrap_or_else(|err| panic!("{name} starts: {err}"));
    process.wait_healthy(health).unwrap_or_else(|err| panic!("{name} healthy: {err}"));
    process
}

impl Stack {
    fn start(game_duration: &str) -> Self {
        Self::start_with(game_duration, &[])
    }

    /// With `matchmaker_env` on top of the matchmaker's settings.
    fn start_with(game_duration: &str, matchmaker_env: &[(&'static str, String)]) -> Self {
        let nats = NatsServer::start().expect("nats-server");
        let redis = RedisServer::start().expect("redis-server");
        let gateway = format!("127.0.0.1:{}", free_port());
        let matchmaker_admin = format!("127.0.0.1:{}", free_port());
        let orchestrator_admin = format!("127.0.0.1:{}", free_port());
        let base = [("MM_NATS__URL", nats.url()), ("MM_REDIS__URL", redis.url())];
        let with = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
            base.iter().cloned().chain(extra.iter().cloned()).collect()
        };
        let mut matchmaker_settings = vec![("MM_MATCHMAKER__ADMIN_LISTEN", matchmaker_admin.clone())];
        matchmaker_settings.extend_from_slice(matchmaker_env);
        let matchmaker = start("matchmaker", &with(&matchmaker_settings), &matchmaker_admin);
        let orchestrator = start(
            "orchestrator",
            &with(&[
                ("MM_ORCHESTRATOR__ADMIN_LISTEN", orchestrator_admin.clone()),
                ("MM_ORCHESTRATOR__DRIVER", "process".to_owned()),
                ("MM_ORCHESTRATOR__NODE", "harness-test".to_owned()),
                ("MM_ORCHESTRATOR__PUBLIC_URL", format!("ws://{gateway}")),
                ("MM_ORCHESTRATOR__GAME__DURATION", game_duration.to_owned()),
            ]),
            &orchestrator_admin,
        );
        let gateway_process = start("gateway", &with(&[("MM_GATEWAY__LISTEN", gateway.clone())]), &gateway);
        Self {
            nats_url: nats.url(),
            _nats: nats,
            _redis: redis,
            _matchmaker: matchmaker,
            _orchestrator: orchestrator,
            _gateway: gateway_process,
            gateway: format!("http://{gateway}"),
        }
    }
}

const CONFIG: &str = r#"
[harness]
spawn_interval = "1ms"
drain = "4s"
progress = "never"

[harness.rates]
matchmaking = 0.5
fetch_store = 0.3
logout = 0.02

[harness.follow_ups.fetch_store]
store_purchase = 1.0

[harness.think]
min = "10ms"
max = "100ms"

[harness.matchmaking]
timeout = "60s"
poll_wait = "2s"

[harness.in_game]
message_interval = "200ms"
"#;

/// The harness binary with no `MM_*` of the test's environment.
fn harness() -> Command {
    let mut command = Command::new(project_bin("harness").expect("harness built"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MM_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn players_whose_tokens_end_log_in_again() {
    // Tokens of 1 s (2 s at most, rounded up to the second): in a run of 8 s every player
    // outlives several.
    let stack = Stack::start_with("3s", &[("MM_SESSION__TTL", "1s".to_owned())]);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("harness.toml");
    let only_the_store = "[harness]\nspawn_interval = \"1ms\"\ndrain = \"2s\"\nprogress = \"never\"\n\
                          [harness.rates]\nfetch_store = 2.0\n[harness.follow_ups.fetch_store]\nstore_purchase = 1.0\n[harness.think]\nmin = \"10ms\"\nmax = \"50ms\"\n";
    std::fs::write(&config, only_the_store).expect("config written");
    let report = dir.path().join("report.json");
    let output = harness()
        .env("MM_HARNESS__ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
        .args(["--config", config.to_str().expect("utf-8")])
        .args(["--players", "10", "--duration", "8s"])
        .args(["--gateway", &stack.gateway, "--nats", &stack.nats_url])
        .args(["--report", report.to_str().expect("utf-8")])
        .output()
        .expect("harness runs");
    let context =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "harness failed:\n{context}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written")).expect("JSON");
    let scenario = |name: &str, key: &str| report["scenarios"][name][key].as_u64().unwrap_or(0);
    let logins = scenario("login", "succeeded");
    assert!(logins >= 30, "each of 10 players logged in again as its tokens ended: {logins}\n{context}");
    // Each ended token costs the one purchase that found out; the rest are answered
    // (bought, or refused for balance).
    let answered = scenario("store_purchase", "succeeded") + scenario("store_purchase", "rejected");
    let failed = scenario("store_purchase", "failed");
    let refused = report["errors"]["http_401"].as_u64().unwrap_or(0);
    assert_eq!(failed, refused, "only 401s failed:\n{context}");
    assert!(refused > 0 && refused <= logins, "{refused} refusals, {logins} logins:\n{context}");
    // Without a new login, every purchase after a player's first refusal would fail.
    assert!(answered >= failed, "{answered} answered, {failed} failed:\n{context}");
}

#[test]
fn every_scenario_runs_against_the_real_stack() {
    let stack = Stack::start("3s");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("harness.toml");
    std::fs::write(&config, CONFIG).expect("config written");
    let report = dir.path().join("report.json");
    let page = dir.path().join("report.html");
    let admin = format!("127.0.0.1:{}", free_port());
    let output = harness()
        .env("MM_HARNESS__ADMIN_LISTEN", &admin)
        .args(["--config", config.to_str().expect("utf-8")])
        .args(["--players", "20", "--duration", "12s"])
        .args(["--gateway", &stack.gateway, "--nats", &stack.nats_url])
        .args(["--report", report.to_str().expect("utf-8")])
        .args(["--report-html", page.to_str().expect("utf-8")])
        .output()
        .expect("harness runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "harness failed:\n{stdout}\n{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written")).expect("JSON");
    let scenario = |name: &str, key: &str| report["scenarios"][name][key].as_u64().unwrap_or(0);
    let context = format!("{stdout}\n{stderr}");
    assert_eq!(report["errors"], serde_json::json!({}), "no errors of any kind:\n{context}");
    assert_eq!(report["players"]["peak"], 20, "{context}");
    assert!(scenario("login", "succeeded") >= 20, "every player logged in:\n{context}");
    assert!(scenario("fetch_store", "succeeded") > 0, "{context}");
    assert!(
        scenario("store_purchase", "succeeded") + scenario("store_purchase", "rejected") > 0,
        "purchases were answered (bought, or refused for balance):\n{context}"
    );
    assert!(scenario("matchmaking", "succeeded") >= 10, "at least one match of ten:\n{context}");
    // An in_game success means the server ended the game with a close frame and every
    // message in between came back unchanged.
    assert!(scenario("in_game", "succeeded") >= 10, "the matched players played:\n{context}");
    assert!(report["time_to_match_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{context}");
    assert!(
        report["time_to_play_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0,
        "first echoes arrived:\n{context}"
    );
    assert!(stdout.contains("time to play"), "the table is printed:\n{stdout}");

    // The HTML report of the same run, opened in headless Chromium: the charts are drawn
    // with the run's data and the page logs nothing to the console.
    let rendered = browser::render(&page);
    assert!(rendered.console.is_empty(), "console messages: {:#?}", rendered.console);
    for chart in [
        "players",
        "rates",
        "latency-login",
        "latency-matchmaking",
        "latency-in_game",
        "time-to-match",
        "time-to-play",
        "errors",
        "quality-true-skill",
        "quality-matches",
    ] {
        rendered.assert_drawn(chart);
    }
    let samples = report["timeline"]["samples"].as_array().map_or(0, Vec::len);
    assert!(samples >= 10, "a sample a second over 12 s: {samples}");
    // The run's table, for `--no-capture`.
    eprintln!("{stdout}");
}
