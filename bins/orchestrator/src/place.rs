//! `orchestrator.node.<id>.place`: this node runs one game server, or refuses.
//!
//! The node checks the ask against its own books (not the KV view the allocator ranked
//! with), reserves resources and a port, records the server as `pending` in KV with a
//! create (so a game id is placed once across all nodes), and answers once the runner
//! says the server is ready — or stops it and answers 503 when the request's deadline
//! passes first, so a caller that gave up never leaves a server behind.

use std::sync::Arc;
use std::time::Duration;

use mm_shared::nats::ServiceError;
use mm_shared::protocol::{AllocateReply, PlaceRequest, ServerEntry, ServerState, now_ms};
use tokio::sync::oneshot;

use crate::ledger::Refusal;
use crate::node::{Control, Node, StopReason};
use crate::store::StoreError;

/// Places `request` on this node.
pub async fn place(node: Arc<Node>, request: PlaceRequest) -> Result<AllocateReply, ServiceError> {
    let result = place_inner(&node, request).await;
    let (result_label, reason) = match &result {
        Ok(_) => ("placed", "placed"),
        Err(err) if err.code == 409 => ("refused", "no_room"),
        Err(err) if err.code == 400 => ("refused", "bad_request"),
        Err(_) => ("failed", "failed"),
    };
    metrics::counter!("mm_orchestrator_placements_total", "result" => result_label, "reason" => reason)
        .increment(1);
    result
}

async fn place_inner(node: &Arc<Node>, request: PlaceRequest) -> Result<AllocateReply, ServiceError> {
    crate::allocate::check_request(&request.match_id, &request.player_ids)?;
    if crate::allocate::game_id_for(&request.match_id) != request.game_id {
        return Err(ServiceError::bad_request("gameId does not belong to matchId"));
    }
    let now = now_ms();
    if request.deadline <= now {
        return Err(ServiceError::unavailable(format!(
            "node {}: the placement's deadline passed before it arrived",
            node.id
        )));
    }
    let health = node.driver_health();
    if !health.healthy {
        return Err(ServiceError::unavailable(format!(
            "node {}: driver unhealthy: {}",
            node.id, health.status
        )));
    }
    let game = &node.config.game;
    let holding = node.reserve(&request.game_id, game.ask()).map_err(|refusal| match refusal {
        Refusal::Full { .. } => ServiceError::conflict(format!("node {} has no room: {refusal}", node.id)),
        Refusal::Duplicate(_) => ServiceError::conflict(format!("node {}: {refusal}", node.id)),
    })?;
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
    };
    if let Err(err) = node.store.create_server(&entry).await {
        node.release(&entry.game_id);
        return Err(match err {
            StoreError::Exists(_) => {
                ServiceError::conflict(format!("game {} is already running or being placed", entry.game_id))
            }
            other => {
                ServiceError::unavailable(format!("node {}: cannot record the server: {other}", node.id))
            }
        });
    }
    let (ready_tx, ready_rx) = oneshot::channel();
    let control = crate::runner::spawn(node, entry.clone(), holding.port, ready_tx);
    let wait = Duration::from_millis(request.deadline.saturating_sub(now_ms()));
    match tokio::time::timeout(wait, ready_rx).await {
        Ok(Ok(Ok(address))) => Ok(AllocateReply {
            url: node.player_url(&entry.game_id),
            game_id: entry.game_id,
            node: node.id.clone(),
            address,
        }),
        Ok(Ok(Err(reason))) => Err(ServiceError::unavailable(format!("node {}: {reason}", node.id))),
        Ok(Err(_)) => {
            Err(ServiceError::internal(format!("node {}: the runner ended without an answer", node.id)))
        }
        Err(_) => {
            let _ = control.send(Control::Stop(StopReason::Abort));
            Err(ServiceError::unavailable(format!(
                "node {}: the game server was not ready within {}",
                node.id,
                mm_shared::duration::format(wait)
            )))
        }
    }
}

/// A per-match secret: two random UUIDs (244 random bits) as hex.
fn new_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}
