//! The `matchmaking` micro service: `matchmaking.join`, `.status` and `.cancel`.
//!
//! Each request is one ticket script in Redis; every change it makes is published on
//! `events.ticket.<id>`. A join also wakes this process's idle matcher workers, so a full
//! queue is popped at once instead of at the next poll. A cancel or expiry that orphans
//! the match id of a group allocated before (see [`crate::tickets`]) releases its server
//! in the background.

use std::sync::Arc;

use mm_shared::nats::ServiceError;
use mm_shared::protocol::{
    CancelReply, JoinReply, JoinRequest, TicketRequest, TicketStatus, TicketView, limits, subjects,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::Events;
use crate::metrics::{TicketEvent, tickets};
use crate::micro::{MicroService, unavailable};
use crate::release::{Releaser, Why};
use crate::tickets::{Cancelled, Joined, Status, StoreError, TicketStore};

/// The service's handlers.
#[derive(Clone)]
pub struct Matchmaking {
    tickets: TicketStore,
    events: Events,
    /// Notified on every new ticket; idle matcher workers wait on it.
    wake: Arc<Notify>,
    /// Ends the servers of match ids a cancel or expiry orphaned.
    releaser: Releaser,
}

impl Matchmaking {
    pub fn new(tickets: TicketStore, events: Events, wake: Arc<Notify>, releaser: Releaser) -> Self {
        Self { tickets, events, wake, releaser }
    }

    fn release(&self, orphaned: Option<String>, why: Why) {
        if let Some(match_id) = orphaned {
            self.releaser.release(&match_id, why);
        }
    }

    pub async fn join(&self, request: JoinRequest) -> Result<JoinReply, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        match self.tickets.join(&request.player_id).await.map_err(store_error)? {
            Joined::Existing(ticket) => Ok(JoinReply { ticket_id: ticket.id, status: ticket.status }),
            Joined::Created { ticket, expired, orphaned } => {
                tickets(TicketEvent::Created, 1);
                self.wake.notify_waiters();
                self.release(orphaned, Why::Expired);
                if let Some(expired) = expired {
                    tickets(TicketEvent::Expired, 1);
                    self.events.ticket_changed(&expired).await;
                }
                self.events.ticket_changed(&ticket).await;
                Ok(JoinReply { ticket_id: ticket.id, status: ticket.status })
            }
        }
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
        .route("cancel", subjects::MATCHMAKING_CANCEL, matchmaking, |m, r| async move { m.cancel(r).await })
        .await?;
    Ok(service)
}
