//! The `matchmaking` micro service: `matchmaking.join`, `.status`, `.cancel` and
//! `.queues`.
//!
//! A join names its queue (none: `default`, the seed's FIFO), may give latencies per
//! region, and may queue the caller's whole party (only its leader may). The ticket
//! carries the players' rating at join (a party's: the members' mean) for the match
//! functions.
//!
//! Each request is one ticket script in Redis; every change it makes is published on
//! `events.ticket.<id>`. A join also wakes this process's idle matcher workers, so a full
//! queue is popped at once instead of at the next poll. A cancel or expiry that orphans
//! the match id of a group allocated before (see [`crate::tickets`]) releases its server
//! in the background.

use std::sync::Arc;

use mm_shared::nats::ServiceError;
use mm_shared::protocol::{
    CancelReply, JoinReply, JoinRequest, QueueInfo, TicketRequest, TicketStatus, TicketView, keys, limits,
    subjects,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::Events;
use crate::metrics::{TicketEvent, tickets};
use crate::micro::{MicroService, unavailable};
use crate::queues::Queues;
use crate::ratings::Ratings;
use crate::release::{Releaser, Why};
use crate::tickets::{Cancelled, Joined, NewTicket, Status, StoreError, TicketStore};

/// Tries of a party's join whose party changed under it.
const PARTY_ATTEMPTS: usize = 3;

/// The service's handlers.
#[derive(Clone)]
pub struct Matchmaking {
    tickets: TicketStore,
    events: Events,
    /// Notified on every new ticket; idle matcher workers wait on it.
    wake: Arc<Notify>,
    /// Ends the servers of match ids a cancel or expiry orphaned.
    releaser: Releaser,
    queues: Arc<Queues>,
    ratings: Ratings,
}

impl Matchmaking {
    /// With the default configuration's queues and ratings.
    pub fn new(tickets: TicketStore, events: Events, wake: Arc<Notify>, releaser: Releaser) -> Self {
        let config = Config::default();
        let queues =
            Queues::from_config(&config).unwrap_or_else(|err| unreachable!("the defaults are valid: {err}"));
        let ratings = Ratings::new(tickets.redis(), config.ratings.clone(), config.session.account_ttl);
        Self::with(tickets, events, wake, releaser, Arc::new(queues), ratings)
    }

    pub fn with(
        tickets: TicketStore,
        events: Events,
        wake: Arc<Notify>,
        releaser: Releaser,
        queues: Arc<Queues>,
        ratings: Ratings,
    ) -> Self {
        Self { tickets, events, wake, releaser, queues, ratings }
    }

    /// `matchmaking.queues`: what `GET /matchmaking/queues` lists.
    pub fn queues(&self) -> Vec<QueueInfo> {
        self.queues.infos()
    }

    fn release(&self, orphaned: Option<String>, why: Why) {
        if let Some(match_id) = orphaned {
            self.releaser.release(&match_id, why);
        }
    }

    pub async fn join(&self, request: JoinRequest) -> Result<JoinReply, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        limits::check_latencies(&request.latencies).map_err(ServiceError::bad_request)?;
        let name = request.queue.as_deref().unwrap_or(keys::DEFAULT_QUEUE_NAME);
        limits::check_token("queue", name).map_err(ServiceError::bad_request)?;
        let Some(queue) = self.queues.get(name) else {
            return Err(ServiceError::bad_request(format!(
                "unknown queue `{name}` (queues: {})",
                self.queues.names().join(", ")
            )));
        };
        if queue.needs_latencies && request.latencies.is_empty() {
            return Err(ServiceError::bad_request(format!(
                "queue `{name}` places matches by region: give your `latencies`"
            )));
        }
        let store = self.tickets.for_queue(name);
        for _ in 0..PARTY_ATTEMPTS {
            let mut new = NewTicket {
                player_id: request.player_id.clone(),
                latencies: request.latencies.clone(),
                ..NewTicket::default()
            };
            if let Some(party_id) = &request.party_id {
                limits::check_token("partyId", party_id).map_err(ServiceError::bad_request)?;
                let Some((party, raw)) = crate::party::read(&self.tickets.redis(), party_id).await? else {
                    return Err(ServiceError::not_found(format!("no party {party_id}")));
                };
                if party.leader != request.player_id {
                    let why = if party.members.contains(&request.player_id) {
                        format!("only the leader of party {party_id} ({}) queues it", party.leader)
                    } else {
                        format!("you are not in party {party_id}")
                    };
                    return Err(ServiceError::new(403, why));
                }
                if party.members.len() > queue.max_party {
                    return Err(ServiceError::bad_request(format!(
                        "a party of {} does not fit a side of {} in queue `{name}`",
                        party.members.len(),
                        queue.max_party
                    )));
                }
                if party.members.len() > 1 {
                    new.players = party.members.clone();
                }
                new.party = Some((party_id.clone(), raw));
            }
            // The members' mean rating is read by the join script, in the same step.
            new.initial_rating = Some(self.ratings.initial().rating);
            match store.join_ticket(new).await.map_err(store_error)? {
                Joined::Existing(ticket) => {
                    return Ok(JoinReply { ticket_id: ticket.id, status: ticket.status });
                }
                Joined::Created { ticket, expired, orphaned } => {
                    tickets(TicketEvent::Created, 1);
                    self.wake.notify_waiters();
                    self.releaser.release_all(&orphaned, Why::Expired);
                    tickets(TicketEvent::Expired, expired.len());
                    self.events.tickets_changed(&expired).await;
                    self.events.ticket_changed(&ticket).await;
                    return Ok(JoinReply { ticket_id: ticket.id, status: ticket.status });
                }
                Joined::Busy(member) => {
                    return Err(ServiceError::conflict(format!(
                        "party member {member} is already searching for a match"
                    )));
                }
                Joined::PartyChanged => continue,
            }
        }
        Err(ServiceError::unavailable("the party kept changing while it was queued; try again"))
    }

    pub async fn status(&self, request: TicketRequest) -> Result<TicketView, ServiceError> {
        check_ticket_request(&request)?;
        match self.tickets.status(&request.player_id, &request.ticket_id).await.map_err(store_error)? {
            Status::NotFound => Err(no_such_ticket(&request.ticket_id)),
            Status::Found { ticket, expired_now, orphaned } => {
                self.release(orphaned, Why::Expired);
                if expired_now {
                    tickets(TicketEvent::Expired, 1);
                    self.events.ticket_changed(&ticket).await;
                }
                Ok(ticket.view())
            }
        }
    }

    pub async fn cancel(&self, request: TicketRequest) -> Result<CancelReply, ServiceError> {
        check_ticket_request(&request)?;
        match self.tickets.cancel(&request.player_id, &request.ticket_id).await.map_err(store_error)? {
            Cancelled::NotFound => Err(no_such_ticket(&request.ticket_id)),
            Cancelled::Cancelled { ticket, orphaned } => {
                tickets(TicketEvent::Cancelled, 1);
                self.release(orphaned, Why::Cancelled);
                self.events.ticket_changed(&ticket).await;
                Ok(CancelReply { status: TicketStatus::Cancelled })
            }
            Cancelled::Unchanged(_) => Ok(CancelReply { status: TicketStatus::Cancelled }),
            Cancelled::TooLate(ticket) => Err(ServiceError::conflict(format!(
                "ticket {} is already {} and can no longer be cancelled",
                ticket.id,
                ticket.status.as_str()
            ))),
        }
    }
}

