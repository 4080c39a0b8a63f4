//! `GET /game/{gameId}/connect?token=<token>`: the player's WebSocket to its match's game
//! server, through the gateway.
//!
//! Players never reach game servers directly. The gateway:
//! 1. finds the player behind the token (checked here, `crate::tokens`; it may come in the query,
//!    as browsers cannot set headers on a WebSocket, or as `Authorization: Bearer`);
//! 2. reads the server's entry from KV bucket `servers` (its `address`, `playerIds`,
//!    `state`) and refuses players of other matches (403), then its secret from the
//!    bucket `secrets`, which only orchestrators write and only gateways read;
//! 3. dials `ws://<address>/connect?player=<id>` with `Authorization: Bearer <secret>`
//!    *before* accepting the upgrade, so a server that cannot be reached is a 502, not a
//!    socket that opens and dies;
//! 4. pumps frames both ways until either side closes, passing the close frame on (the
//!    game server closes every socket when the game ends). At shutdown both sides get a
//!    "going away" close.
//!
//! Bounds, so that one player (or many) cannot make the gateway hold much:
//! - messages and frames over the game server's own limit
//!   ([`MAX_MESSAGE_BYTES`], 64 KiB) are refused on both sockets: a player who sends one
//!   gets close 1009 ("message too big"); a game server that sends one gets 1009 and the
//!   player 1011;
//! - read and write buffers are sized for small game messages ([`BUFFER_BYTES`]), not
//!   tungstenite's 128 KiB defaults; they grow only for a larger message;
//! - a player may hold `gateway.game_sockets_per_player` sockets (429 beyond) and the
//!   gateway `gateway.game_sockets_max` in all (503 beyond), both refused before the
//!   upgrade and before the game server is dialled;
//! - a socket with no frame either way for `gateway.game_idle_timeout` is closed (1001 to
//!   the player, "going away" to the game server).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use mm_shared::protocol::game_server::{CONNECT_PATH, MAX_MESSAGE_BYTES, PLAYER_PARAM};
use mm_shared::protocol::{ServerEntry, ServerState, limits};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::metrics::{Refusal, refused};
use crate::state::AppState;

/// How long dialling the game server may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Read buffer of each socket, and the write buffer's flush threshold: game messages are
/// small (the harness's are tens of bytes). tungstenite allocates the read buffer up
/// front, so this is most of an idle socket's memory; a larger message still fits, as
/// the buffers grow up to [`MAX_MESSAGE_BYTES`].
pub const BUFFER_BYTES: usize = 4 * 1024;

/// Most a socket's write buffer may hold: one largest message and its frame header, with
/// room to spare (tungstenite wants more than `BUFFER_BYTES` plus one message).
const MAX_WRITE_BUFFER_BYTES: usize = BUFFER_BYTES + MAX_MESSAGE_BYTES + 1024;

/// How long a close handshake with either side may take once the proxy ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The upstream socket's limits: the same as the player's.
fn upstream_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(BUFFER_BYTES)
        .write_buffer_size(BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// `gateway.game_*`: how many game sockets, and how long one may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GameLimits {
    /// Sockets one player may have open through this gateway.
    pub sockets_per_player: u32,
    /// Sockets this gateway proxies at most.
    pub sockets_max: u32,
    /// A socket with no frame either way for this long is closed.
    pub idle_timeout: Duration,
}

/// The game sockets open through this gateway, per player and in all.
#[derive(Clone)]
pub struct Sockets {
    limits: GameLimits,
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    total: u32,
    by_player: HashMap<String, u32>,
}

/// One open (or opening) socket's place; dropping it frees the place.
pub struct Slot {
    open: Arc<Mutex<Open>>,
    player: String,
}

impl Sockets {
    pub fn new(limits: GameLimits) -> Self {
        Self { limits, open: Arc::default() }
    }

    pub fn limits(&self) -> GameLimits {
        self.limits
    }

    /// A place for one more socket of `player`, or why there is none.
    pub fn claim(&self, player: &str) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mine = open.by_player.get(player).copied().unwrap_or(0);
        if mine >= self.limits.sockets_per_player {
            refused(Refusal::GameSocketsPlayer);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "player {player} already has {mine} game connection(s) open, the most allowed \
                     (gateway.game_sockets_per_player); close one first"
                ),
            ));
        }
        if open.total >= self.limits.sockets_max {
            refused(Refusal::GameSocketsTotal);
            return Err(ApiError::unavailable(format!(
                "the gateway is proxying {} game connections, its most (gateway.game_sockets_max); try again later",
                open.total
            )));
        }
        open.total += 1;
        *open.by_player.entry(player.to_owned()).or_insert(0) += 1;
        Ok(Slot { open: self.open.clone(), player: player.to_owned() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_player.get_mut(&self.player) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_player.remove(&self.player);
            }
        }
    }
}

