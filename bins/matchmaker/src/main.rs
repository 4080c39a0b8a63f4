//! The matchmaker: tickets and the queue in Redis, matches of ten, over NATS.
//!
//! Foundation stage: it loads its config, connects to NATS and Redis, and serves
//! `/metrics` and `/healthz` on 127.0.0.1:9101. The `matchmaking`, `store` and `session`
//! micro services are not built yet (see the matchmaking issue).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mm_shared::config::{LogConfig, NatsConfig, RedisConfig};
use mm_shared::protocol::addresses;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Forms matches of ten from the Redis queue and hands them to the orchestrator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// `[matchmaker]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MatchmakerSection {
    /// Where `/metrics` and `/healthz` are served.
    admin_listen: SocketAddr,
}

impl Default for MatchmakerSection {
    fn default() -> Self {
        Self { admin_listen: addresses::MATCHMAKER_ADMIN }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    matchmaker: MatchmakerSection,
    nats: NatsConfig,
    redis: RedisConfig,
    log: LogConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main("matchmaker", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    service.serve_admin(config.matchmaker.admin_listen, "matchmaker.admin_listen").await?;
    let nats = service.connect_nats(&config.nats).await?;
    let _redis = service.connect_redis(&config.redis).await?;
    service.shutdown.cancelled().await;
    nats.drain().await?;
    Ok(())
}
