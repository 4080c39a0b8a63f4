//! The `party` micro service: `party.create`, `.join`, `.get`, `.leave`.
//!
//! A party is a leader and up to `parties.max_size` members. The leader's join with the
//! `partyId` queues the whole party as one ticket (`matchmaking.join`); every member
//! reads that ticket id from `GET /party` and may long-poll it. A party is always in one
//! match and on one side: its ticket is never split (see `matcher::function`).
//!
//! - A member may leave at any time (`DELETE /party`); while the party's ticket is
//!   searching, leaving cancels it (the party that queued is no more). The leader
//!   leaving hands the lead to the next member; the last one leaving ends the party.
//! - Logging out leaves the party, so a party's ticket cancels when a member logs out.
//! - Nobody joins a party whose ticket is searching, a full party, or a second party.
//!
//! Redis: `party:{id}` (JSON [`PartyView`] without `ticketId` until it queues) and
//! `player:{id}:party`, both living `parties.ttl` from the party's last change. Every
//! change is one Lua script.

use std::sync::Arc;

use mm_shared::duration::millis;
use mm_shared::nats::ServiceError;
use mm_shared::protocol::{
    PartyCreated, PartyJoinRequest, PartyRequest, PartyView, TicketRequest, TicketStatus, keys, limits,
    subjects,
};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::PartiesConfig;
use crate::matchmaking::Matchmaking;
use crate::micro::{MicroService, unavailable};

/// Shared by the scripts. ARGV 1-2: the parts of a party key around its id; 3-4: of a
/// player's party index around the player id; 5: ttl ms.
const PRELUDE: &str = r#"
local function party_key(id) return ARGV[1] .. id .. ARGV[2] end
local function index_key(player) return ARGV[3] .. player .. ARGV[4] end
local ttl = tonumber(ARGV[5])
-- The party the player is in, if it still exists.
local function current_party(player)
  local id = redis.call('GET', index_key(player))
  if id and redis.call('EXISTS', party_key(id)) == 1 then return id end
  return nil
end
local function save(party)
  redis.call('SET', party_key(party.partyId), cjson.encode(party), 'PX', ttl)
  for _, member in ipairs(party.members) do
    redis.call('SET', index_key(member), party.partyId, 'PX', ttl)
  end
end
"#;

/// ARGV 6: party id, 7: player. Returns `{'created', id}` or `{'in', current id}`.
const CREATE: &str = r#"
local id, player = ARGV[6], ARGV[7]
local current = current_party(player)
if current then return { 'in', current } end
save({ partyId = id, leader = player, members = { player } })
return { 'created', id }
"#;

/// ARGV 6: party id, 7: player, 8: max members, 9: ticket key prefix. Returns
/// `{'joined', party}`, `{'in', id}`, `{'unknown', ''}`, `{'full', ''}` or `{'queued', ticket id}`.
const JOIN: &str = r#"
local id, player, max = ARGV[6], ARGV[7], tonumber(ARGV[8])
local current = current_party(player)
if current then return { 'in', current } end
local raw = redis.call('GET', party_key(id))
if not raw then return { 'unknown', '' } end
local party = cjson.decode(raw)
if #party.members >= max then return { 'full', '' } end
if type(party.ticketId) == 'string' then
  local ticket = redis.call('GET', ARGV[9] .. party.ticketId)
  if ticket then
    local ok, t = pcall(cjson.decode, ticket)
    if ok and type(t) == 'table' and t.status == 'searching' then return { 'queued', party.ticketId } end
  end
end
table.insert(party.members, player)
save(party)
return { 'joined', cjson.encode(party) }
"#;

/// ARGV 6: player. Returns `{'left', party or '' when it ended}` or `{'none', ''}`.
const LEAVE: &str = r#"
local player = ARGV[6]
local id = redis.call('GET', index_key(player))
if not id then return { 'none', '' } end
redis.call('DEL', index_key(player))
local raw = redis.call('GET', party_key(id))
if not raw then return { 'none', '' } end
local party = cjson.decode(raw)
local members = {}
for _, member in ipairs(party.members) do
  if member ~= player then table.insert(members, member) end
end
if #members == 0 then
  redis.call('DEL', party_key(id))
  return { 'left', '' }
end
party.members = members
if party.leader == player then party.leader = members[1] end
save(party)
return { 'left', cjson.encode(party) }
"#;

/// The service's handlers. Cheap to clone.
#[derive(Clone)]
pub struct Parties {
    redis: ConnectionManager,
    config: PartiesConfig,
    /// Cancels a party's ticket when a member leaves (with its events and releases).
    matchmaking: Matchmaking,
    create: Arc<redis::Script>,
    join: Arc<redis::Script>,
    leave: Arc<redis::Script>,
}

impl Parties {
    pub fn new(redis: ConnectionManager, config: PartiesConfig, matchmaking: Matchmaking) -> Self {
        let script = |body: &str| Arc::new(redis::Script::new(&format!("{PRELUDE}\n{body}")));
        Self { redis, config, matchmaking, create: script(CREATE), join: script(JOIN), leave: script(LEAVE) }
    }

