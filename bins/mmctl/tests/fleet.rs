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

#[test]
fn fleet_sets_the_target_and_shows_the_instances() {
    let nats = NatsServer::start().expect("nats-server");
    let url = nats.url();
    let (code, _, stderr) = mmctl(&["fleet", "--nats", &url, "--listen", "200ms"]);
    assert_eq!(code, Some(1), "no instance yet is a failure:\n{stderr}");

    let admin = format!("127.0.0.1:{}", free_port());
    let gateway = format!("http://127.0.0.1:{}", free_port());
    let env = [
        ("MM_NATS__URL", url.as_str()),
        ("MM_HARNESS__ADMIN_LISTEN", admin.as_str()),
        ("MM_HARNESS__PROGRESS", "never"),
        ("MM_HARNESS__FLEET__STATS_INTERVAL", "200ms"),
    ];
    let args = ["--instance", "fleet-test", "--players", "2", "--gateway", &gateway, "--duration", "5m"];
    let mut harness = ServiceProcess::start("harness", &args, &env).expect("harness starts");
    harness.wait_healthy(&admin).expect("harness healthy");

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
