//! Session tokens checked here, without a round trip: the signature with the session
//! service's public key, the expiry with the clock, and revocations from what this
//! gateway follows of KV bucket `revoked_tokens`.
//!
//! - **Keys.** A watch of KV `session_keys` keeps the public keys; a token signed with a
//!   key not seen yet makes the gateway read that key once (at most every
//!   [`KEY_LOOKUP_EVERY`], so a flood of made-up key ids costs nothing).
//! - **Revocations** (logouts, logins past the token limit) come from a watch of KV
//!   `revoked_tokens`. This gateway **fails closed**: a valid token is answered only while
//!   the watch is known complete — caught up since the NATS connection it runs on was
//!   made. After a disconnect (the connection's count of connects moves on) or a broken
//!   watch, tokens get a 503 until a new watch has caught up again, so no revocation
//!   published meanwhile can be missed.
//! - **Checked once.** Verifying an Ed25519 signature costs tens of µs; a token that
//!   verified is remembered (up to [`CACHE_MAX`] tokens, each until its expiry), so the
//!   next request with it costs a hash lookup. The revocation check is made every time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use mm_shared::protocol::{Revocation, SessionKeyEntry, buckets, now_ms};
use mm_shared::token::{self, TokenError, Unverified};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Tokens remembered as verified at most; past it, expired ones are dropped, then all.
const CACHE_MAX: usize = 50_000;

/// An unknown key id is looked up in KV at most this often (whatever the id: made-up
/// ones cost at most 20 reads a second).
const KEY_LOOKUP_EVERY: Duration = Duration::from_millis(50);

/// How long a token with an unknown key waits for the keys watch's first delivery.
const KEYS_LOAD_WAIT: Duration = Duration::from_secs(2);

/// How long one KV call may take.
const KV_TIMEOUT: Duration = Duration::from_secs(5);

/// A watch that has not caught up within this long is started over.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// How often the watch checks that its connection is still the one it started on, and
/// drops revocations of tokens that have expired.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The results `mm_gateway_token_checks_total` counts.
pub const CHECK_RESULTS: [&str; 4] = ["ok", "invalid", "revoked", "catching_up"];

/// How a check ended: an index into [`CHECK_RESULTS`].
#[derive(Clone, Copy)]
enum Checked {
    Ok = 0,
    Invalid = 1,
    Revoked = 2,
    CatchingUp = 3,
}

/// Counts one check, the counters' handles made once (a lookup by label per request
/// costs more than the check).
fn counted(result: Checked) {
    static COUNTERS: OnceLock<[metrics::Counter; 4]> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        CHECK_RESULTS.map(|result| metrics::counter!("mm_gateway_token_checks_total", "result" => result))
    })[result as usize]
        .increment(1);
}

/// Watches every key of `store` from its start; `true` when the bucket held nothing, so
/// that the watch is current at once (an empty bucket delivers no entry to say so).
async fn watch_from_start(store: &kv::Store) -> Result<(kv::Watch, bool), String> {
    let watch = store.watch_with_history(">").await.map_err(|err| format!("watching: {err}"))?;
    let held = tokio::time::timeout(KV_TIMEOUT, store.status())
        .await
        .map_err(|_| "the bucket's status did not come".to_owned())?
        .map_err(|err| format!("the bucket's status: {err}"))?
        .values();
    Ok((watch, held == 0))
}

/// A token that checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub player: Arc<str>,
    pub jti: Arc<str>,
    pub expires_at_ms: u64,
}

/// The gateway's view of keys and revocations. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tokens {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    nats: OnceLock<async_nats::Client>,
    keys: RwLock<HashMap<String, Arc<[u8]>>>,
    verified: Mutex<HashMap<Box<str>, Verified>>,
    revoked: RwLock<HashMap<String, u64>>,
    /// The NATS connect count at which the revocations watch caught up; 0: not in step.
    in_step_at: AtomicU64,
    /// In step only because `revoked_tokens` does not exist (yet): no matchmaker has
    /// run, so there is no token. A token that verifies says otherwise (matchmakers
    /// create the bucket before they publish a key), so it waits for the watch.
    without_bucket: AtomicBool,
    /// When a missing key was last looked up.
    key_lookup: tokio::sync::Mutex<Option<Instant>>,
    /// Set once the keys watch delivered what the bucket held (or there is no bucket).
    keys_loaded: tokio::sync::watch::Sender<bool>,
    session_keys: tokio::sync::OnceCell<kv::Store>,
}

