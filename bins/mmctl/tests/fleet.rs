//! `mmctl fleet` against a real nats-server and a real harness: it sets the fleet target,
//! and then shows the instance with its share and its numbers.

use std::process::Command;
use std::time::Duration;

use mm_shared::probe::wait_until;
use mm_testkit::{NatsServer, ServiceProcess, free_port, project_bin};

fn mmctl(args: &[&str]) -> (Option<i32>, String, String) {
    let output =
        Command::new(project_bin("mmctl").expect("mmctl built")).args(args).output().expect("mmctl runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// Waits until `instance` is registered in the fleet: it has joined, so it is subscribed
/// to `harness.control` (its `/healthz` answers before that).
fn wait_registered(url: &str, instance: &str, harness: &ServiceProcess) {
    let mut last = String::new();
    let registered = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (_, stdout, _) = mmctl(&["fleet", "--nats", url, "--listen", "100ms", "--json"]);
        last = stdout;
        serde_json::from_str::<serde_json::Value>(&last)
            .is_ok_and(|json| json["instances"][0]["instance"] == instance)
    });
    assert!(registered, "{instance} registers:\n{last}\n{}", harness.log());
}

/// A harness instance of `players` on the fleet at `url`, registered (its gateway is a
/// closed port: these tests look at the fleet, not at the players' requests).
fn start_instance(url: &str, instance: &str, players: u64) -> ServiceProcess {
    let admin = format!("127.0.0.1:{}", free_port());
    let gateway = format!("http://127.0.0.1:{}", free_port());
    let env = [
        ("MM_NATS__URL", url),
        ("MM_HARNESS__ADMIN_LISTEN", admin.as_str()),
        ("MM_HARNESS__PROGRESS", "never"),
        ("MM_HARNESS__SPAWN_INTERVAL", "1ms"),
        ("MM_HARNESS__FLEET__STATS_INTERVAL", "200ms"),
    ];
    let players = players.to_string();
    let args = ["--instance", instance, "--players", &players, "--gateway", &gateway, "--duration", "5m"];
    let mut harness = ServiceProcess::start("harness", &args, &env).expect("harness starts");
    harness.wait_healthy(&admin).expect("harness healthy");
    wait_registered(url, instance, &harness);
    harness
}

#[test]
fn fleet_sets_the_target_and_shows_the_instances() {
    let nats = NatsServer::start().expect("nats-server");
    let url = nats.url();
    let (code, _, stderr) = mmctl(&["fleet", "--nats", &url, "--listen", "200ms"]);
    assert_eq!(code, Some(1), "no instance yet is a failure:\n{stderr}");

    let harness = start_instance(&url, "fleet-test", 2);

    let (code, stdout, stderr) =
        mmctl(&["fleet", "--nats", &url, "--target", "7", "--rate", "matchmaking=0.25"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(r#"sent harness.control: {"fleetTarget":7,"rates":{"matchmaking":0.25}}"#),
        "{stdout}"
    );

    let mut last = String::new();
    let shown = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (_, stdout, _) = mmctl(&["fleet", "--nats", &url, "--listen", "500ms", "--json"]);
        last = stdout;
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&last) else { return false };
        json["instances"][0]["instance"] == "fleet-test"
            && json["instances"][0]["target"] == 7
            && json["control"]["fleetTarget"] == 7
            && json["players"] == 7
            && json["scenarios"]["matchmaking"]["rate"] == 0.25
    });
    assert!(shown, "the fleet shows the new target, players and rate:\n{last}\n{}", harness.log());

    let (code, stdout, _) = mmctl(&["fleet", "--nats", &url, "--listen", "500ms"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("fleet: 1 live instance(s), 7 players alive, target 7 (fleet target 7)"),
        "{stdout}"
    );
    assert!(stdout.contains("fleet-test"), "{stdout}");
    let bad = mmctl(&["fleet", "--nats", &url, "--rate", "matchmaking"]);
    assert_eq!(bad.0, Some(1), "a malformed --rate is refused: {}", bad.2);
    assert!(bad.2.contains("expected NAME=VALUE"), "{}", bad.2);
}

#[test]
fn a_control_message_the_harness_would_refuse_is_not_sent() {
    // Refused before connecting: no server is needed, and none answers on this port.
    let url = format!("nats://127.0.0.1:{}", free_port());
    let (code, stdout, stderr) = mmctl(&["fleet", "--nats", &url, "--rate", "matchmaknig=0.1"]);
    assert_eq!(code, Some(2), "a misspelled scenario is refused:\n{stdout}\n{stderr}");
    assert!(stderr.contains("unknown scenario `matchmaknig`"), "{stderr}");
    assert!(!stdout.contains("sent"), "{stdout}");
    let (code, _, stderr) = mmctl(&["fleet", "--nats", &url, "--rate", "logout=1e9"]);
    assert_eq!(code, Some(2), "a rate above the harness's bound is refused:\n{stderr}");
    assert!(stderr.contains("`logout`"), "{stderr}");
}

