//! The matchmaker's own metrics (the NATS endpoint metrics come from `mm_shared::nats`).

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram};

/// Ticket lifecycle events counted in `mm_matchmaker_tickets_total{event}`.
#[derive(Debug, Clone, Copy)]
pub enum TicketEvent {
    Created,
    Matched,
    Cancelled,
    Expired,
    Failed,
    /// Returned to the queue after a failed or abandoned allocation, or an expired lease.
    Requeued,
}

impl TicketEvent {
    pub const ALL: [TicketEvent; 6] =
        [Self::Created, Self::Matched, Self::Cancelled, Self::Expired, Self::Failed, Self::Requeued];

    fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Matched => "matched",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Failed => "failed",
            Self::Requeued => "requeued",
        }
    }
}

pub fn tickets(event: TicketEvent, count: usize) {
    if count > 0 {
        counter!("mm_matchmaker_tickets_total", "event" => event.label()).increment(count as u64);
    }
}

/// The wait-time buckets match quality is labelled with (`wait`): bounded, and the same
/// in the harness's report table.
pub const WAIT_BUCKETS: [(u64, &str); 5] =
    [(5_000, "0-5s"), (15_000, "5-15s"), (30_000, "15-30s"), (60_000, "30-60s"), (u64::MAX, "60s+")];

/// The `wait` label of a match whose oldest ticket waited `waited_ms`.
pub fn wait_bucket(waited_ms: u64) -> &'static str {
    WAIT_BUCKETS.iter().find(|(limit, _)| waited_ms < *limit).map_or("60s+", |(_, label)| label)
}

/// Records a formed match's quality, by queue and by its oldest ticket's wait.
pub fn match_quality(queue: &str, quality: &mm_shared::protocol::MatchQuality) {
    let wait = wait_bucket(quality.wait_ms);
    let labels = [("queue", queue.to_owned()), ("wait", wait.to_owned())];
    metrics::histogram!("mm_matchmaker_match_rating_spread", &labels).record(quality.rating_spread);
    metrics::histogram!("mm_matchmaker_match_team_rating_difference", &labels)
        .record(quality.team_rating_diff);
    if let Some(latency) = quality.worst_latency_ms {
        metrics::histogram!("mm_matchmaker_match_worst_latency_seconds", &labels).record(latency / 1000.0);
    }
    metrics::histogram!("mm_matchmaker_match_wait_seconds", "queue" => queue.to_owned())
        .record(quality.wait_ms as f64 / 1000.0);
}

/// Every per-queue series at 0 from the start (bounded: the configured queues), so that
/// dashboards see each queue before its first match.
pub fn register_queues(queues: &[String]) {
    for queue in queues {
        counter!("mm_matchmaker_matches_total", "queue" => queue.clone()).increment(0);
        metrics::gauge!("mm_matchmaker_queue_depth", "queue" => queue.clone()).set(0.0);
        metrics::gauge!("mm_matchmaker_leases_in_flight", "queue" => queue.clone()).set(0.0);
        // Registering a histogram exports it with no observations.
        let _ = metrics::histogram!("mm_matchmaker_time_in_queue_seconds", "queue" => queue.clone());
        let _ = metrics::histogram!("mm_matchmaker_match_wait_seconds", "queue" => queue.clone());
        for (_, wait) in WAIT_BUCKETS {
            let labels = [("queue", queue.clone()), ("wait", wait.to_owned())];
            let _ = metrics::histogram!("mm_matchmaker_match_rating_spread", &labels);
            let _ = metrics::histogram!("mm_matchmaker_match_team_rating_difference", &labels);
            let _ = metrics::histogram!("mm_matchmaker_match_worst_latency_seconds", &labels);
        }
    }
    for result in ["applied", "replayed", "unknown_match", "mismatch", "invalid", "failed"] {
        counter!("mm_matchmaker_game_results_total", "result" => result).increment(0);
    }
}

