//! `mmctl status`: one line per local service, from its `/healthz`, and what NATS says as
//! the operator (`<data_dir>/operator.env`): which micro services answer discovery.

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
    if nats.0 == "ok" {
        let (status, detail) = micro_services(config);
        all_ok &= status == "ok";
        println!(
            "{:<13} {:<22} {status:<8} {detail}",
            "nats services",
            format!("127.0.0.1:{}", config.dev.nats_port)
        );
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The micro services answering `$SRV.PING`, asked as the operator when its file is there
/// (else as the viewer, who may ask too): `("ok", "matchmaking ×1, ...")`.
fn micro_services(config: &Config) -> (&'static str, String) {
    let (url, who) = match crate::credentials::read_url(&config.dev.data_dir, crate::credentials::OPERATOR) {
        Some(url) => (url, "operator"),
        None => (crate::stack::nats_url(config), "viewer"),
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ("failing", "cannot start a runtime".to_owned());
    };
    let asked = runtime.block_on(async {
        let client = crate::credentials::connect(&url, "mmctl-status", Duration::from_secs(3))
            .await
            .map_err(|err| err.to_string())?;
        let inbox = client.new_inbox();
        let mut answers = client.subscribe(inbox.clone()).await.map_err(|err| err.to_string())?;
        client
            .publish_with_reply("$SRV.PING", inbox, bytes::Bytes::new())
            .await
            .map_err(|err| err.to_string())?;
        let mut services = std::collections::BTreeMap::<String, usize>::new();
        let collect = async {
            while let Some(answer) = futures_util::StreamExt::next(&mut answers).await {
                if let Ok(info) = serde_json::from_slice::<serde_json::Value>(&answer.payload)
                    && let Some(name) = info["name"].as_str()
                {
                    *services.entry(name.to_owned()).or_default() += 1;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), collect).await;
        Ok::<_, String>(services)
    });
    match asked {
        Ok(services) if services.is_empty() => {
            ("failing", format!("no micro service answers (as the {who})"))
        }
        Ok(services) => {
            let list: Vec<String> = services.iter().map(|(name, count)| format!("{name} ×{count}")).collect();
            ("ok", format!("{} (as the {who})", list.join(", ")))
        }
        Err(err) => ("failing", format!("as the {who}: {err}")),
    }
}
