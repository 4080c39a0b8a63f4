//! Drivers: how a node starts, stops and watches game servers.
//!
//! One trait, two implementations (like Nomad's task drivers):
//! - [`podman`]: containers through the Podman REST API (rootless by default);
//! - [`process`]: child processes of the orchestrator (like Nomad's `raw_exec`), for
//!   machines without Podman. They die with the orchestrator.
//!
//! A driver reports every exit on the [`Exit`] channel it was given; nobody polls a
//! server to learn that it stopped. Its failures are typed ([`DriverError`]): callers
//! decide by the kind, never by the text of a message.

pub mod env;
pub mod podman;
pub mod process;

use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{DriverChoice, OrchestratorSection};

/// The port a game server listens on inside its container.
pub const CONTAINER_PORT: u16 = 7777;

/// Servers a sweep removes at once.
const SWEEP_PARALLEL: usize = 16;

/// Everything a driver needs to start one game server.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub game_id: String,
    pub match_id: String,
    pub node: String,
    pub player_ids: Vec<String>,
    pub secret: String,
    /// Host address and port the server is reached on.
    pub host_ip: IpAddr,
    pub port: u16,
    /// Unix ms when the game ends.
    pub ends_at: u64,
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    pub worker_threads: u32,
    /// The server ends itself when no player joins within this (zero: never).
    pub join_timeout: Duration,
    /// Set for a warm server (then `match_id`, `player_ids`, `secret` and `ends_at` are
    /// unset): the token its node hands it its match with.
    pub bootstrap_token: String,
}

/// What a running server's own settings say of its game: enough to write its KV entry
/// again and adopt it when the entry was lost (reaped while its node was down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub game_id: String,
    pub match_id: String,
    pub player_ids: Vec<String>,
    pub secret: String,
    pub ends_at: u64,
    /// The host port it is published on.
    pub port: u16,
    /// A server started warm: its bootstrap token (the match fields are then empty: it
    /// took its match, if any, after it started; the server itself says which).
    pub bootstrap_token: String,
}

/// A game server the driver knows of (for reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub handle: String,
    pub game_id: String,
    pub running: bool,
}

/// A game server stopped. `code` is its exit code when the driver knows it already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub game_id: String,
    pub handle: String,
    pub code: Option<i64>,
}

/// Why a driver call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The driver itself is not usable (Podman down, binary missing): a node problem.
    #[error("{0}")]
    Unavailable(String),
    /// The game-server image is not in the driver's storage.
    #[error("image {image} is not in this Podman's storage: build it with `just image`")]
    ImageMissing { image: String },
    /// The host port was taken between the check and the start; another port may work.
    #[error("port {0} is already in use on the host")]
    PortTaken(u16),
    /// A server of this name exists already (a leftover of an earlier attempt).
    #[error("a container named {0} already exists")]
    NameInUse(String),
    /// Anything else about this one server.
    #[error("{0}")]
    Failed(String),
}

/// Is `port` held by something on `ip` (a bind fails with "address in use")? An address
/// that is not this network namespace's tells nothing: not in use, as far as we know.
pub fn port_in_use(ip: IpAddr, port: u16) -> bool {
    matches!(std::net::TcpListener::bind((ip, port)), Err(err) if err.kind() == std::io::ErrorKind::AddrInUse)
}

pub type DriverResult<T> = Result<T, DriverError>;

/// What every driver does. Calls are bounded in time by the driver.
pub trait Driver: Send + Sync {
    /// `podman` or `process`.
    fn name(&self) -> &'static str;

    /// Can it start servers now? `Ok` carries a status line ("podman 4.3.1, rootless").
    fn check(&self) -> BoxFuture<'_, DriverResult<String>>;

    /// How many starts it works on at once (what a node admits before it has learnt its
    /// driver's start rate).
    fn parallel(&self) -> usize;

    /// Starts a server; returns its handle (container id, pid). If the future is dropped
    /// before it completes, a server may have been created all the same:
    /// [`Driver::discard_game`] removes it.
    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, DriverResult<String>>;

