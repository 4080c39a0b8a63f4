//! Parties, as players form them: a leader (a player the compositor gave `matchmaking`,
//! whose draw of party size came out above one) creates a party (`POST /party`) and
//! recruits idle players of the pool, handing each a [`PartyInvite`]. Each recruit joins
//! (`POST /party/join`) and says so; the leader queues the party once everyone answered
//! (or a few seconds passed) and posts the ticket on the invite; the members read it from
//! `GET /party`, as a real client would, and follow it. Everyone leaves the party
//! (`DELETE /party`) once the ticket is final: a party lives for one match.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Method;
use mm_shared::protocol::{PartyCreated, PartyView};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::http::Call;
use crate::player::Session;
use crate::scenario::{ErrorKind, Failure};

/// How long a leader waits for its recruits to join.
pub const RECRUIT_WAIT: Duration = Duration::from_secs(5);

/// Where the leader's ticket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyTicket {
    /// Not queued yet.
    Forming,
    /// Queued: the ticket id.
    Queued(String),
    /// The leader gave up (its join failed): members leave.
    Abandoned,
}

/// What a leader hands its recruits.
#[derive(Debug)]
pub struct PartyInvite {
    pub party_id: String,
    /// Recruits that answered (joined or failed), and those that joined.
    answered: AtomicUsize,
    joined: AtomicUsize,
    changed: Notify,
    ticket: watch::Sender<PartyTicket>,
}

impl PartyInvite {
    pub fn new(party_id: String) -> Self {
        Self {
            party_id,
            answered: AtomicUsize::new(0),
            joined: AtomicUsize::new(0),
            changed: Notify::new(),
            ticket: watch::Sender::new(PartyTicket::Forming),
        }
    }

    /// A recruit tried to join.
    pub fn answer(&self, joined: bool) {
        if joined {
            self.joined.fetch_add(1, Ordering::AcqRel);
        }
        self.answered.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Waits until `recruits` answered or [`RECRUIT_WAIT`] passed; how many joined.
    pub async fn wait_for(&self, recruits: usize) -> usize {
        let deadline = tokio::time::Instant::now() + RECRUIT_WAIT;
        loop {
            let changed = self.changed.notified();
            if self.answered.load(Ordering::Acquire) >= recruits {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        self.joined.load(Ordering::Acquire)
    }

    /// The leader's ticket (or that it gave up), for the members.
    pub fn set_ticket(&self, ticket: PartyTicket) {
        self.ticket.send_replace(ticket);
    }

    /// Waits for the leader to queue (or give up), up to `wait`.
    pub async fn ticket(&self, wait: Duration) -> PartyTicket {
        let mut receiver = self.ticket.subscribe();
        let settled =
            tokio::time::timeout(wait, receiver.wait_for(|ticket| *ticket != PartyTicket::Forming)).await;
        match settled {
            Ok(Ok(ticket)) => ticket.clone(),
            _ => PartyTicket::Abandoned,
        }
    }
}

/// `POST /party`: the new party's id.
pub async fn create(session: &Session) -> Result<String, Failure> {
    let token = session.token();
    let answer =
        session.context.gateway.send(Call::new(Method::POST, "POST /party", "/party").token(&token)).await?;
    if !answer.is_success() {
        return Err(answer.unexpected("create party"));
    }
    answer.json::<PartyCreated>("create party").map(|created| created.party_id)
}

/// `POST /party/join`.
pub async fn join(session: &Session, party_id: &str) -> Result<(), Failure> {
    let token = session.token();
    let body = json!({ "partyId": party_id });
    let answer = session
        .context
        .gateway
        .send(Call::new(Method::POST, "POST /party/join", "/party/join").token(&token).json(&body))
        .await?;
    if answer.is_success() { Ok(()) } else { Err(answer.unexpected("join party")) }
}

/// `GET /party`.
pub async fn get(session: &Session) -> Result<PartyView, Failure> {
    let token = session.token();
    let answer =
        session.context.gateway.send(Call::new(Method::GET, "GET /party", "/party").token(&token)).await?;
    if !answer.is_success() {
        return Err(answer.unexpected("get party"));
    }
    answer.json("get party")
}

/// `DELETE /party`, best effort (a party already gone is fine).
pub async fn leave(session: &Session) {
    let token = session.token();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        session.context.gateway.send(Call::new(Method::DELETE, "DELETE /party", "/party").token(&token)),
    )
    .await;
}

/// A member whose party's ticket is not the one the leader posted.
pub fn wrong_ticket(expected: &str, seen: Option<&str>) -> Failure {
    Failure::new(
        ErrorKind::Decode,
        format!("GET /party says ticket {:?}, the leader queued {expected}", seen.unwrap_or("none")),
    )
}
