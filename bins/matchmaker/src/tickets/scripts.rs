//! The Lua scripts behind every change to tickets, the queue and leases.
//!
//! Each script is one atomic step in Redis, so no reader ever sees half a change and two
//! matchers (or a matcher and a cancel) can never both win a ticket. Together they keep
//! these invariants:
//!
//! - a `searching` ticket is in exactly one place: the queue, or one lease (in flight);
//! - the queue is sorted by `seq` (join order), oldest at the head: it is a sorted set
//!   scored by `seq`, so a ticket given back lands in its place and a removal (cancel,
//!   expiry) costs O(log n), never a walk of the queue;
//! - every script does bounded work: a pop looks at its window of entries and no more,
//!   dead ones included; a sweep at its limit;
//! - only `searching` changes; every other status is final;
//! - a match is written only if every one of its tickets is still `searching` in the
//!   lease that popped it;
//! - a match id is given to one group of tickets, once (CLAIM), and that group keeps it
//!   when it is allocated again; the script that makes an id impossible to commit (a
//!   cancel, an expiry, a failure, another grouping, a lost lease) says so, so that its
//!   server, if one was allocated, is released.
//!
//! Scripts read key prefixes from their arguments (`ARGV`) instead of spelling them, so
//! the names live only in `mm_shared::protocol::keys`. Time is Redis's own clock (`TIME`),
//! one clock for every matchmaker instance. A script must not fail after its first write
//! (Redis keeps writes made before an error), so decoding is guarded and numbers default.

/// Helpers every script starts with.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The ticket under `prefix .. id`, decoded with its numbers made numbers, and its JSON
-- as stored.
local function load_ticket(prefix, id)
  local raw = redis.call('GET', prefix .. id)
  if not raw then return nil end
  local ok, t = pcall(cjson.decode, raw)
  if not ok or type(t) ~= 'table' then return nil end
  t.seq = tonumber(t.seq) or 0
  t.expiresAt = tonumber(t.expiresAt) or 0
  t.attempts = tonumber(t.attempts) or 0
  return t, raw
end

-- Does `player` hold ticket `t`: its player, or a member of its party?
local function holds(t, player)
  if t.playerId == player then return true end
  if type(t.players) == 'table' then
    for _, member in ipairs(t.players) do
      if member == player then return true end
    end
  end
  return false
end

-- The ticket under `key` and its raw JSON, if `player` holds it (another player's
-- ticket reads as missing).
local function load_own_ticket(key, player)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local ok, t = pcall(cjson.decode, raw)
  if not ok or type(t) ~= 'table' or not holds(t, player) then return nil end
  return t, raw
end