    /// Stops and removes whatever server of `game_id` a dropped [`Driver::start`] left.
    fn discard_game<'a>(&'a self, _game_id: &'a str, _timeout: Duration) -> BoxFuture<'a, DriverResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Stops a server: SIGTERM, then kill after `timeout`. Fine if it already stopped.
    fn stop<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, DriverResult<()>>;

    /// Forgets a stopped server (removes its container). Fine if it is already gone.
    fn remove<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, DriverResult<()>>;

    /// Stops a server (SIGTERM, kill after `timeout`) and removes it, in as few calls
    /// as the driver allows.
    fn discard<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, DriverResult<()>> {
        Box::pin(async move {
            self.stop(handle, timeout).await?;
            self.remove(handle).await
        })
    }

    /// A stopped server's exit code, when known.
    fn exit_code<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, DriverResult<Option<i64>>>;

    /// The last lines a server wrote (for error messages).
    fn logs_tail<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, String>;

    /// The servers this driver runs for `node`, running or not.
    fn list<'a>(&'a self, node: &'a str) -> BoxFuture<'a, DriverResult<Vec<Instance>>>;

    /// Sends every running server of `node` SIGTERM at once, without waiting for any:
    /// at a node's shutdown, so they all start ending together rather than one by one
    /// as their runners' stops get their turn. How many it signalled.
    fn terminate_all<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(std::future::ready(0))
    }

    /// Removes every server of `node` the driver knows (only the stopped ones with
    /// `stopped_only`), `timeout` for each to stop; how many it removed. For a node's
    /// shutdown, after its runners: what they could not remove in time goes here.
    fn sweep<'a>(
        &'a self,
        node: &'a str,
        stopped_only: bool,
        timeout: Duration,
    ) -> BoxFuture<'a, DriverResult<usize>> {
        Box::pin(async move {
            let doomed: Vec<Instance> = self
                .list(node)
                .await?
                .into_iter()
                .filter(|instance| !(stopped_only && instance.running))
                .collect();
            let removed = futures_util::stream::iter(doomed)
                .map(|instance| async move { self.discard(&instance.handle, timeout).await.is_ok() })
                .buffer_unordered(SWEEP_PARALLEL)
                .filter(|removed| std::future::ready(*removed))
                .count()
                .await;
            Ok(removed)
        })
    }

    /// What server `handle`'s own settings say of its game, when the driver can tell
    /// (Podman keeps a container's environment and port bindings; a process driver's
    /// servers never outlive their node, so it never needs to).
    fn recover<'a>(&'a self, _handle: &'a str) -> BoxFuture<'a, Option<Recovered>> {
        Box::pin(std::future::ready(None))
    }

    /// Starts reporting exits that need watching (Podman's event stream) until `shutdown`.
    fn watch(&self, _shutdown: CancellationToken) {}
}

/// Picks and connects the driver the config asks for; `auto` prefers Podman when its
/// socket answers and has the image, and says why when it falls back.
pub async fn select(
    config: &OrchestratorSection,
    node: &str,
    exits: mpsc::UnboundedSender<Exit>,
) -> anyhow::Result<Box<dyn Driver>> {
    let socket = config.podman.socket_path();
    match config.driver {
        DriverChoice::Podman => {
            let driver = podman::PodmanDriver::connect(config, node, exits).await?;
            Ok(Box::new(driver))
        }
        DriverChoice::Process => Ok(Box::new(process::ProcessDriver::new(config, exits)?)),
        DriverChoice::Auto => match podman::PodmanDriver::connect(config, node, exits.clone()).await {
            Ok(driver) => match driver.check().await {
                Ok(_) => Ok(Box::new(driver)),
                Err(err) => {
                    tracing::warn!(
                        "driver auto: Podman answers at {} but {err}; using processes",
                        socket.display()
                    );
                    Ok(Box::new(process::ProcessDriver::new(config, exits)?))
                }
            },
            Err(err) => {
                tracing::info!("driver auto: {err}; using processes");
                Ok(Box::new(process::ProcessDriver::new(config, exits)?))
            }
        },
    }
}
