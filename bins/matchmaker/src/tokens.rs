//! What makes a session token checkable without asking: the signing keys, and the
//! revocations gateways follow.
//!
//! **Keys.** Ed25519 key pairs live in the Redis hash `session:signing-keys` (key id →
//! `<created ms>:<PKCS#8, base64>`), which only matchmakers reach. The newest signs new
//! tokens; once it is `session.key_lifetime` old, the next refresh makes another (one
//! Lua script, so several matchmakers agree on one key). A key is forgotten once no token
//! it signed can still be valid (`key_lifetime` + `session.ttl` after it was made). Every
//! live key's public half is in KV bucket `session_keys`, which gateways watch; a new key
//! is published there before this process signs with it.
//!
//! **Revocations.** A logout, or a login past `session.tokens_per_player`, ends a token
//! before its expiry. The script that ends it also appends it to the Redis list
//! `session:revocations` (an outbox), in the same step, and the revocation is then put in
//! KV bucket `revoked_tokens` (key = token id) and taken off the list. So a revocation
//! whose KV write failed is not lost: the next flush (every second, by any matchmaker)
//! writes it. A logout answers only once its own revocation is in KV.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use mm_shared::duration::millis;
use mm_shared::nats::{ServiceError, ensure_kv_bucket};
use mm_shared::protocol::{Revocation, SessionKeyEntry, buckets, keys, now_ms};
use mm_shared::token::{self, Claims, TokenError, Unverified};
use redis::aio::ConnectionManager;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;
use tokio_util::sync::CancellationToken;

/// The Redis list of revocations not yet in KV: `<token id> <player id> <expires ms>`.
pub const REVOCATION_OUTBOX: &str = "session:revocations";

/// Revocations one flush writes at most.
const FLUSH_BATCH: isize = 200;

/// How often the outbox is flushed and the keys looked at (at most).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// An unknown key id makes this process re-read the keys at most this often.
const UNKNOWN_KEY_REREAD: Duration = Duration::from_millis(500);

/// How long a KV write may take.
const KV_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps or makes the signing key. KEYS: the keys hash. ARGV: 1 key lifetime ms, 2 how
/// long a key is kept (lifetime + token ttl) ms, 3 a new key's id, 4 its PKCS#8 (base64).
/// Returns `{ all keys as HGETALL, forgotten key ids }`.
const ROTATE: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local newest, forgotten = -1, {}
for i = 1, #all, 2 do
  local made = tonumber(string.match(all[i + 1], '^(%d+):'))
  if made == nil or now - made >= tonumber(ARGV[2]) then
    redis.call('HDEL', KEYS[1], all[i])
    forgotten[#forgotten + 1] = all[i]
  elseif made > newest then
    newest = made
  end
end
if newest < 0 or now - newest >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], ARGV[3], string.format('%d', now) .. ':' .. ARGV[4])
end
return { redis.call('HGETALL', KEYS[1]), forgotten }
"#;

struct SigningKey {
    kid: String,
    created_at: u64,
    pair: Arc<Ed25519KeyPair>,
}

#[derive(Default)]
struct Ring {
    keys: HashMap<String, SigningKey>,
    /// The key new tokens are signed with (the newest published one).
    current: Option<String>,
}

/// Signs tokens, checks them, and records their revocations.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

struct Inner {
    redis: ConnectionManager,
    rng: SystemRandom,
    key_lifetime: Duration,
    token_ttl: Duration,
    ring: RwLock<Ring>,
    rotate: redis::Script,
    /// Serialises key refreshes, and says when the last one ran.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
    session_keys: kv::Store,
    revoked: kv::Store,
    /// A flush is running (a login's does not wait for it, nor start a second).
    flushing: std::sync::atomic::AtomicBool,
}

