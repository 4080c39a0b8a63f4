//! The game server: one short-lived process (or container) per match.
//!
//! It serves, on one address:
//! - `GET /connect` — the match's WebSocket "game loop": every text and binary frame a
//!   player sends comes back to them (the seed project's echo);
//! - `GET /healthz` and `GET /metrics` — the orchestrator waits for `/healthz` before it
//!   hands the server to the match.
//!
//! ## Admission (what the gateway's proxy presents)
//!
//! ```text
//! GET /connect?player=<playerId>
//! Authorization: Bearer <secret>
//! Upgrade: websocket
//! ```
//!
//! `secret` is the per-match secret the orchestrator generated and wrote to the match's
//! `ServerEntry` in KV bucket `servers` (with `address` and `playerIds`); the server
//! admits a connection only when the bearer secret matches and `player` is one of the
//! match's players. Refusals are plain HTTP answers before the upgrade, with a JSON body
//! `{"error": "..."}`: 400 no `player`, 401 missing or wrong secret, 403 a player of
//! another match, 410 the game is over. With no secret or no player list configured (a
//! game server started by hand), that part of the check is skipped.
//!
//! ## The end of the game
//!
//! The game ends at `game.ends_at` (epoch ms, set by the orchestrator so a restarted
//! server keeps the match's original end) or `game.duration` after start. Then every
//! socket gets a close frame (1000, "game over"), the server waits briefly for the
//! players' close replies, and exits 0. SIGTERM does the same with 1001 ("server
//! shutting down"): in a container the server is PID 1, which gets no default signal
//! handling, so this is what makes `podman stop` quick.
//!
//! ## The result
//!
//! A game played to its end has a winner: the server plays the first half of its player
//! list against the second half, from the true skills the players sent with their
//! messages and some luck ([`result`]), and writes one line to stdout as its very last
//! output: `MM_GAME_RESULT {"gameId","matchId","teams","winner"}`
//! ([`mm_shared::protocol::game_server::RESULT_PREFIX`]). It has no NATS credentials: its
//! node reads the line once the server exited and publishes it on `events.game.ended`.
//! A game cut short (SIGTERM, nobody joined) writes none.
//!
//! A server that no player joins within `game.join_timeout` (its match was probably never
//! committed) ends itself, saying so in its log, and exits with
//! [`exit_codes::NO_PLAYERS`]; one whose listen address is taken exits with
//! [`exit_codes::ADDRESS_IN_USE`]. The orchestrator tells these from a crash by the code.
//!
//! ## Warm servers
//!
//! A node keeps a pool of *warm* servers: started with `game.bootstrap_token` and no
//! match, healthy, refusing every player (503) until the node hands one its match on
//! `POST /assign` (`Authorization: Bearer <bootstrap token>`, body
//! [`mm_shared::protocol::game_server::Assignment`]: game and match ids, players, secret,
//! end). It takes one assignment only (a second is refused with 409); from then on it is
//! any match's server, its join timeout counted from the assignment. `GET /assign` (same
//! token) tells its node which match it has, after the node lost track (a crash).
//!
//! The binary is built static for a `FROM scratch` image (`just image`), so it must never
//! resolve host names: every address it is given is an IP address.

mod game;
mod result;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use mm_shared::config::LogConfig;
use mm_shared::protocol::addresses;
use mm_shared::protocol::game_server::exit_codes;
use mm_shared::service::{self, CommonArgs, Service, ServiceConfig, StartError};
use serde::{Deserialize, Serialize};

use crate::game::{EndReason, Game};

/// A match's game server: WebSocket echo for the match's players until the game ends.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// `[game]`: the orchestrator sets every key through `MM_GAME__*` variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GameSection {
    /// Where `/connect`, `/metrics` and `/healthz` are served (an IP address, never a name).
    listen: SocketAddr,
    /// The game this server runs (for logs).
    game_id: String,
    /// The match it belongs to (for logs).
    match_id: String,
    /// How long the game lasts from start, when `ends_at` is not set.
    #[serde(with = "mm_shared::duration")]
    duration: Duration,
    /// When the game ends, in Unix epoch milliseconds; 0 means `duration` after start.
    ends_at: u64,
    /// The bearer secret a connection must present; empty admits any caller. Never printed.
    #[serde(skip_serializing)]
    secret: String,
    /// The match's players (`MM_GAME__PLAYERS='["p1","p2"]'`); empty admits any player id.
    players: Vec<String>,
    /// Largest WebSocket message a player may send.
    max_message_bytes: usize,
    /// How long, once the game is over, the server waits for players' close replies.
    #[serde(with = "mm_shared::duration")]
    close_timeout: Duration,
    /// How long it waits for its first player before it ends itself; 0: the whole game.
    /// A warm server counts it from its assignment.
    #[serde(with = "mm_shared::duration")]
    join_timeout: Duration,
    /// Set: a warm server, with no match until its node assigns one with this token on
    /// `POST /assign` (the match keys above are then unused). Never printed.
    #[serde(skip_serializing)]
    bootstrap_token: String,
}

