//! The gateway: the one public entry point. Players speak HTTP to it; it speaks only NATS
//! request/reply to the services behind it and keeps no game state of its own.
//!
//! The player API is [`api::router`]; `/metrics` and `/healthz` share its listener.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod error;
mod extract;
mod game_proxy;
mod long_poll;
mod metrics;
mod state;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mm_shared::config::{LogConfig, NatsConfig};
use mm_shared::protocol::addresses;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig};
use serde::{Deserialize, Serialize};

use crate::state::AppState;

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
    /// Largest request body; larger ones get a 413.
    max_body_bytes: usize,
    /// Longest wait a status long-poll may ask for (`waitMs` above it is capped).
    #[serde(with = "mm_shared::duration")]
    long_poll_max: Duration,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self { listen: addresses::GATEWAY, max_body_bytes: 16 * 1024, long_poll_max: Duration::from_secs(30) }
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

/// How long shutdown waits for requests in flight before draining NATS.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    service::main("gateway", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    metrics::describe();
    let state =
        AppState::new(config.nats.request_timeout, config.gateway.long_poll_max, service.shutdown.clone());
    let router = api::router(state.clone(), config.gateway.max_body_bytes).merge(service.admin_router());
    service.serve(config.gateway.listen, "gateway.listen", router).await?;
    let nats = service.connect_nats(&config.nats).await?;
    state.connected(nats.clone());
    service.shutdown.cancelled().await;
    // Long-polls answer at shutdown; the rest finish their NATS calls before the drain.
    if !state.wait_idle(SHUTDOWN_GRACE).await {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; draining NATS anyway");
    }
    nats.drain().await?;
    Ok(())
}