impl Tokens {
    /// Opens (or creates) the two buckets and loads (or makes) the signing key.
    pub async fn start(
        nats: &async_nats::Client,
        redis: ConnectionManager,
        key_lifetime: Duration,
        token_ttl: Duration,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(nats.clone());
        // Revocations first: a gateway that knows a signing key may take it that this
        // bucket exists (it refuses tokens until it has watched it).
        let revoked = ensure_kv_bucket(
            &js,
            kv::Config {
                bucket: buckets::REVOKED_TOKENS.to_owned(),
                description: "tokens ended before their expiry (token id → player, expiry)".to_owned(),
                history: 1,
                max_age: token_ttl,
                num_replicas: replicas,
                ..Default::default()
            },
            KV_TIMEOUT,
        )
        .await?;
        let session_keys = ensure_kv_bucket(
            &js,
            kv::Config {
                bucket: buckets::SESSION_KEYS.to_owned(),
                description: "the session service's public token keys (key id → key)".to_owned(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
            KV_TIMEOUT,
        )
        .await?;
        let tokens = Self {
            inner: Arc::new(Inner {
                redis,
                rng: SystemRandom::new(),
                key_lifetime,
                token_ttl,
                ring: RwLock::default(),
                rotate: redis::Script::new(ROTATE),
                refreshed: tokio::sync::Mutex::new(None),
                session_keys,
                revoked,
                flushing: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        tokens.refresh_keys().await.map_err(|err| anyhow::anyhow!("cannot load the signing keys: {err}"))?;
        Ok(tokens)
    }

    /// Keeps keys and outbox current until `shutdown`: re-reads (and, when due, rotates)
    /// the keys and flushes the revocation outbox.
    pub fn spawn_upkeep(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let tokens = self.clone();
        let every = (self.inner.key_lifetime / 4).clamp(Duration::from_millis(100), UPKEEP_EVERY);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(err) = tokens.refresh_keys().await {
                    tracing::warn!("cannot refresh the signing keys: {err}");
                }
                if let Err(err) = tokens.flush().await {
                    tracing::warn!("cannot write revocations to KV {}: {err}", buckets::REVOKED_TOKENS);
                }
            }
        })
    }

    /// A new token for `player`, with its id and expiry.
    pub fn issue(&self, player: &str) -> Result<(String, Claims), ServiceError> {
        let mut random = [0u8; 16];
        self.inner
            .rng
            .fill(&mut random)
            .map_err(|_| ServiceError::internal("the system random generator failed"))?;
        let now = now_ms();
        let claims = Claims {
            sub: player.to_owned(),
            jti: token::token_id(&random),
            iat: now / 1000,
            // Rounded up to the second: never shorter than the session key's lifetime.
            exp: (now + millis(self.inner.token_ttl)).div_ceil(1000),
        };
        let ring = self.inner.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = ring
            .current
            .as_ref()
            .and_then(|kid| ring.keys.get(kid))
            .ok_or_else(|| ServiceError::unavailable("no signing key yet; try again"))?;
        Ok((token::sign(&key.pair, &key.kid, &claims), claims))
    }

    /// What a token says, if one of the keys signed it and it has not expired; 401
    /// otherwise. (Whether it was revoked is the caller's to check.)
    pub async fn check(&self, token: &str) -> Result<Claims, ServiceError> {
        let parsed = Unverified::parse(token).map_err(refused)?;
        let kid = parsed.kid().to_owned();
        if self.public_key(&kid).is_none() {
            self.refresh_keys_if_idle().await;
        }
        let public = self.public_key(&kid).ok_or_else(|| refused(TokenError::UnknownKey(kid)))?;
        parsed.verify(&public, now_ms()).map_err(refused)
    }

    fn public_key(&self, kid: &str) -> Option<Vec<u8>> {
        let ring = self.inner.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.keys
            .get(kid)
            .map(|key| ring::signature::KeyPair::public_key(key.pair.as_ref()).as_ref().to_vec())
    }

    async fn refresh_keys_if_idle(&self) {
        let recent = self.inner.refreshed.lock().await.is_some_and(|at| at.elapsed() < UNKNOWN_KEY_REREAD);
        if !recent && let Err(err) = self.refresh_keys().await {
            tracing::warn!("cannot re-read the signing keys: {err}");
        }
    }

    /// Runs [`ROTATE`], publishes the public keys KV does not have yet and forgets the
    /// old ones there too.
    async fn refresh_keys(&self) -> Result<(), String> {
        let mut refreshed = self.inner.refreshed.lock().await;
        let mut random = [0u8; 8];
        self.inner.rng.fill(&mut random).map_err(|_| "the system random generator failed".to_owned())?;
        let kid: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&self.inner.rng)
            .map_err(|_| "cannot make a signing key".to_owned())?;
        let (all, forgotten): (Vec<String>, Vec<String>) = self
            .inner
            .rotate
            .key(keys::SIGNING_KEYS)
            .arg(millis(self.inner.key_lifetime))
            .arg(millis(self.inner.key_lifetime + self.inner.token_ttl))
            .arg(&kid)
            .arg(base64_encode(pkcs8.as_ref()))
            .invoke_async(&mut self.inner.redis.clone())
            .await
            .map_err(|err| format!("redis: {err}"))?;
        let mut loaded = HashMap::new();
        for pair in all.chunks_exact(2) {
            let (kid, value) = (&pair[0], &pair[1]);
            match parse_stored(value) {
                Some((created_at, pair)) => {
                    loaded.insert(
                        kid.clone(),
                        SigningKey { kid: kid.clone(), created_at, pair: Arc::new(pair) },
                    );
                }
                None => tracing::warn!(kid, "an unreadable signing key in redis; ignored"),
            }
        }
        // Publish every key the ring did not have before signing with any of them.
        let known: Vec<String> = {
            let ring = self.inner.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            ring.keys.keys().cloned().collect()
        };
        let first = refreshed.is_none();
        for key in loaded.values().filter(|key| first || !known.contains(&key.kid)) {
            let entry =
                SessionKeyEntry { public_key: token::public_key(&key.pair), created_at: key.created_at };
            let value = serde_json::to_vec(&entry).unwrap_or_default();
            kv_write("put", self.inner.session_keys.put(&key.kid, value.into())).await?;
        }
        for kid in &forgotten {
            kv_write("delete", self.inner.session_keys.delete(kid)).await?;
        }
        let current = loaded.values().max_by_key(|key| key.created_at).map(|key| key.kid.clone());
        if let Some(current) = &current
            && !known.contains(current)
        {
            tracing::info!(kid = current, "signing new tokens with a new key");
        }
        *self.inner.ring.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Ring { keys: loaded, current };
        *refreshed = Some(Instant::now());
        Ok(())
    }

    /// Flushes the outbox in the background, unless a flush is running already (a login
    /// that ended a token does not wait on KV: the revocation lands within milliseconds,
    /// or with the next periodic flush if KV is down).
    pub fn flush_soon(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let tokens = self.clone();
        tokio::spawn(async move {
            if let Err(err) = tokens.flush().await {
                tracing::warn!("cannot write revocations to KV {} yet: {err}", buckets::REVOKED_TOKENS);
            }
            tokens.inner.flushing.store(false, Ordering::Release);
        });
    }

    /// Writes the outbox's revocations to KV (oldest first), taking each off the list once
    /// written. Several flushers may run at once: a revocation written twice is the same.
    pub async fn flush(&self) -> Result<usize, String> {
        let mut redis = self.inner.redis.clone();
        let pending: Vec<String> = redis::cmd("LRANGE")
            .arg(REVOCATION_OUTBOX)
            .arg(0)
            .arg(FLUSH_BATCH - 1)
            .query_async(&mut redis)
            .await
            .map_err(|err| format!("redis: {err}"))?;
        let now = now_ms();
        let mut written = 0;
        for line in &pending {
            if let Some((jti, revocation)) = parse_outbox(line)
                && revocation.expires_at > now
            {
                let value = serde_json::to_vec(&revocation).unwrap_or_default();
                kv_write("put", self.inner.revoked.put(jti, value.into())).await?;
                written += 1;
            }
            let _: i64 = redis::cmd("LREM")
                .arg(REVOCATION_OUTBOX)
                .arg(1)
                .arg(line)
                .query_async(&mut redis)
                .await
                .map_err(|err| format!("redis: {err}"))?;
        }
        Ok(written)
    }

    /// Writes the revocation of `claims`' token to KV now (a logout waits for it).
    pub async fn revoke_now(&self, claims: &Claims) -> Result<(), ServiceError> {
        let revocation = Revocation { player_id: claims.sub.clone(), expires_at: claims.expires_at_ms() };
        let value = serde_json::to_vec(&revocation).unwrap_or_default();
        kv_write("put", self.inner.revoked.put(&claims.jti, value.into())).await.map_err(|err| {
            ServiceError::unavailable(format!(
                "the logout is recorded but gateways cannot be told yet ({err}); it takes effect within seconds"
            ))
        })?;
        Ok(())
    }
}

/// The outbox line of a revoked token (see [`REVOCATION_OUTBOX`]).
pub fn outbox_line(jti: &str, player: &str, expires_at: u64) -> String {
    format!("{jti} {player} {expires_at}")
}

fn parse_outbox(line: &str) -> Option<(&str, Revocation)> {
    let mut parts = line.split(' ');
    let jti = parts.next().filter(|jti| token::is_token_id(jti))?;
    let player_id = parts.next()?.to_owned();
    let expires_at = parts.next()?.parse().ok()?;
    Some((jti, Revocation { player_id, expires_at }))
}

fn parse_stored(value: &str) -> Option<(u64, Ed25519KeyPair)> {
    let (made, pkcs8) = value.split_once(':')?;
    let pkcs8 = base64_decode(pkcs8)?;
    Some((made.parse().ok()?, Ed25519KeyPair::from_pkcs8(&pkcs8).ok()?))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn refused(err: TokenError) -> ServiceError {
    tracing::debug!("token refused: {err}");
    ServiceError::new(401, "invalid or expired token")
}

async fn kv_write<T, E: std::fmt::Display>(
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(KV_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(format!("KV {what}: {err}")),
        Err(_) => Err(format!("KV {what} did not answer within {KV_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_lines_round_trip_and_bad_ones_are_skipped() {
        let jti = token::token_id(&[3; 16]);
        let line = outbox_line(&jti, "ana", 42);
        let (read, revocation) = parse_outbox(&line).expect("parses");
        assert_eq!(read, jti);
        assert_eq!(revocation, Revocation { player_id: "ana".into(), expires_at: 42 });
        assert!(parse_outbox("nope ana 42").is_none());
        assert!(parse_outbox(&format!("{jti} ana soon")).is_none());
    }

    #[test]
    fn stored_keys_parse_back() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let (made, _) = parse_stored(&format!("1234:{}", base64_encode(pkcs8.as_ref()))).expect("parses");
        assert_eq!(made, 1234);
        assert!(parse_stored("1234:not-base64!").is_none());
        assert!(parse_stored("soon:AAAA").is_none());
    }
}
