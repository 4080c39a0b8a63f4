//! `orchestrator.release` (queue group: any node answers) and each node's own
//! `orchestrator.node.<id>.release`: end the server of a match that was not committed.
//!
//! The game id comes from the match id; the match's entry in KV `servers` names the node
//! that runs it. That node stops it (this one directly, another through its release
//! subject, within the request's budget). Idempotent: a match with no server, or whose
//! server is already ending, is answered `released: false`.

use std::sync::Arc;
use std::time::Duration;

use mm_shared::nats::{Budget, RequestError, ServiceError};
use mm_shared::protocol::{ReleaseReply, ReleaseRequest, limits, subjects};

use crate::allocate::game_id_for;
use crate::node::Node;

/// The budget of a release forwarded to another node when the request brought none.
const FORWARD_BUDGET: Duration = Duration::from_secs(2);
/// How much longer than the budget it grants the owning node this node waits.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// Every `result` label of `mm_orchestrator_releases_total`, registered at 0.
pub const RESULTS: [&str; 5] = ["released", "forwarded", "not_found", "bad_request", "error"];

fn count(result: &'static str) {
    metrics::counter!("mm_orchestrator_releases_total", "result" => result).increment(1);
}

/// `orchestrator.release`: finds the match's server and has its node stop it.
pub async fn release(
    node: Arc<Node>,
    nats: async_nats::Client,
    request: ReleaseRequest,
    budget: Budget,
) -> Result<ReleaseReply, ServiceError> {
    if let Err(reason) = limits::check_id("matchId", &request.match_id) {
        count("bad_request");
        return Err(ServiceError::bad_request(reason));
    }
    let game_id = game_id_for(&request.match_id);
    let entry = node.store.get_server(&game_id).await.map_err(|err| {
        count("error");
        ServiceError::unavailable(format!("cannot look the match's server up: {err}"))
    })?;
    let Some(entry) = entry else {
        // Not in KV: maybe placed on this node a moment ago (the runner registers
        // before its entry is written).
        let released = node.release_game(&game_id);
        count(if released { "released" } else { "not_found" });
        return Ok(ReleaseReply { game_id, released });
    };
    if entry.node == node.id {
        return Ok(release_here(&node, &game_id));
    }
    let subject = subjects::orchestrator_node_release(&entry.node);
    let budget = budget.remaining().unwrap_or(FORWARD_BUDGET);
    let reply: Result<ReleaseReply, RequestError> =
        mm_shared::nats::request_json_with_budget(&nats, &subject, &request, budget + ANSWER_MARGIN, budget)
            .await;
    match reply {
        Ok(reply) => {
            count("forwarded");
            Ok(reply)
        }
        Err(RequestError::Service { code, message, .. }) => {
            count("error");
            Err(ServiceError::new(code, message))
        }
        Err(RequestError::NoResponders { .. }) => {
            count("error");
            Err(ServiceError::unavailable(format!(
                "node {} that runs game {game_id} is not answering (stopped?); its entries are reaped \
                 once it has been gone for orchestrator.reap_after",
                entry.node
            )))
        }
        Err(other) => {
            count("error");
            Err(ServiceError::unavailable(format!(
                "asking node {} to release game {game_id}: {other}",
                entry.node
            )))
        }
    }
}

/// `orchestrator.node.<id>.release`: stops this node's server of the match, if it runs one.
pub async fn release_local(node: Arc<Node>, request: ReleaseRequest) -> Result<ReleaseReply, ServiceError> {
    if let Err(reason) = limits::check_id("matchId", &request.match_id) {
        count("bad_request");
        return Err(ServiceError::bad_request(reason));
    }
    let game_id = game_id_for(&request.match_id);
    Ok(release_here(&node, &game_id))
}

fn release_here(node: &Node, game_id: &str) -> ReleaseReply {
    let released = node.release_game(game_id);
    if released {
        tracing::info!(%game_id, "releasing: its match was not committed");
    }
    count(if released { "released" } else { "not_found" });
    ReleaseReply { game_id: game_id.to_owned(), released }
}
