//! `orchestrator.allocate`: served by every node in one queue group; whichever node
//! receives a request places it somewhere.
//!
//! 1. The game id comes from the match id (a hash), so allocation is idempotent: a
//!    retry for a match whose server is live gets that server back.
//! 2. The live nodes (from a watch of KV `nodes`, this node's own entry taken fresh
//!    from its books) go through the [`scheduler`]; nothing fits → 503 saying why.
//! 3. The best node is asked on `orchestrator.node.<id>.place` (this node calls itself
//!    directly). A node that has filled up meanwhile, or whose start queue could not have
//!    the server ready in time, refuses (409) and the next one is asked, as Nomad's plan
//!    applier rejects a stale plan.
//!
//! Time is a budget, not a clock: the allocation works to the request's own budget
//! (`Mm-Budget-Ms`, at most `allocate_timeout`), and hands each node the part of it that
//! is left, at most `place_timeout`, as that node's budget.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use mm_shared::nats::{Budget, RequestError, ServiceError};
use mm_shared::protocol::{
    AllocateReply, NodeEntry, PlaceRequest, RegionalAllocateRequest, ServerEntry, ServerState, StartKind,
    limits, now_ms, subjects,
};
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::scheduler;

/// Most players one game server takes.
pub const MAX_PLAYERS: usize = 100;

/// How often a request for a match whose server is still starting looks again.
const EXISTING_POLL: Duration = Duration::from_millis(50);

/// How much longer than the budget it grants a node the allocator waits for its answer,
/// so the node's own "not ready in time" arrives rather than a timeout.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// The game id of a match: `g` and 24 hex digits of SHA-256(matchId). Safe as a KV key,
/// a NATS subject token, a container name and a URL path segment.
pub fn game_id_for(match_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, match_id.as_bytes());
    let hex: String = digest.as_ref()[..12].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("g{hex}")
}

/// A new warm server's id: `w` and 24 random hex digits (as safe as a game id, and never
/// one: game ids start with `g`).
pub fn new_warm_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("w{}", &random[..24])
}

/// Checks a match id and its players: 400 for the caller's mistakes.
pub fn check_request(match_id: &str, player_ids: &[String]) -> Result<(), ServiceError> {
    limits::check_id("matchId", match_id).map_err(ServiceError::bad_request)?;
    if player_ids.is_empty() {
        return Err(ServiceError::bad_request("playerIds must name at least one player"));
    }
    if player_ids.len() > MAX_PLAYERS {
        return Err(ServiceError::bad_request(format!(
            "playerIds has {} players; a game server takes at most {MAX_PLAYERS}",
            player_ids.len()
        )));
    }
    let mut seen = HashSet::new();
    for player in player_ids {
        limits::check_id("player id", player).map_err(ServiceError::bad_request)?;
        if !seen.insert(player) {
            return Err(ServiceError::bad_request(format!("player {player} is listed twice")));
        }
    }
    Ok(())
}

/// The other nodes as KV `nodes` says, kept current by a watch; and when each was last
/// seen to write a new heartbeat, on this process's own clock (no clock of another host
/// is compared with ours to decide that a node is gone).
#[derive(Default)]
pub struct Directory {
    nodes: RwLock<HashMap<String, Known>>,
}

struct Known {
    entry: NodeEntry,
    revision: u64,
    /// When this revision was first seen here.
    seen: Instant,
}

impl Directory {
    /// Every known node, with `own` (fresh from this node's books) in place of its KV copy.
    pub fn snapshot(&self, own: NodeEntry) -> Vec<NodeEntry> {
        let nodes = self.nodes.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all: Vec<NodeEntry> = nodes
            .values()
            .filter(|known| known.entry.node != own.node)
            .map(|known| known.entry.clone())
            .collect();
        all.push(own);
        all
    }

    /// Nodes whose entry changed within `within` (by this process's clock), and how long
    /// each other node has been silent. A node without an entry is not listed.
    pub fn liveness(&self, within: Duration) -> (Vec<String>, HashMap<String, (Duration, u64)>) {
        let nodes = self.nodes.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut live = Vec::new();
        let mut silent = HashMap::new();
        for (id, known) in nodes.iter() {
            let quiet = known.seen.elapsed();
            if quiet < within {
                live.push(id.clone());
            }
            silent.insert(id.clone(), (quiet, known.revision));
        }
        (live, silent)
    }

    /// Follows KV `nodes` until `shutdown`, watching again (with backoff) after a break.
    pub async fn follow(self: Arc<Self>, bucket: kv::Store, shutdown: CancellationToken) {
        let session = || {
            let (directory, bucket) = (self.clone(), bucket.clone());
            async move {
                let mut watch = bucket
                    .watch_with_history(">")
                    .await
                    .map_err(|err| format!("cannot watch KV nodes: {err}"))?;
                while let Some(entry) = watch.next().await {
                    let entry = entry.map_err(|err| format!("watching KV nodes: {err}"))?;
                    directory.apply(&entry);
                }
                Err("the watch of KV nodes ended".to_owned())
            }
        };
        crate::retry::forever(
            "following KV nodes",
            &shutdown,
            Duration::from_millis(100),
            Duration::from_secs(5),
            session,
        )
        .await;
    }

