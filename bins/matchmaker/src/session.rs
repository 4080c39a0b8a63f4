//! The `session` micro service: accounts and login tokens.
//!
//! - `session.login` registers a player id on its first login (the password it gives is
//!   the player's from then on) and afterwards checks the password; either way it issues a
//!   token.
//! - `session.verify` says whose a token is (the gateway asks on every player request);
//!   each use restarts the token's lifetime (`session.ttl`).
//! - `session.logout` ends a token.
//!
//! Passwords are stored as a random salt and SHA-256(salt ‖ password). A fast hash is
//! enough for a simulation whose players are synthetic; a real system would use a slow,
//! memory-hard function (Argon2id, scrypt) so that a leaked table is costly to crack.

use std::sync::Arc;
use std::time::Duration;

use mm_shared::duration::millis;
use mm_shared::nats::ServiceError;
use mm_shared::protocol::{LoginReply, LoginRequest, SessionInfo, TokenRequest, keys, limits, subjects};
use redis::aio::ConnectionManager;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::micro::{MicroService, unavailable};

/// An account as stored under `player:{id}`.
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
    redis: ConnectionManager,
    rng: Arc<SystemRandom>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Self {
        Self { redis, rng: Arc::new(SystemRandom::new()), ttl }
    }

    /// Registers or checks the player, then issues a token.
    pub async fn login(&self, request: LoginRequest) -> Result<LoginReply, ServiceError> {
        limits::check_id("player id", &request.id).map_err(ServiceError::bad_request)?;
        limits::check_password(&request.password).map_err(ServiceError::bad_request)?;
        let key = keys::player(&request.id);
        let mut redis = self.redis.clone();
        let stored: Option<String> =
            redis::cmd("GET").arg(&key).query_async(&mut redis).await.map_err(unavailable)?;
        let stored = match stored {
            Some(stored) => Some(stored),
            None => {
                let salt = self.random::<16>()?;
                let account = Account {
                    salt: hex(&salt),
                    hash: hex(&password_hash(&salt, &request.password)),
                    created_at: mm_shared::protocol::now_ms(),
                };
                let json = serde_json::to_string(&account)
                    .map_err(|err| ServiceError::internal(format!("cannot encode the account: {err}")))?;
                // NX: of two first logins racing, one registers and the other is checked
                // against it.
                let created: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(json)
                    .arg("NX")
                    .query_async(&mut redis)
                    .await
                    .map_err(unavailable)?;
                if created.is_some() {
                    metrics::counter!("mm_session_logins_total", "result" => "registered").increment(1);
                    None
                } else {
                    redis::cmd("GET").arg(&key).query_async(&mut redis).await.map_err(unavailable)?
                }
            }
        };
        if let Some(stored) = stored {
            let account: Account = serde_json::from_str(&stored).map_err(|err| {
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
            metrics::counter!("mm_session_logins_total", "result" => "ok").increment(1);
        }
        let token = hex(&self.random::<32>()?);
        let () = redis::cmd("SET")
            .arg(keys::session(&token))
            .arg(&request.id)
            .arg("PX")
            .arg(millis(self.ttl))
            .query_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(LoginReply { token, player_id: request.id })
    }

    /// Whose token this is; restarts its lifetime.
    pub async fn verify(&self, request: TokenRequest) -> Result<SessionInfo, ServiceError> {
        if !limits::is_token(&request.token) {
            metrics::counter!("mm_session_verifications_total", "result" => "unknown").increment(1);
            return Err(invalid_token());
        }
        let player: Option<String> = redis::cmd("GETEX")
            .arg(keys::session(&request.token))
            .arg("PX")
            .arg(millis(self.ttl))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        let result = if player.is_some() { "ok" } else { "unknown" };
        metrics::counter!("mm_session_verifications_total", "result" => result).increment(1);
        player.map(|player_id| SessionInfo { player_id }).ok_or_else(invalid_token)
    }

    /// Ends the token (a token already gone is fine).
    pub async fn logout(&self, request: TokenRequest) -> Result<(), ServiceError> {
        if !limits::is_token(&request.token) {
            return Err(invalid_token());
        }
        let _: u64 = redis::cmd("DEL")
            .arg(keys::session(&request.token))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
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

/// Starts the `session` micro service.
pub async fn serve(
    nats: &async_nats::Client,
    sessions: Sessions,
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
    Ok(service)
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
        assert!(limits::is_token(&hex(&[7u8; 32])));
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
