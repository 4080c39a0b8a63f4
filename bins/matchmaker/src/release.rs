//! Ending the servers of matches that were not committed: `orchestrator.release
//! {matchId}`.
//!
//! A match id that can no longer be committed (see [`crate::tickets`]: its group lost a
//! ticket, was grouped otherwise, or lost its lease) may still have a server the
//! orchestrator started for it. [`Releaser::release`] asks the orchestrator to end it,
//! fire and forget: each release is a NATS request with a deadline
//! (`matcher.release_timeout`) in a task of its own, tried `matcher.release_attempts`
//! times with backoff while it times out or the orchestrator answers 5xx, so nothing that
//! releases waits for it. At most [`MAX_IN_FLIGHT`] run at once; past that a release is
//! dropped (logged and counted): the orchestrator ends a server that no player joins
//! within its join timeout anyway.
//!
//! The orchestrator's release is idempotent, so the same match may be released twice (by
//! a cancel and by the matcher, say) and a match that never got a server may be released.
//! No responders (no orchestrator serves `orchestrator.release`, an older one or none at
//! all) is logged at debug and ends that release: it fails nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Client;
use mm_shared::nats::{RequestError, request_json};
use mm_shared::protocol::{ReleaseReply, ReleaseRequest, subjects};
use tokio::sync::Semaphore;

use crate::retry::Backoff;

/// Releases in flight at once, per process.
pub const MAX_IN_FLIGHT: u32 = 256;

/// Why a match is released (the `reason` label of `mm_matchmaker_releases_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A ticket was cancelled during the allocation.
    Abandoned,
    /// The lease expired before the commit, and no other lease took the group.
    LeaseLost,
    /// Its tickets were grouped otherwise.
    Superseded,
    /// A queued ticket of its group was cancelled.
    Cancelled,
    /// A queued ticket of its group expired.
    Expired,
    /// Tickets of its group used up their attempts.
    Failed,
}

impl Why {
    pub const ALL: [Why; 6] =
        [Why::Abandoned, Why::LeaseLost, Why::Superseded, Why::Cancelled, Why::Expired, Why::Failed];

    pub fn label(self) -> &'static str {
        match self {
            Self::Abandoned => "abandoned",
            Self::LeaseLost => "lease_lost",
            Self::Superseded => "superseded",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }
}

/// How releases are sent (`[matcher]` `release_timeout`, `release_attempts`,
/// `retry_backoff_min/max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseSettings {
    pub timeout: Duration,
    pub attempts: usize,
    pub backoff: Backoff,
}

/// Sends releases in the background. Cheap to clone.
#[derive(Clone)]
pub struct Releaser {
    inner: Arc<Inner>,
}

struct Inner {
    nats: Client,
    settings: ReleaseSettings,
    /// One permit per release in flight; [`Releaser::finish`] takes them all.
    slots: Arc<Semaphore>,
    dropped: AtomicU64,
}

impl Releaser {
    pub fn new(nats: Client, settings: ReleaseSettings) -> Self {
        let inner = Inner {
            nats,
            settings,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize)),
            dropped: AtomicU64::new(0),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Releases `match_id`'s server in the background. Never waits; must be called
    /// within the Tokio runtime.
    pub fn release(&self, match_id: &str, why: Why) {
        metrics::counter!("mm_matchmaker_releases_total", "reason" => why.label()).increment(1);
        let Ok(slot) = self.inner.slots.clone().try_acquire_owned() else {
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("mm_matchmaker_release_results_total", "result" => "dropped").increment(1);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    %match_id,
                    dropped,
                    "{MAX_IN_FLIGHT} releases in flight: this one is dropped (its server ends at its join timeout)"
                );
            }
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%match_id, "release asked for outside the runtime: dropped");
            return;
        };
        let (inner, match_id) = (self.inner.clone(), match_id.to_owned());
        runtime.spawn(async move {
            let result = inner.send(&match_id, why).await;
            metrics::counter!("mm_matchmaker_release_results_total", "result" => result).increment(1);
            drop(slot);
        });
    }

    /// [`Releaser::release`] for each id.
    pub fn release_all(&self, match_ids: &[String], why: Why) {
        for match_id in match_ids {
            self.release(match_id, why);
        }
    }

    /// Waits up to `grace` for the releases in flight; true if they all ended.
    pub async fn finish(&self, grace: Duration) -> bool {
        let all = self.inner.slots.acquire_many(MAX_IN_FLIGHT);
        match tokio::time::timeout(grace, all).await {
            Ok(Ok(permits)) => {
                drop(permits);
                true
            }
            _ => {
                tracing::warn!(
                    "releases still in flight after {}; their servers end at their join timeout",
                    mm_shared::duration::format(grace)
                );
                false
            }
        }
    }
}

impl Inner {
    /// One release with its retries; returns the result label.
    async fn send(&self, match_id: &str, why: Why) -> &'static str {
        let request = ReleaseRequest { match_id: match_id.to_owned() };
        let settings = &self.settings;
        let reply: Result<ReleaseReply, RequestError> = settings
            .backoff
            .retry(
                settings.attempts,
                || request_json(&self.nats, subjects::ORCHESTRATOR_RELEASE, &request, settings.timeout),
                |err| {
                    matches!(
                        err,
                        RequestError::Timeout { .. }
                            | RequestError::Transport { .. }
                            | RequestError::Service { code: 500..=599, .. }
                    )
                },
                |err, pause| {
                    tracing::debug!(%match_id, "release failed, trying again in {pause:?}: {err}");
                },
            )
            .await;
        match reply {
            Ok(reply) => {
                tracing::debug!(
                    %match_id,
                    game_id = %reply.game_id,
                    released = reply.released,
                    reason = why.label(),
                    "released the server of a match that was not committed"
                );
                if reply.released { "released" } else { "not_running" }
            }
            Err(RequestError::NoResponders { .. }) => {
                tracing::debug!(
                    %match_id,
                    reason = why.label(),
                    "no orchestrator serves {}: not released (its server, if any, ends at its join timeout)",
                    subjects::ORCHESTRATOR_RELEASE
                );
                "no_responders"
            }
            Err(err) => {
                tracing::warn!(
                    %match_id,
                    reason = why.label(),
                    "cannot release the server of a match that was not committed (it ends at its join timeout): {err}"
                );
                "failed"
            }
        }
    }
}
