//! Redis: one reconnecting, multiplexed connection per service.
//!
//! [`connect`] retries until Redis answers (or shutdown), then hands out a
//! `ConnectionManager`, which reconnects by itself after a failure. Every command has a
//! response deadline (`redis.response_timeout`), so a stalled Redis turns into an error
//! instead of a hung request.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;

/// Why [`connect`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Shutdown was requested before Redis answered.
    #[error("shut down while waiting for Redis at {url}")]
    Cancelled { url: String },
    /// The URL cannot be used, so retrying is pointless.
    #[error("config key `redis.url`: `{url}` is not a usable Redis URL: {reason}")]
    BadUrl { url: String, reason: String },
}

/// Connects to Redis with retries and returns a reconnecting connection.
pub async fn connect(
    config: &RedisConfig,
    shutdown: &CancellationToken,
) -> Result<ConnectionManager, ConnectError> {
    let client = redis::Client::open(config.url.as_str())
        .map_err(|err| ConnectError::BadUrl { url: config.url.clone(), reason: err.to_string() })?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_number_of_retries(4)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    // The same pacing for every service: 100 ms doubling to 2 s, with jitter.
    let backoff = crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut attempt = 1u32;
    let cancelled = || ConnectError::Cancelled { url: redacted(&config.url) };
    loop {
        let pause = backoff.delay(attempt);
        // One attempt can take several connect timeouts (the manager retries inside it):
        // shutdown must not wait for it.
        let attempt_result = tokio::select! {
            result = ConnectionManager::new_with_config(client.clone(), manager_config.clone()) => result,
            () = shutdown.cancelled() => return Err(cancelled()),
        };
        match attempt_result {
            Ok(connection) => {
                tracing::info!(url = %redacted(&config.url), "connected to Redis");
                return Ok(connection);
            }
            Err(err) => tracing::warn!(
                url = %redacted(&config.url),
                attempt,
                retry_in = %crate::duration::format(pause),
                "Redis not reachable yet: {err}"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Err(cancelled()),
        }
        attempt += 1;
    }
}

/// A health check for [`crate::telemetry::admin::Health`]: healthy while `PING` answers.
pub fn health_check(
    connection: ConnectionManager,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>> {
    move || {
        let mut connection = connection.clone();
        Box::pin(async move {
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut connection).await;
            pong.map(|_| "PONG".to_owned()).map_err(|err| err.to_string())
        })
    }
}

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redacted("redis://:secret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(redacted("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }

    #[tokio::test]
    async fn a_bad_url_fails_at_once_naming_the_key() {
        let config = RedisConfig { url: "http://nope".into(), ..RedisConfig::default() };
        let err = connect(&config, &CancellationToken::new()).await.expect_err("bad scheme");
        assert!(err.to_string().contains("redis.url"), "{err}");
    }

    /// A Redis that accepts connections and never answers: the attempt is stuck in its
    /// 30 s connect timeout, and shutdown must still end the wait.
    #[tokio::test]
    async fn shutdown_ends_a_stuck_connect_attempt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
        let addr = listener.local_addr().expect("addr");
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = RedisConfig {
            url: format!("redis://{addr}/"),
            connect_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(30),
        };
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let result = tokio::time::timeout(Duration::from_secs(10), connect(&config, &shutdown))
            .await
            .expect("connect returns once shutdown is requested, not after the connect timeout");
        match result {
            Err(ConnectError::Cancelled { .. }) => {}
            Err(other) => panic!("expected Cancelled, got {other}"),
            Ok(_) => panic!("a Redis that never answers cannot connect"),
        }
        accepted.abort();
    }
}