-- The queue a ticket is in (tickets written before queues had names are `default`'s).
local function queue_of(queue_prefix, t)
  if type(t.queue) == 'string' and t.queue ~= '' then return queue_prefix .. t.queue end
  return queue_prefix .. 'default'
end

-- Players a ticket holds (a party's members, or one).
local function size_of(t)
  if type(t.players) == 'table' and #t.players > 0 then return #t.players end
  return 1
end

-- A final ticket stays readable for retention_ms after its last change.
local function save_final(prefix, t, retention_ms)
  local raw = cjson.encode(t)
  redis.call('SET', prefix .. t.id, raw, 'PX', retention_ms)
  return raw
end

-- A searching ticket changed in place: its key keeps its lifetime.
local function save_searching(prefix, t)
  redis.call('SET', prefix .. t.id, cjson.encode(t), 'KEEPTTL')
end

local function expire_ticket(prefix, t, retention_ms)
  t.status = 'expired'
  t.reason = 'no match was found before the ticket expired'
  return save_final(prefix, t, retention_ms)
end

-- The match id a ticket's group was given (`pendingMatch`), or nil.
local function pending_of(t)
  if type(t.pendingMatch) == 'string' and t.pendingMatch ~= '' then return t.pendingMatch end
  return nil
end

-- Retires the ticket's pending match: no group may be allocated under it again.
local function forget_pending(t)
  t.pendingMatch = nil
  t.pendingSize = nil
end

-- Removes ids from the queue (a sorted set: O(log n) each), in chunks that stay well
-- inside Lua's argument limit.
local function unqueue(queue, ids)
  for first = 1, #ids, 1000 do
    redis.call('ZREM', queue, unpack(ids, first, math.min(first + 999, #ids)))
  end
end

-- Puts searching tickets (back) into the queue. Its score is the ticket's `seq`, so
-- tickets given back land at the head in join order, merged with whatever other batches
-- came back, however many come back at once; each costs O(log n).
local function requeue(queue, tickets)
  for first = 1, #tickets, 500 do
    local args = {}
    for k = first, math.min(first + 499, #tickets) do
      args[#args + 1] = tickets[k].seq
      args[#args + 1] = tickets[k].id
    end
    redis.call('ZADD', queue, unpack(args))
  end
end

-- A player's stored rating (`player:{id}:rating`), or `initial` when there is none or it
-- is not a finite rating with a positive, finite uncertainty (and a whole, non-negative
-- game count, when it has one): what `ratings::Ratings` makes of the same JSON.
local function stored_rating(raw, initial)
  if not raw then return initial end
  local ok, s = pcall(cjson.decode, raw)
  if not ok or type(s) ~= 'table' then return initial end
  local rating, uncertainty, games = s.rating, s.uncertainty, s.games
  if type(rating) ~= 'number' or rating ~= rating or math.abs(rating) == math.huge then return initial end
  if type(uncertainty) ~= 'number' or not (uncertainty > 0) or uncertainty == math.huge then return initial end
  if games ~= nil and (type(games) ~= 'number' or games < 0 or games ~= math.floor(games)) then
    return initial
  end
  return rating
end

local function close_lease_if_empty(lease, leases, batch_id)
  if redis.call('SCARD', lease) == 0 then
    redis.call('DEL', lease)
    redis.call('ZREM', leases, batch_id)
  end
end
"#;

/// Join: return the player's live ticket, or create one (for one player or a whole
/// party) at the tail of its queue.
///
/// Every member's ticket index is checked: the caller's live ticket is answered as is
/// (whatever its queue); another member with a live ticket makes the join `busy` (a
/// player is in one searching ticket at most). An overdue ticket still queued is expired
/// on the way (its pending match is orphaned). A party's join also checks that the party
/// is still what the caller read (else `changed`: read it again) and records the ticket
/// on it.
///
/// With an initial rating given, the new ticket's `rating` is the mean of its members'
/// stored ratings, read in this same step (no round trip before the join); a member with
/// none, or one that does not decode to a finite rating and a positive uncertainty,
/// counts as the initial rating (as `ratings::Ratings` reads them).
///
/// KEYS: queue, queue seq counter, party key or '' (unused then), then each member's
/// ticket index, the caller first, then each member's rating key in the same order.
/// ARGV: ticket prefix, new ticket id, caller id, ttl ms, key ttl ms, retention ms, queue
/// prefix, the new ticket's other fields (JSON object), the party as read ('' without a
/// party), the initial rating ('' to keep the fields' `rating`), then each member's id,
/// the caller first.
/// Returns `{'existing', ticket}`, `{'busy', member id}`, `{'changed', ''}` or
/// `{'created', ticket, expired tickets...}`.
const JOIN: &str = r#"
local queue, seq_key, party_key = KEYS[1], KEYS[2], KEYS[3]
local prefix, id, player = ARGV[1], ARGV[2], ARGV[3]
local ttl_ms, key_ttl_ms, retention_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local queue_prefix, fields, party_raw, initial = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
local members = #ARGV - 10
local now = now_ms()
local expired = {}
for k = 4, 3 + members do
  local member = ARGV[k + 7]
  local current = redis.call('GET', KEYS[k])
  if current then
    local t = load_ticket(prefix, current)
    if t and t.status == 'searching' and holds(t, member) then
      -- Past its deadline but in flight: its allocation decides, so it is still live.
      if t.expiresAt > now or redis.call('ZREM', queue_of(queue_prefix, t), current) == 0 then
        if k == 4 then return { 'existing', cjson.encode(t) } end
        return { 'busy', member }
      end
      table.insert(expired, expire_ticket(prefix, t, retention_ms))
    end
  end
end
local party = nil
if party_raw ~= '' then
  if redis.call('GET', party_key) ~= party_raw then return { 'changed', '' } end
  party = cjson.decode(party_raw)
end
local t = cjson.decode(fields)
t.id, t.playerId, t.status, t.createdAt = id, player, 'searching', now
t.expiresAt, t.seq, t.attempts = now + ttl_ms, redis.call('INCR', seq_key), 0
if initial then
  local sum = 0
  for k = 4 + members, 3 + 2 * members do
    sum = sum + stored_rating(redis.call('GET', KEYS[k]), initial)
  end
  t.rating = sum / members
end
local raw = cjson.encode(t)
redis.call('SET', prefix .. id, raw, 'PX', key_ttl_ms)
redis.call('ZADD', queue, t.seq, id)
for k = 4, 3 + members do redis.call('SET', KEYS[k], id, 'PX', key_ttl_ms) end
if party then
  party.ticketId = id
  redis.call('SET', party_key, cjson.encode(party), 'KEEPTTL')
end
local reply = { 'created', raw }
for _, e in ipairs(expired) do table.insert(reply, e) end
return reply
"#;

/// Status: the player's ticket, expiring it first if it is overdue and still queued.
///
/// KEYS: ticket key. ARGV: player id, retention ms, ticket prefix, queue prefix.
/// Returns `{'not_found'}`, `{'ok', ticket}` or `{'expired', ticket}` (expired just now).
const STATUS: &str = r#"
local t, raw = load_own_ticket(KEYS[1], ARGV[1])
if not t then return { 'not_found' } end
if t.status == 'searching' and (tonumber(t.expiresAt) or 0) <= now_ms()
    and redis.call('ZREM', queue_of(ARGV[4], t), t.id) == 1 then
  return { 'expired', expire_ticket(ARGV[3], t, tonumber(ARGV[2])) }
end
return { 'ok', raw }
"#;

/// Cancel: a searching ticket leaves the queue (or, in flight, its lease will see it)
/// and becomes `cancelled`.
///
/// KEYS: ticket key. ARGV: player id (any member of a party's ticket), retention ms,
/// ticket prefix, queue prefix.
/// Returns `{'not_found'}`, `{'cancelled', ticket, orphaned match id or ''}`,
/// `{'unchanged', ticket}` (already cancelled) or `{'final', ticket}` (matched, expired or
/// failed: too late). A queued ticket's pending match (see CLAIM) is orphaned: its group
/// has lost a member for good. In flight, the matcher holding it releases it instead.
const CANCEL: &str = r#"
local t, raw = load_own_ticket(KEYS[1], ARGV[1])
if not t then return { 'not_found' } end
if t.status == 'cancelled' then return { 'unchanged', raw } end
if t.status ~= 'searching' then return { 'final', raw } end
local queued = redis.call('ZREM', queue_of(ARGV[4], t), t.id) == 1
t.status = 'cancelled'
local orphaned = ''
if queued then orphaned = pending_of(t) or '' end
return { 'cancelled', save_final(ARGV[3], t, tonumber(ARGV[2])), orphaned }
"#;

/// Pop: when at least `min_tickets` tickets are queued, looks at the `window` oldest
/// entries and, if their live tickets hold at least `min` players, moves those into a new
/// lease. Every entry looked at counts against the window: overdue tickets become
/// `expired` and entries whose ticket is gone or final are dropped, and both leave the
/// queue, so one pop does bounded work however many dead entries wait at the head (the
/// next pop sees the ones behind).
///
/// KEYS: queue, leases, lease. ARGV: ticket prefix, batch id, min players, window, lease
/// ms, retention ms, min tickets. Returns `{popped tickets, expired tickets, entries
/// removed without being popped, Redis time ms}` (popped is empty when fewer than `min`
/// players were live; they stay queued). The time is the clock of every `createdAt`:
/// match functions measure waits with it.
const POP: &str = r#"
local queue, leases, lease = KEYS[1], KEYS[2], KEYS[3]
local prefix, batch_id = ARGV[1], ARGV[2]
local min, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease_ms, retention_ms, min_tickets = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local popped, expired = {}, {}
local now = now_ms()
if redis.call('ZCARD', queue) < min_tickets then return { popped, expired, 0, now } end
local tickets, raws, ids, dropped, players = {}, {}, {}, {}, 0
for _, id in ipairs(redis.call('ZRANGE', queue, 0, window - 1)) do
  local t, raw = load_ticket(prefix, id)
  if t and t.status == 'searching' then
    if t.expiresAt <= now then
      table.insert(expired, expire_ticket(prefix, t, retention_ms))
      table.insert(dropped, id)
    else
      table.insert(tickets, t)
      table.insert(raws, raw)
      table.insert(ids, id)
      players = players + size_of(t)
    end
  else
    table.insert(dropped, id)
  end
end
unqueue(queue, dropped)
if players < min then return { popped, expired, #dropped, now } end
unqueue(queue, ids)
for first = 1, #ids, 1000 do
  redis.call('SADD', lease, unpack(ids, first, math.min(first + 999, #ids)))
end
redis.call('ZADD', leases, now + lease_ms, batch_id)
return { raws, expired, #dropped, now }
"#;

/// Claim: gives one group of a lease the match id it is allocated under, before the
/// allocation, and records it on its tickets (`pendingMatch`, `pendingSize`, and `lease`:
/// the batch that claimed it).
///
/// The same group keeps its id: if every ticket of the group carries the same pending
/// match, given to a group of this size, the group is that one (an id is given to one
/// group only, and ids are never given again), so the allocation is retried under that
/// id and the orchestrator's one-server-per-match applies. Any other group gets the fresh
/// id, and the pending matches its tickets carried are orphaned: no group can commit them
/// any more.
///
/// KEYS: lease. ARGV: ticket prefix, batch id, fresh match id, ticket ids...
/// Returns `{'claimed', match id, orphaned ids}`, `{'gone', '', orphaned ids}` (a ticket
/// is no longer searching: cancelled since the pop; nothing changed) or `{'lost', '', {}}`
/// (the lease is gone: it expired and its tickets were returned).
const CLAIM: &str = r#"
local lease = KEYS[1]
local prefix, batch_id, fresh = ARGV[1], ARGV[2], ARGV[3]
local size = #ARGV - 3
for i = 4, #ARGV do
  if redis.call('SISMEMBER', lease, ARGV[i]) == 0 then return { 'lost', '', {} } end
end
local orphaned, seen = {}, {}
local function orphan(id)
  if id and not seen[id] then
    seen[id] = true
    table.insert(orphaned, id)
  end
end
local tickets, gone = {}, false
for i = 4, #ARGV do
  local t = load_ticket(prefix, ARGV[i])
  if t and t.status == 'searching' then
    table.insert(tickets, t)
  else
    gone = true
    if t then orphan(pending_of(t)) end
  end
end
if gone then return { 'gone', '', orphaned } end
local kept = pending_of(tickets[1])
local same = kept ~= nil and tonumber(tickets[1].pendingSize) == size
for _, t in ipairs(tickets) do
  if pending_of(t) ~= kept then same = false end
end
local match_id = fresh
if same then
  match_id = kept
else
  for _, t in ipairs(tickets) do orphan(pending_of(t)) end
end
for _, t in ipairs(tickets) do
  t.pendingMatch, t.pendingSize, t.lease = match_id, size, batch_id
  save_searching(prefix, t)
end
return { 'claimed', match_id, orphaned }
"#;

/// Commit: one group of a lease becomes a match, all or nothing. If any of its tickets
/// is no longer searching (cancelled meanwhile), no match is written, the others go back
/// to the queue and the match id is retired from them (its server is to be released).
///
/// Committing again is safe: a match already written by this lease answers `matched`
/// again (so a commit whose reply was lost can be retried).
///
/// When the lease is gone (it expired and the reaper returned the tickets), the match is
/// the releaser's only if no other lease has claimed it since (the same group popped
/// again): then it is retired from the tickets and `release` is answered; otherwise
/// `taken` (its server is the other lease's now).
///
/// KEYS: lease, leases, match key, queue. ARGV: ticket prefix, batch id, match id,
/// server url, game id, retention ms, match JSON, what matched tickets also carry (a JSON
/// object: `teams`, `region`, `quality`), ticket ids...
/// Returns `{'matched', tickets}`, `{'abandoned', returned ids}`, `{'lost', {'release'}}`
/// or `{'lost', {'taken'}}`.
const COMMIT: &str = r#"
local lease, leases, match_key, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, batch_id, match_id = ARGV[1], ARGV[2], ARGV[3]
local url, game_id, retention_ms = ARGV[4], ARGV[5], tonumber(ARGV[6])
local ok_extra, extra = pcall(cjson.decode, ARGV[8])
if not ok_extra or type(extra) ~= 'table' then extra = {} end
if redis.call('EXISTS', match_key) == 1 then
  local raws, ours = {}, true
  for i = 9, #ARGV do
    local raw = redis.call('GET', prefix .. ARGV[i])
    local ok, t = false, nil
    if raw then ok, t = pcall(cjson.decode, raw) end
    if ok and type(t) == 'table' and t.lease == batch_id then table.insert(raws, raw) else ours = false end
  end
  if ours then return { 'matched', raws } end
  return { 'lost', { 'taken' } }
end
local held = redis.call('EXISTS', lease) == 1
for i = 9, #ARGV do
  if held and redis.call('SISMEMBER', lease, ARGV[i]) == 0 then held = false end
end
if not held then
  local mine = {}
  for i = 9, #ARGV do
    local t = load_ticket(prefix, ARGV[i])
    if t and t.status == 'searching' and pending_of(t) == match_id then
      if t.lease ~= batch_id then return { 'lost', { 'taken' } } end
      table.insert(mine, t)
    end
  end
  for _, t in ipairs(mine) do
    forget_pending(t)
    save_searching(prefix, t)
  end
  return { 'lost', { 'release' } }
end
local tickets, gone = {}, false
for i = 9, #ARGV do
  local t = load_ticket(prefix, ARGV[i])
  if t and t.status == 'searching' then table.insert(tickets, t) else gone = true end
end
for i = 9, #ARGV do redis.call('SREM', lease, ARGV[i]) end
if gone then
  local ids = {}
  for _, t in ipairs(tickets) do
    if pending_of(t) == match_id then
      forget_pending(t)
      save_searching(prefix, t)
    end
    table.insert(ids, t.id)
  end
  requeue(queue, tickets)
  close_lease_if_empty(lease, leases, batch_id)
  return { 'abandoned', ids }
end
local matched = {}
for _, t in ipairs(tickets) do
  forget_pending(t)
  t.status = 'matched'
  t.matchId = match_id
  t.server = { url = url, gameId = game_id }
  for k, v in pairs(extra) do t[k] = v end
  table.insert(matched, save_final(prefix, t, retention_ms))
end
redis.call('SET', match_key, ARGV[7], 'PX', retention_ms)
close_lease_if_empty(lease, leases, batch_id)
return { 'matched', matched }
"#;

/// Give back: tickets of a lease return to the queue, at the head by `seq` (after a
/// failed allocation, a lease that expired, or because the match function left them
/// out). Counted returns add an attempt; a ticket at `max_attempts` becomes `failed`
/// instead. Tickets keep their pending match, so the same group retries under it.
///
/// KEYS: lease, leases, queue. ARGV: ticket prefix, batch id, count ('1'/'0'),
/// only-if-expired ('1'/'0'), max attempts, reason, retention ms, ticket ids... (none =
/// the whole lease). Returns `{'returned', returned ids, failed tickets}`, `{'lost', {},
/// {}}` (no such lease) or `{'held', {}, {}}` (only-if-expired, and it has not).
const GIVE_BACK: &str = r#"
local lease, leases, queue = KEYS[1], KEYS[2], KEYS[3]
local prefix, batch_id = ARGV[1], ARGV[2]
local count, only_if_expired = ARGV[3] == '1', ARGV[4] == '1'
local max_attempts, reason, retention_ms = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
if redis.call('EXISTS', lease) == 0 then
  redis.call('ZREM', leases, batch_id)
  return { 'lost', {}, {} }
end
if only_if_expired then
  local deadline = tonumber(redis.call('ZSCORE', leases, batch_id))
  if deadline and deadline > now_ms() then return { 'held', {}, {} } end
end
local ids = {}
if #ARGV >= 8 then
  for i = 8, #ARGV do table.insert(ids, ARGV[i]) end
else
  ids = redis.call('SMEMBERS', lease)
end
local back, back_ids, failed = {}, {}, {}
for _, id in ipairs(ids) do
  if redis.call('SREM', lease, id) == 1 then
    local t = load_ticket(prefix, id)
    if t and t.status == 'searching' then
      if count then t.attempts = t.attempts + 1 end
      if count and t.attempts >= max_attempts then
        t.status = 'failed'
        t.reason = reason
        table.insert(failed, save_final(prefix, t, retention_ms))
      else
        if count then save_searching(prefix, t) end
        table.insert(back, t)
        table.insert(back_ids, id)
      end
    end
  end
end
requeue(queue, back)
close_lease_if_empty(lease, leases, batch_id)
return { 'returned', back_ids, failed }
"#;

/// Sweep: expires overdue tickets at the head of the queue (the queue is in join order,
/// so the overdue ones are all there), and drops entries whose ticket is gone or final.
/// Looks at `limit` entries at most.
///
/// KEYS: queue. ARGV: ticket prefix, retention ms, limit. Returns the expired tickets.
const SWEEP: &str = r#"
local queue, prefix = KEYS[1], ARGV[1]
local retention_ms, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local expired, dropped = {}, {}
for _, id in ipairs(redis.call('ZRANGE', queue, 0, limit - 1)) do
  local t = load_ticket(prefix, id)
  if t and t.status == 'searching' and t.expiresAt > now then break end
  table.insert(dropped, id)
  if t and t.status == 'searching' then table.insert(expired, expire_ticket(prefix, t, retention_ms)) end
end
unqueue(queue, dropped)
return expired
"#;

/// Upgrade: turns a queue left by an older matchmaker (a list of ticket ids) into the
/// sorted set by `seq`, keeping only searching tickets. One atomic step, O(n) once.
///
/// KEYS: queue. ARGV: ticket prefix. Returns the number of tickets moved, or -1 when the
/// queue is not a list (nothing to do).
const UPGRADE: &str = r#"
local queue, prefix = KEYS[1], ARGV[1]
if redis.call('TYPE', queue).ok ~= 'list' then return -1 end
local ids = redis.call('LRANGE', queue, 0, -1)
redis.call('DEL', queue)
local tickets = {}
for _, id in ipairs(ids) do
  local t = load_ticket(prefix, id)
  if t and t.status == 'searching' then table.insert(tickets, t) end
end
requeue(queue, tickets)
return #tickets
"#;

/// The compiled scripts (each sent by SHA, loaded on first use).
pub struct Scripts {
    pub join: redis::Script,
    pub status: redis::Script,
    pub cancel: redis::Script,
    pub pop: redis::Script,
    pub commit: redis::Script,
    pub give_back: redis::Script,
    pub sweep: redis::Script,
    pub claim: redis::Script,
    pub upgrade: redis::Script,
}

impl Scripts {
    pub fn new() -> Self {
        let script = |body: &str| redis::Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            join: script(JOIN),
            status: script(STATUS),
            cancel: script(CANCEL),
            pop: script(POP),
            commit: script(COMMIT),
            give_back: script(GIVE_BACK),
            sweep: script(SWEEP),
            claim: script(CLAIM),
            upgrade: script(UPGRADE),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
