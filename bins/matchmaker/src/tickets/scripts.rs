//! The Lua scripts behind every change to tickets, the queue and leases.
//!
//! Each script is one atomic step in Redis, so no reader ever sees half a change and two
//! matchers (or a matcher and a cancel) can never both win a ticket. Together they keep
//! these invariants:
//!
//! - a `searching` ticket is in exactly one place: the queue, or one lease (in flight);
//! - the queue is sorted by `seq` (join order), oldest at the head;
//! - only `searching` changes; every other status is final;
//! - a match is written only if every one of its tickets is still `searching` in the
//!   lease that popped it.
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

local function load_ticket(prefix, id)
  local raw = redis.call('GET', prefix .. id)
  if not raw then return nil end
  local ok, t = pcall(cjson.decode, raw)
  if not ok or type(t) ~= 'table' then return nil end
  t.seq = tonumber(t.seq) or 0
  t.expiresAt = tonumber(t.expiresAt) or 0
  t.attempts = tonumber(t.attempts) or 0
  return t
end

-- The ticket under `key` and its raw JSON, if it belongs to `player` (another player's
-- ticket reads as missing).
local function load_own_ticket(key, player)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local ok, t = pcall(cjson.decode, raw)
  if not ok or type(t) ~= 'table' or t.playerId ~= player then return nil end
  return t, raw
end

-- A final ticket stays readable for retention_ms after its last change.
local function save_final(prefix, t, retention_ms)
  local raw = cjson.encode(t)
  redis.call('SET', prefix .. t.id, raw, 'PX', retention_ms)
  return raw
end

local function expire_ticket(prefix, t, retention_ms)
  t.status = 'expired'
  t.reason = 'no match was found before the ticket expired'
  return save_final(prefix, t, retention_ms)
end

