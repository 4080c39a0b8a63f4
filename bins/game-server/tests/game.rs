//! The game server as the gateway's proxy meets it: admission, echo, and the end of the game.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mm_testkit::{ServiceProcess, free_port};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const SECRET: &str = "0123456789abcdef";

struct Game {
    process: ServiceProcess,
    addr: String,
}

/// A game server for players `players` (a figment list literal) that lasts `duration`.
fn start(duration: &str, players: &str) -> Game {
    start_with(duration, players, &[])
}

/// Like [`start`], with more `MM_GAME__*` settings.
fn start_with(duration: &str, players: &str, extra: &[(&str, &str)]) -> Game {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = vec![
        ("MM_GAME__LISTEN", addr.as_str()),
        ("MM_GAME__GAME_ID", "\"g-test\""),
        ("MM_GAME__MATCH_ID", "\"m-test\""),
        ("MM_GAME__DURATION", duration),
        ("MM_GAME__SECRET", SECRET),
        ("MM_GAME__PLAYERS", players),
    ];
    env.extend_from_slice(extra);
    let mut process = ServiceProcess::start("game-server", &[], &env).expect("starts");
    process.wait_healthy(&addr).expect("healthy");
    Game { process, addr }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as `player` (percent-encoded by the caller) with `secret`; the HTTP status on refusal.
async fn connect(addr: &str, player: Option<&str>, secret: Option<&str>) -> Result<Socket, u16> {
    let query = player.map(|player| format!("?player={player}")).unwrap_or_default();
    let mut request = format!("ws://{addr}/connect{query}").into_client_request().expect("request");
    if let Some(secret) = secret {
        request.headers_mut().insert("authorization", format!("Bearer {secret}").parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected WebSocket error: {other}"),
    }
}

/// Sends a text and a binary frame and checks both come back.
async fn assert_echo(socket: &mut Socket) {
    socket.send(Message::text("hello")).await.expect("send text");
    assert_eq!(socket.next().await.expect("reply").expect("frame"), Message::text("hello"));
    socket.send(Message::binary(vec![0u8, 1, 2, 255])).await.expect("send binary");
    assert_eq!(socket.next().await.expect("reply").expect("frame"), Message::binary(vec![0u8, 1, 2, 255]));
}

/// Reads until the server's close frame; returns its code and reason.
async fn close_frame(socket: &mut Socket, within: Duration) -> (CloseCode, String) {
    let read = async {
        let mut close = None;
        // Reading on after the close frame sends our close reply and sees the end.
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => close = Some((frame.code, frame.reason.to_string())),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        close.expect("a close frame before the connection ended")
    };
    tokio::time::timeout(within, read).await.expect("a close frame in time")
}

#[tokio::test(flavor = "multi_thread")]
async fn echoes_for_its_players_then_closes_every_socket_and_exits_at_the_end() {
    let mut game = start("3s", r#"["p1","p-2.x@y"]"#);
    let started = Instant::now();
    let mut p1 = connect(&game.addr, Some("p1"), Some(SECRET)).await.expect("p1 admitted");
    let mut p2 = connect(&game.addr, Some("p-2.x%40y"), Some(SECRET)).await.expect("p2 admitted");
    assert_echo(&mut p1).await;
    assert_echo(&mut p2).await;

    for socket in [&mut p1, &mut p2] {
        let (code, reason) = close_frame(socket, Duration::from_secs(10)).await;
        assert_eq!((code, reason.as_str()), (CloseCode::Normal, "game over"));
    }
    assert!(started.elapsed() >= Duration::from_secs(2), "the game lasted its duration");
    let exited = mm_shared::probe::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        game.process.process().exited().is_some()
    });
    assert!(exited, "the server exits after its game");
    let status = game.process.process().exited().expect("exited");
    assert!(status.success(), "exit 0 after the game: {status}");
    let log = game.process.log();
    assert!(log.contains("game ended: its time is up"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_anyone_but_its_players_with_the_secret() {
    let game = start("30s", r#"["p1","a,b","\u00E9"]"#);
    assert_eq!(connect(&game.addr, Some("p1"), None).await.err(), Some(401), "no secret");
    assert_eq!(connect(&game.addr, Some("p1"), Some("wrong")).await.err(), Some(401), "wrong secret");
    assert_eq!(
        connect(&game.addr, Some("p3"), Some(SECRET)).await.err(),
        Some(403),
        "another match's player"
    );
    assert_eq!(connect(&game.addr, None, Some(SECRET)).await.err(), Some(400), "no player");
    // Player ids with a comma or beyond ASCII come through the environment intact.
    connect(&game.addr, Some("a%2Cb"), Some(SECRET)).await.expect("a,b admitted");
    connect(&game.addr, Some("%C3%A9"), Some(SECRET)).await.expect("é admitted");

    let plain =
        mm_shared::probe::http_get(&game.addr, "/connect?player=p1", Duration::from_secs(2)).expect("get");
    assert_eq!(plain.status, 401, "the secret is checked before the upgrade");
    let metrics =
        mm_shared::probe::http_get(&game.addr, "/metrics", Duration::from_secs(2)).expect("metrics");
    assert!(metrics.body.contains("mm_game_connections_total"), "{}", metrics.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_sockets_as_going_away_and_exits_zero() {
    let mut game = start("60s", r#"["p1"]"#);
    let mut socket = connect(&game.addr, Some("p1"), Some(SECRET)).await.expect("admitted");
    assert_echo(&mut socket).await;
    mm_shared::process::send_signal(game.process.pid(), libc::SIGTERM).expect("signal");
    let (code, reason) = close_frame(&mut socket, Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (CloseCode::Away, "server shutting down"));
    let exited = mm_shared::probe::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        game.process.process().exited().is_some()
    });
    assert!(exited, "the server exits after SIGTERM");
    let status = game.process.process().exited().expect("exited");
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_player_is_dropped_after_the_configured_close_timeout() {
    let mut game = start_with("1s", r#"["p1"]"#, &[("MM_GAME__CLOSE_TIMEOUT", "300ms")]);
    // Never read: the close frame gets no reply, so the server's own deadline applies.
    let _socket = connect(&game.addr, Some("p1"), Some(SECRET)).await.expect("admitted");
    let exited = mm_shared::probe::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        game.process.process().exited().is_some()
    });
    assert!(exited, "the server exits after its game");
    let log = game.process.log();
    // The socket gave up after close_timeout, within the time the end of the game waits.
    assert!(!log.contains("did not answer the close frame"), "{log}");
    assert!(log.contains("sockets_closed=1"), "{log}");
}

/// Waits for the game server to exit; its exit code.
fn exit_code(game: &mut Game, within: Duration) -> Option<i32> {
    let exited = mm_shared::probe::wait_until(within, Duration::from_millis(20), || {
        game.process.process().exited().is_some()
    });
    assert!(exited, "the server exits within {within:?}");
    game.process.process().exited().and_then(|status| status.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_nobody_joins_ends_itself_and_says_why() {
    use mm_shared::protocol::game_server::exit_codes;
    let mut game = start_with("30s", r#"["p1"]"#, &[("MM_GAME__JOIN_TIMEOUT", "700ms")]);
    let started = Instant::now();
    let code = exit_code(&mut game, Duration::from_secs(10));
    assert_eq!(code.map(i64::from), Some(exit_codes::NO_PLAYERS), "{}", game.process.log());
    assert!(started.elapsed() < Duration::from_secs(5), "ended at its join timeout, not its game's end");
    let log = game.process.log();
    assert!(log.contains("no player joined within 700ms (game.join_timeout)"), "{log}");

    // A player who joins in time keeps it open past the join timeout, to the game's end.
    let mut game = start_with("2500ms", r#"["p1"]"#, &[("MM_GAME__JOIN_TIMEOUT", "700ms")]);
    let mut socket = connect(&game.addr, Some("p1"), Some(SECRET)).await.expect("admitted");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_echo(&mut socket).await;
    let (code, _) = close_frame(&mut socket, Duration::from_secs(10)).await;
    assert_eq!(code, CloseCode::Normal);
    assert_eq!(exit_code(&mut game, Duration::from_secs(10)), Some(0));
}

#[test]
fn a_taken_address_is_its_own_exit_code() {
    use mm_shared::protocol::game_server::exit_codes;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut process =
        ServiceProcess::start("game-server", &[], &[("MM_GAME__LISTEN", addr.as_str())]).expect("starts");
    let exited = mm_shared::probe::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        process.process().exited().is_some()
    });
    assert!(exited, "it cannot listen, so it exits");
    let code = process.process().exited().and_then(|status| status.code());
    assert_eq!(code.map(i64::from), Some(exit_codes::ADDRESS_IN_USE), "{}", process.log());
}

/// `METHOD /assign` with `token` and `body`: the status and body of the answer.
fn assign_call(addr: &str, method: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let auth = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} /assign HTTP/1.1\r\nHost: game\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("a status");
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_server_refuses_players_until_its_one_assignment_then_plays_that_match() {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("MM_GAME__LISTEN", addr.as_str()),
        ("MM_GAME__GAME_ID", "\"w-test\""),
        ("MM_GAME__BOOTSTRAP_TOKEN", "\"boot-token\""),
        ("MM_GAME__JOIN_TIMEOUT", "800ms"),
    ];
    let mut process = ServiceProcess::start("game-server", &[], &env).expect("starts");
    process.wait_healthy(&addr).expect("healthy while warm");
    let mut game = Game { process, addr };

    // No match yet: nobody gets in, whatever they present.
    assert_eq!(connect(&game.addr, Some("p1"), Some(SECRET)).await.err(), Some(503));
    assert_eq!(connect(&game.addr, Some("p1"), None).await.err(), Some(503));
    assert_eq!(assign_call(&game.addr, "GET", Some("boot-token"), "").1, r#"{"assignment":null}"#);
    // Warm for longer than its join timeout: that clock has not started.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(game.process.process().exited().is_none(), "a warm server waits for its match");

    let ends_at = mm_shared::protocol::now_ms() + 2500;
    let assignment = |match_id: &str| {
        format!(
            r#"{{"gameId":"g-{match_id}","matchId":"{match_id}","playerIds":["p1","p2"],"secret":"{SECRET}","endsAt":{ends_at}}}"#
        )
    };
    assert_eq!(assign_call(&game.addr, "POST", None, &assignment("m1")).0, 401, "no token");
    assert_eq!(assign_call(&game.addr, "POST", Some("wrong"), &assignment("m1")).0, 401, "wrong token");
    assert_eq!(assign_call(&game.addr, "POST", Some("boot-token"), "{not json").0, 400);
    assert_eq!(assign_call(&game.addr, "POST", Some("boot-token"), &assignment("m1")).0, 204, "assigned");
    // Never a second match.
    assert_eq!(assign_call(&game.addr, "POST", Some("boot-token"), &assignment("m2")).0, 409);
    assert_eq!(assign_call(&game.addr, "POST", Some("boot-token"), &assignment("m1")).0, 409);
    let (status, body) = assign_call(&game.addr, "GET", Some("boot-token"), "");
    assert_eq!(status, 200);
    assert!(body.contains(r#""matchId":"m1""#) && body.contains(SECRET), "{body}");
    assert_eq!(assign_call(&game.addr, "GET", Some("wrong"), "").0, 401);

    // Now it is m1's server: its players with its secret, nobody else.
    assert_eq!(connect(&game.addr, Some("p3"), Some(SECRET)).await.err(), Some(403));
    assert_eq!(connect(&game.addr, Some("p1"), Some("boot-token")).await.err(), Some(401));
    let mut socket = connect(&game.addr, Some("p1"), Some(SECRET)).await.expect("admitted");
    assert_echo(&mut socket).await;
    let (code, reason) = close_frame(&mut socket, Duration::from_secs(10)).await;
    assert_eq!((code, reason.as_str()), (CloseCode::Normal, "game over"), "it ends at the match's end");
    assert_eq!(exit_code(&mut game, Duration::from_secs(10)), Some(0));
    let log = game.process.log();
    assert!(log.contains("warm: waiting for its node") && log.contains("assigned to its match"), "{log}");
    assert!(!log.contains("boot-token"), "the token is never printed: {log}");

    // A server started with its match has no assignment endpoint.
    let plain = start("30s", r#"["p1"]"#);
    assert_eq!(assign_call(&plain.addr, "POST", Some(""), &assignment("m3")).0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_server_ends_on_sigterm_and_its_join_timeout_counts_from_the_assignment() {
    use mm_shared::protocol::game_server::exit_codes;
    let addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("MM_GAME__LISTEN", addr.as_str()),
        ("MM_GAME__BOOTSTRAP_TOKEN", "\"t\""),
        ("MM_GAME__JOIN_TIMEOUT", "700ms"),
    ];
    let mut process = ServiceProcess::start("game-server", &[], &env).expect("starts");
    process.wait_healthy(&addr).expect("healthy");
    let mut warm = Game { process, addr: addr.clone() };
    mm_shared::process::send_signal(warm.process.pid(), libc::SIGTERM).expect("signal");
    assert_eq!(exit_code(&mut warm, Duration::from_secs(5)), Some(0), "stopped while warm: exit 0");

    let addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("MM_GAME__LISTEN", addr.as_str()),
        ("MM_GAME__BOOTSTRAP_TOKEN", "\"t\""),
        ("MM_GAME__JOIN_TIMEOUT", "700ms"),
    ];
    let mut process = ServiceProcess::start("game-server", &[], &env).expect("starts");
    process.wait_healthy(&addr).expect("healthy");
    let mut game = Game { process, addr };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let body = format!(
        r#"{{"gameId":"g","matchId":"m","playerIds":["p1"],"secret":"s","endsAt":{}}}"#,
        mm_shared::protocol::now_ms() + 30_000
    );
    let assigned = Instant::now();
    assert_eq!(assign_call(&game.addr, "POST", Some("t"), &body).0, 204);
    let code = exit_code(&mut game, Duration::from_secs(10));
    assert_eq!(code.map(i64::from), Some(exit_codes::NO_PLAYERS), "{}", game.process.log());
    assert!(assigned.elapsed() >= Duration::from_millis(600), "counted from the assignment");
}
