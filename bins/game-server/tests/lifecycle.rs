//! The game server starts, answers `/healthz`, and stops on SIGTERM.

use mm_testkit::{free_port, lifecycle::assert_service_lifecycle};

#[test]
fn starts_answers_and_stops() {
    let listen = format!("127.0.0.1:{}", free_port());
    assert_service_lifecycle("game-server", &listen, &[("MM_GAME__LISTEN", &listen)], "MM_GAME__LISTEN");
}
