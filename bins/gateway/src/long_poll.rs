//! `GET /matchmaking/status?waitMs=N`: answer when the ticket changes, not when asked.
//!
//! The gateway subscribes to the ticket's `events.ticket.<id>` *before* reading its
//! status, so a change between the read and the wait cannot be missed: either the read
//! sees it, or the event arrives. A searching ticket is then answered when a re-read
//! finds it final, when `waitMs` (capped at `gateway.long_poll_max`) runs out, or at
//! shutdown, whichever is first. No Redis polling: one request per state change.
//!
//! **An event is only a wake-up.** Its payload is never shown to the player: anyone who
//! may publish on `events.ticket.<id>` could otherwise hand a player a fake match with
//! their own server URL. On an event the gateway asks the matchmaker again
//! (`matchmaking.status`, the same request as a plain status read) and answers with
//! *that*. A flood of events costs the matchmaker little: a poll has at most one re-read
//! in flight and starts the next no sooner than [`RECHECK_MIN_GAP`] after the last one;
//! events arriving meanwhile collapse into one pending re-read.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::OptionFuture;
use mm_shared::protocol::{TicketRequest, TicketView, subjects};

use crate::error::ApiError;
use crate::state::AppState;
use mm_shared::telemetry::GaugeGuard;

/// Shortest time between the starts of two re-reads of one poll's ticket.
pub const RECHECK_MIN_GAP: Duration = Duration::from_millis(100);

type Recheck<'a> = Pin<Box<dyn Future<Output = Result<TicketView, ApiError>> + Send + 'a>>;

/// The ticket's view, after waiting up to `wait` for it to stop searching.
pub async fn status(
    state: &AppState,
    request: TicketRequest,
    wait: Duration,
) -> Result<TicketView, ApiError> {
    if wait.is_zero() {
        return state.call(subjects::MATCHMAKING_STATUS, &request).await;
    }
    let mut events = state
        .nats()?
        .subscribe(subjects::ticket_events(&request.ticket_id))
        .await
        .map_err(|err| ApiError::unavailable(format!("cannot watch the ticket: {err}")))?;
    let mut current: TicketView = state.call(subjects::MATCHMAKING_STATUS, &request).await?;
    if current.status.is_final() {
        return Ok(current);
    }
    let started = Instant::now();
    let _waiting = GaugeGuard::new(metrics::gauge!("mm_gateway_long_polls_waiting"));
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    // An event arrived since the last re-read started: read again when allowed.
    let mut pending = false;
    let mut recheck: Option<Recheck<'_>> = None;
    // When the next re-read may start.
    let mut next_allowed = tokio::time::Instant::now();
    let (answer, outcome) = loop {
        if pending && recheck.is_none() && tokio::time::Instant::now() >= next_allowed {
            pending = false;
            next_allowed = tokio::time::Instant::now() + RECHECK_MIN_GAP;
            recheck = Some(Box::pin(state.call(subjects::MATCHMAKING_STATUS, &request)));
        }
        let may_start = pending && recheck.is_none();
        tokio::select! {
            event = events.next() => match event {
                // Whatever it says: it only means "look again".
                Some(_) => pending = true,
                None => break (current, "closed"),
            },
            Some(result) = OptionFuture::from(recheck.as_mut()), if recheck.is_some() => {
                recheck = None;
                match result {
                    Ok(view) if view.status.is_final() => {
                        count_recheck("final");
                        break (view, "changed");
                    }
                    Ok(view) => {
                        count_recheck("searching");
                        current = view;
                    }
                    // The ticket is gone or no longer the player's: say so, as a plain
                    // read would.
                    Err(err) if err.status.is_client_error() => {
                        count_recheck("error");
                        record(started, "changed");
                        return Err(err);
                    }
                    // The matchmaker did not answer: the event may have been real, so
                    // read again (after the gap) rather than sit on a stale answer.
                    Err(err) => {
                        count_recheck("error");
                        tracing::debug!(ticket = %request.ticket_id, "long-poll re-read failed: {}", err.message);
                        pending = true;
                    }
                }
            }
            () = tokio::time::sleep_until(next_allowed), if may_start => {}
            () = &mut deadline => break (current, "timeout"),
            () = state.shutdown().cancelled() => break (current, "shutdown"),
        }
    };
    record(started, outcome);
    Ok(answer)
}

fn count_recheck(result: &'static str) {
    metrics::counter!("mm_gateway_long_poll_rechecks_total", "result" => result).increment(1);
}

/// How a long-poll ends (the `outcome` label).
pub const OUTCOMES: [&str; 4] = ["changed", "timeout", "shutdown", "closed"];

fn record(started: Instant, outcome: &'static str) {
    metrics::histogram!("mm_gateway_long_poll_wait_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}
