//! The binary as a CI job uses it: a failed threshold fails the exit code and says which,
//! the report is written anyway, and bad config is refused with the key's name.

use std::process::{Command, Output};

use mm_testkit::{free_port, project_bin};

/// Runs the harness with a clean `MM_*` environment plus `env`.
fn harness(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(project_bin("harness").expect("harness built"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MM_") {
            command.env_remove(key);
        }
    }
    let admin = format!("127.0.0.1:{}", free_port());
    command.env("MM_HARNESS__ADMIN_LISTEN", admin).envs(env.iter().copied()).args(args);
    command.output().expect("harness runs")
}

#[test]
fn a_breached_threshold_fails_the_run_and_the_report_is_still_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let gateway = format!("http://127.0.0.1:{}", free_port());
    let output = harness(
        &[
            "--standalone",
            "--players",
            "5",
            "--duration",
            "1500ms",
            "--gateway",
            &gateway,
            "--report",
            report.to_str().expect("utf-8 path"),
            "--max-error-rate",
            "0.5",
        ],
        &[("MM_HARNESS__LOGIN__RETRY_MIN", "100ms"), ("MM_HARNESS__LOGIN__RETRY_MAX", "200ms")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "a breach exits 1:\n{stderr}");
    assert!(
        stderr.contains("error rate 100.00% is over the limit of 50.00%"),
        "says which threshold:\n{stderr}"
    );
    assert!(stdout.contains("FAIL: error rate"), "the table shows the verdict:\n{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written"))
            .expect("report is JSON");
    assert_eq!(report["players"]["peak"], 5);
    let login = &report["scenarios"]["login"];
    assert!(login["failed"].as_u64().expect("count") >= 5, "{login}");
    assert_eq!(login["succeeded"], 0);
    assert!(login["errors"]["connect"].as_u64().expect("count") >= 5, "{login}");
    for key in ["p50", "p90", "p99", "max"] {
        assert!(report["time_to_match_ms"][key].is_number(), "time_to_match_ms.{key}");
        assert!(login["latency_ms"][key].is_number(), "latency_ms.{key}");
    }
    assert_eq!(report["thresholds"][0]["name"], "max_error_rate");
    assert_eq!(report["thresholds"][0]["breached"], true);
}

#[test]
fn a_negative_rate_is_refused_with_its_key() {
    let output = harness(&["--standalone"], &[("MM_HARNESS__RATES__MATCHMAKING", "-0.5")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`harness.rates.matchmaking`"), "{stderr}");
    assert!(stderr.contains("MM_HARNESS__RATES__MATCHMAKING"), "{stderr}");

    let output =
        harness(&["--standalone"], &[("MM_HARNESS__THINK__MIN", "5s"), ("MM_HARNESS__THINK__MAX", "1s")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`harness.think.min`"), "{stderr}");
}

#[test]
fn a_duration_beyond_the_clock_is_refused_not_a_panic() {
    let output = harness(&["--standalone", "--duration", "3000000000000000h"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`harness.duration`"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
