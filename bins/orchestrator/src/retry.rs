//! The orchestrator's one way to try again: exponential backoff with jitter (`backon`).
//!
//! - [`forever`] keeps a long-lived session going (a KV watch, Podman's event stream)
//!   until shutdown: each time it ends or fails it is started again after the next delay,
//!   and a session that ran long enough to count as healthy starts the delays over.
//! - [`with_retries`] runs one fallible operation a few times (removing a container
//!   through a busy Podman) and returns its last error.
//!
//! The jitter keeps many nodes (or many runners of one node) from retrying in step.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// A session that lasted this long was healthy: the next failure starts the delays over.
const SETTLED: Duration = Duration::from_secs(10);

/// Delays from `min`, doubling up to `max`, each with random jitter, without end.
pub fn delays(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `session` until `shutdown`, starting it again after each end or failure (logged
/// with `what`) after the next backoff delay.
pub async fn forever<F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    min: Duration,
    max: Duration,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut next = delays(min, max);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = session() => outcome,
            () = shutdown.cancelled() => return,
        };
        if let Err(err) = outcome {
            tracing::warn!("{what}: {err}; trying again");
        }
        if started.elapsed() >= SETTLED {
            next = delays(min, max);
        }
        let delay = next.next().unwrap_or(max);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Runs `operation` up to `attempts` times (at least once), `min` apart and doubling,
/// with jitter; the first success, or the last error.
pub async fn with_retries<T, E, F, Fut>(attempts: usize, min: Duration, operation: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(min * 8)
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1));
    operation.retry(backoff).sleep(tokio::time::sleep).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_with_jitter() {
        let taken: Vec<Duration> =
            delays(Duration::from_millis(100), Duration::from_secs(1)).take(8).collect();
        assert_eq!(taken.len(), 8, "without end");
        assert!(
            taken[0] >= Duration::from_millis(100) && taken[0] <= Duration::from_millis(200),
            "{taken:?}"
        );
        assert!(taken.iter().all(|delay| *delay <= Duration::from_secs(2)), "{taken:?}");
        assert!(taken[7] >= Duration::from_secs(1), "{taken:?}");
    }

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

    #[tokio::test]
    async fn forever_restarts_sessions_until_shutdown() {
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (counter, stop) = (runs.clone(), shutdown.clone());
        forever("test session", &shutdown, Duration::from_millis(1), Duration::from_millis(5), move || {
            let (counter, stop) = (counter.clone(), stop.clone());
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == 4 {
                    stop.cancel();
                }
                Err("broke".to_owned())
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }
}
