//! The seed's queue scripts (a Redis list), verbatim as they were before the queue became a
//! sorted set, kept only as the benchmark's baseline: `LREM` on cancel (O(queue length))
//! and a pop that walks every overdue ticket at the head in one call.

use std::time::Duration;

use mm_shared::duration::millis;
use mm_shared::protocol::keys;
use redis::aio::ConnectionManager;

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

const CANCEL: &str = r#"
local t, raw = load_own_ticket(KEYS[1], ARGV[1])
if not t then return { 'not_found' } end
if t.status == 'cancelled' then return { 'unchanged', raw } end
if t.status ~= 'searching' then return { 'final', raw } end
redis.call('LREM', KEYS[2], 1, t.id)
t.status = 'cancelled'
return { 'cancelled', save_final(ARGV[3], t, tonumber(ARGV[2])) }
"#;

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

/// The seed's join, cancel and pop against `queue:default` as a list.
pub struct SeedList {
    redis: ConnectionManager,
    join: redis::Script,
    cancel: redis::Script,
    pop: redis::Script,
    ttl: Duration,
}

impl SeedList {
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Self {
        let script = |body: &str| redis::Script::new(&format!("{PRELUDE}\n{body}"));
        Self { redis, join: script(JOIN), cancel: script(CANCEL), pop: script(POP), ttl }
    }

    /// Joins `player`; returns the new ticket's id.
    pub async fn join(&self, player: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let reply: Vec<String> = self
            .join
            .key(keys::QUEUE_DEFAULT)
            .key(keys::player_ticket(player))
            .key(keys::QUEUE_DEFAULT_SEQ)
            .arg(keys::TICKET_PREFIX)
            .arg(&id)
            .arg(player)
            .arg(millis(self.ttl))
            .arg(millis(self.ttl + RETENTION))
            .arg(millis(RETENTION))
            .invoke_async(&mut self.redis.clone())
            .await
            .expect("seed join");
        assert_eq!(reply.first().map(String::as_str), Some("created"), "{reply:?}");
        id
    }

    pub async fn cancel(&self, player: &str, ticket_id: &str) {
        let reply: Vec<String> = self
            .cancel
            .key(keys::ticket(ticket_id))
            .key(keys::QUEUE_DEFAULT)
            .arg(player)
            .arg(millis(RETENTION))
            .arg(keys::TICKET_PREFIX)
            .invoke_async(&mut self.redis.clone())
            .await
            .expect("seed cancel");
        assert_eq!(reply.first().map(String::as_str), Some("cancelled"), "{reply:?}");
    }

    /// Pops a batch of `size`; returns how many tickets it took and how many it expired.
    pub async fn pop(&self, batch_id: &str, size: usize) -> (usize, usize) {
        let (popped, expired): (Vec<String>, Vec<String>) = self
            .pop
            .key(keys::QUEUE_DEFAULT)
            .key(keys::LEASES_DEFAULT)
            .key(keys::lease(batch_id))
            .arg(keys::TICKET_PREFIX)
            .arg(batch_id)
            .arg(size)
            .arg(size)
            .arg(30_000)
            .arg(millis(RETENTION))
            .invoke_async(&mut self.redis.clone())
            .await
            .expect("seed pop");
        (popped.len(), expired.len())
    }
}

const RETENTION: Duration = Duration::from_secs(600);
