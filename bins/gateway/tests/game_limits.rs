//! The game WebSocket proxy's bounds: the game server's message limit on the player's
//! socket (close 1009), sockets per player and in all (refused before the upgrade), and
//! idle sockets closed (1001). A real game-server binary behind a real gateway, its
//! `servers` entry written as an orchestrator would; sessions from a real matchmaker.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mm_shared::protocol::game_server::MAX_MESSAGE_BYTES;
use mm_shared::protocol::{ServerEntry, ServerState, buckets};
use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port};
use tokio_tungstenite::tungstenite::{self, Message};

const GAME_ID: &str = "g-limits";

/// nats-server, redis-server, matchmaker (sessions), one game server for ana and bo, and
/// a gateway with `gateway_env`.
struct Stack {
    _nats: NatsServer,
    _redis: RedisServer,
    _matchmaker: ServiceProcess,
    _game: ServiceProcess,
    _gateway: ServiceProcess,
    addr: String,
}

impl Stack {
    async fn start(gateway_env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().expect("nats-server");
        let redis = RedisServer::start().expect("redis-server");
        let (nats_url, redis_url) = (nats.url(), redis.url());
        let admin = format!("127.0.0.1:{}", free_port());
        let env = [
            ("MM_NATS__URL", nats_url.as_str()),
            ("MM_REDIS__URL", redis_url.as_str()),
            ("MM_MATCHMAKER__ADMIN_LISTEN", admin.as_str()),
            ("MM_MATCHER__ENABLED", "false"),
        ];
        let mut matchmaker = ServiceProcess::start("matchmaker", &[], &env).expect("matchmaker starts");
        matchmaker.wait_healthy(&admin).expect("matchmaker healthy");

        let game_addr = format!("127.0.0.1:{}", free_port());
        let env = [
            ("MM_GAME__LISTEN", game_addr.as_str()),
            ("MM_GAME__DURATION", "10m"),
            ("MM_GAME__SECRET", "s3cret"),
            ("MM_GAME__PLAYERS", r#"["ana","bo"]"#),
        ];
        let mut game = ServiceProcess::start("game-server", &[], &env).expect("game-server starts");
        game.wait_healthy(&game_addr).expect("game-server healthy");
        let client = async_nats::connect(&nats_url).await.expect("nats");
        let servers = async_nats::jetstream::new(client.clone())
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: buckets::SERVERS.to_owned(),
                ..Default::default()
            })
            .await
            .expect("bucket");
        let entry = ServerEntry {
            game_id: GAME_ID.into(),
            match_id: "m-limits".into(),
            state: ServerState::Running,
            address: game_addr,
            player_ids: vec!["ana".into(), "bo".into()],
            secret: "s3cret".into(),
            ..ServerEntry::default()
        };
        servers.put(GAME_ID, serde_json::to_vec(&entry).expect("json").into()).await.expect("put");
        // The secret lives apart from the entry, as the orchestrators keep it.
        let secrets = async_nats::jetstream::new(client.clone())
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: buckets::SECRETS.to_owned(),
                ..Default::default()
            })
            .await
            .expect("bucket");
        secrets.put(GAME_ID, "s3cret".into()).await.expect("put");

        let addr = format!("127.0.0.1:{}", free_port());
        let mut env = vec![("MM_NATS__URL", nats_url.as_str()), ("MM_GATEWAY__LISTEN", addr.as_str())];
        env.extend_from_slice(gateway_env);
        let mut gateway = ServiceProcess::start("gateway", &[], &env).expect("gateway starts");
        gateway.wait_healthy(&addr).expect("gateway healthy");
        Self { _nats: nats, _redis: redis, _matchmaker: matchmaker, _game: game, _gateway: gateway, addr }
    }

    async fn login(&self, player: &str) -> String {
        support::http::Http::new(&self.addr).login(player).await
    }

    /// Opens the game socket with `token`, or the HTTP status and body it was refused with.
    async fn dial(&self, token: &str) -> Result<support::Socket, (u16, String)> {
        let url = format!("ws://{}/game/{GAME_ID}/connect?token={token}", self.addr);
        match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => Err((
                response.status().as_u16(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
            )),
            Err(err) => panic!("WebSocket handshake failed oddly: {err}"),
        }
    }

    /// `mm_gateway_refusals_total{reason}`.
    fn refusals(&self, reason: &str) -> f64 {
        let answer =
            mm_shared::probe::http_get(&self.addr, "/metrics", Duration::from_secs(5)).expect("/metrics");
        let label = format!("reason=\"{reason}\"");
        answer
            .body
            .lines()
            .filter(|line| line.starts_with("mm_gateway_refusals_total{") && line.contains(&label))
            .find_map(|line| line.rsplit_once(' ').and_then(|(_, value)| value.parse().ok()))
            .unwrap_or_else(|| panic!("no mm_gateway_refusals_total{{{label}}} in /metrics"))
    }
}

