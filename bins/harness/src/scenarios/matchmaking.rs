//! `matchmaking`: join the queue, long-poll the ticket until it is matched, or give up
//! after `matchmaking.timeout` and cancel it.
//!
//! Each status request asks the gateway to hold the answer until the ticket changes or
//! `waitMs` passes, so a waiting player costs one parked request, not a stream of polls.
//! A gateway that answers at once is still polled at most every `poll_interval`.

use std::time::{Duration, Instant};

use hyper::Method;
use mm_shared::protocol::{JoinReply, TicketStatus, TicketView};

use crate::http::{Call, query_escape};
use crate::player::{Game, Session};
use crate::scenario::{ErrorKind, Failure, Outcome};

/// How long cancelling a ticket may take when the run is ending.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(session: &mut Session) -> Outcome {
    let context = session.context.clone();
    let config = &context.config.matchmaking;
    let token = session.token();
    session.game = None;
    let joined = Instant::now();
    let answer = match context
        .gateway
        .send(Call::new(Method::POST, "POST /matchmaking/join", "/matchmaking/join").token(&token))
        .await
    {
        Ok(answer) if answer.is_success() => answer,
        Ok(answer) => return Outcome::Failed(answer.unexpected("join")),
        Err(failure) => return Outcome::Failed(failure),
    };
    let ticket = match answer.json::<JoinReply>("join") {
        Ok(reply) => reply.ticket_id,
        Err(failure) => return Outcome::Failed(failure),
    };
    session.ticket = Some(ticket.as_str().into());
    let deadline = joined + config.timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return give_up(session, &ticket, joined).await;
        }
        let wait = config.poll_wait.min(deadline - now);
        let view = match status(session, &ticket, wait).await {
            Ok(view) => view,
            Err(failure) => {
                session.ticket = None;
                return Outcome::Failed(failure);
            }
        };
        match view.status {
            TicketStatus::Searching => {
                let since = now.elapsed();
                if since < config.poll_interval {
                    tokio::time::sleep(config.poll_interval - since).await;
                }
            }
            _ => return settle(session, view, joined),
        }
    }
}

/// `GET /matchmaking/status`, held by the gateway for up to `wait`.
async fn status(session: &Session, ticket: &str, wait: Duration) -> Result<TicketView, Failure> {
    let token = session.token();
    let path = format!("/matchmaking/status?ticketId={}&waitMs={}", query_escape(ticket), wait.as_millis());
    let answer = session
        .context
        .gateway
        .send(Call::new(Method::GET, "GET /matchmaking/status", &path).token(&token).extra_wait(wait))
        .await?;
    if !answer.is_success() {
        return Err(answer.unexpected("status"));
    }
    answer.json("status")
}

/// A ticket that is no longer `searching`: matched (the game goes into the session) or
/// ended some other way.
fn settle(session: &mut Session, view: TicketView, joined: Instant) -> Outcome {
    session.ticket = None;
    match (view.status, view.server) {
        (TicketStatus::Matched, Some(server)) => {
            session.context.stats.time_to_match(joined.elapsed());
            session.game =
                Some(Box::new(Game { url: server.url.into(), game_id: server.game_id.into(), joined }));
            Outcome::Succeeded
        }
        (TicketStatus::Matched, None) => {
            Outcome::Failed(Failure::new(ErrorKind::Decode, "status: matched without a server"))
        }
        (status, _) => Outcome::Failed(Failure::new(
            ErrorKind::TicketEnded,
            format!("ticket {}: {}", status.as_str(), view.reason.unwrap_or_default()),
        )),
    }
}

/// The timeout ran out: cancel the ticket. If it was matched in the meantime (409), the
/// player takes the match after all.
async fn give_up(session: &mut Session, ticket: &str, joined: Instant) -> Outcome {
    let timeout = session.context.config.matchmaking.timeout;
    match cancel(session, ticket).await {
        Ok(409) => match status(session, ticket, Duration::ZERO).await {
            Ok(view) if view.status != TicketStatus::Searching => settle(session, view, joined),
            Ok(_) => {
                Outcome::Failed(Failure::new(ErrorKind::Conflict, "cancel refused while still searching"))
            }
            Err(failure) => Outcome::Failed(failure),
        },
        Ok(_) => {
            session.ticket = None;
            Outcome::Failed(Failure::new(
                ErrorKind::MatchTimeout,
                format!("not matched within {}", mm_shared::duration::format(timeout)),
            ))
        }
        Err(failure) => {
            session.ticket = None;
            Outcome::Failed(failure)
        }
    }
}

/// `DELETE /matchmaking/cancel`: the status code (200 cancelled, 409 already matched).
async fn cancel(session: &Session, ticket: &str) -> Result<u16, Failure> {
    let token = session.token();
    let path = format!("/matchmaking/cancel?ticketId={}", query_escape(ticket));
    let answer = session
        .context
        .gateway
        .send(Call::new(Method::DELETE, "DELETE /matchmaking/cancel", &path).token(&token))
        .await?;
    match answer.status {
        200..=299 | 409 => Ok(answer.status),
        _ => Err(answer.unexpected("cancel")),
    }
}

/// The run is ending while the player waits in the queue: take the ticket out, so the
/// matchmaker does not build a match around a player who is gone. Best effort.
pub async fn abandon_ticket(session: &mut Session) {
    if let Some(ticket) = session.ticket.take() {
        let _ = tokio::time::timeout(ABANDON_TIMEOUT, cancel(session, &ticket)).await;
    }
}
