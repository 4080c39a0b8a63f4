//! What the matchmaker tells the world: `events.ticket.<id>` on every ticket change (the
//! gateway's long-poll waits on it) and `events.match.created` once per match.
//!
//! Events are published after the change is committed in Redis, so whoever reads Redis
//! after an event sees at least that change. They are best effort: a subscriber that was
//! not listening reads the ticket instead.

use async_nats::Client;
use mm_shared::protocol::{MatchCreated, Ticket, subjects};

/// Publishes events on one NATS connection. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    nats: Client,
}

impl Events {
    pub fn new(nats: Client) -> Self {
        Self { nats }
    }

    /// The ticket's new state, as its player sees it.
    pub async fn ticket_changed(&self, ticket: &Ticket) {
        self.publish(subjects::ticket_events(&ticket.id), &ticket.view()).await;
    }

    pub async fn tickets_changed(&self, tickets: &[Ticket]) {
        for ticket in tickets {
            self.ticket_changed(ticket).await;
        }
    }

    pub async fn match_created(&self, created: &MatchCreated) {
        self.publish(subjects::EVENTS_MATCH_CREATED.to_owned(), created).await;
    }

    async fn publish(&self, subject: String, payload: &impl serde::Serialize) {
        let payload = match serde_json::to_vec(payload) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::warn!(%subject, "cannot encode event: {err}");
                return;
            }
        };
        if let Err(err) = self.nats.publish(subject.clone(), payload.into()).await {
            tracing::debug!(%subject, "event not published: {err}");
        }
    }
}
