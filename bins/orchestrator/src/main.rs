//! The orchestrator: a Nomad-style scheduler that runs one game server per match.
//!
//! Foundation stage: it loads its config, connects to NATS, and serves `/metrics` and
//! `/healthz` on 127.0.0.1:9102. Scheduling, drivers and the `servers` bucket are not
//! built yet (see the orchestrator issue).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mm_shared::config::{LogConfig, NatsConfig};
use mm_shared::protocol::addresses;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Places game servers on nodes and supervises them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// `[orchestrator]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OrchestratorSection {
    /// Where `/metrics` and `/healthz` are served.
    admin_listen: SocketAddr,
}

impl Default for OrchestratorSection {
    fn default() -> Self {
        Self { admin_listen: addresses::ORCHESTRATOR_ADMIN }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    orchestrator: OrchestratorSection,
    nats: NatsConfig,
    log: LogConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main("orchestrator", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    service.serve_admin(config.orchestrator.admin_listen, "orchestrator.admin_listen").await?;
    let nats = service.connect_nats(&config.nats).await?;
    service.shutdown.cancelled().await;
    nats.drain().await?;
    Ok(())
}
