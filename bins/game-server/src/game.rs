//! One match's game: who may connect, the echo loop, and closing every socket at the end.
//!
//! A warm server (started by its node's pool with a bootstrap token and no match) knows no
//! match yet: it refuses every player (503) until its node hands it one on
//! [`game_server::ASSIGN_PATH`], once; a second assignment is refused (409), so a server
//! never serves two matches.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State, rejection::QueryRejection, ws::rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mm_shared::protocol::game_server::{self, Assignment, AssignmentStatus};
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

/// Who may connect: the match's secret and players.
struct Admission {
    /// Bearer secret a connection must present; empty: no check.
    secret: String,
    /// The match's players; empty: any player id.
    players: HashSet<String>,
    /// The same players in the match's order: the first half is one side, the second
    /// half the other.
    order: Vec<String>,
    /// The assignment it came from (a warm server's), for `GET /assign`.
    assignment: Option<Assignment>,
}

/// The match's game: shared by every connection.
pub struct Game {
    /// Who may connect: set at start for a server started with its match, or by the one
    /// assignment a warm server takes. Unset: every player is refused.
    admission: OnceLock<Admission>,
    /// A warm server's bootstrap token (its node's, for the assignment); empty: the server
    /// was started with its match and takes no assignment.
    bootstrap_token: String,
    /// Cancelled when the admission is set.
    assigned: CancellationToken,
    max_message_bytes: usize,
    /// Cancelled when the game ends; every socket loop watches it.
    over: CancellationToken,
    /// Set by [`Game::end`] before `over` is cancelled.
    ending: OnceLock<Ending>,
    /// The socket tasks, so the end can wait for their close handshakes.
    sockets: TaskTracker,
    /// Cancelled when the first player is admitted.
    joined: CancellationToken,
    /// The last true skill each connected player sent (see [`crate::result`]).
    skills: Mutex<HashMap<String, f64>>,
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
    #[error("this game server has no match yet")]
    NotAssigned,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::NoPlayer => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotInMatch(_) => StatusCode::FORBIDDEN,
            Self::GameOver => StatusCode::GONE,
            Self::NotAssigned => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::NoPlayer => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotInMatch(_) => "forbidden",
            Self::GameOver => "game_over",
            Self::NotAssigned => "not_assigned",
        }
    }
}

/// Why an assignment was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignRefusal {
    #[error("this game server was started with its match: it takes no assignment")]
    NotWarm,
    #[error("missing or wrong `Authorization: Bearer <bootstrap token>`")]
    Unauthorized,
    #[error("invalid assignment: {0}")]
    Invalid(String),
    #[error("this game server already has its match")]
    AlreadyAssigned,
    #[error("the game server is shutting down")]
    GameOver,
}

impl AssignRefusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotWarm => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::AlreadyAssigned => StatusCode::CONFLICT,
            Self::GameOver => StatusCode::GONE,
        }
    }
}

/// Is `authorization` `Bearer <expected>` (compared in full, without an early exit)?
fn bearer_is(authorization: Option<&str>, expected: &str) -> bool {
    let presented = authorization.and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
    constant_time_eq(presented.trim().as_bytes(), expected.as_bytes())
}

impl Game {
    /// The game of a server started with its match.
    pub fn new(secret: String, players: Vec<String>, max_message_bytes: usize) -> Self {
        let game = Self::with_token(String::new(), max_message_bytes);
        let admission = Admission {
            secret,
            players: players.iter().cloned().collect(),
            order: players,
            assignment: None,
        };
        let _ = game.admission.set(admission);
        game.assigned.cancel();
        game
    }

    /// The game of a warm server: no match until its node assigns one with `bootstrap_token`.
    pub fn warm(bootstrap_token: String, max_message_bytes: usize) -> Self {
        Self::with_token(bootstrap_token, max_message_bytes)
    }