-- Puts searching tickets back at the head of the queue. Tickets of other failed
-- batches may already wait there, so both runs are merged by seq: the queue stays in
-- join order however many batches come back at once. Only the returned tickets and
-- the (few) older ones ahead of them are read.
local function return_to_head(queue, prefix, tickets)
  if #tickets == 0 then return end
  table.sort(tickets, function(a, b) return a.seq < b.seq end)
  local newest = tickets[#tickets].seq
  local ahead = {}
  local offset = 0
  local scanning = true
  while scanning do
    local chunk = redis.call('LRANGE', queue, offset, offset + 31)
    if #chunk == 0 then break end
    for _, id in ipairs(chunk) do
      local t = load_ticket(prefix, id)
      if t == nil or t.seq > newest then
        scanning = false
        break
      end
      table.insert(ahead, { id = id, seq = t.seq })
    end
    offset = offset + #chunk
  end
  if #ahead > 0 then redis.call('LTRIM', queue, #ahead, -1) end
  local merged = {}
  local i, j = 1, 1
  while i <= #tickets or j <= #ahead do
    if j > #ahead or (i <= #tickets and tickets[i].seq < ahead[j].seq) then
      table.insert(merged, tickets[i].id)
      i = i + 1
    else
      table.insert(merged, ahead[j].id)
      j = j + 1
    end
  end
  for k = #merged, 1, -1 do redis.call('LPUSH', queue, merged[k]) end
end

local function close_lease_if_empty(lease, leases, batch_id)
  if redis.call('SCARD', lease) == 0 then
    redis.call('DEL', lease)
    redis.call('ZREM', leases, batch_id)
  end
end
"#;

/// Join: return the player's live ticket, or create one at the tail of the queue.
///
/// KEYS: queue, player's ticket index, queue seq counter.
/// ARGV: ticket prefix, new ticket id, player id, ttl ms, key ttl ms, retention ms.
/// Returns `{'existing', ticket}` or `{'created', ticket, expired-old-ticket-or-''}`.
const JOIN: &str = r#"
local queue, index, seq_key = KEYS[1], KEYS[2], KEYS[3]
local prefix, id, player = ARGV[1], ARGV[2], ARGV[3]
local ttl_ms, key_ttl_ms, retention_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local expired = ''
local current = redis.call('GET', index)
if current then
  local t = load_ticket(prefix, current)
  if t and t.status == 'searching' and t.playerId == player then
    -- Past its deadline but in flight: its allocation decides, so it is still live.
    if t.expiresAt > now or redis.call('LREM', queue, 1, current) == 0 then
      return { 'existing', cjson.encode(t) }
    end
    expired = expire_ticket(prefix, t, retention_ms)
  end
end
local t = {
  id = id, playerId = player, status = 'searching', createdAt = now,
  expiresAt = now + ttl_ms, seq = redis.call('INCR', seq_key), attempts = 0,
}
local raw = cjson.encode(t)
redis.call('SET', prefix .. id, raw, 'PX', key_ttl_ms)
redis.call('RPUSH', queue, id)
redis.call('SET', index, id, 'PX', key_ttl_ms)
return { 'created', raw, expired }
"#;

/// Status: the player's ticket, expiring it first if it is overdue and still queued.
///
/// KEYS: ticket key, queue. ARGV: player id, retention ms, ticket prefix.
/// Returns `{'not_found'}`, `{'ok', ticket}` or `{'expired', ticket}` (expired just now).
const STATUS: &str = r#"
local t, raw = load_own_ticket(KEYS[1], ARGV[1])
if not t then return { 'not_found' } end
if t.status == 'searching' and (tonumber(t.expiresAt) or 0) <= now_ms()
    and redis.call('LREM', KEYS[2], 1, t.id) == 1 then
  return { 'expired', expire_ticket(ARGV[3], t, tonumber(ARGV[2])) }
end
return { 'ok', raw }
"#;

/// Cancel: a searching ticket leaves the queue (or, in flight, its lease will see it)
/// and becomes `cancelled`.
///
/// KEYS: ticket key, queue. ARGV: player id, retention ms, ticket prefix.
/// Returns `{'not_found'}`, `{'cancelled', ticket}`, `{'unchanged', ticket}` (already
/// cancelled) or `{'final', ticket}` (matched, expired or failed: too late).
const CANCEL: &str = r#"
local t, raw = load_own_ticket(KEYS[1], ARGV[1])
if not t then return { 'not_found' } end
if t.status == 'cancelled' then return { 'unchanged', raw } end
if t.status ~= 'searching' then return { 'final', raw } end
redis.call('LREM', KEYS[2], 1, t.id)
t.status = 'cancelled'
return { 'cancelled', save_final(ARGV[3], t, tonumber(ARGV[2])) }
"#;

/// Pop: when at least `min` tickets are queued, moves up to `window` searching tickets
/// from the head into a new lease. Overdue tickets met on the way become `expired`;
/// entries whose ticket is gone or final are dropped.
///
/// KEYS: queue, leases, lease. ARGV: ticket prefix, batch id, min, window, lease ms,
/// retention ms. Returns `{popped tickets, expired tickets}` (popped is empty when fewer
/// than `min` could be taken; those go back where they were).
const POP: &str = r#"
local queue, leases, lease = KEYS[1], KEYS[2], KEYS[3]
local prefix, batch_id = ARGV[1], ARGV[2]
local min, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease_ms, retention_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local popped, expired = {}, {}
if redis.call('LLEN', queue) < min then return { popped, expired } end
local now = now_ms()
local tickets = {}
while #tickets < window do
  local id = redis.call('LPOP', queue)
  if not id then break end
  local t = load_ticket(prefix, id)
  if t and t.status == 'searching' then
    if t.expiresAt <= now then
      table.insert(expired, expire_ticket(prefix, t, retention_ms))
    else
      table.insert(tickets, t)
    end
  end
end
if #tickets < min then
  for k = #tickets, 1, -1 do redis.call('LPUSH', queue, tickets[k].id) end
  return { popped, expired }
end
for _, t in ipairs(tickets) do
  redis.call('SADD', lease, t.id)
  table.insert(popped, cjson.encode(t))
end
redis.call('ZADD', leases, now + lease_ms, batch_id)
return { popped, expired }
"#;

/// Commit: one group of a lease becomes a match, all or nothing. If any of its tickets
/// is no longer searching (cancelled meanwhile), no match is written and the others go
/// back to the head of the queue.
///
/// KEYS: lease, leases, match key, queue. ARGV: ticket prefix, batch id, match id,
/// server url, game id, retention ms, match JSON, ticket ids...
/// Returns `{'matched', tickets}`, `{'abandoned', returned ids}` or `{'lost', {}}` (the
/// lease is gone: it expired and its tickets were returned).
const COMMIT: &str = r#"
local lease, leases, match_key, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, batch_id, match_id = ARGV[1], ARGV[2], ARGV[3]
local url, game_id, retention_ms = ARGV[4], ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', lease) == 0 then return { 'lost', {} } end
local tickets, gone = {}, false
for i = 8, #ARGV do
  if redis.call('SISMEMBER', lease, ARGV[i]) == 0 then return { 'lost', {} } end
  local t = load_ticket(prefix, ARGV[i])
  if t and t.status == 'searching' then table.insert(tickets, t) else gone = true end
end
for i = 8, #ARGV do redis.call('SREM', lease, ARGV[i]) end
if gone then
  return_to_head(queue, prefix, tickets)
  close_lease_if_empty(lease, leases, batch_id)
  local ids = {}
  for _, t in ipairs(tickets) do table.insert(ids, t.id) end
  return { 'abandoned', ids }
end
local matched = {}
for _, t in ipairs(tickets) do
  t.status = 'matched'
  t.matchId = match_id
  t.server = { url = url, gameId = game_id }
  table.insert(matched, save_final(prefix, t, retention_ms))
end
redis.call('SET', match_key, ARGV[7], 'PX', retention_ms)
close_lease_if_empty(lease, leases, batch_id)
return { 'matched', matched }
"#;

/// Give back: tickets of a lease return to the head of the queue (after a failed
/// allocation, a lease that expired, or because the match function left them out).
/// Counted returns add an attempt; a ticket at `max_attempts` becomes `failed` instead.
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
        if count then redis.call('SET', prefix .. id, cjson.encode(t), 'KEEPTTL') end
        table.insert(back, t)
        table.insert(back_ids, id)
      end
    end
  end
end
return_to_head(queue, prefix, back)
close_lease_if_empty(lease, leases, batch_id)
return { 'returned', back_ids, failed }
"#;

/// Sweep: expires overdue tickets at the head of the queue (the queue is in join order,
/// so the overdue ones are all there), and drops entries whose ticket is gone or final.
///
/// KEYS: queue. ARGV: ticket prefix, retention ms, limit. Returns the expired tickets.
const SWEEP: &str = r#"
local queue, prefix = KEYS[1], ARGV[1]
local retention_ms, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local expired = {}
for _ = 1, limit do
  local id = redis.call('LINDEX', queue, 0)
  if not id then break end
  local t = load_ticket(prefix, id)
  if t and t.status == 'searching' and t.expiresAt > now then break end
  redis.call('LPOP', queue)
  if t and t.status == 'searching' then table.insert(expired, expire_ticket(prefix, t, retention_ms)) end
end
return expired
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
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
