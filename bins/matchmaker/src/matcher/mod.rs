//! The matcher: forms matches from the queue and gets each a game server.
//!
//! One matcher serves one queue (`queue:<name>`) with that queue's match function; the
//! process runs one per configured queue.
//!
//! ```text
//! pop (Lua: a match's worth of players queued → the live tickets of a window of the oldest
//!      into a lease with a deadline; Redis's clock comes back with them)
//!  → match function proposes groups (two sides each); the rest go back to the queue head
//!  → per group: claim (Lua: the group's match id, the same one when the same group is
//!                allocated again; ids its tickets carried before are orphaned → release)
//!  → orchestrator.allocate {matchId} (NATS request with a deadline)
//!     ok        → commit (Lua: all ten still searching? → matched + match record)
//!                 → events.ticket.<id> ×10, events.match.created
//!                 abandoned (a ticket cancelled) or lease lost → orchestrator.release
//!     failure   → give back to the queue head in join order, the match id kept for the
//!                 retry; attempt counted, `failed` after matcher.max_attempts (→ release);
//!                 this process backs off
//!     no orchestrator → give back without counting; back off until one answers
//! reaper (every reap_interval): leases past their deadline → back to the queue;
//!          overdue tickets at the queue head → expired (→ release); gauges
//! ```
//!
//! Any number of matchers may run, in one process and across many: a pop moves tickets
//! out of the queue atomically, so no two matchers hold the same ticket; a matcher that
//! dies holding a lease only delays its tickets until the lease expires.
//!
//! **Nothing allocated for nobody keeps running.** Every allocation asks for a server
//! under the match id its group claimed. A failed or timed-out allocation keeps the id
//! on the tickets, so when the same ten are grouped again the retry asks under the same
//! id and the orchestrator answers with the server it may have started meanwhile. Every
//! other way an id can end without a match releases its server
//! ([`crate::release`], in the background, never holding up this loop): the commit found
//! a ticket cancelled, the lease was lost (unless another lease took the same group, and
//! with it the server), the group was formed otherwise, or a ticket carrying it was
//! cancelled, expired or failed. Only a commit whose outcome Redis never told (it is
//! retried first) releases nothing: the commit may have happened, and releasing a
//! committed match's server would be far worse than a server that ends at its join
//! timeout; if it did not happen, the lease's expiry returns the group with its id.

mod function;
mod reaper;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::Client;
use mm_shared::nats::{RequestError, request_json};
use mm_shared::protocol::{
    AllocateReply, AllocateRequest, MatchCreated, MatchQuality, MatchRecord, RegionalAllocateRequest,
    ServerAssignment, Ticket, now_ms, subjects,
};
use mm_shared::telemetry::GaugeGuard;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use function::{Fifo, Group, MatchFunction, Proposal, Rules, Widening, check_proposal};
pub use reaper::Reaped;

use crate::config::MatcherConfig;
use crate::events::Events;
use crate::metrics::{TicketEvent, tickets};
use crate::release::{Releaser, Why};
use crate::retry::Backoff;
use crate::tickets::{Claim, Committed, GiveBack, StoreError, TicketStore};

/// Pops one round may make when dead entries (expired, gone) fill a window, before the
/// loop waits: each pop looks at one window, so a round stays bounded too.
const POPS_PER_ROUND: usize = 16;

/// Tries of a claim, commit or give-back when Redis fails (each is safe to repeat).
const REDIS_ATTEMPTS: usize = 3;

/// Tickets popped into one lease, grouped by the match function.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: String,
    pub groups: Vec<Formed>,
}

/// One group a match function formed, ready to allocate.
#[derive(Debug, Clone)]
pub struct Formed {
    /// Its tickets, the first side's first.
    pub tickets: Vec<Ticket>,
    /// The players of each side (a party's members together).
    pub sides: [Vec<String>; 2],
    pub region: Option<String>,
    pub quality: MatchQuality,
}

impl Formed {
    /// Every player, side by side: the order the game server splits in halves.
    pub fn player_ids(&self) -> Vec<String> {
        self.sides.concat()
    }

