//! The one way every part of the project waits before trying again: exponential backoff
//! with jitter, from the `backon` crate.
//!
//! - A loop that counts its failures in a row (a connect loop, the matcher after failed
//!   allocations, a supervisor restarting a child) asks [`Backoff::delay`] for its pause
//!   before the next try.
//! - One operation tried a bounded number of times (a release, a removal through a busy
//!   Podman) runs through [`Backoff::retry`].
//! - A long-lived session (a KV watch, an event stream) runs under [`forever`]: started
//!   again after each end or failure, the delays starting over after a healthy stretch.
//!
//! The n-th delay is drawn between half and all of `min × 2^(n-1)`, capped at `max`
//! ("equal jitter"): `max` stays a true ceiling, and many clients that failed together do
//! not all come back at the same instant.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// Delays between `min` and `max`, doubling per failure in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min) }
    }

    fn builder(&self) -> ExponentialBuilder {
        // backon adds up to 100 % to each nominal delay; halving both bounds puts every
        // delay between half and all of its nominal value.
        ExponentialBuilder::default()
            .with_min_delay(self.min / 2)
            .with_max_delay(self.max / 2)
            .with_factor(2.0)
            .with_jitter()
    }

    /// The pause after `failures` failures in a row: none after none.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // Past the cap the delay stops growing; 64 doublings reach any cap.
        let nth = failures.min(64) as usize - 1;
        self.builder().without_max_times().build().nth(nth).unwrap_or(self.max).min(self.max)
    }

    /// Runs `operation` up to `attempts` times (at least once) while it fails with an
    /// error that `retryable` accepts, pausing between tries; `on_retry` sees each failure
    /// that is retried and the pause before the next try. Returns the last result.
    pub async fn retry<T, E, F, Fut>(
        &self,
        attempts: usize,
        operation: F,
        retryable: impl FnMut(&E) -> bool,
        on_retry: impl FnMut(&E, Duration),
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        operation
            .retry(self.builder().with_max_times(attempts.saturating_sub(1)))
            .sleep(tokio::time::sleep)
            .when(retryable)
            .notify(on_retry)
            .await
    }
}

/// A session that lasted this long was healthy: the next failure starts the delays over.
pub const SETTLED: Duration = Duration::from_secs(10);

/// Runs `session` until `shutdown`, starting it again after each end or failure (logged
/// with `what`) after the next delay of `backoff`.
pub async fn forever<F, Fut>(what: &str, shutdown: &CancellationToken, backoff: Backoff, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = session() => outcome,
            () = shutdown.cancelled() => return,
        };
        if let Err(err) = outcome {
            tracing::warn!("{what}: {err}; trying again");
        }
        failures = if started.elapsed() >= SETTLED { 1 } else { failures.saturating_add(1) };
        tokio::select! {
            () = tokio::time::sleep(backoff.delay(failures)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn delays_double_with_jitter_and_stay_under_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff.delay(0), Duration::ZERO);
        for _ in 0..200 {
            for (failures, nominal) in
                [(1, 100), (2, 200), (5, 1600), (6, 2000), (40, 2000), (u32::MAX, 2000)]
            {
                let delay = backoff.delay(failures);
                let nominal = Duration::from_millis(nominal);
                assert!(delay >= nominal / 2 && delay <= nominal, "after {failures}: {delay:?}");
            }
        }
        let draws: std::collections::HashSet<Duration> = (0..100).map(|_| backoff.delay(3)).collect();
        assert!(draws.len() > 10, "jitter: {draws:?}");
    }

    #[tokio::test]
    async fn retry_stops_at_its_attempts_or_at_an_error_it_must_not_retry() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        let tries = AtomicUsize::new(0);
        let mut pauses = Vec::new();
        let result: Result<(), &str> = backoff
            .retry(
                4,
                || async {
                    tries.fetch_add(1, Ordering::Relaxed);
                    Err("busy")
                },
                |_| true,
                |_, pause| pauses.push(pause),
            )
            .await;
        assert_eq!(result, Err("busy"));
        assert_eq!((tries.load(Ordering::Relaxed), pauses.len()), (4, 3));
        let tries = AtomicUsize::new(0);
        let result: Result<(), &str> = backoff
            .retry(
                4,
                || async {
                    tries.fetch_add(1, Ordering::Relaxed);
                    Err("refused")
                },
                |err| *err != "refused",
                |_, _| {},
            )
            .await;
        assert_eq!((result, tries.load(Ordering::Relaxed)), (Err("refused"), 1));
    }

    #[tokio::test]
    async fn forever_restarts_until_shutdown() {
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (counter, stop) = (runs.clone(), shutdown.clone());
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));
        let task = tokio::spawn(async move {
            forever("test session", &stop, backoff, || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Err("ended".to_owned())
                }
            })
            .await;
        });
        let started = Instant::now();
        while runs.load(Ordering::SeqCst) < 3 && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ends at shutdown")
            .expect("no panic");
        assert!(runs.load(Ordering::SeqCst) >= 3);
    }
}
