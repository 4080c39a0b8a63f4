//! What every handler shares: the NATS connection, the request limits and the game
//! sockets open.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::Client;
use mm_shared::nats::request_json;
use mm_shared::protocol::{ServerEntry, buckets};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::error::ApiError;
use crate::game_proxy::{GameLimits, Sockets};
use crate::tokens::Tokens;

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once NATS is connected; until then player requests get a 503. The HTTP server
    /// starts first so that `/healthz` can say what it is waiting for.
    nats: OnceLock<Client>,
    /// Deadline of each NATS request (`nats.request_timeout`).
    request_timeout: Duration,
    /// Longest `waitMs` a status request may wait (`gateway.long_poll_max`).
    long_poll_max: Duration,
    /// Cancelled on shutdown: long-polls answer at once.
    shutdown: CancellationToken,
    /// Requests being answered (one token each); NATS is drained only once they are done.
    requests: TaskTracker,
    /// KV bucket `servers`, opened on first use (it exists once an orchestrator ran).
    servers: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// KV bucket `secrets` (the game servers' secrets, which only gateways read), the same.
    secrets: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// Game sockets open through this gateway, against `gateway.game_*`.
    game_sockets: Sockets,
    /// Signing keys and revocations, for checking tokens here.
    tokens: Tokens,
}

impl AppState {
    pub fn new(
        request_timeout: Duration,
        long_poll_max: Duration,
        game: GameLimits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                nats: OnceLock::new(),
                request_timeout,
                long_poll_max,
                shutdown,
                requests: TaskTracker::new(),
                servers: tokio::sync::OnceCell::new(),
                secrets: tokio::sync::OnceCell::new(),
                game_sockets: Sockets::new(game),
                tokens: Tokens::default(),
            }),
        }
    }

    pub fn game_sockets(&self) -> &Sockets {
        &self.inner.game_sockets
    }

    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// Hands over the NATS connection once it is up, and starts following the token keys
    /// and revocations on it.
    pub fn connected(&self, nats: Client) {
        self.inner.tokens.follow(nats.clone(), self.inner.shutdown.clone());
        let _ = self.inner.nats.set(nats);
    }

    pub fn nats(&self) -> Result<&Client, ApiError> {
        self.inner.nats.get().ok_or_else(|| ApiError::unavailable("the gateway is still connecting to NATS"))
    }

    pub fn long_poll_max(&self) -> Duration {
        self.inner.long_poll_max
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Counts a request as in flight until the returned token is dropped (even by
    /// cancellation).
    pub fn request_started(&self) -> TaskTrackerToken {
        self.inner.requests.token()
    }

    /// Waits (up to `limit`) until no request is in flight: at shutdown, so that requests
    /// already inside finish their NATS calls before the connection is drained. Requests
    /// arriving meanwhile are still counted and waited for.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        self.inner.requests.close();
        tokio::time::timeout(limit, self.inner.requests.wait()).await.is_ok()
    }

    /// One request/reply to a micro service, its failures turned into HTTP errors.
    pub async fn call<Req, Resp>(&self, subject: &str, request: &Req) -> Result<Resp, ApiError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        Ok(request_json(self.nats()?, subject, request, self.inner.request_timeout).await?)
    }
}

impl AppState {
    /// The value of `key` in KV bucket `bucket` (opened once, on first use).
    async fn kv_get(
        &self,
        cell: &tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
        bucket: &'static str,
        key: &str,
    ) -> Result<Option<bytes::Bytes>, ApiError> {
        let nats = self.nats()?.clone();
        let store = cell
            .get_or_try_init(|| async move { async_nats::jetstream::new(nats).get_key_value(bucket).await })
            .await
            .map_err(|err| {
                ApiError::unavailable(format!(
                    "KV bucket `{bucket}` is not available (is an orchestrator running?): {err}"
                ))
            })?;
        tokio::time::timeout(self.inner.request_timeout, store.get(key))
            .await
            .map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    format!("KV `{bucket}` did not answer in time"),
                )
            })?
            .map_err(|err| ApiError::unavailable(format!("reading KV `{bucket}`: {err}")))
    }

    /// The live game server of `game_id` from KV bucket `servers`, if there is one.
    pub async fn game_server(&self, game_id: &str) -> Result<Option<ServerEntry>, ApiError> {
        match self.kv_get(&self.inner.servers, buckets::SERVERS, game_id).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| {
                ApiError::new(axum::http::StatusCode::BAD_GATEWAY, format!("unreadable server entry: {err}"))
            }),
        }
    }

    /// The secret the game server of `game_id` admits the gateway with (bucket `secrets`).
    pub async fn game_secret(&self, game_id: &str) -> Result<String, ApiError> {
        match self.kv_get(&self.inner.secrets, buckets::SECRETS, game_id).await? {
            Some(bytes) if !bytes.is_empty() => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            _ => Err(ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                format!("game {game_id} has no secret recorded: its server cannot be dialled"),
            )),
        }
    }
}