fn check_ticket_request(request: &TicketRequest) -> Result<(), ServiceError> {
    limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
    limits::check_ticket_id(&request.ticket_id).map_err(ServiceError::bad_request)
}

fn no_such_ticket(ticket_id: &str) -> ServiceError {
    // Another player's ticket reads the same as an unknown one: ids are not disclosed.
    ServiceError::not_found(format!("no ticket {ticket_id}"))
}

/// Redis trouble is the service's problem (503, retry later), never the caller's.
pub(crate) fn store_error(err: StoreError) -> ServiceError {
    match err {
        StoreError::Redis(err) => unavailable(err),
        StoreError::Corrupt(what) => ServiceError::internal(what),
    }
}

/// Starts the `matchmaking` micro service.
pub async fn serve(
    nats: &async_nats::Client,
    matchmaking: Matchmaking,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<MicroService> {
    let mut service = MicroService::start(
        nats,
        subjects::MATCHMAKING_SERVICE,
        "Tickets and the queue: join, status, cancel",
        concurrency,
        shutdown,
    )
    .await?;
    service
        .route("join", subjects::MATCHMAKING_JOIN, matchmaking.clone(), |m, r| async move { m.join(r).await })
        .await?;
    service
        .route("status", subjects::MATCHMAKING_STATUS, matchmaking.clone(), |m, r| async move {
            m.status(r).await
        })
        .await?;
    service
        .route("cancel", subjects::MATCHMAKING_CANCEL, matchmaking.clone(), |m, r| async move {
            m.cancel(r).await
        })
        .await?;
    service
        .route("queues", subjects::MATCHMAKING_QUEUES, matchmaking, |m, (): ()| async move { Ok(m.queues()) })
        .await?;
    Ok(service)
}
