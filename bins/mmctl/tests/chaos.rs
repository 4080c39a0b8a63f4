//! `mmctl chaos` end to end, short: the real stack under a small harness load, every fault
//! injected (kill -9 of each service, a Redis pause, a NATS restart), the audit, and the
//! table. Game servers are processes here (the Podman fault is the full run's, `just chaos`).

use std::time::Duration;

use mm_shared::probe::wait_until;
use mm_testkit::{ServiceProcess, free_port};

/// Every fault the process-driver plan injects, as the table names them.
const FAULTS: [&str; 5] = [
    "kill -9 matchmaker",
    "kill -9 orchestrator",
    "kill -9 gateway",
    "kill -9 nats-server",
    "redis pause (SIGSTOP 3s)",
];

/// Every invariant of the audit, as the table names them.
const INVARIANTS: [&str; 7] = [
    "lost tickets (searching, neither queued nor leased)",
    "tickets both queued and leased",
    "tickets in two matches",
    "tickets whose status disagrees with their match",
    "servers running with no committed match",
    "`servers` entries with no server",
    "servers with no `servers` entry",
];

#[test]
fn chaos_short_run_keeps_every_invariant() {
    let local = || format!("127.0.0.1:{}", free_port());
    let env: Vec<(String, String)> = vec![
        ("MM_DEV__NATS_PORT".into(), free_port().to_string()),
        ("MM_DEV__NATS_MONITOR_PORT".into(), free_port().to_string()),
        ("MM_DEV__REDIS_PORT".into(), free_port().to_string()),
        ("MM_DEV__STOP_TIMEOUT".into(), "5s".into()),
        ("MM_GATEWAY__LISTEN".into(), local()),
        ("MM_MATCHMAKER__ADMIN_LISTEN".into(), local()),
        ("MM_ORCHESTRATOR__ADMIN_LISTEN".into(), local()),
        ("MM_HARNESS__ADMIN_LISTEN".into(), local()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // 6 s of warm-up, five faults 7 s apart, 4 s more: 45 s of load, games of 3 s (then
    // the drain, the audit and the stop).
    let args = [
        "chaos",
        "--driver",
        "process",
        "--players",
        "60",
        "--matchmaking-every",
        "5s",
        "--game-duration",
        "3s",
        "--warmup",
        "6s",
        "--window",
        "7s",
        "--duration",
        "45s",
        "--redis-pause",
        "3s",
        "--settle",
        "10s",
    ];
    let mut mmctl = ServiceProcess::start("mmctl", &args, &env).expect("mmctl starts");
    let ended = wait_until(Duration::from_secs(170), Duration::from_millis(200), || {
        mmctl.process().exited().is_some()
    });
    let log = mmctl.log();
    assert!(ended, "mmctl chaos did not end within 170 s:\n{log}");
    let status = mmctl.process().exited().expect("exited");

    let table = log.split("\nchaos run: ").nth(1).unwrap_or_else(|| panic!("no table printed:\n{log}"));
    for fault in FAULTS {
        let row = table.lines().find(|line| line.starts_with(fault));
        let row = row.unwrap_or_else(|| panic!("no row for `{fault}`:\n{table}"));
        assert!(row.contains("pid "), "`{fault}` was injected into a process: {row}");
    }
    for invariant in INVARIANTS {
        let row = table.lines().find(|line| line.starts_with(invariant));
        let row = row.unwrap_or_else(|| panic!("no row for `{invariant}`:\n{table}"));
        let count = row[invariant.len()..].split_whitespace().next().unwrap_or_default();
        assert_eq!(count, "0", "`{invariant}` broke:\n{table}");
    }
    assert!(table.contains("result: every invariant holds"), "{table}");
    assert!(status.success(), "mmctl chaos exited {status}:\n{table}");
    assert!(log.contains("mmctl        | stopped"), "the stack stopped before the table:\n{log}");
}
