//! Tickets, the queue and in-flight leases in Redis: the only code that writes them.
//!
//! Every change is one Lua script (see [`scripts`]), so each is atomic. This module turns
//! their replies into types; it knows nothing of NATS or metrics.
//!
//! Redis layout (names from `mm_shared::protocol::keys`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `queue:default` | list | ids of queued tickets, join order, oldest at the head |
//! | `queue:default:seq` | integer | join-order counter (each ticket's `seq`) |
//! | `ticket:{id}` | string | the ticket's JSON ([`Ticket`]) |
//! | `player:{id}:ticket` | string | the player's latest ticket id |
//! | `lease:{batch}` | set | ids of tickets a matcher popped and is allocating for |
//! | `leases:default` | sorted set | batch ids by lease deadline (ms) |
//! | `match:{id}` | string | the match's JSON ([`MatchRecord`]) |
//!
//! Expiry: a ticket still `searching` at `expiresAt` (join + `ticket_ttl`) becomes
//! `expired` when anything meets it in the queue: a status read, the player joining
//! again, a pop reaching it, or the periodic sweep of the queue's head. A ticket in
//! flight is left to its allocation. Ticket keys live `ticket_ttl + ticket_retention`
//! and, once final, `ticket_retention` after their last change; then they read as unknown.

mod scripts;

use std::sync::Arc;
use std::time::Duration;

use mm_shared::duration::millis;
use mm_shared::protocol::{MatchRecord, Ticket, keys};
use redis::aio::ConnectionManager;

pub use crate::config::TicketSettings;
use scripts::Scripts;

/// Why a ticket operation failed (the caller's mistakes are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A script or key returned something this code did not write.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

/// What joining did.
#[derive(Debug, Clone)]
pub enum Joined {
    /// The player already had a searching ticket: this one.
    Existing(Ticket),
    /// A new ticket; `expired` is the player's previous one if joining expired it.
    Created { ticket: Ticket, expired: Option<Ticket> },
}

/// What a status read found.
#[derive(Debug, Clone)]
pub enum Status {
    /// Unknown, or not this player's.
    NotFound,
    /// The ticket; `expired_now` when this read is what expired it.
    Found { ticket: Ticket, expired_now: bool },
}

/// What cancelling did.
#[derive(Debug, Clone)]
pub enum Cancelled {
    NotFound,
    /// It was searching and is cancelled now.
    Cancelled(Ticket),
    /// It was already cancelled.
    Unchanged(Ticket),
    /// It is final in another way (matched, expired, failed): too late to cancel.
    TooLate(Ticket),
}

/// Tickets a pop took (empty if fewer than `min` were queued) and those it expired.
#[derive(Debug, Clone, Default)]
pub struct Popped {
    pub tickets: Vec<Ticket>,
    pub expired: Vec<Ticket>,
}

/// What committing a group did.
#[derive(Debug, Clone)]
pub enum Committed {
    /// The match is written; these are its tickets, now `matched`.
    Matched(Vec<Ticket>),
    /// A ticket was no longer searching (cancelled); no match, these ids went back.
    Abandoned(Vec<String>),
    /// The lease is gone (it expired and was reaped): nothing changed.
    Lost,
}

