//! `matchmaking`: join a queue, long-poll the ticket until it is matched, or give up
//! after `matchmaking.timeout` and cancel it.
//!
//! Each attempt draws its queue and party size from `[harness.population]` and sends the
//! player's latencies (from its home region's model) when the population has regions.
//! A seed-like population (alone, `default`, no regions) sends no body, as the seed did.
//! A party's leader forms the party first (see [`super::party`]); its members run the
//! same scenario from their invite and follow the leader's ticket.
//!
//! Each status request asks the gateway to hold the answer until the ticket changes or
//! `waitMs` passes, so a waiting player costs one parked request, not a stream of polls.
//! A gateway that answers at once is still polled at most every `poll_interval`.
//!
//! A matched player reports its match's quality (and, alone, its rating) to
//! [`crate::quality`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use mm_shared::protocol::{JoinBody, JoinReply, MATCH_SIZE, TicketStatus, TicketView, keys};

use super::party::{self, PartyInvite, PartyTicket};
use crate::http::{Call, query_escape};
use crate::player::{Game, Session};
use crate::quality::Matched;
use crate::scenario::{ErrorKind, Failure, Outcome};

/// How long cancelling a ticket may take when the run is ending.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(1);

/// What this player brought to its ticket, for the quality report.
struct Seat {
    /// Latencies its ticket declared (the leader's, for a party).
    latencies: BTreeMap<String, f64>,
    /// Alone on its ticket: the ticket's rating is the player's own.
    solo: bool,
}

pub async fn run(session: &mut Session) -> Outcome {
    if let Some(invite) = session.party.take() {
        return Box::pin(member(session, invite)).await;
    }
    let context = session.context.clone();
    let population = &context.population;
    let mut rng = fastrand::Rng::new();
    let queue = population.queue(&mut rng).to_owned();
    let size = population.party_size(&mut rng);
    let traits = population.traits(&session.player_id());
    let latencies = population.latencies(&traits, &mut rng);
    session.game = None;
    let joined = Instant::now();
    let invite = if size > 1 {
        match form_party(session, size - 1).await {
            Ok(invite) => invite,
            Err(failure) => return Outcome::Failed(failure),
        }
    } else {
        None
    };
    let body = JoinBody {
        queue: (queue != keys::DEFAULT_QUEUE_NAME).then(|| queue.clone()),
        latencies: latencies.clone(),
        party_id: invite.as_ref().map(|invite| invite.party_id.clone()),
    };
    let ticket = match join(session, &body).await {
        Ok(ticket) => ticket,
        Err(failure) => {
            if let Some(invite) = &invite {
                invite.set_ticket(PartyTicket::Abandoned);
                party::leave(session).await;
            }
            return Outcome::Failed(failure);
        }
    };
    if let Some(invite) = &invite {
        invite.set_ticket(PartyTicket::Queued(ticket.clone()));
    }
    let seat = Seat { latencies, solo: invite.is_none() };
    let outcome = follow(session, &ticket, joined, &seat).await;
    if invite.is_some() {
        party::leave(session).await;
    }
    outcome
}

/// Creates a party and recruits `members` idle players into it; `None` when nobody could
/// be recruited (the player queues alone).
async fn form_party(session: &Session, members: usize) -> Result<Option<Arc<PartyInvite>>, Failure> {
    let party_id = party::create(session).await?;
    let invite = Arc::new(PartyInvite::new(party_id));
    let recruited = session.context.pool.recruit(members, &invite);
    let joined = if recruited > 0 { invite.wait_for(recruited).await } else { 0 };
    if joined == 0 {
        invite.set_ticket(PartyTicket::Abandoned);
        party::leave(session).await;
        return Ok(None);
    }
    Ok(Some(invite))
}

/// A recruit: join the leader's party, wait for its ticket, read it from `GET /party`,
/// and follow it.
async fn member(session: &mut Session, invite: Arc<PartyInvite>) -> Outcome {
    let joined = Instant::now();
    session.game = None;
    if let Err(failure) = party::join(session, &invite.party_id).await {
        invite.answer(false);
        return Outcome::Failed(failure);
    }
    invite.answer(true);
    let wait = session.context.config.matchmaking.timeout;
    let outcome = match invite.ticket(wait).await {
        PartyTicket::Queued(ticket) => match party::get(session).await {
            Ok(view) if view.ticket_id.as_deref() == Some(ticket.as_str()) => {
                let seat = Seat { latencies: BTreeMap::new(), solo: false };
                follow(session, &ticket, joined, &seat).await
            }
            Ok(view) => Outcome::Failed(party::wrong_ticket(&ticket, view.ticket_id.as_deref())),
            Err(failure) => Outcome::Failed(failure),
        },
        PartyTicket::Forming | PartyTicket::Abandoned => Outcome::Failed(Failure::new(
            ErrorKind::TicketEnded,
            format!("party {}: the leader did not queue it", invite.party_id),
        )),
    };
    party::leave(session).await;
    outcome
}

/// `POST /matchmaking/join`: the ticket id. A seed-like join sends no body.
async fn join(session: &Session, body: &JoinBody) -> Result<String, Failure> {
    let token = session.token();
    let mut call = Call::new(Method::POST, "POST /matchmaking/join", "/matchmaking/join").token(&token);
    if *body != JoinBody::default() {
        call = call.json(body);
    }
    let answer = session.context.gateway.send(call).await?;
    if !answer.is_success() {
        return Err(answer.unexpected("join"));
    }
    answer.json::<JoinReply>("join").map(|reply| reply.ticket_id)
}

/// Long-polls `ticket` until it is final (matched: the game goes into the session) or the
/// matchmaking timeout runs out (then it is cancelled).
async fn follow(session: &mut Session, ticket: &str, joined: Instant, seat: &Seat) -> Outcome {
    let config = session.context.config.matchmaking.clone();
    session.ticket = Some(ticket.into());
    let deadline = joined + config.timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return give_up(session, ticket, joined, seat).await;
        }
        let wait = config.poll_wait.min(deadline - now);
        let view = match status(session, ticket, wait).await {
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
            _ => return settle(session, view, joined, seat),
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

/// A ticket that is no longer `searching`: matched (the game goes into the session, the
/// match into the quality report) or ended some other way.
fn settle(session: &mut Session, view: TicketView, joined: Instant, seat: &Seat) -> Outcome {
    session.ticket = None;
    match (view.status, view.server) {
        (TicketStatus::Matched, Some(server)) => {
            let took = joined.elapsed();
            let context = &session.context;
            context.stats.time_to_match(took);
            let true_skill = context.population.traits(&session.player_id()).true_skill;
            if let Some(match_id) = &view.match_id {
                let players =
                    view.teams.as_ref().map_or(MATCH_SIZE, |teams| teams.iter().map(Vec::len).sum::<usize>());
                context.quality.matched(Matched {
                    queue: &view.queue,
                    match_id,
                    players,
                    quality: view.quality.as_ref(),
                    true_skill,
                    latency_ms: view.region.as_ref().and_then(|region| seat.latencies.get(region).copied()),
                    time_to_match: took,
                });
            }
            if seat.solo
                && let Some(rating) = view.rating
            {
                context.quality.rating(session.number, true_skill, rating);
            }
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
async fn give_up(session: &mut Session, ticket: &str, joined: Instant, seat: &Seat) -> Outcome {
    let timeout = session.context.config.matchmaking.timeout;
    match cancel(session, ticket).await {
        Ok(409) => match status(session, ticket, Duration::ZERO).await {
            Ok(view) if view.status != TicketStatus::Searching => settle(session, view, joined, seat),
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
