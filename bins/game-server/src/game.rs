//! One match's game: who may connect, the echo loop, and closing every socket at the end.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State, rejection::QueryRejection, ws::rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mm_shared::protocol::game_server;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How much longer than `close_timeout` the end of the game waits for the socket tasks:
/// each waits `close_timeout` for its player's close reply, then needs a moment to drop
/// its connection.
const CLOSE_MARGIN: Duration = Duration::from_millis(500);

/// Why the game stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its time was up.
    GameOver,
    /// SIGTERM/SIGINT.
    Shutdown,
    /// No player joined within the join timeout (the match was probably not committed).
    NoPlayers,
}

impl EndReason {
    fn close_frame(self) -> CloseFrame {
        match self {
            Self::GameOver => {
                CloseFrame { code: close_code::NORMAL, reason: Utf8Bytes::from_static("game over") }
            }
            Self::Shutdown => {
                CloseFrame { code: close_code::AWAY, reason: Utf8Bytes::from_static("server shutting down") }
            }
            Self::NoPlayers => CloseFrame {
                code: close_code::AWAY,
                reason: Utf8Bytes::from_static("no player joined in time"),
            },
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::GameOver => "its time is up",
            Self::Shutdown => "the server was asked to stop",
            Self::NoPlayers => "no player joined within its join timeout",
        })
    }
}

/// The match's game: shared by every connection.
pub struct Game {
    /// Bearer secret a connection must present; empty: no check.
    secret: String,
    /// The match's players; empty: any player id.
    players: HashSet<String>,
    max_message_bytes: usize,
    /// Cancelled when the game ends; every socket loop watches it.
    over: CancellationToken,
    /// Set by [`Game::end`] before `over` is cancelled.
    ending: OnceLock<Ending>,
    /// The socket tasks, so the end can wait for their close handshakes.
    sockets: TaskTracker,
    /// Cancelled when the first player is admitted.
    joined: CancellationToken,
}

/// How the game ended, for the socket loops.
#[derive(Debug, Clone, Copy)]
struct Ending {
    reason: EndReason,
    /// How long each socket waits for its player's close reply.
    close_timeout: Duration,
}

/// Why a connection was refused (before the WebSocket upgrade).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing query parameter `{}`", game_server::PLAYER_PARAM)]
    NoPlayer,
    #[error("missing or wrong `Authorization: Bearer <secret>`")]
    Unauthorized,
    #[error("player `{0}` is not in this match")]
    NotInMatch(String),
    #[error("the game is over")]
    GameOver,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::NoPlayer => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotInMatch(_) => StatusCode::FORBIDDEN,
            Self::GameOver => StatusCode::GONE,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::NoPlayer => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotInMatch(_) => "forbidden",
            Self::GameOver => "game_over",
        }
    }
}

impl Game {
    pub fn new(secret: String, players: HashSet<String>, max_message_bytes: usize) -> Self {
        describe_metrics();
        Self {
            secret,
            players,
            max_message_bytes,
            over: CancellationToken::new(),
            ending: OnceLock::new(),
            sockets: TaskTracker::new(),
            joined: CancellationToken::new(),
        }
    }

    /// Checks a connection attempt: the bearer secret, then the player.
    pub fn admit(&self, authorization: Option<&str>, player: Option<&str>) -> Result<String, Refusal> {
        if self.over.is_cancelled() {
            return Err(Refusal::GameOver);
        }
        if !self.secret.is_empty() {
            let presented = authorization.and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
            if !constant_time_eq(presented.trim().as_bytes(), self.secret.as_bytes()) {
                return Err(Refusal::Unauthorized);
            }
        }
        let player = player.filter(|player| !player.is_empty()).ok_or(Refusal::NoPlayer)?;
        if !self.players.is_empty() && !self.players.contains(player) {
            return Err(Refusal::NotInMatch(player.to_owned()));
        }
        Ok(player.to_owned())
    }

    /// Returns once a player has joined (been admitted and upgraded).
    pub async fn first_join(&self) {
        self.joined.cancelled().await;
    }

    /// Ends the game: every socket gets the close frame for `reason` and waits up to
    /// `close_timeout` for its player's close reply; this waits for the sockets (with
    /// [`CLOSE_MARGIN`] to spare). Returns how many sockets were open.
    pub async fn end(&self, reason: EndReason, close_timeout: Duration) -> usize {
        let _ = self.ending.set(Ending { reason, close_timeout });
        let open = self.sockets.len();
        self.over.cancel();
        self.sockets.close();
        if tokio::time::timeout(close_timeout + CLOSE_MARGIN, self.sockets.wait()).await.is_err() {
            tracing::warn!("some players did not answer the close frame; dropping their connections");
        }
        open
    }

    fn close_frame(&self) -> CloseFrame {
        self.ending.get().map_or(EndReason::GameOver, |ending| ending.reason).close_frame()
    }

    /// How long a socket waits for its player's close reply once the game is over.
    fn close_timeout(&self) -> Duration {
        // `end` sets it before the sockets learn the game is over.
        self.ending.get().map_or(Duration::ZERO, |ending| ending.close_timeout)
    }
}

/// Compares secrets without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /connect`.
pub fn router(game: Arc<Game>) -> Router {
    Router::new().route(game_server::CONNECT_PATH, get(connect)).with_state(game)
}

/// The query of `GET /connect`.
#[derive(Debug, Deserialize)]
struct ConnectParams {
    /// The connecting player: this field's name must stay `game_server::PLAYER_PARAM`
    /// (the `connect_params_use_the_shared_names` test checks it).
    player: Option<String>,
}

