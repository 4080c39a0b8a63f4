//! `orchestrator.node.<id>.place`: this node runs one game server, or refuses.
//!
//! The node checks the ask against its own books (not the KV view the allocator ranked
//! with), reserves resources and a port, records the server as `pending` in KV with a
//! create (so a game id is placed once across all nodes), and answers once the runner
//! says the server is ready — or stops it and answers when the request's budget runs out
//! first, so a caller that gave up never leaves a server behind.
//!
//! Before any of that it asks its start queue whether a start admitted now could be
//! ready within the request's budget ([`crate::admission`]): when not, it refuses at once
//! with a 409, like a full node, and the allocator asks the next one.
//!
//! First of all, when its pool has a warm server, it claims one ([`Node::claim_warm`],
//! under the pool's lock) and its runner hands it the match: no start, no reservation (it
//! holds its resources already), an answer in milliseconds with `start: "warm"`. A claim
//! that fails (the server died meanwhile, its assignment failed) tries the next warm
//! server; with none left the server is started cold, as above (`start: "cold"`).

use std::sync::Arc;
use std::time::Instant;

use mm_shared::nats::ServiceError;
use mm_shared::protocol::game_server::Assignment;
use mm_shared::protocol::{AllocateReply, PlaceRequest, ServerEntry, ServerState, StartKind, now_ms};
use tokio::sync::oneshot;

use crate::ledger::Refusal;
use crate::machine::{ClaimFailure, PlaceFailure};
use crate::node::{Control, Node, StopReason};
use crate::store::StoreError;

/// How a placement was refused or failed (its `reason` label).
#[derive(Debug)]
pub struct Refused {
    pub error: ServiceError,
    pub reason: &'static str,
}

impl Refused {
    fn new(error: ServiceError, reason: &'static str) -> Self {
        Self { error, reason }
    }
}

/// Places `request` on this node; the server must be ready by `deadline`.
pub async fn place(
    node: Arc<Node>,
    request: PlaceRequest,
    deadline: Instant,
) -> Result<AllocateReply, ServiceError> {
    let result = place_inner(&node, request, deadline).await;
    if let Ok(reply) = &result {
        node.record_allocation();
        metrics::counter!("mm_orchestrator_claims_total", "kind" => reply.start.as_str(), "node" => node.id.clone())
            .increment(1);
    }
    let (result_label, reason) = match &result {
        Ok(_) => ("placed", "placed"),
        Err(refused) if refused.error.code == 409 || refused.error.code == 400 => ("refused", refused.reason),
        Err(refused) => ("failed", refused.reason),
    };
    metrics::counter!("mm_orchestrator_placements_total", "result" => result_label, "reason" => reason)
        .increment(1);
    result.map_err(|refused| refused.error)
}

/// Every (result, reason) pair [`place`] counts, registered at 0 at start-up.
pub const PLACEMENT_LABELS: [(&str, &str); 9] = [
    ("placed", "placed"),
    ("refused", "bad_request"),
    ("refused", "no_room"),
    ("refused", "busy"),
    ("refused", "duplicate"),
    ("refused", "released"),
    ("failed", "draining"),
    ("failed", "out_of_time"),
    ("failed", "failed"),
];

