//! Tickets, the queue and in-flight leases in Redis: the only code that writes them.
//!
//! Every change is one Lua script (see [`scripts`]), so each is atomic. This module turns
//! their replies into types; it knows nothing of NATS or metrics.
//!
//! Redis layout (names from `mm_shared::protocol::keys`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `queue:<name>` | sorted set | ids of a queue's tickets scored by `seq`: join order, oldest first (`queue:default` is the seed's) |
//! | `queue:<name>:seq` | integer | the queue's join-order counter (each ticket's `seq`) |
//! | `ticket:{id}` | string | the ticket's JSON ([`Ticket`], with its `queue`, plus the matcher's fields below) |
//! | `player:{id}:ticket` | string | the player's latest ticket id (a party's ticket for every member) |
//! | `lease:{batch}` | set | ids of tickets a matcher popped and is allocating for |
//! | `leases:<name>` | sorted set | the queue's batch ids by lease deadline (ms) |
//! | `match:{id}` | string | the match's JSON ([`MatchRecord`]) |
//!
//! A [`TicketStore`] acts on one queue ([`TicketStore::for_queue`]); reading or
//! cancelling a ticket finds its queue from the ticket itself.
//!
//! The queue was a list before: [`TicketStore::upgrade`] turns a list left by an older
//! matchmaker into the sorted set at start. A sorted set makes every change bounded:
//! joining, cancelling, expiring and giving back cost O(log n) each, a pop looks at its
//! window and no further.
//!
//! **Match ids live with their group.** Before a group is allocated, [`TicketStore::claim`]
//! gives it its match id and writes it on its tickets (`pendingMatch`, `pendingSize`, and
//! `lease`: the batch that claimed it, which a matched ticket keeps; fields [`Ticket`]
//! does not carry, so players never see them). When the allocation
//! fails and the same tickets are grouped again, they get the same id back, so the
//! orchestrator's one-server-per-match turns the retry into the server it may already have
//! started. An id that can no longer be committed (its group lost a ticket to a cancel,
//! an expiry or a failure, or its tickets were grouped otherwise, or its lease was lost)
//! is reported as *orphaned* by the call that made it so: its server, if any, is to be
//! released (`orchestrator.release`). The same id may be reported more than once.
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
use mm_shared::protocol::{MatchRecord, Ticket, TicketStatus, keys};
use redis::aio::ConnectionManager;

pub use crate::config::TicketSettings;
use scripts::Scripts;

/// How far ahead of a searching ticket's deadline a status read leaves the decision to
/// the script (and Redis's clock): clocks of matchmaker hosts may differ by this much
/// without a status answering `searching` for a ticket already overdue.
const EXPIRY_MARGIN: Duration = Duration::from_secs(2);

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
    /// A new ticket; `expired` are the members' previous ones if joining expired them,
    /// and `orphaned` the match ids those expiries orphaned.
    Created { ticket: Ticket, expired: Vec<Ticket>, orphaned: Vec<String> },
    /// Another member of the party has a searching ticket of their own.
    Busy(String),
    /// The party changed since it was read (read it again).
    PartyChanged,
}

/// A ticket to create: one player, or a whole party.
#[derive(Debug, Clone, Default)]
pub struct NewTicket {
    /// Who joins (a party's leader).
    pub player_id: String,
    /// A party's members, the leader first (empty: the player alone).
    pub players: Vec<String>,
    /// The party and its JSON as read (the join checks it is unchanged, and records the
    /// ticket on it).
    pub party: Option<(String, String)>,
    pub rating: Option<f64>,
    /// When set (and `rating` is not), the ticket's rating is its players' mean stored
    /// rating, read by the join script itself; a player with none counts as this.
    pub initial_rating: Option<f64>,
    pub latencies: std::collections::BTreeMap<String, f64>,
}

/// What a status read found.
#[derive(Debug, Clone)]
#[expect(clippy::large_enum_variant, reason = "one per request, moved once and never stored")]
pub enum Status {
    /// Unknown, or not this player's.
    NotFound,
    /// The ticket; `expired_now` when this read is what expired it, and `orphaned` the
    /// match id that expiry orphaned.
    Found { ticket: Ticket, expired_now: bool, orphaned: Option<String> },
}

