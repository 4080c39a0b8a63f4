//! `fetch_store` and `store_purchase`.
//!
//! A purchase carries an idempotency key; when the request fails in transit (timeout,
//! connection reset) it is retried once with the same key, which is exactly the case the
//! key exists for: the retry must not charge twice. A `409` (not enough balance) is the
//! store doing its job, so the scenario reports it as *rejected*, not failed.

use std::time::Duration;

use bytes::Bytes;

use hyper::Method;
use mm_shared::protocol::Offer;
use serde::Serialize;

use crate::http::{Answer, Call};
use crate::player::Session;
use crate::scenario::{ErrorKind, Failure, Outcome};

/// Pause before retrying a purchase whose answer was lost.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

pub async fn fetch(session: &mut Session) -> Outcome {
    match fetch_offers(session).await {
        Ok(_) => Outcome::Succeeded,
        Err(failure) => Outcome::Failed(failure),
    }
}

/// The offer ids every player picks from, and the answer they were read from.
#[derive(Debug, Default)]
pub struct Offers {
    ids: Vec<Box<str>>,
    /// The body of the `GET /store/offers` answer `ids` came from: the same bytes again
    /// (the catalogue rarely changes) need no decoding.
    body: Bytes,
}

/// `GET /store/offers`; refreshes the offer ids every player picks from.
async fn fetch_offers(session: &Session) -> Result<usize, Failure> {
    let answer =
        session.context.gateway.send(Call::new(Method::GET, "GET /store/offers", "/store/offers")).await?;
    if !answer.is_success() {
        return Err(answer.unexpected("offers"));
    }
    {
        let known = session.context.offers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !known.body.is_empty() && known.body == answer.body {
            return Ok(known.ids.len());
        }
    }
    let offers: Vec<Offer> = answer.json("offers")?;
    let count = offers.len();
    let ids: Vec<Box<str>> = offers.into_iter().map(|offer| offer.id.into()).collect();
    *session.context.offers.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
        Offers { ids, body: answer.body };
    Ok(count)
}

fn random_offer(session: &Session) -> Option<Box<str>> {
    let offers = session.context.offers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    let ids = &offers.ids;
    (!ids.is_empty()).then(|| ids[fastrand::usize(..ids.len())].clone())
}

#[derive(Serialize)]
struct PurchaseBody<'a> {
    offer_id: &'a str,
    #[serde(rename = "idempotencyKey")]
    idempotency_key: &'a str,
}

pub async fn purchase(session: &mut Session) -> Outcome {
    let offer = match random_offer(session) {
        Some(offer) => offer,
        None => match fetch_offers(session).await {
            Ok(0) => return Outcome::Failed(Failure::new(ErrorKind::NoOffers, "the store lists no offers")),
            Ok(_) => match random_offer(session) {
                Some(offer) => offer,
                None => {
                    return Outcome::Failed(Failure::new(ErrorKind::NoOffers, "the store lists no offers"));
                }
            },
            Err(failure) => return Outcome::Failed(failure),
        },
    };
    let key = format!("{}-{:016x}", session.player_id(), fastrand::u64(..));
    let mut answer = buy(session, &offer, &key).await;
    if matches!(&answer, Err(failure) if matches!(failure.kind, ErrorKind::Timeout | ErrorKind::Connect)) {
        tokio::time::sleep(RETRY_PAUSE).await;
        answer = buy(session, &offer, &key).await;
    }
    match answer {
        Ok(answer) if answer.is_success() => Outcome::Succeeded,
        Ok(answer) if answer.status == 409 => Outcome::Rejected,
        Ok(answer) => {
            if answer.status == 404 {
                // The catalogue changed: forget it so the next purchase fetches it again.
                *session.context.offers.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                    Offers::default();
            }
            Outcome::Failed(answer.unexpected("purchase"))
        }
        Err(failure) => Outcome::Failed(failure),
    }
}

async fn buy(session: &Session, offer: &str, key: &str) -> Result<Answer, Failure> {
    let token = session.token();
    let body = PurchaseBody { offer_id: offer, idempotency_key: key };
    let headers = [("idempotency-key", key)];
    session
        .context
        .gateway
        .send(
            Call::new(Method::POST, "POST /store/purchase", "/store/purchase")
                .token(&token)
                .json(&body)
                .headers(&headers),
        )
        .await
}