/// The next frame, within `limit`.
async fn next(socket: &mut support::Socket, limit: Duration) -> Message {
    tokio::time::timeout(limit, socket.next())
        .await
        .expect("a frame in time")
        .expect("socket open")
        .expect("a frame")
}

/// The close frame's code, failing on anything else.
fn close_code(message: Message) -> u16 {
    match message {
        Message::Close(Some(frame)) => u16::from(frame.code),
        other => panic!("expected a close frame with a code, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_game_servers_limit_is_refused_with_close_1009() {
    let stack = Stack::start(&[]).await;
    let ana = stack.login("ana").await;
    let mut socket = stack.dial(&ana).await.expect("ana connects");

    // The largest message the game server takes passes both ways, untouched.
    let largest = vec![7u8; MAX_MESSAGE_BYTES];
    socket.send(Message::binary(largest.clone())).await.expect("send");
    assert_eq!(next(&mut socket, Duration::from_secs(5)).await, Message::binary(largest));
    assert_eq!(stack.refusals("game_message_too_big"), 0.0);

    // One byte more, and the gateway closes: 1009, "message too big".
    socket.send(Message::binary(vec![7u8; MAX_MESSAGE_BYTES + 1])).await.expect("send");
    assert_eq!(close_code(next(&mut socket, Duration::from_secs(5)).await), 1009);
    assert_eq!(stack.refusals("game_message_too_big"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_players_third_socket_and_the_gateways_last_are_refused_before_the_upgrade() {
    let stack = Stack::start(&[("MM_GATEWAY__GAME_SOCKETS_MAX", "3")]).await;
    let (ana, bo) = (stack.login("ana").await, stack.login("bo").await);

    let mut first = stack.dial(&ana).await.expect("ana's first socket");
    let _second = stack.dial(&ana).await.expect("ana's second socket");
    let (status, body) = stack.dial(&ana).await.expect_err("ana's third socket is refused");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("gateway.game_sockets_per_player") && body.contains("\"error\""), "{body}");
    assert_eq!(stack.refusals("game_sockets_player"), 1.0);

    let _bo = stack.dial(&bo).await.expect("bo's socket: the gateway's third");
    let (status, body) = stack.dial(&bo).await.expect_err("a fourth socket is one too many");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("gateway.game_sockets_max"), "{body}");
    assert_eq!(stack.refusals("game_sockets_total"), 1.0);

    // A closed socket gives its place back.
    first.close(None).await.expect("close");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match stack.dial(&ana).await {
            Ok(_) => break,
            Err((status, body)) if Instant::now() < deadline => {
                assert!(status == 429 || status == 503, "{status} {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((status, body)) => panic!("the closed socket's place never came back: {status} {body}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_game_socket_is_closed_with_1001() {
    let stack = Stack::start(&[("MM_GATEWAY__GAME_IDLE_TIMEOUT", "1s")]).await;
    let ana = stack.login("ana").await;
    let mut socket = stack.dial(&ana).await.expect("ana connects");

    // Talking keeps the socket open well past the idle time.
    let talking = Instant::now();
    let (mut sequence, mut last_echo) = (0, Instant::now());
    while talking.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sequence += 1;
        let text = format!("move {sequence}");
        socket.send(Message::text(text.clone())).await.expect("send");
        assert_eq!(next(&mut socket, Duration::from_secs(2)).await, Message::text(text), "still open");
        last_echo = Instant::now();
    }
    assert_eq!(stack.refusals("game_idle"), 0.0);

    // Silence: closed with "going away" once the idle time has passed, not before.
    assert_eq!(close_code(next(&mut socket, Duration::from_secs(5)).await), 1001);
    let waited = last_echo.elapsed();
    assert!(waited >= Duration::from_millis(800), "closed after {waited:?} of silence, before the idle time");
    assert_eq!(stack.refusals("game_idle"), 1.0);
}