    fn with_token(bootstrap_token: String, max_message_bytes: usize) -> Self {
        describe_metrics();
        Self {
            admission: OnceLock::new(),
            bootstrap_token,
            assigned: CancellationToken::new(),
            max_message_bytes,
            over: CancellationToken::new(),
            ending: OnceLock::new(),
            sockets: TaskTracker::new(),
            joined: CancellationToken::new(),
            skills: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a connection attempt: the match, the bearer secret, then the player.
    pub fn admit(&self, authorization: Option<&str>, player: Option<&str>) -> Result<String, Refusal> {
        if self.over.is_cancelled() {
            return Err(Refusal::GameOver);
        }
        let admission = self.admission.get().ok_or(Refusal::NotAssigned)?;
        if !admission.secret.is_empty() && !bearer_is(authorization, &admission.secret) {
            return Err(Refusal::Unauthorized);
        }
        let player = player.filter(|player| !player.is_empty()).ok_or(Refusal::NoPlayer)?;
        if !admission.players.is_empty() && !admission.players.contains(player) {
            return Err(Refusal::NotInMatch(player.to_owned()));
        }
        Ok(player.to_owned())
    }

    /// Checks the bootstrap token of a call to the assignment endpoint.
    fn authorize_node(&self, authorization: Option<&str>) -> Result<(), AssignRefusal> {
        if self.bootstrap_token.is_empty() {
            return Err(AssignRefusal::NotWarm);
        }
        if !bearer_is(authorization, &self.bootstrap_token) {
            return Err(AssignRefusal::Unauthorized);
        }
        Ok(())
    }

    /// Takes a warm server's one assignment, presented with its node's bootstrap token.
    pub fn assign(&self, authorization: Option<&str>, assignment: Assignment) -> Result<(), AssignRefusal> {
        self.authorize_node(authorization)?;
        if self.over.is_cancelled() {
            return Err(AssignRefusal::GameOver);
        }
        let invalid = |what: &str| Err(AssignRefusal::Invalid(what.to_owned()));
        if assignment.game_id.is_empty() || assignment.match_id.is_empty() {
            return invalid("gameId and matchId must not be empty");
        }
        if assignment.secret.is_empty() {
            return invalid("secret must not be empty");
        }
        if assignment.player_ids.is_empty() || assignment.player_ids.iter().any(String::is_empty) {
            return invalid("playerIds must name at least one player, none empty");
        }
        if assignment.ends_at == 0 {
            return invalid("endsAt must be set");
        }
        let admission = Admission {
            secret: assignment.secret.clone(),
            players: assignment.player_ids.iter().cloned().collect(),
            order: assignment.player_ids.clone(),
            assignment: Some(assignment),
        };
        // Once only: whoever sets it first wins; any later one is refused.
        self.admission.set(admission).map_err(|_| AssignRefusal::AlreadyAssigned)?;
        self.assigned.cancel();
        Ok(())
    }

    /// What `GET /assign` answers (with the bootstrap token).
    pub fn status(&self, authorization: Option<&str>) -> Result<AssignmentStatus, AssignRefusal> {
        self.authorize_node(authorization)?;
        Ok(AssignmentStatus {
            assignment: self.admission.get().and_then(|admission| admission.assignment.clone()),
        })
    }

    /// Returns once the server has its match (at once for one started with it); then the
    /// assignment, for a warm server.
    pub async fn wait_assigned(&self) -> Option<Assignment> {
        self.assigned.cancelled().await;
        self.admission.get().and_then(|admission| admission.assignment.clone())
    }

    /// The match's players in its order (empty before a warm server's assignment).
    pub fn players(&self) -> Vec<String> {
        self.admission.get().map(|admission| admission.order.clone()).unwrap_or_default()
    }

    /// Keeps the true skill `message` carries, if any, as `player`'s (the id its
    /// connection was admitted as).
    fn note_skill(&self, player: &str, message: &[u8]) {
        let Some(skill) = crate::result::true_skill(message) else { return };
        let mut skills = self.skills.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if skills.len() < crate::result::MAX_TRACKED_PLAYERS || skills.contains_key(player) {
            skills.insert(player.to_owned(), skill);
        }
    }

    /// The true skills players sent, by player.
    pub fn skills(&self) -> HashMap<String, f64> {
        self.skills.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
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

/// `GET /connect`, and `POST`/`GET` [`game_server::ASSIGN_PATH`] for its node.
pub fn router(game: Arc<Game>) -> Router {
    Router::new()
        .route(game_server::CONNECT_PATH, get(connect))
        .route(game_server::ASSIGN_PATH, get(assignment_status).post(assign))
        .with_state(game)
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok())
}

/// `POST /assign`: the node hands this warm server its match.
async fn assign(State(game): State<Arc<Game>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = match serde_json::from_slice::<Assignment>(&body) {
        Ok(assignment) => {
            let (game_id, match_id) = (assignment.game_id.clone(), assignment.match_id.clone());
            game.assign(authorization(&headers), assignment).map(|()| (game_id, match_id))
        }
        // The token first: a caller without it learns nothing, not even about the body.
        Err(err) => game
            .authorize_node(authorization(&headers))
            .and(Err(AssignRefusal::Invalid(format!("not an assignment: {err}")))),
    };
    let label = match &result {
        Ok(_) => "assigned",
        Err(AssignRefusal::NotWarm) => "not_warm",
        Err(AssignRefusal::Unauthorized) => "unauthorized",
        Err(AssignRefusal::Invalid(_)) => "bad_request",
        Err(AssignRefusal::AlreadyAssigned) => "already_assigned",
        Err(AssignRefusal::GameOver) => "game_over",
    };
    metrics::counter!("mm_game_assignments_total", "result" => label).increment(1);
    match result {
        Ok((game_id, match_id)) => {
            tracing::info!(%game_id, %match_id, "assigned to its match");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(refusal) => {
            tracing::warn!("assignment refused: {refusal}");
            error(refusal.status(), &refusal.to_string())
        }
    }
}

/// `GET /assign`: which match this server has (its node asks after it lost track).
async fn assignment_status(State(game): State<Arc<Game>>, headers: HeaderMap) -> Response {
    match game.status(authorization(&headers)) {
        Ok(status) => axum::Json(status).into_response(),
        Err(refusal) => error(refusal.status(), &refusal.to_string()),
    }
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
    let player = match game.admit(authorization(&headers), player.as_deref()) {
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
                        game.note_skill(&player, text.as_bytes());
                        Message::Text(text)
                    }
                    Some(Ok(Message::Binary(data))) => {
                        metrics::counter!("mm_game_messages_total", "kind" => "binary").increment(1);
                        game.note_skill(&player, &data);
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
        "Connection attempts, by result (accepted, unauthorized, forbidden, bad_request, game_over, \
         not_assigned: a warm server without its match yet)."
    );
    metrics::describe_counter!(
        "mm_game_assignments_total",
        "Assignments a warm server was offered, by result (assigned, unauthorized, already_assigned, \
         bad_request, not_warm, game_over)."
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

    fn assignment(match_id: &str) -> Assignment {
        Assignment {
            game_id: format!("g-{match_id}"),
            match_id: match_id.to_owned(),
            player_ids: vec!["p1".into(), "p2".into()],
            secret: "match-secret".into(),
            ends_at: 1,
        }
    }

    #[tokio::test]
    async fn a_warm_server_refuses_players_until_assigned_and_takes_one_assignment() {
        let game = Game::warm("boot".into(), 1024);
        assert_eq!(game.admit(Some("Bearer match-secret"), Some("p1")), Err(Refusal::NotAssigned));
        assert_eq!(game.admit(None, Some("anyone")), Err(Refusal::NotAssigned), "no match: nobody");
        assert_eq!(game.status(Some("Bearer boot")).expect("status").assignment, None);
        let waiting = tokio::time::timeout(Duration::from_millis(20), game.wait_assigned()).await;
        assert!(waiting.is_err(), "not assigned yet");

        assert_eq!(game.assign(Some("Bearer wrong"), assignment("m1")), Err(AssignRefusal::Unauthorized));
        assert_eq!(game.assign(None, assignment("m1")), Err(AssignRefusal::Unauthorized));
        assert_eq!(game.status(Some("Bearer nope")), Err(AssignRefusal::Unauthorized));
        let no_secret = Assignment { secret: String::new(), ..assignment("m1") };
        assert!(matches!(game.assign(Some("Bearer boot"), no_secret), Err(AssignRefusal::Invalid(_))));
        let no_players = Assignment { player_ids: vec![], ..assignment("m1") };
        assert!(matches!(game.assign(Some("Bearer boot"), no_players), Err(AssignRefusal::Invalid(_))));
        assert_eq!(game.admit(None, Some("p1")), Err(Refusal::NotAssigned), "refusals assign nothing");

        game.assign(Some("Bearer boot"), assignment("m1")).expect("assigned");
        let assigned = tokio::time::timeout(Duration::from_millis(50), game.wait_assigned()).await;
        assert_eq!(assigned.expect("assigned by now"), Some(assignment("m1")));
        assert_eq!(game.admit(Some("Bearer match-secret"), Some("p1")), Ok("p1".to_owned()));
        assert_eq!(game.admit(Some("Bearer boot"), Some("p1")), Err(Refusal::Unauthorized));
        assert_eq!(
            game.admit(Some("Bearer match-secret"), Some("p3")),
            Err(Refusal::NotInMatch("p3".into()))
        );
        // Never a second match, not even the same one again.
        for again in [assignment("m2"), assignment("m1")] {
            assert_eq!(game.assign(Some("Bearer boot"), again), Err(AssignRefusal::AlreadyAssigned));
        }
        assert_eq!(game.status(Some("Bearer boot")).expect("status").assignment, Some(assignment("m1")));
        assert_eq!(game.admit(Some("Bearer match-secret"), Some("p2")), Ok("p2".to_owned()));
    }

    #[tokio::test]
    async fn a_server_started_with_its_match_takes_no_assignment() {
        let game = game("s3cret", &["p1"]);
        assert_eq!(game.assign(Some("Bearer "), assignment("m1")), Err(AssignRefusal::NotWarm));
        assert_eq!(game.assign(None, assignment("m1")), Err(AssignRefusal::NotWarm));
        assert_eq!(game.status(Some("Bearer ")), Err(AssignRefusal::NotWarm));
        assert_eq!(game.wait_assigned().await, None, "it had its match from the start");
        // A warm server that is shutting down takes none either.
        let warm = Game::warm("boot".into(), 1024);
        warm.end(EndReason::Shutdown, Duration::from_millis(10)).await;
        assert_eq!(warm.assign(Some("Bearer boot"), assignment("m1")), Err(AssignRefusal::GameOver));
    }

    #[test]
    fn true_skills_are_kept_per_admitted_player_in_the_matchs_order() {
        let playing = game("", &["b", "a", "d", "c"]);
        assert_eq!(playing.players(), ["b", "a", "d", "c"], "the match's order, not a set's");
        playing.note_skill("a", br#"a#1 {"trueSkill":1600.5}"#);
        // The tag in the text does not matter: the connection's player does.
        playing.note_skill("b", br#"a#1 {"trueSkill":900}"#);
        playing.note_skill("c", b"c#1 plain echo");
        playing.note_skill("a", br#"a#2 {"trueSkill":1610}"#);
        assert_eq!(playing.skills(), HashMap::from([("a".to_owned(), 1610.0), ("b".to_owned(), 900.0)]));
        // A server started by hand admits any id, but keeps only so many.
        let open = game("", &[]);
        for i in 0..200 {
            open.note_skill(&format!("p{i}"), br#"x {"trueSkill":1}"#);
        }
        assert_eq!(open.skills().len(), crate::result::MAX_TRACKED_PLAYERS);
        assert!(Game::warm("boot".into(), 1024).players().is_empty(), "no match yet");
    }

    #[test]
    fn secrets_compare_in_full() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