    fn apply(&self, entry: &kv::Entry) {
        let mut nodes = self.nodes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<NodeEntry>(&entry.value) {
                Ok(node) => {
                    // The same revision again (a watch started over) is no sign of life.
                    let seen = match nodes.get(&entry.key) {
                        Some(known) if known.revision == entry.revision => known.seen,
                        _ => Instant::now(),
                    };
                    nodes.insert(entry.key.clone(), Known { entry: node, revision: entry.revision, seen });
                }
                Err(err) => {
                    tracing::debug!(key = %entry.key, "ignoring a node entry that does not decode: {err}")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                nodes.remove(&entry.key);
            }
        }
    }
}

/// Serves `orchestrator.allocate` for one node.
pub struct Allocator {
    pub node: Arc<Node>,
    pub nats: async_nats::Client,
    pub directory: Arc<Directory>,
}

/// How an allocation went, for the metrics.
type Labelled<T> = Result<(T, &'static str), (ServiceError, &'static str)>;

impl Allocator {
    pub async fn allocate(
        &self,
        request: RegionalAllocateRequest,
        budget: Budget,
    ) -> Result<AllocateReply, ServiceError> {
        let started = budget.arrived();
        let deadline = budget.deadline_within(self.node.config.allocate_timeout);
        let result = self.allocate_inner(request, deadline).await;
        let (result_label, reason) = match &result {
            Ok((_, reason)) => ("ok", *reason),
            Err((_, reason)) => ("error", *reason),
        };
        metrics::counter!("mm_orchestrator_allocations_total", "result" => result_label, "reason" => reason)
            .increment(1);
        match result {
            Ok((reply, reason)) => {
                // Request to ready, for servers started by this request (not replays).
                if reason == "placed" {
                    metrics::histogram!("mm_orchestrator_allocation_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Ok(reply)
            }
            Err((err, _)) => Err(err),
        }
    }

    async fn allocate_inner(
        &self,
        RegionalAllocateRequest { request, region }: RegionalAllocateRequest,
        deadline: Instant,
    ) -> Labelled<AllocateReply> {
        check_request(&request.match_id, &request.player_ids).map_err(|err| (err, "bad_request"))?;
        if let Some(region) = &region {
            limits::check_token("region", region)
                .map_err(|err| (ServiceError::bad_request(err), "bad_request"))?;
        }
        let node = &self.node;
        let game_id = game_id_for(&request.match_id);

        if let Some(reply) = self.existing(&game_id, deadline).await? {
            return Ok((reply, "existing"));
        }
        let own = node.entry();
        let nodes = self.directory.snapshot(own);
        let (now, node_timeout_ms) = (now_ms(), node.config.node_timeout.as_millis() as u64);
        let region = scheduler::region_in_force(region.as_deref(), &nodes, now, node_timeout_ms);
        let ranked = scheduler::rank(
            node.config.game.ask(),
            &nodes,
            now,
            node_timeout_ms,
            node.config.scheduler,
            region,
        )
        .map_err(|refusal| {
            for (filter, count) in &refusal.rejected {
                metrics::counter!("mm_orchestrator_rejected_nodes_total", "filter" => filter.label())
                    .increment(*count as u64);
            }
            (ServiceError::unavailable(refusal.to_string()), "no_capacity")
        })?;

        let place = PlaceRequest {
            game_id: game_id.clone(),
            match_id: request.match_id,
            player_ids: request.player_ids,
        };
        let mut failures = Vec::new();
        for candidate in &ranked {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                failures.push(format!("{}: not asked, the budget ran out", candidate.node));
                break;
            }
            let budget = remaining.min(node.config.place_timeout);
            // Each failure carries its metric label, decided where the failure is known.
            let outcome = if candidate.node == node.id {
                crate::place::place(node.clone(), place.clone(), Instant::now() + budget).await.map_err(
                    |err| {
                        let label = answered_label(&err);
                        (err, label)
                    },
                )
            } else {
                let subject = subjects::orchestrator_node_place(&candidate.node);
                mm_shared::nats::request_json_with_budget(
                    &self.nats,
                    &subject,
                    &place,
                    budget + ANSWER_MARGIN,
                    budget,
                )
                .await
                .map_err(|err| place_failure(&candidate.node, err))
            };
            let attempt = match &outcome {
                Ok(_) => "placed",
                Err((_, label)) => *label,
            };
            metrics::counter!("mm_orchestrator_place_attempts_total", "outcome" => attempt).increment(1);
            match outcome.map_err(|(err, _)| err) {
                Ok(reply) => return Ok((reply, "placed")),
                Err(err) if err.code == 400 => return Err((err, "bad_request")),
                Err(err) => {
                    tracing::debug!(%game_id, node = %candidate.node, "placement refused or failed: {}", err.message);
                    if err.code == 409
                        && let Some(reply) = self.existing(&game_id, deadline).await?
                    {
                        // A concurrent allocation of the same match won the race.
                        return Ok((reply, "existing"));
                    }
                    failures.push(err.message);
                }
            }
        }
        let message = format!("no node could run the game server: {}", failures.join("; "));
        if Instant::now() >= deadline {
            return Err((ServiceError::out_of_time(message), "timeout"));
        }
        Err((ServiceError::unavailable(message), "all_refused"))
    }

    /// The live server of `game_id`, if there is one; waits (until `deadline`) for one
    /// that is still starting.
    async fn existing(
        &self,
        game_id: &str,
        deadline: Instant,
    ) -> Result<Option<AllocateReply>, (ServiceError, &'static str)> {
        loop {
            let entry: Option<ServerEntry> = self
                .node
                .store
                .get_server(game_id)
                .await
                .map_err(|err| (ServiceError::unavailable(err.to_string()), "store_unavailable"))?;
            match entry {
                None => return Ok(None),
                Some(entry) if matches!(entry.state, ServerState::Ready | ServerState::Running) => {
                    return Ok(Some(AllocateReply {
                        url: self.node.player_url(&entry.game_id),
                        game_id: entry.game_id,
                        node: entry.node,
                        address: entry.address,
                        // A replay: nothing was claimed or started for it.
                        start: StartKind::Cold,
                    }));
                }
                // It is ending: the entry goes in a moment, then a new server can start.
                Some(entry) if entry.state.is_final() => {}
                Some(_) => {}
            }
            if Instant::now() + EXISTING_POLL >= deadline {
                return Err((
                    ServiceError::out_of_time(format!(
                        "game {game_id} of this match did not become ready in time"
                    )),
                    "timeout",
                ));
            }
            tokio::time::sleep(EXISTING_POLL).await;
        }
    }
}

/// The place-attempt label of a node's own answer: `refused` when it had filled up
/// meanwhile (409), `failed` otherwise.
fn answered_label(err: &ServiceError) -> &'static str {
    if err.code == 409 { "refused" } else { "failed" }
}

