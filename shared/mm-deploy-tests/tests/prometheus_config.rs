//! The compose stack's Prometheus configuration and alert rules, checked by promtool:
//! the config loads (with its rule file), and each alert fires exactly when its unit
//! test says (grafana/alerts-test.yml).

use std::process::Command;
use std::time::Duration;

use mm_deploy_tests::{repo, run_bounded};

fn promtool(args: &[&str]) -> mm_deploy_tests::Ran {
    mm_testkit::require("promtool", "Debian package prometheus").expect("promtool installed");
    run_bounded(
        Command::new("promtool").args(args).current_dir(repo().join("grafana")),
        Duration::from_secs(60),
    )
}

#[test]
fn prometheus_config_is_valid() {
    let check = promtool(&["check", "config", "prometheus.yml"]);
    assert!(check.success(), "{}", check.output());
    assert!(check.stdout.contains("1 rule files found"), "the alert rules are loaded:\n{}", check.output());
}

#[test]
fn alert_rules_are_valid_and_fire_when_they_should() {
    let check = promtool(&["check", "rules", "alerts.yml"]);
    assert!(check.success(), "{}", check.output());
    let test = promtool(&["test", "rules", "alerts-test.yml"]);
    assert!(test.success(), "{}", test.output());
    assert!(test.stdout.contains("SUCCESS"), "{}", test.output());
}