type Upstream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectParams {
    /// The player's session token (browsers cannot set headers on a WebSocket; an
    /// `Authorization: Bearer` header works too).
    token: Option<String>,
}

#[utoipa::path(get, path = "/game/{game_id}/connect", tag = "game",
    params(("game_id" = String, Path, description = "The matched ticket's `server.gameId`"), ConnectParams),
    description = "WebSocket (upgrade) to the match's game server, for players of that match: text and binary frames are echoed; it closes when the game ends.",
    responses(
        (status = 101, description = "Switching protocols: the game WebSocket"),
        (status = 400, description = "Not a WebSocket handshake", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 403, description = "The player is not in this match", body = crate::error::ErrorBody),
        (status = 404, description = "No live game server for this game", body = crate::error::ErrorBody),
        (status = 429, description = "Too many game sockets for this player", body = crate::error::ErrorBody),
        (status = 502, description = "The game server could not be dialled", body = crate::error::ErrorBody),
        (status = 503, description = "The gateway proxies all the game sockets it may", body = crate::error::ErrorBody),
    ))]
/// The handler behind `/game/{gameId}/connect`.
///
/// The upgrade is taken as a `Result` so that a request that is no WebSocket handshake
/// still meets the token check first, and is refused in the gateway's JSON form.
pub async fn connect(
    State(state): State<AppState>,
    Path(game_id): Path<String>,
    QueryParams(params): QueryParams<ConnectParams>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = admit(&state, &game_id, params.token.as_deref(), &headers, upgrade).await;
    let (player, slot, upstream, upgrade) = match result {
        Ok(admitted) => admitted,
        Err(err) => {
            metrics::counter!("mm_gateway_game_connects_total", "result" => refusal_label(err.status))
                .increment(1);
            return Err(err);
        }
    };
    metrics::counter!("mm_gateway_game_connects_total", "result" => "ok").increment(1);
    metrics::histogram!("mm_gateway_game_connect_duration_seconds").record(started.elapsed().as_secs_f64());
    let shutdown = state.shutdown().clone();
    let idle_timeout = state.game_sockets().limits().idle_timeout;
    let upgrade = upgrade
        .read_buffer_size(BUFFER_BYTES)
        .write_buffer_size(BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    // The slot moves into the socket's task: it is freed when the proxy ends, or when the
    // upgrade fails and the task never runs.
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _slot = slot;
        let _open = mm_shared::telemetry::GaugeGuard::new(metrics::gauge!("mm_gateway_game_connections"));
        let ended = pump(socket, upstream, shutdown, idle_timeout).await;
        tracing::debug!(game_id, player, ended = ended.label(), "game connection closed");
    }))
}

/// Who the player is, whether they belong to the game, that the request is a WebSocket
/// handshake, and a live upstream socket (dialled last: only for a request that can use it).
async fn admit(
    state: &AppState,
    game_id: &str,
    query_token: Option<&str>,
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<(String, Slot, Upstream, WebSocketUpgrade), ApiError> {
    limits::check_id("gameId", game_id).map_err(ApiError::bad_request)?;
    let token = query_token.or_else(|| bearer_token(headers)).ok_or_else(|| {
        ApiError::unauthorized("missing token: connect with ?token=<token> (log in at POST /login)")
    })?;
    let player = crate::auth::verify(state, token).await?;
    let entry = state.game_server(game_id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no live game server for game {game_id}"))
    })?;
    if !entry.player_ids.contains(&player.id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("player {} is not in the match of game {game_id}", player.id),
        ));
    }
    if !matches!(entry.state, ServerState::Ready | ServerState::Running) {
        return Err(ApiError::unavailable(format!(
            "game {game_id} is {} and not taking connections",
            entry.state.as_str()
        )));
    }
    // Same status axum would give (400, 405, 426...), in the gateway's JSON form.
    let upgrade = upgrade.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    // Counted from before the dial, so a burst of connects cannot overshoot the limits.
    let slot = state.game_sockets().claim(&player.id)?;
    let secret = state.game_secret(game_id).await?;
    let upstream = dial(&entry, &secret, &player.id).await?;
    Ok((player.id, slot, upstream, upgrade))
}

