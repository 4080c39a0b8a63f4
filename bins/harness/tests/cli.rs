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

/// `[[harness.stages]]`: the target ramps, holds and spikes as planned, the run lasts the
/// plan, and the report (JSON and table) shows the stages.
#[test]
fn a_staged_run_follows_its_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("staged.toml");
    std::fs::write(
        &config,
        r#"
[harness]
spawn_interval = "1ms"
[harness.login]
retry_min = "100ms"
retry_max = "200ms"
[[harness.stages]]
duration = "2s"
players = 8
[[harness.stages]]
duration = "1s"
players = 8
[[harness.stages]]
duration = "1s"
players = 20
rates = { fetch_store = 2.5 }
"#,
    )
    .expect("config written");
    let report = dir.path().join("report.json");
    let gateway = format!("http://127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let output = harness(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--standalone",
            "--gateway",
            &gateway,
            "--report",
            report.to_str().expect("utf-8"),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the run lasted the plan, not 60 s");
    assert!(
        stdout.contains("stage 3: from 3 s for 1 s, 8 → 20 players (rates: fetch_store 2.5000/s)"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written")).expect("JSON");
    let duration = report["duration_seconds"].as_f64().expect("duration");
    assert!((3.9..6.0).contains(&duration), "the plan's 4 s: {duration}");
    assert_eq!(report["stages"].as_array().map(Vec::len), Some(3), "{}", report["stages"]);
    let target = report["players"]["target"].as_u64().unwrap_or(0);
    assert!((17..=20).contains(&target), "near the end of the spike to 20: {target}");
    assert!(report["players"]["peak"].as_u64().unwrap_or(0) >= 18, "{}", report["players"]);
    // The target over time: ramping in the first stage, held in the second.
    let samples = report["timeline"]["samples"].as_array().expect("samples");
    let target_at = |t: f64| {
        samples
            .iter()
            .min_by(|a, b| {
                let distance = |s: &serde_json::Value| (s["t"].as_f64().unwrap_or(0.0) - t).abs();
                distance(a).total_cmp(&distance(b))
            })
            .and_then(|sample| sample["target"].as_u64())
            .expect("a sample")
    };
    let ramping = target_at(1.0);
    assert!((2..=6).contains(&ramping), "half way up the ramp to 8: {ramping}");
    assert_eq!(target_at(2.5), 8, "the hold");
}
