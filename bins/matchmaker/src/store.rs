//! The `store` micro service: a fixed catalogue and per-player balances in Redis.
//!
//! A purchase is one Lua script: check the balance, charge it, record the purchase, and,
//! when the client gave an idempotency key, remember the reply under that key so a retry
//! replays it instead of charging twice. A balance starts at `store.starting_balance` on
//! the player's first purchase.

use std::sync::Arc;

use mm_shared::duration::millis;
use mm_shared::nats::ServiceError;
use mm_shared::protocol::{Offer, PurchaseReply, PurchaseRequest, keys, limits, now_ms, subjects};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::StoreConfig;
use crate::micro::{MicroService, unavailable};

/// KEYS: balance, idempotency record (unused without a key), purchase history.
/// ARGV: price, offer id, purchase id, starting balance, idempotency ttl ms, history
/// length, has key ('1'/'0'), now ms.
/// Returns `{'ok', record}`, `{'replay', record}` or `{'insufficient', balance}`.
const PURCHASE: &str = r#"
local balance_key, record_key, history_key = KEYS[1], KEYS[2], KEYS[3]
local has_key = ARGV[7] == '1'
if has_key then
  local previous = redis.call('GET', record_key)
  if previous then return { 'replay', previous } end
end
local balance = tonumber(redis.call('GET', balance_key) or ARGV[4]) or 0
local price = tonumber(ARGV[1])
if balance < price then return { 'insufficient', tostring(balance) } end
balance = balance - price
redis.call('SET', balance_key, string.format('%d', balance))
local record = cjson.encode({
  purchaseId = ARGV[3], offer_id = ARGV[2], balance = balance, price = price, at = tonumber(ARGV[8]),
})
if has_key then redis.call('SET', record_key, record, 'PX', tonumber(ARGV[5])) end
redis.call('RPUSH', history_key, record)
redis.call('LTRIM', history_key, -tonumber(ARGV[6]), -1)
return { 'ok', record }
"#;

/// The store: its catalogue and the Redis it charges.
#[derive(Clone)]
pub struct Store {
    redis: ConnectionManager,
    config: Arc<StoreConfig>,
    purchase: Arc<redis::Script>,
}

impl Store {
    pub fn new(redis: ConnectionManager, config: StoreConfig) -> Self {
        Self { redis, config: Arc::new(config), purchase: Arc::new(redis::Script::new(PURCHASE)) }
    }

    pub fn offers(&self) -> Vec<Offer> {
        self.config.offers.clone()
    }

    /// Buys `offer_id` for the player, at most once per idempotency key.
    pub async fn purchase(&self, request: PurchaseRequest) -> Result<PurchaseReply, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        limits::check_id("offer id", &request.offer_id).map_err(ServiceError::bad_request)?;
        if let Some(key) = &request.idempotency_key {
            limits::check_idempotency_key(key).map_err(ServiceError::bad_request)?;
        }
        let Some(offer) = self.config.offers.iter().find(|offer| offer.id == request.offer_id) else {
            metrics::counter!("mm_store_purchases_total", "result" => "unknown_offer").increment(1);
            return Err(ServiceError::not_found(format!("no offer {}", request.offer_id)));
        };
        let key = request.idempotency_key.as_deref();
        let (kind, value): (String, String) = self
            .purchase
            .key(keys::player_balance(&request.player_id))
            .key(keys::purchase(&request.player_id, key.unwrap_or("-")))
            .key(keys::player_purchases(&request.player_id))
            .arg(offer.price)
            .arg(&offer.id)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(self.config.starting_balance)
            .arg(millis(self.config.idempotency_ttl))
            .arg(self.config.history.max(1))
            .arg(if key.is_some() { "1" } else { "0" })
            .arg(now_ms())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        match kind.as_str() {
            "ok" | "replay" => {
                let reply: PurchaseReply = serde_json::from_str(&value)
                    .map_err(|err| ServiceError::internal(format!("unreadable purchase record: {err}")))?;
                if reply.offer_id != offer.id {
                    metrics::counter!("mm_store_purchases_total", "result" => "key_reused").increment(1);
                    return Err(ServiceError::new(
                        422,
                        format!(
                            "idempotency key was already used to buy {}; use a new key for another offer",
                            reply.offer_id
                        ),
                    ));
                }
                metrics::counter!("mm_store_purchases_total", "result" => if kind == "ok" { "ok" } else { "replayed" })
                    .increment(1);
                Ok(reply)
            }
            "insufficient" => {
                metrics::counter!("mm_store_purchases_total", "result" => "insufficient_funds").increment(1);
                Err(ServiceError::conflict(format!(
                    "not enough balance: {} costs {}, the balance is {value}",
                    offer.id, offer.price
                )))
            }
            other => Err(ServiceError::internal(format!("purchase script answered {other:?}"))),
        }
    }
}

/// `store.offers` takes no parameters: an empty body, `null` or an object.
#[derive(Debug, serde::Deserialize)]
struct OffersRequest {}

/// Starts the `store` micro service.
pub async fn serve(
    nats: &async_nats::Client,
    store: Store,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<MicroService> {
    let mut service = MicroService::start(
        nats,
        subjects::STORE_SERVICE,
        "The store's catalogue and purchases",
        concurrency,
        shutdown,
    )
    .await?;
    service
        .route(
            "offers",
            subjects::STORE_OFFERS,
            store.clone(),
            |store, _: Option<OffersRequest>| async move { Ok::<_, ServiceError>(store.offers()) },
        )
        .await?;
    service
        .route("purchase", subjects::STORE_PURCHASE, store, |s, r| async move { s.purchase(r).await })
        .await?;
    Ok(service)
}
