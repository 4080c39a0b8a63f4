//! The Redis helper against a real redis-server: connect, round trip, health, and
//! reconnecting after the server comes back.

use std::time::{Duration, Instant};

use mm_shared::config::RedisConfig;
use mm_testkit::RedisServer;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

fn config(url: &str) -> RedisConfig {
    RedisConfig { url: url.to_owned(), ..RedisConfig::default() }
}

#[tokio::test]
async fn round_trip_and_health() {
    let server = RedisServer::start().expect("redis-server");
    let shutdown = CancellationToken::new();
    let mut connection =
        mm_shared::redis::connect(&config(&server.url()), &shutdown).await.expect("connects");
    let () = connection.set("ticket:t1", r#"{"status":"searching"}"#).await.expect("SET");
    let value: String = connection.get("ticket:t1").await.expect("GET");
    assert_eq!(value, r#"{"status":"searching"}"#);

    let check = mm_shared::redis::health_check(connection.clone());
    assert_eq!(check().await, Ok("PONG".to_owned()));
}

#[tokio::test]
async fn reconnects_after_redis_comes_back() {
    let mut server = RedisServer::start().expect("redis-server");
    let port = server.port();
    let shutdown = CancellationToken::new();
    let mut connection =
        mm_shared::redis::connect(&config(&server.url()), &shutdown).await.expect("connects");
    let () = connection.set("k", "before").await.expect("SET");

    server.process().stop_with(libc::SIGKILL, Duration::from_secs(5));
    drop(server);
    let failed: Result<String, _> = connection.get("k").await;
    assert!(failed.is_err(), "a dead server is an error, not a hang");

    let _server = tokio::task::spawn_blocking(move || RedisServer::start_on(port))
        .await
        .expect("join")
        .expect("redis-server again on the same port");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let result: Result<(), _> = connection.set("k", "after").await;
        if result.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "did not reconnect: {result:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let value: String = connection.get("k").await.expect("GET");
    assert_eq!(value, "after");
}

#[tokio::test]
async fn waits_for_redis_until_shutdown() {
    let port = mm_testkit::free_port();
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cancel.cancel();
    });
    let config = config(&format!("redis://127.0.0.1:{port}/"));
    let err = tokio::time::timeout(Duration::from_secs(5), mm_shared::redis::connect(&config, &shutdown))
        .await
        .expect("returns promptly")
        .expect_err("cancelled");
    assert!(matches!(err, mm_shared::redis::ConnectError::Cancelled { .. }), "{err}");
}