#[test]
fn a_bucket_that_cannot_be_opened_is_an_error_not_an_empty_fleet() {
    // An account without JetStream: opening the bucket fails for a reason other than
    // "it does not exist yet".
    let conf = std::env::temp_dir().join(format!("mmctl-fleet-test-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        "accounts { plain: { users: [ { user: plain, password: plain } ] } }\nno_auth_user: plain\n",
    )
    .expect("config written");
    let nats = NatsServer::start_with(&["-c", conf.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&conf);
    let nats = nats.expect("nats-server");
    let (code, stdout, stderr) = mmctl(&["fleet", "--nats", &nats.url(), "--listen", "100ms"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("opening the harness bucket"), "{stderr}");
    assert!(!stdout.contains("no harness instance"), "{stdout}");
}

/// `--stages FILE.toml`: the plan goes out stamped with this machine's clock, the
/// instance follows it (its players are the fleet's), the fleet line says where it is,
/// and `--reset` drops it.
#[test]
fn fleet_stages_sends_a_plan_that_the_fleet_follows() {
    let nats = NatsServer::start().expect("nats-server");
    let url = nats.url();
    let harness = start_instance(&url, "plan-test", 1);

    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[[stages]]\nduration = \"1s\"\nplayers = 3\n\
         [[stages]]\nduration = \"1m\"\nplayers = 3\nrates = { matchmaking = \"1/4s\" }\n",
    )
    .expect("plan written");
    let plan = plan.to_str().expect("utf-8");
    let before = mm_shared::protocol::now_ms();
    let (code, stdout, stderr) = mmctl(&["fleet", "--nats", &url, "--stages", plan, "--listen", "100ms"]);
    let after = mm_shared::protocol::now_ms();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let sent = stdout
        .lines()
        .find_map(|line| line.strip_prefix("sent harness.control: "))
        .unwrap_or_else(|| panic!("the message is shown: {stdout}"));
    let sent: serde_json::Value = serde_json::from_str(sent).expect("json");
    let started_at = sent["stages"]["startedAtMs"].as_u64().expect("stamped");
    assert!(
        (before..=after).contains(&started_at),
        "stamped with now: {started_at} not in {before}..={after}"
    );
    assert_eq!(
        sent["stages"]["stages"],
        serde_json::json!([
            {"duration": "1s", "players": 3},
            {"duration": "1m", "players": 3, "rates": {"matchmaking": 0.25}}
        ])
    );

    let mut last = String::new();
    let followed = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (_, stdout, _) = mmctl(&["fleet", "--nats", &url, "--listen", "500ms"]);
        last = stdout;
        last.contains(
            "fleet: 1 live instance(s), 3 players alive, target 3 (fleet plan: stage 2 of 2, 3 → 3 players",
        )
    });
    assert!(followed, "the instance follows the plan into its second stage:\n{last}\n{}", harness.log());

    let (code, stdout, stderr) = mmctl(&["fleet", "--nats", &url, "--reset", "--listen", "100ms"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let reset = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (_, stdout, _) = mmctl(&["fleet", "--nats", &url, "--listen", "500ms"]);
        last = stdout;
        last.contains("1 players alive, target 1 (each instance's own --players)")
    });
    assert!(reset, "a reset drops the plan:\n{last}");
}

#[test]
fn a_stages_file_that_cannot_be_sent_is_refused() {
    // Refused before connecting: no server answers on this port.
    let url = format!("nats://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "[[stages]]\nduration = \"1s\"\nplayers = 3\nrates = { dance = 1 }\n")
        .expect("written");
    let plan = plan.to_str().expect("utf-8");
    let (code, stdout, stderr) = mmctl(&["fleet", "--nats", &url, "--stages", plan]);
    assert_eq!(code, Some(2), "the harness would refuse it:\n{stdout}\n{stderr}");
    assert!(stderr.contains("unknown scenario `dance` in stages[0].rates"), "{stderr}");
    assert!(!stdout.contains("sent"), "{stdout}");

    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = mmctl(&["fleet", "--nats", &url, "--stages", missing.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--stages: reading") && stderr.contains("missing.toml"), "{stderr}");

    std::fs::write(dir.path().join("typo.toml"), "[[stage]]\nduration = \"1s\"\nplayers = 3\n")
        .expect("written");
    let typo = dir.path().join("typo.toml");
    let (code, _, stderr) = mmctl(&["fleet", "--nats", &url, "--stages", typo.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("expected [[stages]] tables"), "{stderr}");
}
