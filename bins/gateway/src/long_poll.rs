//! `GET /matchmaking/status?waitMs=N`: answer when the ticket changes, not when asked.
//!
//! The gateway subscribes to the ticket's `events.ticket.<id>` *before* reading its
//! status, so a change between the read and the wait cannot be missed: either the read
//! sees it, or the event arrives. A searching ticket is then answered on the first event
//! that makes it final, when `waitMs` (capped at `gateway.long_poll_max`) runs out, or at
//! shutdown, whichever is first. No Redis polling: one request per state change.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mm_shared::protocol::{TicketRequest, TicketView, subjects};

use crate::error::ApiError;
use crate::state::AppState;
use mm_shared::telemetry::GaugeGuard;

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
    let current: TicketView = state.call(subjects::MATCHMAKING_STATUS, &request).await?;
    if current.status.is_final() {
        return Ok(current);
    }
    let started = Instant::now();
    let _waiting = GaugeGuard::new(metrics::gauge!("mm_gateway_long_polls_waiting"));
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let (answer, outcome) = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => match serde_json::from_slice::<TicketView>(&event.payload) {
                    Ok(update) if update.ticket_id == current.ticket_id && update.status.is_final() => {
                        break (update, "changed");
                    }
                    _ => continue,
                },
                None => break (current, "closed"),
            },
            () = &mut deadline => break (current, "timeout"),
            () = state.shutdown().cancelled() => break (current, "shutdown"),
        }
    };
    metrics::histogram!("mm_gateway_long_poll_wait_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    Ok(answer)
}