impl Tokens {
    /// Starts following `session_keys` and `revoked_tokens` on `nats` until `shutdown`.
    pub fn follow(&self, nats: async_nats::Client, shutdown: CancellationToken) {
        let _ = self.inner.nats.set(nats);
        tokio::spawn(self.clone().follow_revocations(shutdown.clone()));
        tokio::spawn(self.clone().follow_keys(shutdown));
    }

    /// The player behind `token`: 401 for anything but a valid, unrevoked token; 503 while
    /// this gateway cannot be sure it knows every revocation.
    pub async fn check(&self, token: &str) -> Result<Verified, ApiError> {
        let verified = match self.remembered(token) {
            Some(verified) => verified,
            None => self.verify(token).await.map_err(|err| {
                tracing::debug!("token refused: {err}");
                counted(Checked::Invalid);
                invalid()
            })?,
        };
        if now_ms() >= verified.expires_at_ms {
            counted(Checked::Invalid);
            return Err(invalid());
        }
        if !self.in_step() || self.inner.without_bucket.load(Ordering::Acquire) {
            counted(Checked::CatchingUp);
            return Err(ApiError::unavailable(
                "this gateway is catching up with revoked tokens (KV revoked_tokens: after an \
                 interrupted NATS connection, or before it has watched the bucket); try again \
                 in a moment",
            ));
        }
        if self.inner.revoked.read().unwrap_or_else(|p| p.into_inner()).contains_key(&*verified.jti) {
            counted(Checked::Revoked);
            return Err(invalid());
        }
        counted(Checked::Ok);
        Ok(verified)
    }

    /// Records a revocation this gateway made itself (its own logout), before the watch
    /// brings it back.
    pub fn revoked_here(&self, verified: &Verified) {
        self.inner
            .revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(verified.jti.to_string(), verified.expires_at_ms);
    }

    /// `/healthz`'s view: ready once the keys are loaded and the revocations in step.
    pub fn health(&self) -> Result<String, String> {
        match (*self.inner.keys_loaded.borrow(), self.in_step()) {
            (true, true) => Ok(format!(
                "{} signing keys, {} revoked tokens",
                self.inner.keys.read().unwrap_or_else(|p| p.into_inner()).len(),
                self.inner.revoked.read().unwrap_or_else(|p| p.into_inner()).len()
            )),
            (false, _) => Err("loading the signing keys (KV session_keys)".to_owned()),
            (true, false) => Err("catching up with the revoked tokens (KV revoked_tokens)".to_owned()),
        }
    }

    /// Whether the revocations known here are complete: the watch caught up on the
    /// connection that is up now.
    fn in_step(&self) -> bool {
        let Some(nats) = self.inner.nats.get() else { return false };
        let at = self.inner.in_step_at.load(Ordering::Acquire);
        at != 0
            && nats.connection_state() == async_nats::connection::State::Connected
            && nats.statistics().connects.load(Ordering::Acquire) == at
    }