impl Default for GameSection {
    fn default() -> Self {
        Self {
            listen: addresses::GAME_SERVER,
            game_id: String::new(),
            match_id: String::new(),
            duration: Duration::from_secs(30),
            ends_at: 0,
            secret: String::new(),
            players: Vec::new(),
            max_message_bytes: mm_shared::protocol::game_server::MAX_MESSAGE_BYTES,
            close_timeout: Duration::from_secs(2),
            join_timeout: Duration::ZERO,
            bootstrap_token: String::new(),
        }
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

/// The exit code that says why the server ended early, when it did (see the module doc).
static EXIT_CODE: OnceLock<i64> = OnceLock::new();
/// The game's result line, written after everything else (see the module doc).
static RESULT: OnceLock<String> = OnceLock::new();

fn main() -> ExitCode {
    let args = Args::parse();
    let code = service::main("game-server", &args.common, run);
    if let Some(line) = RESULT.get() {
        // The result protocol, not a log: stdout, one line, the very last output (logs
        // go to stderr), so the node finds it at the end of what the server wrote.
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
    match EXIT_CODE.get() {
        Some(&special) => ExitCode::from(u8::try_from(special).unwrap_or(1)),
        None => code,
    }
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config.game;
    let warm = !config.bootstrap_token.is_empty();
    let game = Arc::new(if warm {
        Game::warm(config.bootstrap_token.clone(), config.max_message_bytes)
    } else {
        Game::new(config.secret.clone(), config.players.clone(), config.max_message_bytes)
    });
    let router = service.admin_router().merge(game::router(game.clone()));
    let bound = match service.serve(config.listen, "game.listen", router).await {
        Ok(bound) => bound,
        Err(err) => {
            if let StartError::Listen { source, .. } = &err
                && source.kind() == std::io::ErrorKind::AddrInUse
            {
                let _ = EXIT_CODE.set(exit_codes::ADDRESS_IN_USE);
            }
            return Err(err.into());
        }
    };
    // A warm server waits for its match (or its end) before its game's clocks start.
    let (game_id, match_id, player_count, ends_at) = if warm {
        tracing::info!(warm_id = %config.game_id, %bound, "warm: waiting for its node to hand it a match");
        let assigned = tokio::select! {
            assigned = game.wait_assigned() => assigned,
            () = service.shutdown.cancelled() => {
                game.end(EndReason::Shutdown, config.close_timeout).await;
                tracing::info!(warm_id = %config.game_id, "stopped while warm, never assigned");
                return Ok(());
            }
        };
        let Some(assignment) = assigned else {
            return Err(anyhow::anyhow!("a warm server was let in without an assignment"));
        };
        (assignment.game_id, assignment.match_id, assignment.player_ids.len(), assignment.ends_at)
    } else {
        (config.game_id.clone(), config.match_id.clone(), config.players.len(), config.ends_at)
    };
    let ends_in = match ends_at {
        0 => config.duration,
        ends_at => Duration::from_millis(ends_at.saturating_sub(mm_shared::protocol::now_ms())),
    };
    tracing::info!(
        %game_id,
        %match_id,
        %bound,
        players = player_count,
        ends_in = %mm_shared::duration::format(ends_in),
        "game open"
    );
    let join_timeout = config.join_timeout;
    let nobody_joined = async {
        if join_timeout.is_zero() || join_timeout >= ends_in {
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(join_timeout) => {}
            () = game.first_join() => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        () = tokio::time::sleep(ends_in) => EndReason::GameOver,
        () = service.shutdown.cancelled() => EndReason::Shutdown,
        () = nobody_joined => EndReason::NoPlayers,
    };
    let closed = game.end(reason, config.close_timeout).await;
    if reason == EndReason::NoPlayers {
        tracing::warn!(
            %game_id,
            %match_id,
            "game ended: no player joined within {} (game.join_timeout)",
            mm_shared::duration::format(join_timeout)
        );
        let _ = EXIT_CODE.set(exit_codes::NO_PLAYERS);
    } else {
        tracing::info!(%game_id, sockets_closed = closed, "game ended: {reason}");
    }
    if reason == EndReason::GameOver {
        report_result(&game, &game_id, &match_id);
    }
    Ok(())
}

/// Decides the winner of a game played to its end and keeps the result line for `main`
/// to write last. A game cut short (shutdown, nobody joined) has no result.
fn report_result(game: &Game, game_id: &str, match_id: &str) {
    let players = game.players();
    let skills = game.skills();
    let Some(decision) = result::decide(&players, &skills, &mut fastrand::Rng::new()) else {
        tracing::info!(%game_id, players = players.len(), "no result: the players are not two equal sides");
        return;
    };
    tracing::info!(
        %game_id,
        %match_id,
        winner = decision.winner,
        strength = ?decision.strength,
        first_wins = decision.first_wins,
        skills_known = skills.len(),
        "result decided"
    );
    let _ = RESULT.set(result::line(game_id, match_id, &players, decision.winner));
}