/// What cancelling did.
#[derive(Debug, Clone)]
pub enum Cancelled {
    NotFound,
    /// It was searching and is cancelled now; `orphaned` is the match id its group was
    /// given, if it was queued with one (in flight, the matcher releases it).
    Cancelled {
        ticket: Ticket,
        orphaned: Option<String>,
    },
    /// It was already cancelled.
    Unchanged(Ticket),
    /// It is final in another way (matched, expired, failed): too late to cancel.
    TooLate(Ticket),
}

/// Tickets a pop took (empty if fewer than `min` players of its window were live) and
/// those it expired.
#[derive(Debug, Clone, Default)]
pub struct Popped {
    pub tickets: Vec<Ticket>,
    /// Redis's clock at the pop (the clock of every ticket's `createdAt`), Unix ms.
    pub now_ms: u64,
    pub expired: Vec<Ticket>,
    /// Match ids the expiries orphaned.
    pub orphaned: Vec<String>,
    /// Entries that left the queue without being popped (expired, or dead: their ticket
    /// gone or final). When the pop took nothing but removed some, popping again at once
    /// may find a batch behind them.
    pub removed: usize,
}

/// What claiming a match id for a group did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Allocate the group under `match_id` (the group's previous id when `reused`).
    /// `orphaned`: ids its tickets carried that no group can commit any more.
    Claimed { match_id: String, reused: bool, orphaned: Vec<String> },
    /// A ticket of the group is no longer searching (cancelled since the pop): nothing
    /// changed; give the group back instead of allocating.
    Gone { orphaned: Vec<String> },
    /// The lease is gone (it expired and was reaped): nothing changed.
    Lost,
}

/// What committing a group did.
#[derive(Debug, Clone)]
pub enum Committed {
    /// The match is written; these are its tickets, now `matched`.
    Matched(Vec<Ticket>),
    /// A ticket was no longer searching (cancelled); no match, these ids went back and
    /// the match id is retired: release its server.
    Abandoned(Vec<String>),
    /// The lease is gone (it expired and was reaped): no match. `release`: the match id
    /// is retired and its server is to be released; otherwise another lease has claimed
    /// the same group under the same id since (or committed it), and the server is its.
    Lost { release: bool },
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
    /// Match ids the failures orphaned.
    pub orphaned: Vec<String>,
    /// False if the lease did not exist, or (for `Expired`) had not expired.
    pub applied: bool,
}

/// Access to tickets in Redis, for one queue. Cheap to clone.
#[derive(Clone)]
pub struct TicketStore {
    redis: ConnectionManager,
    scripts: Arc<Scripts>,
    settings: TicketSettings,
    queue: Arc<QueueKeys>,
}

/// One queue's name and keys.
struct QueueKeys {
    name: String,
    queue: String,
    seq: String,
    leases: String,
}

impl QueueKeys {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            queue: keys::queue(name),
            seq: keys::queue_seq(name),
            leases: keys::leases(name),
        }
    }
}

impl TicketStore {
    /// The store of the seed's queue, `default`.
    pub fn new(redis: ConnectionManager, settings: TicketSettings) -> Self {
        Self {
            redis,
            scripts: Arc::new(Scripts::new()),
            settings,
            queue: Arc::new(QueueKeys::new(keys::DEFAULT_QUEUE_NAME)),
        }
    }

    /// The same store, acting on queue `name`.
    pub fn for_queue(&self, name: &str) -> Self {
        Self { queue: Arc::new(QueueKeys::new(name)), ..self.clone() }
    }

    /// The queue this store acts on.
    pub fn queue_name(&self) -> &str {
        &self.queue.name
    }

    /// The Redis connection (for the services that share it).
    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Key lifetime of a searching ticket: its deadline, then the retention period.
    fn key_ttl(&self) -> Duration {
        self.settings.ttl + self.settings.retention
    }

    /// Returns the player's searching ticket, or queues a new one for them alone in this
    /// store's queue (one atomic step).
    pub async fn join(&self, player_id: &str) -> Result<Joined, StoreError> {
        self.join_ticket(NewTicket { player_id: player_id.to_owned(), ..NewTicket::default() }).await
    }

