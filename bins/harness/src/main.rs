//! The harness: thousands of simulated players against the gateway.
//!
//! Foundation stage: it takes the contract's flags, loads its config, connects to NATS
//! and serves `/metrics` and `/healthz` on 127.0.0.1:9464. The player pool, the
//! compositor and the scenarios are not built yet (see the harness issue): with
//! `--duration` it waits that long and stops, simulating no one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mm_shared::config::{LogConfig, NatsConfig};
use mm_shared::protocol::addresses;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Simulated players: log in, shop, queue, play, log out.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Players to keep alive (overrides `harness.players`).
    #[arg(long)]
    players: Option<u64>,
    /// How long to run, like `60s` or `5m` (overrides `harness.duration`).
    #[arg(long, value_parser = mm_shared::duration::parse)]
    duration: Option<Duration>,
    /// Gateway base URL (overrides `harness.gateway`).
    #[arg(long)]
    gateway: Option<String>,
    /// NATS URL for fleet control (overrides `nats.url`).
    #[arg(long)]
    nats: Option<String>,
    /// Write the run report here as JSON (overrides `harness.report`).
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
}

/// `[harness]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HarnessSection {
    /// Where `/metrics` and `/healthz` are served.
    admin_listen: SocketAddr,
    /// Players to keep alive.
    players: u64,
    /// How long the run lasts.
    #[serde(with = "mm_shared::duration")]
    duration: Duration,
    /// Gateway base URL.
    gateway: String,
    /// Where the JSON report goes (none: not written).
    report: Option<PathBuf>,
}

impl Default for HarnessSection {
    fn default() -> Self {
        Self {
            admin_listen: addresses::HARNESS_ADMIN,
            players: 1000,
            duration: Duration::from_secs(60),
            gateway: "http://127.0.0.1:8080".to_owned(),
            report: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    harness: HarnessSection,
    nats: NatsConfig,
    log: LogConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let overrides = &mut args.common.overrides;
    if let Some(players) = args.players {
        overrides.set("harness.players", players);
    }
    if let Some(duration) = args.duration {
        overrides.set("harness.duration", mm_shared::duration::format(duration));
    }
    if let Some(gateway) = &args.gateway {
        overrides.set("harness.gateway", gateway);
    }
    if let Some(nats) = &args.nats {
        overrides.set("nats.url", nats);
    }
    if let Some(report) = &args.report {
        overrides.set("harness.report", report);
    }
    service::main("harness", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    service.serve_admin(config.harness.admin_listen, "harness.admin_listen").await?;
    let nats = service.connect_nats(&config.nats).await?;
    tracing::warn!("the player simulation is not built yet: this run simulates no players");
    tokio::select! {
        () = tokio::time::sleep(config.harness.duration) => {}
        () = service.shutdown.cancelled() => {}
    }
    nats.drain().await?;
    Ok(())
}
