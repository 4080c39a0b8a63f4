//! The `session` micro service: accounts and login tokens.
//!
//! - `session.login` registers a player id on its first login (the password it gives is
//!   the player's from then on) and afterwards checks the password; either way it issues a
//!   token: a JWT signed with the service's Ed25519 key, valid for `session.ttl`
//!   ([`crate::tokens`]). Gateways check tokens themselves with the public key.
//! - `session.verify` says whose a token is (signature, expiry, and that its session was
//!   not ended): for tools and other services; gateways no longer ask it.
//! - `session.logout` ends a token: its session goes, and its revocation is written to KV
//!   `revoked_tokens` (which gateways follow) before the answer.
//!
//! Passwords are stored as a random salt and SHA-256(salt ‖ password). A fast hash is
//! enough for a simulation whose players are synthetic; a real system would use a slow,
//! memory-hard function (Argon2id, scrypt) so that a leaked table is costly to crack.
//!
//! **The account table is bounded**, so a flood of first logins cannot fill Redis:
//! - an account lives `session.account_ttl` (30 days) from its last successful login
//!   (the key's own expiry, and its score in the `accounts` index), and never less than
//!   its live tokens: a token in use keeps its account;
//! - at most `session.max_accounts` accounts are live; past that a first login is refused
//!   with a 503 that says so, while existing players still log in;
//! - a player holds at most `session.tokens_per_player` tokens (2; the account lists
//!   their ids): a login past it ends (and revokes) the oldest, so logging in again and
//!   again cannot fill Redis with live tokens;
//! - a token never outlives its account: it lives `session.ttl` from its login, and the
//!   account `session.account_ttl` (longer, checked at start) from its last login;
//! - each registration also forgets a bounded batch of expired accounts from the index,
//!   with the store's balance and purchase history they left behind, and a new account
//!   never inherits what an earlier account of the same id left.
//!
//! Every change is one Lua script: registering (with the cap check and the first token),
//! and logging in (refreshing the account and issuing the token only if the account is
//! still the one whose password was checked, so an id that expired and was registered
//! again meanwhile cannot be logged into with the old password).

use std::sync::Arc;

use mm_shared::duration::millis;
use mm_shared::nats::ServiceError;
use mm_shared::protocol::{LoginReply, LoginRequest, SessionInfo, TokenRequest, keys, limits, subjects};
use redis::aio::ConnectionManager;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::SessionConfig;
use crate::micro::{MicroService, unavailable};
use crate::tokens::{REVOCATION_OUTBOX, Tokens, outbox_line};

/// Expired accounts one registration forgets from the index at most (each was already
/// gone from Redis as a key; this bounds the script's work).
const PURGE_BATCH: u32 = 100;

/// Times a login re-reads an account that changed under it before giving up with a 503.
const LOGIN_ATTEMPTS: usize = 3;

/// Redis time in Unix ms, inside a script (the same clock as `PX` expiries).
const NOW_MS: &str = r#"
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
"#;

/// What the login scripts share. KEYS: account, accounts index, the new token's session
/// key, the revocation outbox. ARGV: 1 player id, 2 account JSON (the new one, or the one
/// whose password was checked), 3 account ttl ms, 4 session ttl ms, 5 tokens per player,
/// 6 the new token's id, then the parts around the variable of the session key (7, 8),
/// the store balance (9, 10) and purchases (11, 12), so that a script can build those
/// keys for any token id or player id. The account keeps the ids of its live tokens,
/// oldest first; one ended here is revoked through the outbox
/// ([`crate::tokens::REVOCATION_OUTBOX`]) in the same step.
const PRELUDE: &str = r#"
local function key_of(part, of) return ARGV[part] .. of .. ARGV[part + 1] end
-- Drops what the store kept for `of`.
local function forget_store(of)
  redis.call('DEL', key_of(9, of), key_of(11, of))
end
-- Writes `account` with the new token (ending its oldest past the limit) and issues it;
-- returns how many tokens it ended.
local function store_with_token(account, ttl)
  local ended = 0
  local tokens = account.tokens or {}
  tokens[#tokens + 1] = ARGV[6]
  while #tokens > tonumber(ARGV[5]) do
    local oldest = table.remove(tokens, 1)
    local session = key_of(7, oldest)
    local left = redis.call('PTTL', session)
    if left > 0 then
      redis.call('DEL', session)
      redis.call('RPUSH', KEYS[4], oldest .. ' ' .. ARGV[1] .. ' ' .. string.format('%d', now_ms() + left))
      ended = ended + 1
    end
  end
  account.tokens = tokens
  redis.call('SET', KEYS[1], cjson.encode(account), 'PX', ttl)
  redis.call('SET', KEYS[3], ARGV[1], 'PX', tonumber(ARGV[4]))
  return ended
end
"#;

/// Registers an account (ARGV 13: max accounts, 14: purge batch).
/// Returns `{'registered', ''}`, `{'exists', account JSON}` or `{'full', live count}`.
const REGISTER: &str = r#"
local existing = redis.call('GET', KEYS[1])
if existing then return { 'exists', existing } end
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[14]))
for _, gone in ipairs(expired) do
  redis.call('ZREM', KEYS[2], gone)
  forget_store(gone)
