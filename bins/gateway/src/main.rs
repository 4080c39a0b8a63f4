//! The gateway: the one public entry point (HTTP and WebSocket), NATS inside.
//!
//! Foundation stage: it loads its config, connects to NATS, and serves `/metrics` and
//! `/healthz` on its listen address (127.0.0.1:8080). The player API is not built yet
//! (see the matchmaking issue).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mm_shared::config::{LogConfig, NatsConfig};
use mm_shared::protocol::addresses;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig};
use serde::{Deserialize, Serialize};

/// The public HTTP and WebSocket entry point of the backend.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// `[gateway]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GatewaySection {
    /// Where the player API, `/metrics` and `/healthz` are served.
    listen: SocketAddr,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self { listen: addresses::GATEWAY }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    gateway: GatewaySection,
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
    service::main("gateway", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    service.serve_admin(config.gateway.listen, "gateway.listen").await?;
    let nats = service.connect_nats(&config.nats).await?;
    service.shutdown.cancelled().await;
    nats.drain().await?;
    Ok(())
}