/// A failed place request to node `node`, as the error to report and its place-attempt
/// label: `unreachable` only when nothing answers on the node's subject.
fn place_failure(node: &str, err: RequestError) -> (ServiceError, &'static str) {
    match err {
        RequestError::Service { code, message, .. } => {
            let err = ServiceError::new(code, message);
            let label = answered_label(&err);
            (err, label)
        }
        RequestError::NoResponders { .. } => {
            (ServiceError::unavailable(format!("{node}: not answering (stopped?)")), "unreachable")
        }
        other => (ServiceError::unavailable(format!("{node}: {other}")), "failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn game_ids_are_stable_safe_and_distinct() {
        let a = game_id_for("match-1");
        assert_eq!(a, game_id_for("match-1"));
        assert_ne!(a, game_id_for("match-2"));
        assert_eq!(a.len(), 25);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        let (w1, w2) = (new_warm_id(), new_warm_id());
        assert_ne!(w1, w2);
        assert_eq!(w1.len(), 25);
        assert!(w1.starts_with('w') && w1.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn place_failures_are_labelled_by_kind_not_by_text() {
        let subject = "orchestrator.node.b.place".to_owned();
        let service = |code: u16, message: &str| RequestError::Service {
            subject: subject.clone(),
            code,
            message: message.to_owned(),
        };
        let (err, label) = place_failure("b", RequestError::NoResponders { subject: subject.clone() });
        assert_eq!((err.code, label), (503, "unreachable"));
        assert!(err.message.starts_with("b: "), "{}", err.message);
        // A driver error that happens to say "not answering" is the node's answer: failed.
        let podman = service(503, "Podman at /run/podman.sock is not answering: connection refused");
        assert_eq!(place_failure("b", podman).1, "failed");
        assert_eq!(place_failure("b", service(409, "node b is full")).1, "refused");
        let timeout = RequestError::Timeout { subject, timeout: Duration::from_secs(1) };
        assert_eq!(place_failure("b", timeout).1, "failed");
    }

    #[test]
    fn requests_are_checked() {
        let players = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>();
        assert!(check_request("m1", &players(10)).is_ok());
        for (match_id, players, needle) in [
            ("", players(10), "matchId"),
            ("m 1", players(10), "matchId"),
            ("m1", vec![], "at least one"),
            ("m1", players(MAX_PLAYERS + 1), "at most"),
            ("m1", vec!["p1".into(), "p1".into()], "twice"),
            ("m1", vec!["p*".into()], "player id"),
        ] {
            let err = check_request(match_id, &players).expect_err(needle);
            assert_eq!(err.code, 400);
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
    }
}
