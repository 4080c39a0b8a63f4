//! What every service binary must do, checked the same way for each.

use std::process::Command;
use std::time::Duration;

use crate::{ServiceProcess, project_bin};

/// Asserts the life of service binary `name`:
/// 1. `--help` prints usage and exits 0;
/// 2. an invalid value in `bad_env` makes it exit 1 at once, naming that variable;
/// 3. with `env` it starts, `GET http://{admin}/healthz` answers 200 and `/metrics`
///    carries its process metrics;
/// 4. SIGTERM makes it exit 0 within five seconds.
pub fn assert_service_lifecycle(name: &str, admin: &str, env: &[(&str, &str)], bad_env: &str) {
    let binary = project_bin(name).expect("binary built");

    let help = Command::new(&binary).arg("--help").output().expect("runs --help");
    assert!(help.status.success(), "{name} --help failed");
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage:"), "{name} --help prints usage");

    let mut bad = Command::new(&binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MM_") {
            bad.env_remove(key);
        }
    }
    let bad = bad.envs(env.iter().copied()).env(bad_env, "certainly-not-valid").output().expect("runs");
    assert_eq!(bad.status.code(), Some(1), "{name} must refuse a bad {bad_env}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(bad_env), "{name}'s error must name {bad_env}: {stderr}");

    let mut service = ServiceProcess::start(name, &[], env).expect("starts");
    service.wait_healthy(admin).expect("becomes healthy");
    let metrics = mm_shared::probe::http_get(admin, "/metrics", Duration::from_secs(5)).expect("/metrics");
    assert_eq!(metrics.status, 200);
    for needle in [
        format!("mm_process_resident_memory_bytes{{service=\"{name}\"}}"),
        "# TYPE mm_process_cpu_seconds_total counter".to_owned(),
        "mm_build_info".to_owned(),
    ] {
        assert!(metrics.body.contains(&needle), "{name} /metrics lacks {needle}:\n{}", metrics.body);
    }

    let status = service.terminate(Duration::from_secs(5));
    let log = service.log();
    let status = status.unwrap_or_else(|| panic!("{name} ignored SIGTERM; log:\n{log}"));
    assert!(status.success(), "{name} exited with {status} after SIGTERM; log:\n{log}");
    assert!(log.contains(&format!("{name} stopped")), "{name} logs its clean stop:\n{log}");
}
