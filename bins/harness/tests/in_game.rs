//! The `in_game` scenario against the real game-server binary, dialled directly (the
//! gateway's proxy forwards the same frames): every echo checked, the game ended by the
//! server's close frame, and the close handshake completed from the player's side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::config::HarnessSection;
use harness::http::{Gateway, GatewayUrl};
use harness::player::{Context, Game, Session};
use harness::scenario::Outcome;
use harness::scenarios::in_game;
use mm_testkit::{ServiceProcess, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_is_played_to_its_end_with_every_echo_checked() {
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [("MM_GAME__LISTEN", listen.as_str()), ("MM_GAME__DURATION", "2s")];
    let mut server = ServiceProcess::start("game-server", &[], &env).expect("game-server starts");
    server.wait_healthy(&listen).expect("game-server healthy");

    let mut config = HarnessSection::default();
    config.in_game.message_interval = Duration::from_millis(100);
    let gateway = Gateway::new(GatewayUrl::parse("http://127.0.0.1:1").expect("url"), &config.http);
    let context = Arc::new(Context::new(config, gateway, "game-test", true));
    let mut session = Session::new(context.clone(), 1);
    session.token = Some("0".repeat(64).into());
    let joined = Instant::now();
    session.game = Some(Box::new(Game {
        url: format!("ws://{listen}/connect?player=game-test-p1").into(),
        game_id: "g1".into(),
        joined,
    }));

    let outcome = in_game::run(&mut session).await;
    assert!(matches!(outcome, Outcome::Succeeded), "{outcome:?}\n{}", server.log());
    assert!(joined.elapsed() >= Duration::from_millis(1500), "played until the server ended the game");
    let stats = context.stats.snapshot(&[0.0; harness::scenario::SCENARIOS]);
    assert_eq!(stats.time_to_play_us.count(), 1, "the first echo was timed");
    let echoed = context.stats.game_messages_echoed();
    assert!(echoed >= 10, "a message every 100 ms for 2 s, each echo checked: {echoed}");
    assert!(session.game.is_none(), "the game is used up");

    let status = server.terminate(Duration::from_secs(10)).expect("game-server exits");
    assert!(status.success());
    let log = server.log();
    assert!(
        !log.contains("did not answer the close frame"),
        "the player completed the close handshake:\n{log}"
    );
}