    /// Returns the player's searching ticket, or queues `new` (one player or a party) in
    /// this store's queue, in one atomic step.
    pub async fn join_ticket(&self, new: NewTicket) -> Result<Joined, StoreError> {
        let ticket_id = uuid::Uuid::new_v4().to_string();
        let members = if new.players.is_empty() { vec![new.player_id.clone()] } else { new.players.clone() };
        let fields = serde_json::json!({
            "queue": self.queue.name,
            "players": if new.players.is_empty() { None } else { Some(&new.players) },
            "partyId": new.party.as_ref().map(|(id, _)| id),
            "rating": new.rating.filter(|rating| rating.is_finite()),
            "latencies": if new.latencies.is_empty() { None } else { Some(&new.latencies) },
        });
        // Lua's JSON has no null: leave absent what is not set.
        let fields = match fields {
            serde_json::Value::Object(map) => {
                serde_json::Value::Object(map.into_iter().filter(|(_, value)| !value.is_null()).collect())
            }
            other => other,
        };
        let (party_key, party_raw) = match &new.party {
            Some((id, raw)) => (keys::party(id), raw.clone()),
            None => (String::new(), String::new()),
        };
        let mut invocation = self.scripts.join.prepare_invoke();
        invocation.key(&self.queue.queue).key(&self.queue.seq).key(party_key);
        for member in &members {
            invocation.key(keys::player_ticket(member));
        }
        for member in &members {
            invocation.key(keys::player_rating(member));
        }
        let initial_rating = match (new.rating, new.initial_rating) {
            (None, Some(initial)) if initial.is_finite() => initial.to_string(),
            _ => String::new(),
        };
        invocation
            .arg(keys::TICKET_PREFIX)
            .arg(&ticket_id)
            .arg(&new.player_id)
            .arg(millis(self.settings.ttl))
            .arg(millis(self.key_ttl()))
            .arg(millis(self.settings.retention))
            .arg(keys::QUEUE_PREFIX)
            .arg(fields.to_string())
            .arg(party_raw)
            .arg(initial_rating);
        for member in &members {
            invocation.arg(member);
        }
        let reply: Vec<String> = invocation.invoke_async(&mut self.redis.clone()).await?;
        match reply.as_slice() {
            [kind, ticket] if kind == "existing" => Ok(Joined::Existing(decode(ticket)?)),
            [kind, member] if kind == "busy" => Ok(Joined::Busy(member.clone())),
            [kind, _] if kind == "changed" => Ok(Joined::PartyChanged),
            [kind, ticket, expired @ ..] if kind == "created" => Ok(Joined::Created {
                ticket: decode(ticket)?,
                orphaned: orphans(expired),
                expired: decode_all(expired)?,
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
            .arg(player_id)
            .arg(millis(self.settings.retention))
            .arg(keys::TICKET_PREFIX)
            .arg(keys::QUEUE_PREFIX)
            .invoke_async(&mut self.redis.clone())
            .await?)
    }

    /// The player's ticket (expiring it if it is overdue and queued).
    ///
    /// Most reads are of a ticket that is final or well inside its deadline: those are one
    /// `GET`, decoded here. A searching ticket within [`EXPIRY_MARGIN`] of its deadline (by
    /// this process's clock), or one this code cannot read, goes through the script, which
    /// decides by Redis's clock and expires it in the same step.
    pub async fn status(&self, player_id: &str, ticket_id: &str) -> Result<Status, StoreError> {
        let raw: Option<String> =
            redis::cmd("GET").arg(keys::ticket(ticket_id)).query_async(&mut self.redis.clone()).await?;
        let Some(raw) = raw else { return Ok(Status::NotFound) };
        if let Ok(ticket) = serde_json::from_str::<Ticket>(&raw) {
            if !held_by(&ticket, player_id) {
                return Ok(Status::NotFound);
            }
            let overdue_soon =
                ticket.expires_at <= mm_shared::protocol::now_ms().saturating_add(millis(EXPIRY_MARGIN));
            if ticket.status != TicketStatus::Searching || !overdue_soon {
                return Ok(Status::Found { ticket, expired_now: false, orphaned: None });
            }
        }
        let reply = self.on_ticket(&self.scripts.status, player_id, ticket_id).await?;
        match reply.as_slice() {
            [kind] if kind == "not_found" => Ok(Status::NotFound),
            [kind, ticket] if kind == "ok" => {
                Ok(Status::Found { ticket: decode(ticket)?, expired_now: false, orphaned: None })
            }
            [kind, ticket] if kind == "expired" => Ok(Status::Found {
                ticket: decode(ticket)?,
                expired_now: true,
                orphaned: pending_match(ticket),
            }),
            other => Err(unexpected("status", other)),
        }
    }

    /// Cancels the player's ticket if it is still searching.
    pub async fn cancel(&self, player_id: &str, ticket_id: &str) -> Result<Cancelled, StoreError> {
        let reply = self.on_ticket(&self.scripts.cancel, player_id, ticket_id).await?;
        match reply.as_slice() {
            [kind] if kind == "not_found" => Ok(Cancelled::NotFound),
            [kind, ticket, orphaned] if kind == "cancelled" => Ok(Cancelled::Cancelled {
                ticket: decode(ticket)?,
                orphaned: (!orphaned.is_empty()).then(|| orphaned.clone()),
            }),
            [kind, ticket] if kind == "unchanged" => Ok(Cancelled::Unchanged(decode(ticket)?)),
            [kind, ticket] if kind == "final" => Ok(Cancelled::TooLate(decode(ticket)?)),
            other => Err(unexpected("cancel", other)),
        }
    }

    /// Moves the searching tickets among the `window` oldest entries of the queue into
    /// the lease `batch_id`, but only if they hold at least `min` players. Looks at
    /// `window` entries at most, overdue and dead ones included.
    pub async fn pop(
        &self,
        batch_id: &str,
        min: usize,
        window: usize,
        lease: Duration,
    ) -> Result<Popped, StoreError> {
        self.pop_players(batch_id, min, min, window, lease).await
    }

    /// [`TicketStore::pop`] for queues with parties: nothing is looked at unless
    /// `min_tickets` tickets are queued (a party of five is five players in one ticket).
    pub async fn pop_players(
        &self,
        batch_id: &str,
        min: usize,
        min_tickets: usize,
        window: usize,
        lease: Duration,
    ) -> Result<Popped, StoreError> {
        let (popped, expired, removed, now_ms): (Vec<String>, Vec<String>, usize, u64) = self
            .scripts
            .pop
            .key(&self.queue.queue)
            .key(&self.queue.leases)
            .key(keys::lease(batch_id))
            .arg(keys::TICKET_PREFIX)
            .arg(batch_id)
            .arg(min)
            .arg(window.max(min_tickets).max(1))
            .arg(millis(lease))
            .arg(millis(self.settings.retention))
            .arg(min_tickets.max(1))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(Popped {
            now_ms,
            tickets: decode_all(&popped)?,
            orphaned: orphans(&expired),
            expired: decode_all(&expired)?,
            removed,
        })
    }

    /// Gives the group `ticket_ids` of lease `batch_id` its match id before it is
    /// allocated: the one the same group had before, or `fresh_id`.
    pub async fn claim(
        &self,
        batch_id: &str,
        fresh_id: &str,
        ticket_ids: &[String],
    ) -> Result<Claim, StoreError> {
        let (kind, match_id, orphaned): (String, String, Vec<String>) = self
            .scripts
            .claim
            .key(keys::lease(batch_id))
            .arg(keys::TICKET_PREFIX)
            .arg(batch_id)
            .arg(fresh_id)
            .arg(ticket_ids)
            .invoke_async(&mut self.redis.clone())
            .await?;
        match kind.as_str() {
            "claimed" => Ok(Claim::Claimed { reused: match_id != fresh_id, match_id, orphaned }),
            "gone" => Ok(Claim::Gone { orphaned }),
            "lost" => Ok(Claim::Lost),
            other => Err(StoreError::Corrupt(format!("claim answered {other:?}"))),
        }
    }

    /// Turns `record.ticket_ids` (all in lease `batch_id`, claimed under `record.id`) into
    /// the match `record`, if every one of them is still searching. Safe to call again
    /// after an error: a match this lease already wrote answers `Matched` again.
    pub async fn commit(&self, batch_id: &str, record: &MatchRecord) -> Result<Committed, StoreError> {
        let record_json = serde_json::to_string(record)
            .map_err(|err| StoreError::Corrupt(format!("cannot encode match {}: {err}", record.id)))?;
        // What every matched ticket carries of its match (Lua's JSON has no null).
        let mut extra = serde_json::Map::new();
        if let Some(teams) = &record.teams {
            extra.insert("teams".to_owned(), serde_json::json!(teams));
        }
        if let Some(region) = &record.region {
            extra.insert("region".to_owned(), serde_json::json!(region));
        }
        if let Some(quality) = &record.quality {
            let mut quality = serde_json::json!(quality);
            if let Some(map) = quality.as_object_mut() {
                map.retain(|_, value| !value.is_null());
            }
            extra.insert("quality".to_owned(), quality);
        }
        let (kind, items): (String, Vec<String>) = self
            .scripts
            .commit
            .key(keys::lease(batch_id))
            .key(&self.queue.leases)
            .key(keys::match_record(&record.id))
            .key(&self.queue.queue)
            .arg(keys::TICKET_PREFIX)
            .arg(batch_id)
            .arg(&record.id)
            .arg(&record.server.url)
            .arg(&record.server.game_id)
            .arg(millis(self.settings.retention))
            .arg(record_json)
            .arg(serde_json::Value::Object(extra).to_string())
            .arg(&record.ticket_ids)
            .invoke_async(&mut self.redis.clone())
            .await?;
        match kind.as_str() {
            "matched" => Ok(Committed::Matched(decode_all(&items)?)),
            "abandoned" => Ok(Committed::Abandoned(items)),
            "lost" => match items.as_slice() {
                [what] if what == "release" => Ok(Committed::Lost { release: true }),
                [what] if what == "taken" => Ok(Committed::Lost { release: false }),
                other => Err(unexpected("commit", other)),
            },
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
            .key(&self.queue.leases)
            .key(&self.queue.queue)
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
        Ok(Returned {
            queued,
            orphaned: orphans(&failed),
            failed: decode_all(&failed)?,
            applied: kind == "returned",
        })
    }

    /// Expires overdue tickets at the head of the queue (looks at `limit` entries at most).
    pub async fn sweep(&self, limit: usize) -> Result<Swept, StoreError> {
        let expired: Vec<String> = self
            .scripts
            .sweep
            .key(&self.queue.queue)
            .arg(keys::TICKET_PREFIX)
            .arg(millis(self.settings.retention))
            .arg(limit)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(Swept { orphaned: orphans(&expired), expired: decode_all(&expired)? })
    }

    /// Turns a queue left by an older matchmaker (a list) into the sorted set this one
    /// uses, in one atomic step; returns how many tickets it moved (`None`: nothing to do).
    /// Older matchmakers must be stopped first: they cannot use the sorted set.
    pub async fn upgrade(&self) -> Result<Option<u64>, StoreError> {
        let moved: i64 = self
            .scripts
            .upgrade
            .key(keys::QUEUE_DEFAULT)
            .arg(keys::TICKET_PREFIX)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(u64::try_from(moved).ok())
    }

    /// Batch ids whose lease deadline has passed (by this host's clock; the give-back
    /// checks again by Redis's).
    pub async fn overdue_leases(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = mm_shared::protocol::now_ms();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.queue.leases)
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
            .cmd("ZCARD")
            .arg(&self.queue.queue)
            .cmd("ZCARD")
            .arg(&self.queue.leases)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((depth, leases))
    }
}

/// What a sweep expired.
#[derive(Debug, Clone, Default)]
pub struct Swept {
    pub expired: Vec<Ticket>,
    /// Match ids the expiries orphaned.
    pub orphaned: Vec<String>,
}

/// The match id a stored ticket's group was given (`pendingMatch`, which [`Ticket`] does
/// not carry), if any.
fn pending_match(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Pending {
        #[serde(rename = "pendingMatch", default)]
        pending_match: Option<String>,
    }
    serde_json::from_str::<Pending>(raw).ok()?.pending_match.filter(|id| !id.is_empty())
}

/// The distinct pending match ids of tickets that just left `searching`.
fn orphans(raws: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    raws.iter().filter_map(|raw| pending_match(raw)).filter(|id| seen.insert(id.clone())).collect()
}

/// Does `player` hold `ticket`: its player, or a member of its party? (The scripts'
/// `holds`: another player's ticket reads as missing.)
fn held_by(ticket: &Ticket, player: &str) -> bool {
    ticket.player_id == player || ticket.players.iter().any(|member| member == player)
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
