//! `GET /game/{gameId}/connect?token=<token>`: the player's WebSocket to its match's game
//! server, through the gateway.
//!
//! Players never reach game servers directly. The gateway:
//! 1. finds the player behind the token (`session.verify`; the token may come in the query,
//!    as browsers cannot set headers on a WebSocket, or as `Authorization: Bearer`);
//! 2. reads the server's entry from KV bucket `servers` (its `address`, `playerIds`,
//!    `secret`, `state`) and refuses players of other matches (403);
//! 3. dials `ws://<address>/connect?player=<id>` with `Authorization: Bearer <secret>`
//!    *before* accepting the upgrade, so a server that cannot be reached is a 502, not a
//!    socket that opens and dies;
//! 4. pumps frames both ways until either side closes, passing the close frame on (the
//!    game server closes every socket when the game ends). At shutdown both sides get a
//!    "going away" close.

use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use mm_shared::protocol::game_server::{CONNECT_PATH, PLAYER_PARAM};
use mm_shared::protocol::{ServerEntry, ServerState, limits};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::state::AppState;

/// How long dialling the game server may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

type Upstream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, serde::Deserialize)]
pub struct ConnectParams {
    token: Option<String>,
}

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
    let (player, upstream, upgrade) = match result {
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
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _open = mm_shared::telemetry::GaugeGuard::new(metrics::gauge!("mm_gateway_game_connections"));
        let ended = pump(socket, upstream, shutdown).await;
        tracing::debug!(game_id, player, ended, "game connection closed");
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
) -> Result<(String, Upstream, WebSocketUpgrade), ApiError> {
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
    let upstream = dial(&entry, &player.id).await?;
    Ok((player.id, upstream, upgrade))
}

/// Opens the WebSocket to the game server as the gateway, on the player's behalf.
async fn dial(entry: &ServerEntry, player: &str) -> Result<Upstream, ApiError> {
    let bad_gateway = |what: String| {
        tracing::warn!(game_id = entry.game_id, address = entry.address, "{what}");
        ApiError::new(StatusCode::BAD_GATEWAY, what)
    };
    let url = format!("ws://{}{CONNECT_PATH}?{PLAYER_PARAM}={player}", entry.address);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|err| bad_gateway(format!("bad game server address: {err}")))?;
    let secret = format!("Bearer {}", entry.secret)
        .parse()
        .map_err(|_| bad_gateway("the game server's secret is not a valid header".to_owned()))?;
    request.headers_mut().insert(header::AUTHORIZATION, secret);
    match tokio::time::timeout(DIAL_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
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
        502 => "upstream_error",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    }
}

/// Copies frames both ways until one side closes (its close frame is passed on) or the
/// gateway shuts down. Returns which side ended it.
async fn pump(
    client: WebSocket,
    upstream: Upstream,
    shutdown: tokio_util::sync::CancellationToken,
) -> &'static str {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    let to_server = async {
        while let Some(Ok(message)) = client_rx.next().await {
            let closing = matches!(message, ws::Message::Close(_));
            metrics::counter!("mm_gateway_game_frames_total", "direction" => "to_server").increment(1);
            if upstream_tx.send(to_upstream(message)).await.is_err() || closing {
                break;
            }
        }
    };
    let to_client = async {
        while let Some(Ok(message)) = upstream_rx.next().await {
            let Some(message) = to_client_message(message) else { continue };
            let closing = matches!(message, ws::Message::Close(_));
            metrics::counter!("mm_gateway_game_frames_total", "direction" => "to_client").increment(1);
            if client_tx.send(message).await.is_err() || closing {
                break;
            }
        }
    };
    let ended = tokio::select! {
        () = to_server => "client",
        () = to_client => "server",
        () = shutdown.cancelled() => "shutdown",
    };
    // Tell whoever did not end it (a close already passed on makes this a no-op), with
    // "going away" when the gateway is stopping; neither side may hold us up for long.
    let away = || ws::CloseFrame { code: ws::close_code::AWAY, reason: "gateway shutting down".into() };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if ended != "client" {
            let frame = (ended == "shutdown").then(away);
            let _ = client_tx.send(ws::Message::Close(frame)).await;
        }
        if ended != "server" {
            let frame = (ended == "shutdown").then(|| tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Away,
                reason: "gateway shutting down".into(),
            });
            let _ = upstream_tx.send(tungstenite::Message::Close(frame)).await;
        }
        let _ = upstream_tx.close().await;
    })
    .await;
    ended
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