/// Opens the WebSocket to the game server as the gateway, on the player's behalf.
async fn dial(entry: &ServerEntry, secret: &str, player: &str) -> Result<Upstream, ApiError> {
    let bad_gateway = |what: String| {
        tracing::warn!(game_id = entry.game_id, address = entry.address, "{what}");
        ApiError::new(StatusCode::BAD_GATEWAY, what)
    };
    let url = format!("ws://{}{CONNECT_PATH}?{PLAYER_PARAM}={player}", entry.address);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|err| bad_gateway(format!("bad game server address: {err}")))?;
    let secret = format!("Bearer {secret}")
        .parse()
        .map_err(|_| bad_gateway("the game server's secret is not a valid header".to_owned()))?;
    request.headers_mut().insert(header::AUTHORIZATION, secret);
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(upstream_config()), true);
    match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Ok(Ok((upstream, _))) => Ok(upstream),
        Ok(Err(tungstenite::Error::Http(response))) => {
            Err(bad_gateway(format!("the game server refused the connection ({})", response.status())))
        }
        Ok(Err(err)) => Err(bad_gateway(format!("cannot reach the game server: {err}"))),
        Err(_) => Err(bad_gateway(format!("the game server did not answer within {DIAL_TIMEOUT:?}"))),
    }
}

fn refusal_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        429 => "too_many",
        502 => "upstream_error",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    }
}

/// Why a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The player closed (its close frame was passed on) or is gone.
    Client,
    /// The game server closed (its close frame was passed on) or is gone.
    Server,
    /// The gateway is stopping.
    Shutdown,
    /// No frame either way for `gateway.game_idle_timeout`.
    Idle,
    /// The player sent a message or frame over [`MAX_MESSAGE_BYTES`].
    ClientTooBig,
    /// The game server did.
    ServerTooBig,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Client => "client",
            End::Server => "server",
            End::Shutdown => "shutdown",
            End::Idle => "idle",
            End::ClientTooBig => "client_too_big",
            End::ServerTooBig => "server_too_big",
        }
    }
}

/// The close each side is sent when the proxy ends: `None` for the side that ended it
/// (its own close was passed on, or it is gone); otherwise a close code and reason (1000
/// with no reason is a bare close frame).
struct Goodbye {
    player: Option<(u16, String)>,
    game: Option<(u16, String)>,
}

impl End {
    fn goodbye(self, idle_timeout: Duration) -> Goodbye {
        let say = |code: u16, reason: &str| Some((code, reason.to_owned()));
        let too_big = format!("message over {MAX_MESSAGE_BYTES} bytes");
        let (player, game) = match self {
            End::Client => (None, say(ws::close_code::NORMAL, "")),
            End::Server => (say(ws::close_code::NORMAL, ""), None),
            End::Shutdown => (
                say(ws::close_code::AWAY, "gateway shutting down"),
                say(ws::close_code::AWAY, "gateway shutting down"),
            ),
            End::Idle => {
                let reason = format!("no frame for {}", mm_shared::duration::format(idle_timeout));
                (say(ws::close_code::AWAY, &reason), say(ws::close_code::AWAY, &reason))
            }
            End::ClientTooBig => {
                (say(ws::close_code::SIZE, &too_big), say(ws::close_code::AWAY, "player disconnected"))
            }
            End::ServerTooBig => (
                say(ws::close_code::ERROR, "the game server broke the protocol"),
                say(ws::close_code::SIZE, &too_big),
            ),
        };
        Goodbye { player, game }
    }
}

