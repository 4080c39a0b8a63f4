//! A whole match through the gateway: ten players log in and queue, the matchmaker forms
//! the match, the orchestrator starts its game server (process driver, and Podman where
//! installed), players play over the gateway's WebSocket proxy, strangers are refused,
//! and when the game ends every socket gets the close frame and nothing is left.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mm_shared::probe::wait_until;
use mm_shared::protocol::{ServerEntry, buckets};
use mm_testkit::{NatsServer, PodmanService, RedisServer, ServiceProcess, free_port};
use tokio_tungstenite::tungstenite::{self, Message};

const GAME_SECONDS: u64 = 4;

/// nats-server, redis-server, matchmaker, one orchestrator node, gateway.
struct Stack {
    nats: NatsServer,
    _redis: RedisServer,
    _matchmaker: ServiceProcess,
    _orchestrator: ServiceProcess,
    _gateway: ServiceProcess,
    gateway: String,
}

impl Stack {
    fn start(driver_env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().expect("nats-server");
        let redis = RedisServer::start().expect("redis-server");
        let (nats_url, redis_url) = (nats.url(), redis.url());
        let gateway = format!("127.0.0.1:{}", free_port());
        let (mm_admin, orch_admin) =
            (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));

        let mut matchmaker = ServiceProcess::start(
            "matchmaker",
            &[],
            &[
                ("MM_NATS__URL", &nats_url),
                ("MM_REDIS__URL", &redis_url),
                ("MM_MATCHMAKER__ADMIN_LISTEN", &mm_admin),
            ],
        )
        .expect("matchmaker");
        matchmaker.wait_healthy(&mm_admin).expect("matchmaker healthy");

        let public_url = format!("ws://{gateway}");
        let duration = format!("{GAME_SECONDS}s");
        let mut env = vec![
            ("MM_NATS__URL", nats_url.as_str()),
            ("MM_ORCHESTRATOR__ADMIN_LISTEN", orch_admin.as_str()),
            ("MM_ORCHESTRATOR__NODE", "gw-test"),
            ("MM_ORCHESTRATOR__PUBLIC_URL", public_url.as_str()),
            ("MM_ORCHESTRATOR__GAME__DURATION", duration.as_str()),
        ];
        env.extend_from_slice(driver_env);
        let mut orchestrator = ServiceProcess::start("orchestrator", &[], &env).expect("orchestrator");
        orchestrator.wait_healthy(&orch_admin).expect("orchestrator healthy");

        let mut gateway_process = ServiceProcess::start(
            "gateway",
            &[],
            &[("MM_NATS__URL", &nats_url), ("MM_GATEWAY__LISTEN", &gateway)],
        )
        .expect("gateway");
        gateway_process.wait_healthy(&gateway).expect("gateway healthy");
        Stack {
            nats,
            _redis: redis,
            _matchmaker: matchmaker,
            _orchestrator: orchestrator,
            _gateway: gateway_process,
            gateway,
        }
    }

    fn http(&self) -> support::http::Http {
        support::http::Http::new(&self.gateway)
    }

    async fn server_entry(&self, game_id: &str) -> Option<ServerEntry> {
        let client = async_nats::connect(self.nats.url()).await.expect("nats");
        let store = async_nats::jetstream::new(client).get_key_value(buckets::SERVERS).await.expect("bucket");
        let value = store.get(game_id).await.expect("kv get")?;
        Some(serde_json::from_slice(&value).expect("entry JSON"))
    }
}

/// Connects to `url` (the ticket's `server.url`) with `?token=`, or fails with the HTTP status.
async fn dial(url: &str, token: Option<&str>) -> Result<support::Socket, u16> {
    let url = match token {
        Some(token) => format!("{url}?token={token}"),
        None => url.to_owned(),
    };
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(err) => panic!("WebSocket handshake failed oddly: {err}"),
    }
}

async fn next_message(socket: &mut support::Socket) -> Message {
    tokio::time::timeout(Duration::from_secs(GAME_SECONDS + 10), socket.next())
        .await
        .expect("a frame in time")
        .expect("socket open")
        .expect("frame")
}