    fn invocation<'a>(&self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        let (party_before, party_after) = around(keys::party);
        let (index_before, index_after) = around(keys::player_party);
        invocation
            .arg(party_before)
            .arg(party_after)
            .arg(index_before)
            .arg(index_after)
            .arg(millis(self.config.ttl));
        invocation
    }

    /// `party.create`: a new party led by the caller.
    pub async fn create(&self, request: PartyRequest) -> Result<PartyCreated, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        let id = format!("party-{}", uuid::Uuid::new_v4().simple());
        let mut invocation = self.invocation(&self.create);
        invocation.arg(&id).arg(&request.player_id);
        let (kind, value): (String, String) =
            invocation.invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        match kind.as_str() {
            "created" => Ok(PartyCreated { party_id: value }),
            _ => Err(ServiceError::conflict(format!("you are in party {value} already: leave it first"))),
        }
    }

    /// `party.join`.
    pub async fn join(&self, request: PartyJoinRequest) -> Result<PartyView, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        limits::check_token("partyId", &request.party_id).map_err(ServiceError::bad_request)?;
        let mut invocation = self.invocation(&self.join);
        invocation
            .arg(&request.party_id)
            .arg(&request.player_id)
            .arg(self.config.max_size)
            .arg(keys::TICKET_PREFIX);
        let (kind, value): (String, String) =
            invocation.invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        match kind.as_str() {
            "joined" => decode(&value),
            "in" if value == request.party_id => {
                Err(ServiceError::conflict(format!("you are in party {value} already")))
            }
            "in" => Err(ServiceError::conflict(format!("you are in party {value}: leave it first"))),
            "unknown" => Err(ServiceError::not_found(format!("no party {}", request.party_id))),
            "full" => Err(ServiceError::conflict(format!(
                "party {} is full ({} members at most)",
                request.party_id, self.config.max_size
            ))),
            "queued" => Err(ServiceError::conflict(format!(
                "party {} is searching for a match (ticket {value}): join when it is done, or ask its \
                 leader to cancel",
                request.party_id
            ))),
            other => Err(ServiceError::internal(format!("the party join script answered `{other}`"))),
        }
    }

    /// The caller's party, as stored (`None`: in none).
    pub async fn of(&self, player_id: &str) -> Result<Option<(PartyView, String)>, ServiceError> {
        let mut redis = self.redis.clone();
        let id: Option<String> = redis::cmd("GET")
            .arg(keys::player_party(player_id))
            .query_async(&mut redis)
            .await
            .map_err(unavailable)?;
        let Some(id) = id else { return Ok(None) };
        self.by_id(&id).await
    }

    /// A party and its JSON as stored, by id.
    pub async fn by_id(&self, party_id: &str) -> Result<Option<(PartyView, String)>, ServiceError> {
        read(&self.redis, party_id).await
    }

    /// `party.get`.
    pub async fn get(&self, request: PartyRequest) -> Result<PartyView, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        match self.of(&request.player_id).await? {
            Some((view, _)) => Ok(view),
            None => Err(ServiceError::not_found("you are in no party")),
        }
    }

    /// `party.leave`: cancels the party's searching ticket first.
    pub async fn leave(&self, request: PartyRequest) -> Result<(), ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        if !self.leave_party(&request.player_id).await? {
            return Err(ServiceError::not_found("you are in no party"));
        }
        Ok(())
    }

    /// Takes the player out of their party, if any (cancelling its searching ticket):
    /// what `party.leave` and a logout do. True if they were in one.
    pub async fn leave_party(&self, player_id: &str) -> Result<bool, ServiceError> {
        let Some((view, _)) = self.of(player_id).await? else { return Ok(false) };
        if let Some(ticket_id) = view.ticket_id {
            let cancel = TicketRequest { player_id: player_id.to_owned(), ticket_id: ticket_id.clone() };
            match self.matchmaking.cancel(cancel).await {
                Ok(reply) if reply.status == TicketStatus::Cancelled => {
                    tracing::debug!(%player_id, %ticket_id, "a member left: the party's ticket is cancelled");
                }
                // Matched, expired or gone already: nothing to cancel.
                Ok(_) => {}
                Err(err) if err.code == 404 || err.code == 409 => {}
                Err(err) => return Err(err),
            }
        }
        let mut invocation = self.invocation(&self.leave);
        invocation.arg(player_id);
        let (kind, _): (String, String) =
            invocation.invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        Ok(kind == "left")
    }
}

/// A party and its JSON as stored, by id (what a party's join checks is unchanged).
pub async fn read(
    redis: &ConnectionManager,
    party_id: &str,
) -> Result<Option<(PartyView, String)>, ServiceError> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(keys::party(party_id))
        .query_async(&mut redis.clone())
        .await
        .map_err(unavailable)?;
    raw.map(|raw| decode(&raw).map(|view| (view, raw))).transpose()
}

fn decode(raw: &str) -> Result<PartyView, ServiceError> {
    serde_json::from_str(raw).map_err(|err| ServiceError::internal(format!("a party is unreadable: {err}")))
}

/// The parts of a key around its variable, from the one function that names it.
fn around(key: fn(&str) -> String) -> (String, String) {
    const MARK: &str = "\u{0}";
    let whole = key(MARK);
    match whole.split_once(MARK) {
        Some((before, after)) => (before.to_owned(), after.to_owned()),
        None => (whole, String::new()),
    }
}

/// Starts the `party` micro service.
pub async fn serve(
    nats: &async_nats::Client,
    parties: Parties,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<MicroService> {
    let mut service = MicroService::start(
        nats,
        subjects::PARTY_SERVICE,
        "Parties: create, join, get, leave",
        concurrency,
        shutdown,
    )
    .await?;
    service
        .route("create", subjects::PARTY_CREATE, parties.clone(), |p, r| async move { p.create(r).await })
        .await?;
    service
        .route("join", subjects::PARTY_JOIN, parties.clone(), |p, r| async move { p.join(r).await })
        .await?;
    service.route("get", subjects::PARTY_GET, parties.clone(), |p, r| async move { p.get(r).await }).await?;
    service.route("leave", subjects::PARTY_LEAVE, parties, |p, r| async move { p.leave(r).await }).await?;
    Ok(service)
}