/// Describes every metric of this binary once at start.
pub fn describe() {
    describe_histogram!(
        "mm_matchmaker_match_rating_spread",
        "Highest minus lowest ticket rating of each match formed, by queue and the oldest ticket's wait \
         (wait: 0-5s, 5-15s, 15-30s, 30-60s, 60s+)."
    );
    describe_histogram!(
        "mm_matchmaker_match_team_rating_difference",
        "Difference of the two sides' mean ratings of each match formed, by queue and wait."
    );
    describe_histogram!(
        "mm_matchmaker_match_worst_latency_seconds",
        Unit::Seconds,
        "The worst member's latency to the region of each match placed by latency, by queue and wait."
    );
    describe_histogram!(
        "mm_matchmaker_match_wait_seconds",
        Unit::Seconds,
        "How long the oldest ticket of each match formed had waited, by queue."
    );
    describe_counter!(
        "mm_matchmaker_game_results_total",
        "events.game.ended results by outcome: applied (ratings updated), replayed (the game was rated \
         already), unknown_match, mismatch (teams not the match's), invalid, failed (Redis)."
    );
    describe_counter!(
        "mm_matchmaker_tickets_total",
        "Ticket lifecycle events: created, matched, cancelled, expired, failed, requeued."
    );
    describe_counter!("mm_matchmaker_matches_total", "Matches formed (allocated and committed).");
    describe_histogram!(
        "mm_matchmaker_time_in_queue_seconds",
        Unit::Seconds,
        "Time from joining to being matched, per matched ticket."
    );
    describe_histogram!(
        "mm_matchmaker_allocation_duration_seconds",
        Unit::Seconds,
        "Time an orchestrator.allocate request took, by result."
    );
    describe_counter!(
        "mm_matchmaker_allocations_total",
        "orchestrator.allocate requests by result: ok, timeout, no_responders, unavailable, rejected, error."
    );
    describe_counter!(
        "mm_matchmaker_allocations_wasted_total",
        "Servers allocated but not used (and released), by reason: abandoned (a ticket was \
         cancelled meanwhile), lease_lost (the lease expired first and no other matcher took the group)."
    );
    describe_counter!(
        "mm_matchmaker_releases_total",
        "Releases asked for (orchestrator.release) of matches that were not committed, by reason: \
         abandoned, lease_lost, superseded (its tickets were grouped otherwise), cancelled, \
         expired, failed (a ticket of its group used up its attempts)."
    );
    describe_counter!(
        "mm_matchmaker_release_results_total",
        "How releases ended: released, not_running (nothing to end), no_responders, failed, \
         dropped (too many in flight)."
    );
    describe_counter!(
        "mm_matchmaker_lease_expirations_total",
        "Leases whose matcher did not finish in time (crashed or stalled); their tickets went back."
    );
    describe_gauge!(
        "mm_matchmaker_queue_depth",
        "Tickets in each queue (queue:<name>, a sorted set by join order), by queue (sampled every reap interval)."
    );
    describe_gauge!(
        "mm_matchmaker_leases_in_flight",
        "Batches popped and awaiting allocation, across all matchers (sampled)."
    );
    describe_gauge!("mm_matchmaker_allocations_in_flight", "Allocations this process is waiting for.");
    describe_counter!(
        "mm_matchmaker_redis_errors_total",
        "Redis failures of the matcher's background work, by operation."
    );
    describe_counter!(
        "mm_session_logins_total",
        "Logins by result: registered, ok, wrong_password, accounts_full (a first login refused: \
         session.max_accounts reached)."
    );
    describe_counter!("mm_session_verifications_total", "Token checks by result: ok, unknown.");
    describe_counter!(
        "mm_store_purchases_total",
        "Purchases by result: ok, replayed, insufficient_funds, unknown_offer, key_reused."
    );
    // Counters of rare events exist at 0 from the start (Prometheus's advice for known
    // label values), so dashboards and alerts see them before the first event.
    counter!("mm_matchmaker_lease_expirations_total").increment(0);
    for reason in ["abandoned", "lease_lost"] {
        counter!("mm_matchmaker_allocations_wasted_total", "reason" => reason).increment(0);
    }
    counter!("mm_session_logins_total", "result" => "accounts_full").increment(0);
    for why in crate::release::Why::ALL {
        counter!("mm_matchmaker_releases_total", "reason" => why.label()).increment(0);
    }
    for result in ["released", "not_running", "no_responders", "failed", "dropped"] {
        counter!("mm_matchmaker_release_results_total", "result" => result).increment(0);
    }
    for operation in ["pop", "claim", "commit", "give_back", "reap"] {
        counter!("mm_matchmaker_redis_errors_total", "operation" => operation).increment(0);
    }
    for event in TicketEvent::ALL {
        counter!("mm_matchmaker_tickets_total", "event" => event.label()).increment(0);
    }
    for result in ["ok", "no_responders", "unavailable", "timeout", "rejected", "error"] {
        counter!("mm_matchmaker_allocations_total", "result" => result).increment(0);
        let _ = metrics::histogram!("mm_matchmaker_allocation_duration_seconds", "result" => result);
    }
    metrics::gauge!("mm_matchmaker_allocations_in_flight").set(0.0);
    for result in ["ok", "unknown"] {
        counter!("mm_session_verifications_total", "result" => result).increment(0);
    }
    for result in ["ok", "replayed", "insufficient_funds", "unknown_offer", "key_reused"] {
        counter!("mm_store_purchases_total", "result" => result).increment(0);
    }
    mm_shared::nats::register_client_metrics(&[mm_shared::protocol::subjects::ORCHESTRATOR_ALLOCATE]);
}
