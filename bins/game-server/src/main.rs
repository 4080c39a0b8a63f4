//! The game server: one short-lived process (or container) per match.
//!
//! Foundation stage: it loads its config and serves `/metrics` and `/healthz` on its
//! listen address. The WebSocket game loop, the player check and the game's end are
//! not built yet (see the orchestrator issue).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mm_shared::config::LogConfig;
use mm_shared::protocol::addresses;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig};
use serde::{Deserialize, Serialize};

/// A match's game server: WebSocket echo until the game ends.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// `[game]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GameSection {
    /// Where `/connect`, `/metrics` and `/healthz` are served.
    listen: SocketAddr,
}

impl Default for GameSection {
    fn default() -> Self {
        Self { listen: addresses::GAME_SERVER }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    game: GameSection,
    log: LogConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main("game-server", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    service.serve_admin(service.config.game.listen, "game.listen").await?;
    service.shutdown.cancelled().await;
    Ok(())
}