end
local live = redis.call('ZCARD', KEYS[2]) - redis.call('ZCOUNT', KEYS[2], '-inf', now)
if live >= tonumber(ARGV[13]) then return { 'full', tostring(live) } end
local ttl = tonumber(ARGV[3])
-- Whatever an earlier account of this id left is not the new player's.
forget_store(ARGV[1])
store_with_token(cjson.decode(ARGV[2]), ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return { 'registered', '' }
"#;

/// Logs into the account whose password was checked, if it is still that account (same
/// salt and hash). Returns 0 (gone, or another now), or 1 + the number of tokens the
/// login ended (refreshed, token issued).
const LOGIN: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local account, checked = cjson.decode(raw), cjson.decode(ARGV[2])
if account.salt ~= checked.salt or account.hash ~= checked.hash then return 0 end
local ttl = tonumber(ARGV[3])
local ended = store_with_token(account, ttl)
redis.call('ZADD', KEYS[2], now_ms() + ttl, ARGV[1])
return 1 + ended
"#;

/// Ends a session and queues its revocation, in one step. KEYS: the session key, the
/// revocation outbox. ARGV: the outbox line. Returns the player id it had, or nil.
const LOGOUT: &str = r#"
local id = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
return id
"#;

/// An account as stored under `player:{id}`. The scripts add `tokens` (the live tokens,
/// oldest first), which the password check does not read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Account {
    /// 16 random bytes, hex.
    salt: String,
    /// SHA-256(salt bytes ‖ password bytes), hex.
    hash: String,
    created_at: u64,
}

/// Accounts and tokens in Redis.
#[derive(Clone)]
pub struct Sessions {
    /// A logout leaves the player's party (cancelling its searching ticket).
    parties: Option<crate::party::Parties>,
    redis: ConnectionManager,
    rng: Arc<SystemRandom>,
    config: SessionConfig,
    tokens: Tokens,
    register: Arc<redis::Script>,
    login: Arc<redis::Script>,
    logout: Arc<redis::Script>,
}

/// How a first login's registration went.
enum Registration {
    Registered,
    /// Someone registered the id first: check the password against theirs.
    Exists(String),
    /// `session.max_accounts` live accounts already (the count).
    Full(u64),
}

impl Sessions {
    pub fn new(redis: ConnectionManager, config: &SessionConfig, tokens: Tokens) -> Self {
        Self {
            parties: None,
            redis,
            rng: Arc::new(SystemRandom::new()),
            config: config.clone(),
            tokens,
            register: Arc::new(redis::Script::new(&format!("{NOW_MS}{PRELUDE}{REGISTER}"))),
            login: Arc::new(redis::Script::new(&format!("{NOW_MS}{PRELUDE}{LOGIN}"))),
            logout: Arc::new(redis::Script::new(LOGOUT)),
        }
    }

    /// Logging out leaves the player's party too.
    pub fn with_parties(mut self, parties: crate::party::Parties) -> Self {
        self.parties = Some(parties);
        self
    }