    fn remembered(&self, token: &str) -> Option<Verified> {
        self.inner.verified.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned()
    }

    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let parsed = Unverified::parse(token)?;
        if self.key(parsed.kid()).is_none() && !*self.inner.keys_loaded.borrow() {
            // Just started: the watch brings the keys in a moment.
            let mut loaded = self.inner.keys_loaded.subscribe();
            let _ = tokio::time::timeout(KEYS_LOAD_WAIT, loaded.wait_for(|loaded| *loaded)).await;
        }
        let key = match self.key(parsed.kid()) {
            Some(key) => key,
            None => self
                .look_up_key(parsed.kid())
                .await
                .ok_or_else(|| TokenError::UnknownKey(parsed.kid().to_owned()))?,
        };
        let claims = parsed.verify(&key, now_ms())?;
        let verified = Verified {
            player: claims.sub.as_str().into(),
            jti: claims.jti.as_str().into(),
            expires_at_ms: claims.expires_at_ms(),
        };
        let mut cache = self.inner.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = now_ms();
            cache.retain(|_, verified| verified.expires_at_ms > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.into(), verified.clone());
        Ok(verified)
    }

    fn key(&self, kid: &str) -> Option<Arc<[u8]>> {
        self.inner.keys.read().unwrap_or_else(|p| p.into_inner()).get(kid).cloned()
    }

    /// Reads one key from KV (a key made a moment ago that the watch has not brought yet).
    async fn look_up_key(&self, kid: &str) -> Option<Arc<[u8]>> {
        {
            let mut last = self.inner.key_lookup.lock().await;
            if last.is_some_and(|at| at.elapsed() < KEY_LOOKUP_EVERY) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let store = self.session_keys().await.ok()?;
        let value = tokio::time::timeout(KV_TIMEOUT, store.get(kid)).await.ok()?.ok()??;
        self.add_key(kid, &value)
    }

    async fn session_keys(&self) -> Result<&kv::Store, String> {
        let nats = self.inner.nats.get().ok_or("not connected to NATS yet")?.clone();
        self.inner
            .session_keys
            .get_or_try_init(|| async move {
                let js = async_nats::jetstream::new(nats);
                match tokio::time::timeout(KV_TIMEOUT, js.get_key_value(buckets::SESSION_KEYS)).await {
                    Ok(Ok(store)) => Ok(store),
                    Ok(Err(err)) => Err(format!("KV {}: {err}", buckets::SESSION_KEYS)),
                    Err(_) => Err(format!("KV {} did not answer", buckets::SESSION_KEYS)),
                }
            })
            .await
    }

    fn add_key(&self, kid: &str, value: &[u8]) -> Option<Arc<[u8]>> {
        let entry: SessionKeyEntry = serde_json::from_slice(value).ok()?;
        let key: Arc<[u8]> = token::decode_public_key(&entry.public_key)?.into();
        self.inner.keys.write().unwrap_or_else(|p| p.into_inner()).insert(kid.to_owned(), key.clone());
        Some(key)
    }

    /// Follows `session_keys` until shutdown, starting over after a break.
    async fn follow_keys(self, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let result = async {
                let store = match self.session_keys().await {
                    Ok(store) => store,
                    Err(err) => {
                        // No bucket: no matchmaker ran yet, so there is no token to check.
                        self.inner.keys_loaded.send_replace(true);
                        return Err(err);
                    }
                };
                let (mut watch, empty) = watch_from_start(store).await?;
                if empty {
                    self.inner.keys_loaded.send_replace(true);
                }
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        entry = watch.next() => match entry {
                            Some(Ok(entry)) => {
                                pause = Duration::from_millis(100);
                                match entry.operation {
                                    Operation::Put => {
                                        if self.add_key(&entry.key, &entry.value).is_none() {
                                            tracing::warn!(kid = entry.key, "an unreadable signing key in KV; ignored");
                                        }
                                    }
                                    Operation::Delete | Operation::Purge => {
                                        self.inner.keys.write().unwrap_or_else(|p| p.into_inner()).remove(&entry.key);
                                    }
                                }
                                if entry.seen_current {
                                    self.inner.keys_loaded.send_replace(true);
                                }
                            }
                            Some(Err(err)) => return Err(format!("watching: {err}")),
                            None => return Err("the watch ended".to_owned()),
                        }
                    }
                }
            }
            .await;
            if let Err(err) = result {
                tracing::debug!("KV {}: {err}; watching again in {pause:?}", buckets::SESSION_KEYS);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// Follows `revoked_tokens` until shutdown: each watch is "in step" from the moment it
    /// has delivered everything the bucket held, for as long as the connection it started
    /// on lasts; then a new watch starts over.
    async fn follow_revocations(self, shutdown: CancellationToken) {
        let Some(nats) = self.inner.nats.get().cloned() else { return };
        const QUICK: Duration = Duration::from_millis(20);
        let mut pause = QUICK;
        let mut last_error = String::new();
        while !shutdown.is_cancelled() {
            self.inner.in_step_at.store(0, Ordering::Release);
            let mut wait = QUICK;
            if nats.connection_state() == async_nats::connection::State::Connected {
                let epoch = nats.statistics().connects.load(Ordering::Acquire);
                let result = self.watch_revocations(&nats, epoch, &shutdown).await;
                self.inner.in_step_at.store(0, Ordering::Release);
                match result {
                    Ok(()) => pause = QUICK,
                    Err(err) => {
                        if err != last_error {
                            tracing::warn!("revoked tokens: {err}; tokens get a 503 until the watch is back");
                            last_error = err;
                        }
                        wait = pause;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One watch, from the bucket's start, on the connection counted `epoch`. Returns
    /// `Ok` when the connection moved on (a normal reason to start over).
    async fn watch_revocations(
        &self,
        nats: &async_nats::Client,
        epoch: u64,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let js = async_nats::jetstream::new(nats.clone());
        let store = match tokio::time::timeout(KV_TIMEOUT, js.get_key_value(buckets::REVOKED_TOKENS)).await {
            Ok(Ok(store)) => store,
            Ok(Err(err)) if err.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket => {
                // No matchmaker has run yet: there is no token and so no revocation.
                // (Only matchmakers may create or delete the bucket.)
                self.without_bucket(nats, &js, epoch, shutdown).await;
                return Ok(());
            }
            Ok(Err(err)) => return Err(format!("KV {}: {err}", buckets::REVOKED_TOKENS)),
            Err(_) => return Err(format!("KV {} did not answer", buckets::REVOKED_TOKENS)),
        };
        let started = Instant::now();
        let (mut watch, empty) = watch_from_start(&store).await?;
        tracing::debug!(epoch, empty, "watching revoked tokens");
        let mut fresh: HashMap<String, u64> = HashMap::new();
        let mut caught_up = empty;
        if caught_up {
            self.caught_up(epoch, fresh.drain());
        }
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = check.tick() => {
                    if nats.statistics().connects.load(Ordering::Acquire) != epoch
                        || nats.connection_state() != async_nats::connection::State::Connected
                    {
                        return Ok(());
                    }
                    if !caught_up && started.elapsed() > CATCH_UP_LIMIT {
                        return Err(format!("the watch did not catch up within {CATCH_UP_LIMIT:?}"));
                    }
                    let now = now_ms();
                    self.inner.revoked.write().unwrap_or_else(|p| p.into_inner()).retain(|_, exp| *exp > now);
                }
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(err)) => return Err(format!("watching: {err}")),
                        None => return Err("the watch ended".to_owned()),
                    };
                    if entry.operation == Operation::Put
                        && let Ok(revocation) = serde_json::from_slice::<Revocation>(&entry.value)
                    {
                        if caught_up {
                            self.inner
                                .revoked
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(entry.key, revocation.expires_at);
                        } else {
                            fresh.insert(entry.key, revocation.expires_at);
                        }
                    }
                    if !caught_up && entry.seen_current {
                        caught_up = true;
                        self.caught_up(epoch, fresh.drain());
                    }
                }
            }
        }
    }

    /// Adds what a watch replayed and marks the revocations complete for `epoch`, unless
    /// the connection moved on meanwhile.
    fn caught_up(&self, epoch: u64, replayed: impl Iterator<Item = (String, u64)>) {
        self.inner.revoked.write().unwrap_or_else(|p| p.into_inner()).extend(replayed);
        let nats = self.inner.nats.get();
        if nats.is_some_and(|nats| nats.statistics().connects.load(Ordering::Acquire) == epoch) {
            self.inner.in_step_at.store(epoch, Ordering::Release);
        }
    }

    /// In step while the bucket does not exist, for every token that cannot be valid (no
    /// key verifies one before a matchmaker has made the bucket; one that does waits,
    /// see `without_bucket`); returns (to watch it) once it exists.
    async fn without_bucket(
        &self,
        nats: &async_nats::Client,
        js: &async_nats::jetstream::Context,
        epoch: u64,
        shutdown: &CancellationToken,
    ) {
        self.caught_up(epoch, std::iter::empty());
        self.inner.without_bucket.store(true, Ordering::Release);
        // Until the bucket exists, the connection moves on, or the gateway stops.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if nats.statistics().connects.load(Ordering::Acquire) != epoch {
                break;
            }
            if let Ok(Ok(_)) =
                tokio::time::timeout(KV_TIMEOUT, js.get_key_value(buckets::REVOKED_TOKENS)).await
            {
                break;
            }
        }
        self.inner.without_bucket.store(false, Ordering::Release);
    }
}

fn invalid() -> ApiError {
    ApiError::unauthorized("invalid or expired token")
}
