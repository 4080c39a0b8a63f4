//! The orchestrator's ways to try again, on the workspace's one backoff
//! ([`mm_shared::retry`]: exponential with jitter, so that many nodes, or many runners of
//! one node, do not retry in step).
//!
//! - [`forever`] keeps a long-lived session going (a KV watch, Podman's event stream)
//!   until shutdown: each time it ends or fails it is started again after the next delay,
//!   and a session that ran long enough to count as healthy starts the delays over.
//! - [`with_retries`] runs one fallible operation a few times (removing a container
//!   through a busy Podman) and returns its last error.

use std::future::Future;
use std::time::Duration;

use mm_shared::retry::Backoff;
use tokio_util::sync::CancellationToken;

/// Runs `session` until `shutdown`, starting it again after each end or failure (logged
/// with `what`) after a delay from `min`, doubling up to `max`.
pub async fn forever<F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    min: Duration,
    max: Duration,
    session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    mm_shared::retry::forever(what, shutdown, Backoff::new(min, max), session).await;
}

/// Runs `operation` up to `attempts` times (at least once), `min` apart and doubling up
/// to eight times `min`; the first success, or the last error.
pub async fn with_retries<T, E, F, Fut>(attempts: usize, min: Duration, operation: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    Backoff::new(min, min * 8).retry(attempts, operation, |_| true, |_, _| {}).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn with_retries_stops_at_the_first_success_or_the_last_attempt() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let result: Result<usize, String> = with_retries(5, Duration::from_millis(1), move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 { Err(format!("try {n}")) } else { Ok(n) }
            }
        })
        .await;
        assert_eq!(result, Ok(3));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let result: Result<(), String> = with_retries(2, Duration::from_millis(1), move || {
            let counter = counter.clone();
            async move { Err(format!("try {}", counter.fetch_add(1, Ordering::SeqCst) + 1)) }
        })
        .await;
        assert_eq!(result, Err("try 2".to_owned()));
    }
}