    /// A group of solo tickets (tests): first half against second half.
    pub fn halves(tickets: Vec<Ticket>) -> Self {
        let players: Vec<String> = tickets.iter().flat_map(Ticket::player_ids).collect();
        let mut first = players;
        let second = first.split_off(first.len() / 2);
        Self { tickets, sides: [first, second], region: None, quality: MatchQuality::default() }
    }
}

/// How good a group is: rating spread, the sides' mean rating difference, the worst
/// member's latency to its region, and the oldest ticket's wait (Redis clock).
pub fn quality(
    sides: &[Vec<&Ticket>; 2],
    region: Option<&str>,
    now_ms: u64,
    default_rating: f64,
) -> MatchQuality {
    let rating = |ticket: &Ticket| ticket.rating.filter(|r| r.is_finite()).unwrap_or(default_rating);
    let all = || sides.iter().flatten();
    let high = all().map(|t| rating(t)).fold(f64::MIN, f64::max);
    let low = all().map(|t| rating(t)).fold(f64::MAX, f64::min);
    let mean = |side: &[&Ticket]| {
        let players: usize = side.iter().map(|t| t.size()).sum();
        side.iter().map(|t| t.size() as f64 * rating(t)).sum::<f64>() / players.max(1) as f64
    };
    MatchQuality {
        rating_spread: if high >= low { high - low } else { 0.0 },
        team_rating_diff: (mean(&sides[0]) - mean(&sides[1])).abs(),
        worst_latency_ms: region
            .map(|region| all().filter_map(|t| t.latencies.get(region).copied()).fold(0.0, f64::max)),
        wait_ms: all().map(|t| now_ms.saturating_sub(t.created_at)).max().unwrap_or(0),
    }
}

/// How one group ended.
#[derive(Debug, Clone)]
pub enum Settled {
    /// A match: its record, as written.
    Matched(Box<MatchRecord>),
    /// The allocation failed (the reason is logged); the tickets went back with their
    /// match id, or `failed` of them ran out of attempts. `counted` when the failure used
    /// up an attempt.
    Requeued { counted: bool, failed: usize },
    /// A ticket was cancelled before the commit; the rest went back. A server allocated
    /// for them is released.
    Abandoned,
    /// The lease expired before the commit; the reaper had returned the tickets. The
    /// server is released unless another lease took the same group (and the server).
    LeaseLost,
    /// Redis failed mid-way, even after retries (the error is logged); the lease's
    /// expiry will return the tickets.
    StoreFailed,
}

/// One matcher: its pipeline state and what it talks to.
pub struct Matcher {
    tickets: TicketStore,
    nats: Client,
    events: Events,
    function: Arc<dyn MatchFunction>,
    config: MatcherConfig,
    /// Pauses after failed allocations (and between Redis retries).
    backoff: Backoff,
    /// Failed allocations in a row; sets the backoff before the next pop.
    failures: AtomicU32,
    /// Batches this matcher may have in flight at once.
    allocations: Arc<Semaphore>,
    /// Notified when a ticket joins in this process.
    wake: Arc<Notify>,
    /// Ends the servers of matches that were not committed.
    releaser: Releaser,
    /// Match records carry their teams (a team queue).
    record_teams: bool,
    /// The rating of a ticket without one (for quality figures).
    default_rating: f64,
    /// The queue's name, for logs and metric labels.
    queue: String,
}

impl Matcher {
    pub fn new(
        tickets: TicketStore,
        nats: Client,
        function: Arc<dyn MatchFunction>,
        config: MatcherConfig,
        wake: Arc<Notify>,
        releaser: Releaser,
    ) -> Self {
        let allocations = Arc::new(Semaphore::new(config.max_allocations.max(1)));
        Self {
            events: Events::new(nats.clone()),
            queue: tickets.queue_name().to_owned(),
            record_teams: false,
            default_rating: 0.0,
            tickets,
            nats,
            function,
            backoff: config.backoff(),
            config,
            failures: AtomicU32::new(0),
            allocations,
            wake,
            releaser,
        }
    }