async fn play_a_match(stack: &Stack) -> (String, ServerEntry) {
    let http = stack.http();
    let mut players = Vec::new();
    for n in 0..10 {
        let token = http.login(&format!("player-{n}")).await;
        let ticket = http.join(&token).await;
        players.push((token, ticket));
    }
    let mut matched = Vec::new();
    for (token, ticket) in &players {
        let answer = http.wait_matched(token, ticket).await;
        matched.push(answer);
    }
    let server = matched[0]["server"].clone();
    assert!(
        matched.iter().all(|m| m["server"] == server && m["matchId"] == matched[0]["matchId"]),
        "one match"
    );
    let url = server["url"].as_str().expect("server.url").to_owned();
    let game_id = server["gameId"].as_str().expect("gameId").to_owned();
    assert_eq!(
        url,
        format!("ws://{}/game/{game_id}/connect", stack.gateway),
        "players connect through the gateway"
    );
    let entry = stack.server_entry(&game_id).await.expect("KV entry while the game runs");

    // Strangers are refused before any upgrade.
    let stranger = http.login("stranger").await;
    assert_eq!(dial(&url, Some(&stranger)).await.err(), Some(403), "a player of no match in this game");
    assert_eq!(dial(&url, None).await.err(), Some(401), "no token");
    assert_eq!(dial(&url, Some(&"f".repeat(64))).await.err(), Some(401), "a token nobody issued");
    let unknown = format!("ws://{}/game/g000000000000000000000000/connect", stack.gateway);
    assert_eq!(dial(&unknown, Some(&players[0].0)).await.err(), Some(404), "no such game");

    // Two players play: text and binary frames come back unchanged, through the proxy.
    let mut sockets = Vec::new();
    for (token, _) in players.iter().take(2) {
        sockets.push(dial(&url, Some(token)).await.expect("a player of the match connects"));
    }
    for (n, socket) in sockets.iter_mut().enumerate() {
        let text = format!("move {n}");
        socket.send(Message::text(text.clone())).await.expect("send text");
        assert_eq!(next_message(socket).await, Message::text(text));
        let bytes = vec![0u8, 1, 2, 255, n as u8];
        socket.send(Message::binary(bytes.clone())).await.expect("send binary");
        assert_eq!(next_message(socket).await, Message::binary(bytes));
    }
    // The game ends on its own: each socket gets a close frame, passed on by the gateway.
    for socket in &mut sockets {
        match next_message(socket).await {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000, "{frame:?}"),
            other => panic!("expected the game's close frame, got {other:?}"),
        }
    }
    (game_id, entry)
}

async fn assert_entry_gone(stack: &Stack, game_id: &str) {
    for _ in 0..100 {
        if stack.server_entry(game_id).await.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the KV entry of {game_id} outlived its game");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_plays_through_the_gateway_with_the_process_driver() {
    let stack = Stack::start(&[("MM_ORCHESTRATOR__DRIVER", "process")]);
    let (game_id, entry) = play_a_match(&stack).await;
    assert_eq!(entry.driver, "process");
    assert_entry_gone(&stack, &game_id).await;
    let pid: u32 = entry.handle.parse().expect("a process driver handle is a pid");
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || !mm_shared::process::is_alive(pid)),
        "the game server process outlived its game"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_plays_through_the_gateway_with_podman() {
    let podman = PodmanService::start().expect("podman service (run `just setup`)");
    let socket = podman.socket().display().to_string();
    let stack =
        Stack::start(&[("MM_ORCHESTRATOR__DRIVER", "podman"), ("MM_ORCHESTRATOR__PODMAN__SOCKET", &socket)]);
    let (game_id, entry) = play_a_match(&stack).await;
    assert_eq!(entry.driver, "podman");
    assert_entry_gone(&stack, &game_id).await;
    let label = format!("label=mm.game-id={game_id}");
    let gone = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        std::process::Command::new("podman")
            .args(["ps", "-a", "-q", "--filter", &label])
            .output()
            .is_ok_and(|out| out.status.success() && out.stdout.is_empty())
    });
    assert!(gone, "the game's container outlived its game");
}
