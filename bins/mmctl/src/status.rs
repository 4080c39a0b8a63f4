//! `mmctl status`: one line per local service, from its `/healthz`.

use std::process::ExitCode;
use std::time::Duration;

use mm_shared::probe;
use mm_shared::telemetry::admin::HealthReport;

use crate::config::Config;

/// Asks every service of the local stack how it is, prints a table, and exits 1 if any
/// required one is not ok. The harness is optional: it runs only during a load test.
pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let nats_monitor = format!("127.0.0.1:{}", config.dev.nats_monitor_port);
    let redis = format!("127.0.0.1:{}", config.dev.redis_port);
    let services = [
        ("gateway", config.gateway.listen.to_string(), true),
        ("matchmaker", config.matchmaker.admin_listen.to_string(), true),
        ("orchestrator", config.orchestrator.admin_listen.to_string(), true),
        ("harness", config.harness.admin_listen.to_string(), false),
    ];
    let mut all_ok = true;
    println!("{:<13} {:<22} {:<8} detail", "service", "address", "status");
    for (name, addr, required) in services {
        let (status, detail) = match probe::http_get(&addr, "/healthz", Duration::from_secs(3)) {
            Ok(answer) => match serde_json::from_str::<HealthReport>(&answer.body) {
                Ok(report) => {
                    let checks: Vec<String> = report
                        .checks
                        .iter()
                        .map(|(check, outcome)| format!("{check}: {}", outcome.detail))
                        .collect();
                    let detail =
                        format!("v{} up {}s {}", report.version, report.uptime_seconds, checks.join(", "));
                    (report.status, detail)
                }
                Err(_) => (format!("http {}", answer.status), answer.body.chars().take(60).collect()),
            },
            Err(err) if required => ("down".to_owned(), err.to_string()),
            Err(_) => ("absent".to_owned(), "not running (it runs only during a load test)".to_owned()),
        };
        all_ok &= status == "ok" || (!required && status == "absent");
        println!("{name:<13} {addr:<22} {status:<8} {detail}");
    }
    let nats = match probe::http_get(&nats_monitor, "/healthz", Duration::from_secs(3)) {
        Ok(answer) if answer.status == 200 => ("ok", "JetStream ready".to_owned()),
        Ok(answer) => ("failing", answer.body.trim().to_owned()),
        Err(err) => ("down", err.to_string()),
    };
    println!("{:<13} {:<22} {:<8} {}", "nats-server", nats_monitor, nats.0, nats.1);
    let redis_status = if probe::tcp_open(&redis, Duration::from_secs(1)) { "ok" } else { "down" };
    println!("{:<13} {:<22} {:<8}", "redis-server", redis, redis_status);
    all_ok &= nats.0 == "ok" && redis_status == "ok";
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