/// How tickets go back from a lease to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBack<'a> {
    /// Not their fault (left out of a group, or no orchestrator answers): no attempt counted.
    Release,
    /// A failed allocation: one attempt counted; at `max_attempts` they fail with `reason`.
    Failed { reason: &'a str, max_attempts: u32 },
    /// The lease expired (its matcher died): like `Failed`, but only if the lease's
    /// deadline has passed by Redis's clock.
    Expired { reason: &'a str, max_attempts: u32 },
}

/// What a give-back did.
#[derive(Debug, Clone, Default)]
pub struct Returned {
    /// Ids now back at the head of the queue.
    pub queued: Vec<String>,
    /// Tickets that used up their attempts and are `failed`.
    pub failed: Vec<Ticket>,
    /// False if the lease did not exist, or (for `Expired`) had not expired.
    pub applied: bool,
}

/// Access to tickets in Redis. Cheap to clone.
#[derive(Clone)]
pub struct TicketStore {
    redis: ConnectionManager,
    scripts: Arc<Scripts>,
    settings: TicketSettings,
}

impl TicketStore {
    pub fn new(redis: ConnectionManager, settings: TicketSettings) -> Self {
        Self { redis, scripts: Arc::new(Scripts::new()), settings }
    }

    /// Key lifetime of a searching ticket: its deadline, then the retention period.
    fn key_ttl(&self) -> Duration {
        self.settings.ttl + self.settings.retention
    }

    /// Returns the player's searching ticket, or queues a new one (one atomic step).
    pub async fn join(&self, player_id: &str) -> Result<Joined, StoreError> {
        let ticket_id = uuid::Uuid::new_v4().to_string();
        let reply: Vec<String> = self
            .scripts
            .join
            .key(keys::QUEUE_DEFAULT)
            .key(keys::player_ticket(player_id))
            .key(keys::QUEUE_DEFAULT_SEQ)
            .arg(keys::TICKET_PREFIX)
            .arg(&ticket_id)
            .arg(player_id)
            .arg(millis(self.settings.ttl))
            .arg(millis(self.key_ttl()))
            .arg(millis(self.settings.retention))
            .invoke_async(&mut self.redis.clone())
            .await?;
        match reply.as_slice() {
            [kind, ticket] if kind == "existing" => Ok(Joined::Existing(decode(ticket)?)),
            [kind, ticket, expired] if kind == "created" => Ok(Joined::Created {
                ticket: decode(ticket)?,
                expired: if expired.is_empty() { None } else { Some(decode(expired)?) },
            }),
            other => Err(unexpected("join", other)),
        }
    }

    /// Runs a script that acts on one player's ticket (status, cancel).
    async fn on_ticket(
        &self,
        script: &redis::Script,
        player_id: &str,
        ticket_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(script
            .key(keys::ticket(ticket_id))
            .key(keys::QUEUE_DEFAULT)
            .arg(player_id)
            .arg(millis(self.settings.retention))
            .arg(keys::TICKET_PREFIX)
            .invoke_async(&mut self.redis.clone())
            .await?)
    }

    /// The player's ticket (expiring it if it is overdue and queued).
    pub async fn status(&self, player_id: &str, ticket_id: &str) -> Result<Status, StoreError> {
        let reply = self.on_ticket(&self.scripts.status, player_id, ticket_id).await?;
        match reply.as_slice() {
            [kind] if kind == "not_found" => Ok(Status::NotFound),
            [kind, ticket] if kind == "ok" => {
                Ok(Status::Found { ticket: decode(ticket)?, expired_now: false })
            }
            [kind, ticket] if kind == "expired" => {
                Ok(Status::Found { ticket: decode(ticket)?, expired_now: true })
            }
            other => Err(unexpected("status", other)),
        }
    }

    /// Cancels the player's ticket if it is still searching.
    pub async fn cancel(&self, player_id: &str, ticket_id: &str) -> Result<Cancelled, StoreError> {
        let reply = self.on_ticket(&self.scripts.cancel, player_id, ticket_id).await?;
        match reply.as_slice() {
            [kind] if kind == "not_found" => Ok(Cancelled::NotFound),
            [kind, ticket] if kind == "cancelled" => Ok(Cancelled::Cancelled(decode(ticket)?)),
            [kind, ticket] if kind == "unchanged" => Ok(Cancelled::Unchanged(decode(ticket)?)),
            [kind, ticket] if kind == "final" => Ok(Cancelled::TooLate(decode(ticket)?)),
            other => Err(unexpected("cancel", other)),
        }
    }

    /// Moves up to `window` searching tickets from the head of the queue into the lease
    /// `batch_id`, but only if at least `min` can be taken.
    pub async fn pop(
        &self,
        batch_id: &str,
        min: usize,
        window: usize,
        lease: Duration,
    ) -> Result<Popped, StoreError> {
        let (popped, expired): (Vec<String>, Vec<String>) = self
            .scripts
            .pop
            .key(keys::QUEUE_DEFAULT)
            .key(keys::LEASES_DEFAULT)
            .key(keys::lease(batch_id))
            .arg(keys::TICKET_PREFIX)
            .arg(batch_id)
            .arg(min)
            .arg(window.max(min))
            .arg(millis(lease))
            .arg(millis(self.settings.retention))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(Popped { tickets: decode_all(&popped)?, expired: decode_all(&expired)? })
    }

    /// Turns `record.ticket_ids` (all in lease `batch_id`) into the match `record`, if
    /// every one of them is still searching.
    pub async fn commit(&self, batch_id: &str, record: &MatchRecord) -> Result<Committed, StoreError> {
        let record_json = serde_json::to_string(record)
            .map_err(|err| StoreError::Corrupt(format!("cannot encode match {}: {err}", record.id)))?;
        let (kind, items): (String, Vec<String>) = self
            .scripts
            .commit
            .key(keys::lease(batch_id))
            .key(keys::LEASES_DEFAULT)
            .key(keys::match_record(&record.id))
            .key(keys::QUEUE_DEFAULT)
            .arg(keys::TICKET_PREFIX)
            .arg(batch_id)
            .arg(&record.id)
            .arg(&record.server.url)
            .arg(&record.server.game_id)
            .arg(millis(self.settings.retention))
            .arg(record_json)
            .arg(&record.ticket_ids)
            .invoke_async(&mut self.redis.clone())
            .await?;
        match kind.as_str() {
            "matched" => Ok(Committed::Matched(decode_all(&items)?)),
            "abandoned" => Ok(Committed::Abandoned(items)),
            "lost" => Ok(Committed::Lost),
            other => Err(StoreError::Corrupt(format!("commit answered {other:?}"))),
        }
    }

    /// Returns `ticket_ids` of lease `batch_id` (all of it when empty) to the queue's head.
    pub async fn give_back(
        &self,
        batch_id: &str,
        ticket_ids: &[String],
        how: GiveBack<'_>,
    ) -> Result<Returned, StoreError> {
        let (count, only_if_expired, reason, max_attempts) = match how {
            GiveBack::Release => (false, false, "", u32::MAX),
            GiveBack::Failed { reason, max_attempts } => (true, false, reason, max_attempts),
            GiveBack::Expired { reason, max_attempts } => (true, true, reason, max_attempts),
        };
        let (kind, queued, failed): (String, Vec<String>, Vec<String>) = self
            .scripts
            .give_back
            .key(keys::lease(batch_id))
            .key(keys::LEASES_DEFAULT)
            .key(keys::QUEUE_DEFAULT)
            .arg(keys::TICKET_PREFIX)
            .arg(batch_id)
            .arg(if count { "1" } else { "0" })
            .arg(if only_if_expired { "1" } else { "0" })
            .arg(max_attempts)
            .arg(reason)
            .arg(millis(self.settings.retention))
            .arg(ticket_ids)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(Returned { queued, failed: decode_all(&failed)?, applied: kind == "returned" })
    }

    /// Expires overdue tickets at the head of the queue (at most `limit`).
    pub async fn sweep(&self, limit: usize) -> Result<Vec<Ticket>, StoreError> {
        let expired: Vec<String> = self
            .scripts
            .sweep
            .key(keys::QUEUE_DEFAULT)
            .arg(keys::TICKET_PREFIX)
            .arg(millis(self.settings.retention))
            .arg(limit)
            .invoke_async(&mut self.redis.clone())
            .await?;
        decode_all(&expired)
    }

    /// Batch ids whose lease deadline has passed (by this host's clock; the give-back
    /// checks again by Redis's).
    pub async fn overdue_leases(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = mm_shared::protocol::now_ms();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::LEASES_DEFAULT)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(ids)
    }

    /// Queue length and number of leases, in one round trip.
    pub async fn gauges(&self) -> Result<(u64, u64), StoreError> {
        let (depth, leases): (u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(keys::QUEUE_DEFAULT)
            .cmd("ZCARD")
            .arg(keys::LEASES_DEFAULT)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((depth, leases))
    }
}

fn decode(raw: &str) -> Result<Ticket, StoreError> {
    serde_json::from_str(raw).map_err(|err| StoreError::Corrupt(format!("ticket {raw:?}: {err}")))
}

fn decode_all(raws: &[String]) -> Result<Vec<Ticket>, StoreError> {
    raws.iter().map(|raw| decode(raw)).collect()
}

fn unexpected(script: &str, reply: &[String]) -> StoreError {
    StoreError::Corrupt(format!("{script} script answered {reply:?}"))
}