async fn place_inner(
    node: &Arc<Node>,
    request: PlaceRequest,
    deadline: Instant,
) -> Result<AllocateReply, Refused> {
    crate::allocate::check_request(&request.match_id, &request.player_ids)
        .map_err(|err| Refused::new(err, "bad_request"))?;
    if crate::allocate::game_id_for(&request.match_id) != request.game_id {
        return Err(Refused::new(
            ServiceError::bad_request("gameId does not belong to matchId"),
            "bad_request",
        ));
    }
    let budget = deadline.saturating_duration_since(Instant::now());
    if budget.is_zero() {
        return Err(Refused::new(
            ServiceError::out_of_time(format!(
                "node {}: the placement's budget ran out before it started",
                node.id
            )),
            "out_of_time",
        ));
    }
    if node.is_draining() {
        return Err(Refused::new(
            ServiceError::unavailable(format!("node {} is shutting down", node.id)),
            "draining",
        ));
    }
    let health = node.driver_health();
    if !health.healthy {
        return Err(Refused::new(
            ServiceError::unavailable(format!("node {}: driver unhealthy: {}", node.id, health.status)),
            "failed",
        ));
    }
    if let Some(reply) = claim_warm(node, &request, deadline).await? {
        return Ok(reply);
    }
    let game = &node.config.game;
    let holding = node.reserve(&request.game_id, game.ask()).map_err(|refusal| match refusal {
        Refusal::Full { .. } => Refused::new(
            ServiceError::conflict(format!("node {} has no room: {refusal}", node.id)),
            "no_room",
        ),
        Refusal::Duplicate(_) => {
            Refused::new(ServiceError::conflict(format!("node {}: {refusal}", node.id)), "duplicate")
        }
    })?;
    let ticket = node.admit_start(budget).map_err(|busy| {
        node.release(&request.game_id);
        Refused::new(ServiceError::conflict(format!("node {} is {busy}", node.id)), "busy")
    })?;
    let now = now_ms();
    let entry = ServerEntry {
        game_id: request.game_id.clone(),
        match_id: request.match_id,
        node: node.id.clone(),
        state: ServerState::Pending,
        address: node.address(holding.port),
        started_at: now,
        player_ids: request.player_ids,
        driver: node.driver.name().to_owned(),
        restarts: 0,
        secret: new_secret(),
        ends_at: now + game.duration.as_millis() as u64,
        updated_at: now,
        resources: holding.resources,
        handle: String::new(),
        detail: String::new(),
        warm_id: String::new(),
    };
    if let Err(err) = node.store.create_server(&entry).await {
        ticket.withdraw();
        node.release(&entry.game_id);
        return Err(match err {
            StoreError::Exists(_) => Refused::new(
                ServiceError::conflict(format!("game {} is already running or being placed", entry.game_id)),
                "duplicate",
            ),
            other => Refused::new(
                ServiceError::unavailable(format!("node {}: cannot record the server: {other}", node.id)),
                "failed",
            ),
        });
    }
    let (ready_tx, ready_rx) = oneshot::channel();
    let control = crate::runner::spawn(node, entry.clone(), holding.port, ready_tx, ticket);
    let ready = tokio::select! {
        ready = tokio::time::timeout_at(deadline.into(), ready_rx) => ready,
        // The node stops: its runner stops the server (in its turn); the caller hears now.
        () = node.stopping.cancelled() => Ok(Ok(Err(PlaceFailure::Stopped(StopReason::Shutdown)))),
    };
    match ready {
        Ok(Ok(Ok(address))) => Ok(AllocateReply {
            url: node.player_url(&entry.game_id),
            game_id: entry.game_id,
            node: node.id.clone(),
            address,
            start: StartKind::Cold,
        }),
        Ok(Ok(Err(PlaceFailure::Stopped(StopReason::Released)))) => Err(Refused::new(
            ServiceError::conflict(format!("game {} was released while it was being placed", entry.game_id)),
            "released",
        )),
        Ok(Ok(Err(PlaceFailure::Stopped(_)))) => Err(Refused::new(
            ServiceError::unavailable(format!("node {} is shutting down", node.id)),
            "draining",
        )),
        Ok(Ok(Err(PlaceFailure::Failed(reason)))) => {
            Err(Refused::new(ServiceError::unavailable(format!("node {}: {reason}", node.id)), "failed"))
        }
        Ok(Err(_)) => Err(Refused::new(
            ServiceError::internal(format!("node {}: the runner ended without an answer", node.id)),
            "failed",
        )),
        Err(_) => {
            let _ = control.send(Control::Stop(StopReason::Abort));
            Err(Refused::new(
                ServiceError::out_of_time(format!(
                    "node {}: the game server was not ready within the placement's budget of {}",
                    node.id,
                    mm_shared::duration::format(budget)
                )),
                "out_of_time",
            ))
        }
    }
}

/// Claims warm servers of this node until one takes the match: its reply, or `None` when
/// the pool has none (left) and the server must be started cold.
async fn claim_warm(
    node: &Arc<Node>,
    request: &PlaceRequest,
    deadline: Instant,
) -> Result<Option<AllocateReply>, Refused> {
    while let Some((slot, control)) = node.claim_warm() {
        let assignment = Assignment {
            game_id: request.game_id.clone(),
            match_id: request.match_id.clone(),
            player_ids: request.player_ids.clone(),
            secret: new_secret(),
            ends_at: now_ms() + node.config.game.duration.as_millis() as u64,
        };
        let (reply, answer) = oneshot::channel();
        if control.send(Control::Claim { assignment, reply }).is_err() {
            continue;
        }
        let answered = tokio::select! {
            answered = tokio::time::timeout_at(deadline.into(), answer) => answered,
            () = node.stopping.cancelled() => {
                return Err(Refused::new(
                    ServiceError::unavailable(format!("node {} is shutting down", node.id)),
                    "draining",
                ));
            }
        };
        match answered {
            Ok(Ok(Ok(address))) => {
                return Ok(Some(AllocateReply {
                    url: node.player_url(&request.game_id),
                    game_id: request.game_id.clone(),
                    node: node.id.clone(),
                    address,
                    start: StartKind::Warm,
                }));
            }
            Ok(Ok(Err(ClaimFailure::Duplicate))) => {
                return Err(Refused::new(
                    ServiceError::conflict(format!(
                        "game {} is already running or being placed",
                        request.game_id
                    )),
                    "duplicate",
                ));
            }
            Ok(Ok(Err(failure))) => {
                tracing::info!(%slot, game_id = %request.game_id, "a warm server did not take the match ({failure:?}); trying the next");
            }
            Ok(Err(_)) => tracing::debug!(%slot, "a warm server's runner ended during its claim"),
            Err(_) => {
                // Its runner carries on: the match's server may yet come up, and a retry
                // of the allocation finds it.
                return Err(Refused::new(
                    ServiceError::out_of_time(format!(
                        "node {}: the warm server did not take the match within the placement's budget",
                        node.id
                    )),
                    "out_of_time",
                ));
            }
        }
    }
    Ok(None)
}

/// A per-match secret: two random UUIDs (244 random bits) as hex.
pub fn new_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}
