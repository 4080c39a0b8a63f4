//! The gateway: the one public entry point. Players speak HTTP to it; it speaks only NATS
//! request/reply to the services behind it and keeps no game state of its own.
//!
//! The player API is [`api::router`]; `/metrics` and `/healthz` share its listener. It is
//! served with each connection's peer address (`ConnectInfo`), which the login rate limit
//! keys on.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod error;
mod extract;
mod game_proxy;
mod long_poll;
mod metrics;
mod openapi;
mod rate_limit;
mod state;
mod tokens;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::Parser;
use mm_shared::config::{LogConfig, NatsConfig};
use mm_shared::protocol::addresses;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig, StartError};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::game_proxy::GameLimits;
use crate::rate_limit::{LoginLimiter, LoginRate};
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
    /// `POST /login` per client address (`per_second`, `burst`); over it, 429.
    login_rate: LoginRate,
    /// Game WebSockets one player may have open through this gateway; more get a 429.
    game_sockets_per_player: u32,
    /// Game WebSockets this gateway proxies at most; more get a 503.
    game_sockets_max: u32,
    /// A game WebSocket with no frame either way for this long is closed (1001).
    #[serde(with = "mm_shared::duration")]
    game_idle_timeout: Duration,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: addresses::GATEWAY,
            max_body_bytes: 16 * 1024,
            long_poll_max: Duration::from_secs(30),
            login_rate: LoginRate::default(),
            // A player needs one; two leave room for a reconnect racing the old
            // socket's close.
            game_sockets_per_player: 2,
            // Each proxied socket is two WebSockets with 4 KiB read buffers and small
            // write buffers, ~10-20 KiB in all while messages are small (~150 MiB for
            // 10,000); a player who keeps sending 64 KiB messages grows its own to
            // ~260 KiB, so a gateway with little memory wants a lower number.
            game_sockets_max: 10_000,
            // The game server sends nothing unprompted, so a live player is the one
            // talking; a minute of silence is a player who is gone.
            game_idle_timeout: Duration::from_secs(60),
        }
    }
}

impl GatewaySection {
    /// What the types cannot check; the message names the key.
    fn validate(&self) -> Result<(), String> {
        self.login_rate.validate("gateway")?;
        if self.game_sockets_per_player == 0 {
            return Err("config key `gateway.game_sockets_per_player` must be at least 1".to_owned());
        }
        if self.game_sockets_max < self.game_sockets_per_player {
            return Err(format!(
                "config key `gateway.game_sockets_max` ({}) must be at least `gateway.game_sockets_per_player` ({})",
                self.game_sockets_max, self.game_sockets_per_player
            ));
        }
        if self.game_idle_timeout < Duration::from_secs(1) {
            return Err("config key `gateway.game_idle_timeout` must be at least 1s".to_owned());
        }
        Ok(())
    }

    fn game_limits(&self) -> GameLimits {
        GameLimits {
            sockets_per_player: self.game_sockets_per_player,
            sockets_max: self.game_sockets_max,
            idle_timeout: self.game_idle_timeout,
        }
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
/// How long the HTTP server may take to close its connections after that.
const SERVER_DRAIN: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    service::main("gateway", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    config.gateway.validate().map_err(anyhow::Error::msg)?;
    metrics::describe();
    let state = AppState::new(
        config.nats.request_timeout,
        config.gateway.long_poll_max,
        config.gateway.game_limits(),
        service.shutdown.clone(),
    );
    // Ready once tokens can be checked here: keys loaded, revocations in step.
    let tokens = state.tokens().clone();
    service.health.add_check("tokens", move || {
        let status = tokens.health();
        async move { status }
    });
    let login_limiter = Arc::new(LoginLimiter::new(config.gateway.login_rate));
    rate_limit::spawn_upkeep(login_limiter.clone(), service.shutdown.clone());
    let router = api::router(state.clone(), config.gateway.max_body_bytes, login_limiter)
        .merge(service.admin_router());
    let server = serve(config.gateway.listen, router, service.shutdown.clone()).await?;
    let nats = service.connect_nats(&config.nats).await?;
    state.connected(nats.clone());
    service.shutdown.cancelled().await;
    // Long-polls answer at shutdown; the rest finish their NATS calls before the drain.
    if !state.wait_idle(SHUTDOWN_GRACE).await {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; draining NATS anyway");
    }
    nats.drain().await?;
    if tokio::time::timeout(SERVER_DRAIN, server).await.is_err() {
        tracing::warn!("HTTP connections still open after {SERVER_DRAIN:?}; closing them");
    }
    Ok(())
}

/// Binds `addr` (failing start-up with the key's name if it cannot) and serves `router`
/// until shutdown, with each connection's peer address as `ConnectInfo<SocketAddr>`: the
/// login rate limit keys on it. (`Service::serve` serves without it.)
async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<JoinHandle<std::io::Result<()>>, StartError> {
    let listen_error = |source| StartError::Listen { addr, key: "gateway.listen".to_owned(), source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    tracing::info!(%bound, "serving HTTP");
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    Ok(tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        GatewaySection::default().validate().expect("defaults are valid");
        type Change = fn(&mut GatewaySection);
        let cases: [(Change, &str); 5] = [
            (|g| g.login_rate.per_second = 0, "`gateway.login_rate.per_second`"),
            (|g| g.login_rate.burst = 0, "`gateway.login_rate.burst`"),
            (|g| g.game_sockets_per_player = 0, "`gateway.game_sockets_per_player`"),
            (|g| g.game_sockets_max = 1, "`gateway.game_sockets_max`"),
            (|g| g.game_idle_timeout = Duration::from_millis(10), "`gateway.game_idle_timeout`"),
        ];
        for (change, key) in cases {
            let mut section = GatewaySection::default();
            change(&mut section);
            let err = section.validate().expect_err(key);
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn the_new_keys_read_from_toml() {
        let section: GatewaySection = toml::from_str(
            "game_sockets_per_player = 1\ngame_idle_timeout = \"5s\"\n[login_rate]\nper_second = 3\nburst = 7\n",
        )
        .expect("parses");
        assert_eq!(section.login_rate, LoginRate { per_second: 3, burst: 7 });
        assert_eq!(section.game_sockets_per_player, 1);
        assert_eq!(section.game_idle_timeout, Duration::from_secs(5));
        assert_eq!(section.game_sockets_max, GatewaySection::default().game_sockets_max);
        assert!(
            toml::from_str::<GatewaySection>("[login_rate]\nper_secnd = 3\n").is_err(),
            "typos are refused"
        );
    }
}