/// Copies frames both ways until one side closes (its close frame is passed on), a side
/// breaks a limit, the socket idles out, or the gateway shuts down. Returns why it ended.
async fn pump(
    client: WebSocket,
    upstream: Upstream,
    shutdown: tokio_util::sync::CancellationToken,
    idle_timeout: Duration,
) -> End {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    // Milliseconds since `opened` of the last frame either way.
    let opened = tokio::time::Instant::now();
    let last_frame = AtomicU64::new(0);
    let touch = || {
        let now = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_frame.store(now, Ordering::Relaxed);
    };
    let to_server = async {
        loop {
            let message = match client_rx.next().await {
                Some(Ok(message)) => message,
                Some(Err(err)) if too_big(std::error::Error::source(&err)) => return End::ClientTooBig,
                Some(Err(_)) | None => return End::Client,
            };
            touch();
            let closing = matches!(message, ws::Message::Close(_));
            metrics::counter!("mm_gateway_game_frames_total", "direction" => "to_server").increment(1);
            if upstream_tx.send(to_upstream(message)).await.is_err() {
                return End::Server;
            }
            if closing {
                return End::Client;
            }
        }
    };
    let to_client = async {
        loop {
            let message = match upstream_rx.next().await {
                Some(Ok(message)) => message,
                Some(Err(err)) if too_big(Some(&err)) => return End::ServerTooBig,
                Some(Err(_)) | None => return End::Server,
            };
            touch();
            let Some(message) = to_client_message(message) else { continue };
            let closing = matches!(message, ws::Message::Close(_));
            metrics::counter!("mm_gateway_game_frames_total", "direction" => "to_client").increment(1);
            if client_tx.send(message).await.is_err() {
                return End::Client;
            }
            if closing {
                return End::Server;
            }
        }
    };
    let idle = async {
        loop {
            let last = Duration::from_millis(last_frame.load(Ordering::Relaxed));
            let deadline = opened + last + idle_timeout;
            if tokio::time::Instant::now() >= deadline {
                return End::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let ended = tokio::select! {
        end = to_server => end,
        end = to_client => end,
        end = idle => end,
        () = shutdown.cancelled() => End::Shutdown,
    };
    match ended {
        End::ClientTooBig | End::ServerTooBig => refused(Refusal::GameMessageTooBig),
        End::Idle => refused(Refusal::GameIdle),
        End::Client | End::Server | End::Shutdown => {}
    }
    // Tell each side what the other did not already pass on (a close already sent makes
    // this a no-op); neither side may hold us up for long.
    let Goodbye { player, game } = ended.goodbye(idle_timeout);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some((code, reason)) = game {
            let frame = (code != ws::close_code::NORMAL || !reason.is_empty()).then(|| {
                tungstenite::protocol::CloseFrame { code: CloseCode::from(code), reason: reason.into() }
            });
            let _ = upstream_tx.send(tungstenite::Message::Close(frame)).await;
        }
        let _ = upstream_tx.close().await;
    })
    .await;
    if let Some((code, reason)) = player {
        let frame = (code != ws::close_code::NORMAL || !reason.is_empty())
            .then(|| ws::CloseFrame { code, reason: reason.into() });
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if client_tx.send(ws::Message::Close(frame)).await.is_ok() && ended != End::ClientTooBig {
                // The closing handshake: the player's reply (or its going away) ends it.
                // After an oversized frame the rest of the stream is that frame's
                // payload, so nothing more is read.
                while let Some(Ok(message)) = client_rx.next().await {
                    if matches!(message, ws::Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
    ended
}

/// Is this a socket error for a message or frame over the configured size?
fn too_big(err: Option<&(dyn std::error::Error + 'static)>) -> bool {
    matches!(
        err.and_then(|err| err.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// A client frame as the game server's WebSocket library spells it.
fn to_upstream(message: ws::Message) -> tungstenite::Message {
    match message {
        ws::Message::Text(text) => tungstenite::Message::text(text.as_str()),
        ws::Message::Binary(data) => tungstenite::Message::Binary(data),
        ws::Message::Ping(data) => tungstenite::Message::Ping(data),
        ws::Message::Pong(data) => tungstenite::Message::Pong(data),
        ws::Message::Close(frame) => {
            tungstenite::Message::Close(frame.map(|frame| tungstenite::protocol::CloseFrame {
                code: frame.code.into(),
                reason: frame.reason.as_str().into(),
            }))
        }
    }
}

/// A game server frame as axum spells it (raw frames never arrive from a reader).
fn to_client_message(message: tungstenite::Message) -> Option<ws::Message> {
    Some(match message {
        tungstenite::Message::Text(text) => ws::Message::Text(text.as_str().into()),
        tungstenite::Message::Binary(data) => ws::Message::Binary(data),
        tungstenite::Message::Ping(data) => ws::Message::Ping(data),
        tungstenite::Message::Pong(data) => ws::Message::Pong(data),
        tungstenite::Message::Close(frame) => {
            ws::Message::Close(frame.map(|frame| ws::CloseFrame {
                code: frame.code.into(),
                reason: frame.reason.as_str().into(),
            }))
        }
        tungstenite::Message::Frame(_) => return None,
    })
}