    /// Registers or checks the player, then issues a token.
    pub async fn login(&self, request: LoginRequest) -> Result<LoginReply, ServiceError> {
        limits::check_id("player id", &request.id).map_err(ServiceError::bad_request)?;
        limits::check_password(&request.password).map_err(ServiceError::bad_request)?;
        let key = keys::player(&request.id);
        let (token, claims) = self.tokens.issue(&request.id)?;
        let mut redis = self.redis.clone();
        for _ in 0..LOGIN_ATTEMPTS {
            let stored: Option<String> =
                redis::cmd("GET").arg(&key).query_async(&mut redis).await.map_err(unavailable)?;
            let stored = match stored {
                Some(stored) => stored,
                None => match self.register(&request, &claims.jti).await? {
                    Registration::Registered => {
                        metrics::counter!("mm_session_logins_total", "result" => "registered").increment(1);
                        return Ok(LoginReply { token, player_id: request.id });
                    }
                    Registration::Exists(stored) => stored,
                    Registration::Full(live) => {
                        metrics::counter!("mm_session_logins_total", "result" => "accounts_full")
                            .increment(1);
                        return Err(ServiceError::unavailable(format!(
                            "no new accounts for now: {live} accounts exist, the most allowed \
                             (session.max_accounts); existing players can still log in"
                        )));
                    }
                },
            };
            self.check_password(&request, &stored)?;
            let mut login = self.login.prepare_invoke();
            self.keys_and_args(&mut login, &request.id, &stored, &claims.jti);
            let issued: i64 = login.invoke_async(&mut redis).await.map_err(unavailable)?;
            if issued >= 1 {
                metrics::counter!("mm_session_logins_total", "result" => "ok").increment(1);
                if issued > 1 {
                    // A token this login ended is revoked in a moment (or by the next flush).
                    self.tokens.flush_soon();
                }
                return Ok(LoginReply { token, player_id: request.id });
            }
            // The account expired or was registered anew since it was read: look again.
        }
        Err(ServiceError::unavailable(format!("the account of {} kept changing; try again", request.id)))
    }

    /// A first login: the new account, its index entry and its first token, in one script.
    async fn register(&self, request: &LoginRequest, token_id: &str) -> Result<Registration, ServiceError> {
        let salt = self.random::<16>()?;
        let account = Account {
            salt: hex(&salt),
            hash: hex(&password_hash(&salt, &request.password)),
            created_at: mm_shared::protocol::now_ms(),
        };
        let json = serde_json::to_string(&account)
            .map_err(|err| ServiceError::internal(format!("cannot encode the account: {err}")))?;
        let mut register = self.register.prepare_invoke();
        self.keys_and_args(&mut register, &request.id, &json, token_id);
        register.arg(self.config.max_accounts).arg(PURGE_BATCH);
        let (outcome, value): (String, String) =
            register.invoke_async(&mut self.redis.clone()).await.map_err(unavailable)?;
        match outcome.as_str() {
            "registered" => Ok(Registration::Registered),
            "exists" => Ok(Registration::Exists(value)),
            "full" => Ok(Registration::Full(value.parse().unwrap_or(self.config.max_accounts))),
            other => Err(ServiceError::internal(format!("the register script answered `{other}`"))),
        }
    }

    /// The keys and arguments both scripts take (see [`PRELUDE`]).
    fn keys_and_args(
        &self,
        script: &mut redis::ScriptInvocation<'_>,
        id: &str,
        account: &str,
        token_id: &str,
    ) {
        script
            .key(keys::player(id))
            .key(keys::ACCOUNTS)
            .key(keys::session(token_id))
            .key(REVOCATION_OUTBOX)
            .arg(id)
            .arg(account)
            .arg(millis(self.config.account_ttl))
            .arg(millis(self.config.ttl))
            .arg(self.config.tokens_per_player)
            .arg(token_id);
        for key in [keys::session, keys::player_balance, keys::player_purchases] {
            let (before, after) = around(key);
            script.arg(before).arg(after);
        }
    }

    /// 401 unless `password` is the one `stored` was made with.
    fn check_password(&self, request: &LoginRequest, stored: &str) -> Result<(), ServiceError> {
        let account: Account = serde_json::from_str(stored).map_err(|err| {
            ServiceError::internal(format!("account of {} is unreadable: {err}", request.id))
        })?;
        let salt = unhex(&account.salt)
            .ok_or_else(|| ServiceError::internal(format!("account of {} has a bad salt", request.id)))?;
        let expected = unhex(&account.hash)
            .ok_or_else(|| ServiceError::internal(format!("account of {} has a bad hash", request.id)))?;
        if !same_bytes(&password_hash(&salt, &request.password), &expected) {
            metrics::counter!("mm_session_logins_total", "result" => "wrong_password").increment(1);
            return Err(ServiceError::new(401, format!("wrong password for player {}", request.id)));
        }
        Ok(())
    }

    /// Whose token this is: signed by one of the keys, not expired, its session not
    /// ended (logged out, or replaced by a login past the limit).
    pub async fn verify(&self, request: TokenRequest) -> Result<SessionInfo, ServiceError> {
        let claims = match self.tokens.check(&request.token).await {
            Ok(claims) => claims,
            Err(err) => {
                metrics::counter!("mm_session_verifications_total", "result" => "unknown").increment(1);
                return Err(err);
            }
        };
        let player: Option<String> = redis::cmd("GET")
            .arg(keys::session(&claims.jti))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let live = player.as_deref() == Some(claims.sub.as_str());
        let result = if live { "ok" } else { "unknown" };
        metrics::counter!("mm_session_verifications_total", "result" => result).increment(1);
        live.then_some(SessionInfo { player_id: claims.sub }).ok_or_else(invalid_token)
    }