    /// Match records and matched tickets carry their teams (a team queue's matcher).
    pub fn with_teams(mut self, record_teams: bool) -> Self {
        self.record_teams = record_teams;
        self
    }

    /// The rating quality figures give a ticket without one (`ratings.initial`).
    pub fn with_default_rating(mut self, rating: f64) -> Self {
        self.default_rating = rating;
        self
    }

    /// Runs the popping loops and the reaper until `shutdown`, then waits for the
    /// allocations in flight (each bounded by `matcher.allocate_timeout`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(
            queue = %self.queue,
            function = self.function.name(),
            workers = self.config.workers,
            lease = %mm_shared::duration::format(self.config.lease),
            "matcher running"
        );
        let mut loops = JoinSet::new();
        for _ in 0..self.config.workers {
            loops.spawn(self.clone().pop_loop(shutdown.clone()));
        }
        loops.spawn(self.clone().reap_loop(shutdown.clone()));
        while loops.join_next().await.is_some() {}
    }

    async fn pop_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut in_flight = JoinSet::new();
        // Redis failures in a row: they back the loop off (from one idle poll on) and
        // thin out its logs.
        let store_backoff = Backoff::new(self.config.idle_poll, self.config.retry_backoff_max);
        let mut store_errors = 0u32;
        loop {
            let delay = self.backoff.delay(self.failures.load(Ordering::Relaxed));
            if !delay.is_zero() && sleep_or_shutdown(delay, &shutdown).await {
                break;
            }
            let permit = tokio::select! {
                permit = self.allocations.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            // Registered before the pop, so a join between the pop and the wait wakes us.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let formed = self.form_batch().await;
            if formed.is_ok() {
                store_errors = 0;
            }
            match formed {
                Ok(Some(batch)) if batch.groups.is_empty() => {
                    // Tickets waiting that cannot play together yet (their bounds widen
                    // with time): look again after a poll, not at every join, so a queue
                    // of tickets that do not fit costs a pop per poll, not one per join.
                    drop(permit);
                    if sleep_or_shutdown(self.config.idle_poll, &shutdown).await {
                        break;
                    }
                }
                Ok(Some(batch)) => {
                    let matcher = self.clone();
                    in_flight.spawn(async move {
                        let _permit = permit;
                        matcher.settle_batch(batch).await;
                    });
                    while in_flight.try_join_next().is_some() {}
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep(self.config.idle_poll) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                Err(err) => {
                    drop(permit);
                    store_errors = store_errors.saturating_add(1);
                    if store_errors.is_power_of_two() {
                        tracing::warn!(failures = store_errors, "cannot pop from the queue: {err}");
                    }
                    metrics::counter!("mm_matchmaker_redis_errors_total", "operation" => "pop").increment(1);
                    if sleep_or_shutdown(store_backoff.delay(store_errors), &shutdown).await {
                        break;
                    }
                }
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    async fn reap_loop(self: Arc<Self>, shutdown: CancellationToken) {
        // A fixed interval, not a retry: a failed pass is simply the next pass's work.
        let mut tick = tokio::time::interval(self.config.reap_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut store_errors = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            match self.reap().await {
                Ok(_) => store_errors = 0,
                Err(err) => {
                    store_errors = store_errors.saturating_add(1);
                    if store_errors.is_power_of_two() {
                        tracing::warn!(failures = store_errors, "reaper: {err}");
                    }
                    metrics::counter!("mm_matchmaker_redis_errors_total", "operation" => "reap").increment(1);
                }
            }
        }
    }

    /// Pops a window of the oldest tickets into a new lease and groups them; tickets no
    /// group took go straight back (a batch without groups: nothing fits yet). `None` when
    /// fewer than a match's worth of players are queued. When a window held only dead
    /// entries (which the pop removed), pops again, up to [`POPS_PER_ROUND`] times.
    pub async fn form_batch(&self) -> Result<Option<Batch>, StoreError> {
        let size = self.function.match_size();
        // A pop looks at nothing until enough tickets are queued to hold a match, with
        // parties of up to a side each.
        let min_tickets = 2.min(size).max(1);
        for _ in 0..POPS_PER_ROUND {
            let batch_id = uuid::Uuid::new_v4().to_string();
            let popped = self
                .tickets
                .pop_players(&batch_id, size, min_tickets, self.function.window(), self.config.lease)
                .await?;
            if !popped.expired.is_empty() {
                tickets(TicketEvent::Expired, popped.expired.len());
                self.releaser.release_all(&popped.orphaned, Why::Expired);
                self.events.tickets_changed(&popped.expired).await;
            }
            if !popped.tickets.is_empty() {
                return self.group(batch_id, popped.tickets, popped.now_ms).await.map(Some);
            }
            if popped.removed == 0 {
                break;
            }
        }
        Ok(None)
    }

    /// Asks the match function for groups among the popped tickets; gives back the rest.
    async fn group(&self, batch_id: String, popped: Vec<Ticket>, now_ms: u64) -> Result<Batch, StoreError> {
        let size = self.function.match_size();
        let proposal = check_proposal(&popped, size, self.function.propose(&popped, now_ms));
        if proposal.rejected_groups > 0 {
            tracing::warn!(
                queue = %self.queue,
                function = self.function.name(),
                rejected = proposal.rejected_groups,
                "match function proposed invalid groups; their tickets go back to the queue"
            );
        }
        if !proposal.leftover.is_empty() {
            let leftover: Vec<String> =
                proposal.leftover.iter().map(|&index| popped[index].id.clone()).collect();
            self.tickets.give_back(&batch_id, &leftover, GiveBack::Release).await?;
        }
        let groups = proposal
            .groups
            .iter()
            .map(|group| {
                let sides = [
                    group.sides[0].iter().map(|&i| &popped[i]).collect::<Vec<_>>(),
                    group.sides[1].iter().map(|&i| &popped[i]).collect::<Vec<_>>(),
                ];
                let quality = quality(&sides, group.region.as_deref(), now_ms, self.default_rating);
                Formed {
                    sides: [
                        sides[0].iter().flat_map(|t| t.player_ids()).collect(),
                        sides[1].iter().flat_map(|t| t.player_ids()).collect(),
                    ],
                    tickets: group.members().map(|i| popped[i].clone()).collect(),
                    region: group.region.clone(),
                    quality,
                }
            })
            .collect();
        Ok(Batch { id: batch_id, groups })
    }

    /// Allocates and settles every group of the batch concurrently (one lease covers all).
    pub async fn settle_batch(&self, batch: Batch) -> Vec<Settled> {
        let Batch { id, groups } = batch;
        futures_util::future::join_all(groups.into_iter().map(|group| self.settle(&id, group))).await
    }

    /// Claims the group's match id, gets a server for it and makes it a match, or gives
    /// its tickets back (and releases what was allocated for nobody).
    pub async fn settle(&self, batch_id: &str, formed: Formed) -> Settled {
        let ids: Vec<String> = formed.tickets.iter().map(|ticket| ticket.id.clone()).collect();
        let fresh = uuid::Uuid::new_v4().to_string();
        let claim = self.on_redis("claim", || self.tickets.claim(batch_id, &fresh, &ids)).await;
        let match_id = match claim {
            Ok(Claim::Claimed { match_id, reused, orphaned }) => {
                self.releaser.release_all(&orphaned, Why::Superseded);
                if reused {
                    tracing::debug!(%match_id, "the same group again: allocating under its match id");
                }
                match_id
            }
            Ok(Claim::Gone { orphaned }) => {
                self.releaser.release_all(&orphaned, Why::Cancelled);
                return self.give_back_gone(batch_id, &ids).await;
            }
            Ok(Claim::Lost) => {
                tracing::warn!(batch = %batch_id, "lease expired before its group was claimed");
                return Settled::LeaseLost;
            }
            Err(err) => {
                tracing::warn!("cannot claim a match id; the lease will return the tickets: {err}");
                metrics::counter!("mm_matchmaker_redis_errors_total", "operation" => "claim").increment(1);
                return Settled::StoreFailed;
            }
        };
        let request = RegionalAllocateRequest {
            request: AllocateRequest { match_id: match_id.clone(), player_ids: formed.player_ids() },
            region: formed.region.clone(),
        };
        let in_flight = GaugeGuard::new(metrics::gauge!("mm_matchmaker_allocations_in_flight"));
        let started = Instant::now();
        let reply: Result<AllocateReply, RequestError> =
            request_json(&self.nats, subjects::ORCHESTRATOR_ALLOCATE, &request, self.config.allocate_timeout)
                .await;
        drop(in_flight);
        let result = match &reply {
            Ok(_) => "ok",
            Err(RequestError::NoResponders { .. }) => "no_responders",
            Err(RequestError::Service { code: 503, .. }) => "unavailable",
            Err(RequestError::Timeout { .. }) => "timeout",
            Err(RequestError::Service { code: 400..=499, .. }) => "rejected",
            Err(_) => "error",
        };
        metrics::counter!("mm_matchmaker_allocations_total", "result" => result).increment(1);
        metrics::histogram!("mm_matchmaker_allocation_duration_seconds", "result" => result)
            .record(started.elapsed().as_secs_f64());
        match reply {
            Ok(server) => self.commit(batch_id, match_id, formed, server).await,
            Err(err) => {
                // An absent or overloaded orchestrator is nobody's fault: wait for it
                // without using up the tickets' attempts.
                let counted = !matches!(result, "no_responders" | "unavailable");
                self.give_back(batch_id, &match_id, &formed.tickets, err.to_string(), counted).await
            }
        }
    }

    async fn commit(
        &self,
        batch_id: &str,
        match_id: String,
        formed: Formed,
        server: AllocateReply,
    ) -> Settled {
        let record = MatchRecord {
            id: match_id,
            ticket_ids: formed.tickets.iter().map(|ticket| ticket.id.clone()).collect(),
            player_ids: formed.player_ids(),
            server: ServerAssignment { url: server.url, game_id: server.game_id },
            created_at: now_ms(),
            queue: self.queue.clone(),
            teams: self.record_teams.then(|| formed.sides.to_vec()),
            region: formed.region.clone(),
            quality: Some(formed.quality.clone()),
        };
        match self.on_redis("commit", || self.tickets.commit(batch_id, &record)).await {
            Ok(Committed::Matched(matched)) => {
                self.failures.store(0, Ordering::Relaxed);
                let now = now_ms();
                let queue = self.queue.clone();
                for ticket in &matched {
                    metrics::histogram!("mm_matchmaker_time_in_queue_seconds", "queue" => queue.clone())
                        .record(now.saturating_sub(ticket.created_at) as f64 / 1000.0);
                }
                tickets(TicketEvent::Matched, matched.len());
                metrics::counter!("mm_matchmaker_matches_total", "queue" => queue.clone()).increment(1);
                crate::metrics::match_quality(&queue, &formed.quality);
                self.events.tickets_changed(&matched).await;
                self.events
                    .match_created(&MatchCreated {
                        match_id: record.id.clone(),
                        game_id: record.server.game_id.clone(),
                        server_url: record.server.url.clone(),
                        player_ids: record.player_ids.clone(),
                        ticket_ids: record.ticket_ids.clone(),
                        created_at: record.created_at,
                        queue: record.queue.clone(),
                        teams: record.teams.clone(),
                        region: record.region.clone(),
                    })
                    .await;
                tracing::debug!(match_id = %record.id, game_id = %record.server.game_id, "match formed");
                Settled::Matched(Box::new(record))
            }
            Ok(Committed::Abandoned(returned)) => {
                tracing::info!(
                    match_id = %record.id,
                    game_id = %record.server.game_id,
                    returned = returned.len(),
                    "a ticket was cancelled during allocation; the others went back to the queue, \
                     the server is released"
                );
                self.releaser.release(&record.id, Why::Abandoned);
                tickets(TicketEvent::Requeued, returned.len());
                metrics::counter!("mm_matchmaker_allocations_wasted_total", "reason" => "abandoned")
                    .increment(1);
                self.wake.notify_waiters();
                Settled::Abandoned
            }
            Ok(Committed::Lost { release }) => {
                if release {
                    tracing::warn!(
                        match_id = %record.id,
                        "lease expired before the match was committed; the server is released"
                    );
                    self.releaser.release(&record.id, Why::LeaseLost);
                    metrics::counter!("mm_matchmaker_allocations_wasted_total", "reason" => "lease_lost")
                        .increment(1);
                } else {
                    tracing::warn!(
                        match_id = %record.id,
                        "lease expired before the match was committed; another matcher has the same \
                         group, and the server, now"
                    );
                }
                Settled::LeaseLost
            }
            Err(err) => {
                // The commit may have happened with its reply lost: releasing now could end a
                // committed match's server. If it did not, the lease's expiry returns the
                // group with its match id (retried under it, or released when regrouped).
                tracing::warn!(
                    match_id = %record.id,
                    "cannot commit the match; the lease will return its tickets: {err}"
                );
                metrics::counter!("mm_matchmaker_redis_errors_total", "operation" => "commit").increment(1);
                Settled::StoreFailed
            }
        }
    }

    async fn give_back(
        &self,
        batch_id: &str,
        match_id: &str,
        group: &[Ticket],
        reason: String,
        counted: bool,
    ) -> Settled {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // During an outage every pop fails the same way: log the 1st, 2nd, 4th, 8th...
        if failures.is_power_of_two() {
            tracing::warn!(failures, counted, %match_id, "allocation failed; tickets go back to the queue: {reason}");
        } else {
            tracing::debug!(failures, counted, %match_id, "allocation failed; tickets go back to the queue: {reason}");
        }
        let ids: Vec<String> = group.iter().map(|ticket| ticket.id.clone()).collect();
        let full_reason =
            format!("no game server after {} attempts; last error: {reason}", self.config.max_attempts);
        let how = if counted {
            GiveBack::Failed { reason: &full_reason, max_attempts: self.config.max_attempts }
        } else {
            GiveBack::Release
        };
        match self.on_redis("give back", || self.tickets.give_back(batch_id, &ids, how)).await {
            Ok(returned) => {
                self.releaser.release_all(&returned.orphaned, Why::Failed);
                tickets(TicketEvent::Requeued, returned.queued.len());
                tickets(TicketEvent::Failed, returned.failed.len());
                self.events.tickets_changed(&returned.failed).await;
                Settled::Requeued { counted, failed: returned.failed.len() }
            }
            Err(err) => {
                tracing::warn!("cannot give tickets back; the lease will return them: {err}");
                metrics::counter!("mm_matchmaker_redis_errors_total", "operation" => "give_back")
                    .increment(1);
                Settled::StoreFailed
            }
        }
    }

    /// A group with a ticket cancelled before its claim: the others go back, no
    /// allocation is made.
    async fn give_back_gone(&self, batch_id: &str, ids: &[String]) -> Settled {
        match self.on_redis("give back", || self.tickets.give_back(batch_id, ids, GiveBack::Release)).await {
            Ok(returned) => {
                tickets(TicketEvent::Requeued, returned.queued.len());
                self.wake.notify_waiters();
                Settled::Abandoned
            }
            Err(err) => {
                tracing::warn!("cannot give tickets back; the lease will return them: {err}");
                metrics::counter!("mm_matchmaker_redis_errors_total", "operation" => "give_back")
                    .increment(1);
                Settled::StoreFailed
            }
        }
    }

    /// Runs a ticket-store call that is safe to repeat, trying again (with the backoff)
    /// while Redis fails, [`REDIS_ATTEMPTS`] times at most.
    async fn on_redis<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.backoff
            .retry(
                REDIS_ATTEMPTS,
                call,
                |err| matches!(err, StoreError::Redis(_)),
                |err, pause| tracing::debug!("{what} failed, trying again in {pause:?}: {err}"),
            )
            .await
    }

    /// The lease-expiry reason recorded on tickets that fail through it.
    fn lease_reason(&self) -> String {
        format!(
            "no game server after {} attempts; last: its matcher did not finish within the lease ({})",
            self.config.max_attempts,
            mm_shared::duration::format(self.config.lease)
        )
    }
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.cancelled() => true,
    }
}