async fn connect(
    State(game): State<Arc<Game>>,
    params: Result<Query<ConnectParams>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let player = params.ok().and_then(|Query(params)| params.player);
    let authorization = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let player = match game.admit(authorization, player.as_deref()) {
        Ok(player) => player,
        Err(refusal) => {
            metrics::counter!("mm_game_connections_total", "result" => refusal.label()).increment(1);
            return error(refusal.status(), &refusal.to_string());
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            metrics::counter!("mm_game_connections_total", "result" => "bad_request").increment(1);
            return error(rejection.status(), &format!("expected a WebSocket upgrade: {rejection}"));
        }
    };
    metrics::counter!("mm_game_connections_total", "result" => "accepted").increment(1);
    game.joined.cancel();
    let max = game.max_message_bytes;
    upgrade.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| {
        // Tracked, so the game's end can wait for every close handshake.
        let sockets = game.sockets.clone();
        sockets.track_future(play(socket, game, player))
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// One player's connection: echo until either side closes or the game ends.
async fn play(mut socket: WebSocket, game: Arc<Game>, player: String) {
    let open = metrics::gauge!("mm_game_connections");
    open.increment(1.0);
    tracing::debug!(%player, "player connected");
    loop {
        tokio::select! {
            message = socket.recv() => {
                let echo = match message {
                    Some(Ok(Message::Text(text))) => {
                        metrics::counter!("mm_game_messages_total", "kind" => "text").increment(1);
                        Message::Text(text)
                    }
                    Some(Ok(Message::Binary(data))) => {
                        metrics::counter!("mm_game_messages_total", "kind" => "binary").increment(1);
                        Message::Binary(data)
                    }
                    // Pings are answered by the WebSocket layer itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // A close from the player is answered by the WebSocket layer.
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(err)) => {
                        tracing::debug!(%player, "connection error: {err}");
                        break;
                    }
                };
                if socket.send(echo).await.is_err() {
                    break;
                }
            }
            () = game.over.cancelled() => {
                if socket.send(Message::Close(Some(game.close_frame()))).await.is_ok() {
                    // Read until the player's close reply (or the deadline), as the
                    // protocol's closing handshake asks.
                    let _ = tokio::time::timeout(game.close_timeout(), async {
                        while let Some(Ok(message)) = socket.recv().await {
                            if matches!(message, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                }
                break;
            }
        }
    }
    open.decrement(1.0);
    tracing::debug!(%player, "player disconnected");
}

fn describe_metrics() {
    metrics::describe_gauge!("mm_game_connections", "Players connected to this game server right now.");
    metrics::describe_counter!(
        "mm_game_connections_total",
        "Connection attempts, by result (accepted, unauthorized, forbidden, bad_request, game_over)."
    );
    metrics::describe_counter!(
        "mm_game_messages_total",
        "Messages echoed back to players, by kind (text, binary)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn game(secret: &str, players: &[&str]) -> Game {
        Game::new(secret.to_owned(), players.iter().map(|p| (*p).to_owned()).collect(), 1024)
    }

    #[test]
    fn admits_only_the_matchs_players_with_the_secret() {
        let game = game("s3cret", &["p1", "p2"]);
        assert_eq!(game.admit(Some("Bearer s3cret"), Some("p1")), Ok("p1".to_owned()));
        assert_eq!(game.admit(Some("Bearer s3cret"), Some("p3")), Err(Refusal::NotInMatch("p3".into())));
        assert_eq!(game.admit(Some("Bearer wrong!"), Some("p1")), Err(Refusal::Unauthorized));
        assert_eq!(game.admit(Some("s3cret"), Some("p1")), Err(Refusal::Unauthorized));
        assert_eq!(game.admit(None, Some("p1")), Err(Refusal::Unauthorized));
        assert_eq!(game.admit(Some("Bearer s3cret"), None), Err(Refusal::NoPlayer));
        assert_eq!(game.admit(Some("Bearer s3cret"), Some("")), Err(Refusal::NoPlayer));
    }

    #[test]
    fn a_server_started_by_hand_admits_anyone_with_a_player_id() {
        let game = game("", &[]);
        assert_eq!(game.admit(None, Some("anyone")), Ok("anyone".to_owned()));
        assert_eq!(game.admit(None, None), Err(Refusal::NoPlayer));
    }

    #[tokio::test]
    async fn nobody_gets_in_after_the_end() {
        let game = game("", &[]);
        assert_eq!(game.end(EndReason::GameOver, Duration::from_millis(10)).await, 0);
        assert_eq!(game.admit(None, Some("late")), Err(Refusal::GameOver));
        assert_eq!(game.close_frame().code, close_code::NORMAL);
    }

    #[tokio::test]
    async fn first_join_waits_for_a_player() {
        let game = game("", &[]);
        let waiting = tokio::time::timeout(Duration::from_millis(50), game.first_join()).await;
        assert!(waiting.is_err(), "nobody joined yet");
        game.joined.cancel();
        tokio::time::timeout(Duration::from_millis(50), game.first_join()).await.expect("joined");
    }

    #[test]
    fn connect_params_use_the_shared_names() {
        let uri: axum::http::Uri =
            format!("{}?{}=p1", game_server::CONNECT_PATH, game_server::PLAYER_PARAM).parse().expect("uri");
        let Query(params) = Query::<ConnectParams>::try_from_uri(&uri).expect("parses");
        assert_eq!(params.player.as_deref(), Some("p1"));
        assert!(Refusal::NoPlayer.to_string().contains(game_server::PLAYER_PARAM));
    }

    #[test]
    fn secrets_compare_in_full() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