    /// Ends the token (a token already ended is fine) and revokes it: the answer comes
    /// once gateways can see the revocation (KV `revoked_tokens`); if KV cannot be written,
    /// a 503 says so and the outbox writes it within seconds. Takes its player out of their
    /// party too: a party's searching ticket is cancelled when a member logs out.
    pub async fn logout(&self, request: TokenRequest) -> Result<(), ServiceError> {
        let claims = self.tokens.check(&request.token).await?;
        let line = outbox_line(&claims.jti, &claims.sub, claims.expires_at_ms());
        let player: Option<String> = self
            .logout
            .key(keys::session(&claims.jti))
            .key(REVOCATION_OUTBOX)
            .arg(&line)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        self.tokens.revoke_now(&claims).await?;
        let _: i64 = redis::cmd("LREM")
            .arg(REVOCATION_OUTBOX)
            .arg(1)
            .arg(&line)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        if let (Some(player), Some(parties)) = (player, &self.parties) {
            parties.leave_party(&player).await?;
        }
        Ok(())
    }

    fn random<const N: usize>(&self) -> Result<[u8; N], ServiceError> {
        let mut bytes = [0u8; N];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| ServiceError::internal("the system random generator failed"))?;
        Ok(bytes)
    }
}

/// Starts the `session` micro service, with the operator's rating endpoints
/// (`session.rating.get/set`: NATS permissions let only the operator call them).
pub async fn serve(
    nats: &async_nats::Client,
    sessions: Sessions,
    ratings: crate::ratings::Ratings,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<MicroService> {
    let mut service = MicroService::start(
        nats,
        subjects::SESSION_SERVICE,
        "Player accounts and login tokens",
        concurrency,
        shutdown,
    )
    .await?;
    service
        .route("login", subjects::SESSION_LOGIN, sessions.clone(), |s, r| async move { s.login(r).await })
        .await?;
    service
        .route("verify", subjects::SESSION_VERIFY, sessions.clone(), |s, r| async move { s.verify(r).await })
        .await?;
    service
        .route("logout", subjects::SESSION_LOGOUT, sessions, |s, r| async move { s.logout(r).await })
        .await?;
    service
        .route(
            "rating_get",
            subjects::SESSION_RATING_GET,
            ratings.clone(),
            |r, q| async move { r.get(q).await },
        )
        .await?;
    service
        .route("rating_set", subjects::SESSION_RATING_SET, ratings, |r, q| async move { r.set(q).await })
        .await?;
    Ok(service)
}

/// The parts of a key around its variable (`player:` and `:balance` around the id), from
/// the one function that names it, so that a script can build the key for any id.
fn around(key: fn(&str) -> String) -> (String, String) {
    const MARK: &str = "\u{0}";
    let whole = key(MARK);
    match whole.split_once(MARK) {
        Some((before, after)) => (before.to_owned(), after.to_owned()),
        None => (whole, String::new()),
    }
}

fn invalid_token() -> ServiceError {
    ServiceError::new(401, "invalid or expired token")
}

fn password_hash(salt: &[u8], password: &str) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(salt);
    context.update(password.as_bytes());
    context.finish().as_ref().to_vec()
}

/// Compares without stopping at the first difference, so timing says nothing about
/// how much of a guess was right.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_tokens_have_the_checked_shape() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001abff"), Some(bytes.to_vec()));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn keys_split_around_the_id() {
        assert_eq!(around(keys::player_balance), ("player:".to_owned(), ":balance".to_owned()));
        assert_eq!(around(keys::session), ("session:".to_owned(), String::new()));
        let (before, after) = around(keys::player_purchases);
        assert_eq!(format!("{before}ana{after}"), keys::player_purchases("ana"));
    }

    #[test]
    fn the_hash_depends_on_salt_and_password() {
        let one = password_hash(b"salt", "secret");
        assert_eq!(one.len(), 32);
        assert!(same_bytes(&one, &password_hash(b"salt", "secret")));
        assert!(!same_bytes(&one, &password_hash(b"salt", "Secret")));
        assert!(!same_bytes(&one, &password_hash(b"pepper", "secret")));
        assert!(!same_bytes(&one, &one[..31]));
    }
}
