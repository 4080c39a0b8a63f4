//! Reconciliation: KV `servers` converges on what really runs.
//!
//! KV `servers` is a live view that can be rebuilt from the drivers, and it can drift: a
//! node crashes, NATS loses writes or (file store, kill -9) brings deleted entries back,
//! a removal fails under load. Three mechanisms keep it true:
//!
//! - **At start-up** ([`reconcile`]), before serving, as below.
//! - **Anti-entropy** ([`Reconciler`]): every `reconcile_interval` and after every NATS
//!   reconnect, each node compares its own entries with its runners and its driver:
//!   an entry of its node that no runner or reservation knows is deleted; a runner whose
//!   entry is missing or differs gets it written again; a server of its node that nothing
//!   supervises is removed. Every KV change is by revision (compare-and-set,
//!   compare-and-delete), so it never undoes a write made after its read.
//! - **Reaping**: entries of a node that has been silent for `reap_after` (no new
//!   heartbeat revision seen, on this process's own clock; or no node entry at all for
//!   that long) are deleted by one live node — the first live one by id — entry by entry
//!   with compare-and-delete, after a fresh look at the silent node's entry: a node that
//!   came back (a new revision) is left alone, and one that was reaped while alive (cut
//!   off from NATS) writes its entries again at its next pass.
//! - **At shutdown** ([`sweep_at_shutdown`]): what the runners could not remove in time
//!   is removed in bulk.
//!
//! Start-up, after a crash (or a `keep` shutdown), when this node's containers may still
//! run and its entries may be stale:
//!
//! | found | action |
//! |---|---|
//! | running, with a ready/running entry, game not over | adopt: count it, supervise it again |
//! | running, with a warm entry (and its bootstrap token in its settings) | adopt it into the pool |
//! | running, game over (past its end and grace) | stop and remove, delete the entry |
//! | running, no entry, but its own settings tell its game (Podman), not over | recover: write its entry again, adopt it |
//! | running, no entry, started warm (Podman): the server says which match it took, if any | recover: its match's entry, or a warm one |
//! | running, no entry otherwise (or one that never got ready) | orphan: stop and remove |
//! | not running | remove (and delete its entry) |
//! | an entry of this node with no server | mark it lost, delete it |
//!
//! A server that came from the warm pool runs in its *slot* (its warm id: its label and
//! container name) under its match's game id: its entry names the slot in `warmId`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mm_shared::protocol::{Resources, ServerEntry, ServerState, now_ms};
use tokio_util::sync::CancellationToken;

use crate::allocate::Directory;
use crate::driver::{Exit, Instance};
use crate::ledger::Holding;
use crate::node::Node;
use crate::store::{Latest, Revised, StoreError};

/// How often the anti-entropy loop looks whether the NATS connection was re-established.
const RECONNECT_POLL: Duration = Duration::from_millis(200);
/// How soon a failed pass is tried again (JetStream may still be recovering after a
/// reconnect), when `reconcile_interval` is longer.
const RETRY_FAILED_PASS: Duration = Duration::from_secs(1);

/// Every `action` label of `mm_orchestrator_reconcile_actions_total`, registered at 0.
pub const ACTIONS: [&str; 10] = [
    "adopted",
    "recovered",
    "removed_orphan",
    "removed_expired",
    "removed_exited",
    "deleted_entry",
    "deleted_stale_entry",
    "rewrote_entry",
    "reaped_entry",
    "swept",
];
/// Every `trigger` label of `mm_orchestrator_reconcile_runs_total`.
pub const TRIGGERS: [&str; 2] = ["periodic", "reconnect"];

/// Servers stopped at once while cleaning up.
const PARALLEL_STOPS: usize = 16;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub adopted: usize,
    pub removed: usize,
    pub deleted: usize,
}

pub async fn reconcile(node: &Arc<Node>) -> anyhow::Result<Report> {
    let instances = node
        .driver
        .list(&node.id)
        .await
        .map_err(|err| anyhow::anyhow!("reconciling: cannot list this node's game servers: {err}"))?;
    let entries: HashMap<String, ServerEntry> = node
        .store
        .servers()
        .await
        .map_err(|err| anyhow::anyhow!("reconciling: cannot read KV servers: {err}"))?
        .into_iter()
        .filter(|entry| entry.node == node.id)
        .map(|entry| (entry.game_id.clone(), entry))
        .collect();
    let now = now_ms();
    let grace = node.config.game.end_grace.as_millis() as u64;
    let mut report = Report::default();
    // Adopted servers by entry key: their slots and handles.
    let mut kept: HashMap<String, (String, String)> = HashMap::new();
    let mut doomed: Vec<(Instance, &'static str)> = Vec::new();
    // The entries of servers claimed from the pool, by their slot.
    let claimed: HashMap<String, String> = entries
        .values()
        .filter(|entry| !entry.warm_id.is_empty() && entry.warm_id != entry.game_id)
        .map(|entry| (entry.warm_id.clone(), entry.game_id.clone()))
        .collect();

    for instance in instances {
        let key = claimed.get(&instance.game_id).unwrap_or(&instance.game_id);
        let entry = entries.get(key);
        let keep = |entry: &ServerEntry, kept: &mut HashMap<String, (String, String)>| {
            kept.insert(entry.game_id.clone(), (instance.game_id.clone(), instance.handle.clone()));
        };
        let action = match entry {
            _ if !instance.running => "removed_exited",
            Some(entry) if kept.contains_key(&entry.game_id) => "removed_orphan",
            None => match recover(node, &instance, now).await {
                // Its entry was lost (reaped while this node was down): written again,
                // with its secret.
                Some((entry, token)) => match write_recovered(node, &entry).await {
                    Ok(()) => match adopt(node, &entry, &instance, token) {
                        Ok(()) => {
                            keep(&entry, &mut kept);
                            report.adopted += 1;
                            "recovered"
                        }
                        Err(reason) => {
                            tracing::warn!(game_id = %entry.game_id, "not adopting: {reason}");
                            let _ = node.store.delete_server(&entry.game_id).await;
                            "removed_orphan"
                        }
                    },
                    Err(reason) => {
                        tracing::warn!(game_id = %entry.game_id, "cannot write a recovered entry: {reason}");
                        "removed_orphan"
                    }
                },
                None => "removed_orphan",
            },
            Some(entry) if entry.state == ServerState::Warm => {
                // Its match is handed over with its bootstrap token, which only its own
                // settings hold.
                let token =
                    node.driver.recover(&instance.handle).await.map(|recovered| recovered.bootstrap_token);
                match token.filter(|token| !token.is_empty()) {
                    Some(token) => match adopt(node, entry, &instance, token) {
                        Ok(()) => {
                            keep(entry, &mut kept);
                            "adopted"
                        }
                        Err(reason) => {
                            tracing::warn!(game_id = %entry.game_id, "not adopting a warm server: {reason}");
                            "removed_orphan"
                        }
                    },
                    None => "removed_orphan",
                }
            }
            Some(entry) if now >= entry.ends_at + grace => "removed_expired",
            Some(entry) if !matches!(entry.state, ServerState::Ready | ServerState::Running) => {
                "removed_orphan"
            }
            Some(entry) => {
                match adopt(node, &with_secret(node, entry, &instance).await, &instance, String::new()) {
                    Ok(()) => {
                        keep(entry, &mut kept);
                        "adopted"
                    }
                    Err(reason) => {
                        tracing::warn!(game_id = %entry.game_id, "not adopting: {reason}");
                        "removed_orphan"
                    }
                }
            }
        };
        metrics::counter!("mm_orchestrator_reconcile_actions_total", "action" => action).increment(1);
        match action {
            "adopted" => report.adopted += 1,
            "recovered" => {}
            _ => doomed.push((instance, action)),
        }
    }

    report.removed = doomed.len();
    let stop_timeout = node.config.game.stop_timeout;
    futures_util::stream::iter(doomed)
        .for_each_concurrent(PARALLEL_STOPS, |(instance, action)| async move {
            tracing::info!(game_id = %instance.game_id, handle = %instance.handle, "reconcile: {action}");
            if let Err(err) = node.driver.discard(&instance.handle, stop_timeout).await {
                tracing::warn!(game_id = %instance.game_id, "reconcile: cannot remove: {err}");
            }
        })
        .await;

    for (game_id, mut entry) in entries {
        if kept.contains_key(&game_id) {
            continue;
        }
        entry.state = ServerState::Lost;
        entry.detail = "its server was gone when the node started".to_owned();
        entry.updated_at = now_ms();
        let _ = node.store.put_server(&entry).await;
        if let Err(err) = node.store.delete_server(&game_id).await {
            tracing::warn!(%game_id, "reconcile: cannot delete the entry: {err}");
        }
        metrics::counter!("mm_orchestrator_reconcile_actions_total", "action" => "deleted_entry")
            .increment(1);
        metrics::counter!("mm_orchestrator_servers_ended_total", "state" => "lost", "node" => node.id.clone())
            .increment(1);
        report.deleted += 1;
    }

    // A server that stopped between the listing and its runner's registration would
    // have its exit missed: one more listing catches it.
    if !kept.is_empty()
        && let Ok(now_listed) = node.driver.list(&node.id).await
    {
        let running: HashSet<&str> = now_listed
            .iter()
            .filter(|instance| instance.running)
            .map(|instance| instance.handle.as_str())
            .collect();
        for (slot, handle) in kept.into_values() {
            if !running.contains(handle.as_str()) {
                node.dispatch(Exit { game_id: slot, handle, code: None });
            }
        }
    }
    tracing::info!(
        adopted = report.adopted,
        removed = report.removed,
        deleted_entries = report.deleted,
        "reconciled this node's game servers with KV servers"
    );
    Ok(report)
}

/// The entry of a running server of this node that KV lost, from the server's own
/// settings, when the driver can tell them and its game is not over at `now`; with its
/// bootstrap token when it is warm. A server started warm says itself (with that token)
/// which match it took since, if any.
async fn recover(node: &Arc<Node>, instance: &Instance, now: u64) -> Option<(ServerEntry, String)> {
    let mut recovered = node.driver.recover(&instance.handle).await?;
    if recovered.game_id != instance.game_id {
        return None;
    }
    let slot = instance.game_id.clone();
    let address = node.address(recovered.port);
    let token = std::mem::take(&mut recovered.bootstrap_token);
    let mut state = ServerState::Running;
    if !token.is_empty() {
        match crate::game_api::assignment(&address, &token).await {
            Ok(Some(assignment)) => {
                recovered.match_id = assignment.match_id;
                recovered.player_ids = assignment.player_ids;
                recovered.secret = assignment.secret;
                recovered.ends_at = assignment.ends_at;
            }
            Ok(None) => state = ServerState::Warm,
            Err(err) => {
                tracing::warn!(%slot, "reconcile: a warm-started server does not say its match: {err}");
                return None;
            }
        }
    }
    let grace = node.config.game.end_grace.as_millis() as u64;
    if state != ServerState::Warm && now >= recovered.ends_at + grace {
        return None;
    }
    // A game id comes from its match id; a server from the pool runs in a slot of its own.
    let (game_id, match_id) = match state {
        ServerState::Warm => (slot.clone(), String::new()),
        _ => (crate::allocate::game_id_for(&recovered.match_id), recovered.match_id),
    };
    let warm_id = if game_id == slot && state != ServerState::Warm { String::new() } else { slot };
    tracing::info!(%game_id, state = state.as_str(), "reconcile: its entry was lost; recovered it from the server itself");
    let entry = ServerEntry {
        game_id,
        match_id,
        node: node.id.clone(),
        state,
        address,
        started_at: now,
        player_ids: recovered.player_ids,
        driver: node.driver.name().to_owned(),
        restarts: 0,
        secret: recovered.secret,
        ends_at: recovered.ends_at,
        updated_at: now,
        resources: node.config.game.ask().resources(),
        handle: instance.handle.clone(),
        detail: "recovered from its server after its entry was lost".to_owned(),
        warm_id,
    };
    Some((entry, token))
}

/// A recovered entry and its secret (a warm one has none), written again.
async fn write_recovered(node: &Arc<Node>, entry: &ServerEntry) -> Result<(), String> {
    node.store.put_server(entry).await.map_err(|err| err.to_string())?;
    if entry.secret.is_empty() {
        return Ok(());
    }
    node.store.put_secret(&entry.game_id, &entry.secret).await.map_err(|err| err.to_string())
}

/// `entry` (as read from `servers`, which holds no secret) with its server's secret: from
/// the `secrets` bucket, or else from the server's own settings — or, for one that took
/// its match warm, from the server itself (with the bootstrap token its settings hold) —
/// written back then. A server adopted without it could be restarted with none, and
/// nobody could join it.
async fn with_secret(node: &Arc<Node>, entry: &ServerEntry, instance: &Instance) -> ServerEntry {
    let mut entry = entry.clone();
    if let Ok(Some(secret)) = node.store.secret(&entry.game_id).await {
        entry.secret = secret;
        return entry;
    }
    let Some(recovered) = node.driver.recover(&instance.handle).await else { return entry };
    if recovered.game_id != instance.game_id {
        return entry;
    }
    let secret = if recovered.bootstrap_token.is_empty() {
        Some(recovered.secret).filter(|_| recovered.match_id == entry.match_id)
    } else {
        let address = node.address(recovered.port);
        match crate::game_api::assignment(&address, &recovered.bootstrap_token).await {
            Ok(Some(assignment)) if assignment.match_id == entry.match_id => Some(assignment.secret),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(game_id = %entry.game_id, "its server does not say its secret: {err}");
                None
            }
        }
    };
    if let Some(secret) = secret.filter(|secret| !secret.is_empty()) {
        entry.secret = secret;
        if let Err(err) = node.store.put_secret(&entry.game_id, &entry.secret).await {
            tracing::warn!(game_id = %entry.game_id, "cannot write its secret again: {err}");
        }
    }
    entry
}

/// Counts a running server in the books (in its slot) and supervises it; a warm one
/// (into the pool) needs its bootstrap `token`.
fn adopt(node: &Arc<Node>, entry: &ServerEntry, instance: &Instance, token: String) -> Result<(), String> {
    // The entry's address is the only record of an adopted server's port: the node's
    // books are rebuilt from it here.
    let port = entry
        .address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .ok_or_else(|| format!("its address `{}` has no port", entry.address))?;
    let resources = if entry.resources == Resources::default() {
        node.config.game.ask().resources()
    } else {
        entry.resources
    };
    let slot = instance.game_id.clone();
    node.adopt(&slot, Holding { resources, port }).map_err(|err| err.to_string())?;
    let mut entry = entry.clone();
    entry.handle = instance.handle.clone();
    crate::runner::spawn_adopted(node, slot, entry, port, instance.handle.clone(), token);
    Ok(())
}

/// What one anti-entropy pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Entries of this node that nothing here knows, deleted.
    pub deleted: usize,
    /// Entries of live runners written again (missing or different).
    pub rewritten: usize,
    /// Servers of this node that nothing supervises, removed.
    pub removed: usize,
    /// Entries of silent nodes deleted.
    pub reaped: usize,
}

fn act(action: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!("mm_orchestrator_reconcile_actions_total", "action" => action)
            .increment(count as u64);
    }
}

/// The anti-entropy loop of one node (see the module doc).
pub struct Reconciler {
    pub node: Arc<Node>,
    pub directory: Arc<Directory>,
    /// Nodes that have entries in `servers` but no node entry: since when, here.
    missing_since: Mutex<HashMap<String, Instant>>,
}

impl Reconciler {
    pub fn new(node: Arc<Node>, directory: Arc<Directory>) -> Self {
        Self { node, directory, missing_since: Mutex::new(HashMap::new()) }
    }

    /// Runs a pass every `reconcile_interval`, and at once after each NATS reconnect,
    /// until `stop`.
    pub async fn run(self, nats: async_nats::Client, stop: CancellationToken) {
        let every = self.node.config.reconcile_interval;
        let mut periodic = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(RECONNECT_POLL);
        let statistics = nats.statistics();
        let mut connects = statistics.connects.load(Ordering::Relaxed);
        loop {
            let trigger = tokio::select! {
                _ = periodic.tick() => "periodic",
                _ = poll.tick() => {
                    let now = statistics.connects.load(Ordering::Relaxed);
                    if now == connects {
                        continue;
                    }
                    connects = now;
                    "reconnect"
                }
                () = stop.cancelled() => return,
            };
            let result = tokio::select! {
                result = self.pass() => result,
                () = stop.cancelled() => return,
            };
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!("mm_orchestrator_reconcile_runs_total", "trigger" => trigger, "result" => label)
                .increment(1);
            if result.is_err() {
                periodic.reset_after(RETRY_FAILED_PASS.min(every));
            }
            match result {
                Ok(pass) if pass != Pass::default() => {
                    tracing::info!(
                        trigger,
                        deleted = pass.deleted,
                        rewritten = pass.rewritten,
                        removed = pass.removed,
                        reaped = pass.reaped,
                        "reconciled KV servers with what runs"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(trigger, "reconciling KV servers: {err}"),
            }
        }
    }

    /// One pass: this node's own entries and servers, then the silent nodes' entries.
    pub async fn pass(&self) -> Result<Pass, String> {
        let node = &self.node;
        // What runs, then what KV says, then what the node knows, in this order: a server
        // started after the listing is known by the time the node is asked.
        let instances =
            node.driver.list(&node.id).await.map_err(|err| format!("listing the driver's servers: {err}"))?;
        let snapshot = node.store.server_snapshot().await.map_err(|err| err.to_string())?;
        let known = node.known();
        let runners: HashMap<String, ServerEntry> =
            node.runner_entries().into_iter().map(|entry| (entry.game_id.clone(), entry)).collect();
        let mut pass = Pass::default();

        let (own, others): (Vec<Revised<ServerEntry>>, Vec<Revised<ServerEntry>>) =
            snapshot.into_iter().partition(|entry| entry.value.node == node.id);
        let mut in_kv: HashMap<String, Revised<ServerEntry>> = HashMap::new();
        for entry in others.iter().filter(|entry| runners.contains_key(&entry.value.game_id)) {
            in_kv.insert(entry.value.game_id.clone(), entry.clone());
        }
        for entry in own {
            let game_id = entry.value.game_id.clone();
            if known.entries.contains(&game_id) {
                in_kv.insert(game_id, entry);
                continue;
            }
            match node.store.delete_server_if(&game_id, entry.revision).await {
                Ok(true) => {
                    tracing::info!(%game_id, state = entry.value.state.as_str(), "reconcile: deleted an entry of this node that no server backs");
                    pass.deleted += 1;
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(%game_id, "reconcile: cannot delete a stale entry: {err}"),
            }
        }

        for (game_id, entry) in &runners {
            if entry.state.is_final() {
                continue;
            }
            let written = match in_kv.get(game_id) {
                // KV never holds the secret (it is not serialized): compare without it.
                Some(current) if current.value == ServerEntry { secret: String::new(), ..entry.clone() } => {
                    continue;
                }
                Some(current) => node.store.update_server(entry, current.revision).await.map(|_| ()),
                None => node.store.create_server(entry).await,
            };
            match written {
                Ok(()) => {
                    tracing::info!(%game_id, state = entry.state.as_str(), "reconcile: wrote a live server's entry again");
                    pass.rewritten += 1;
                }
                // The runner wrote meanwhile: it is current.
                Err(StoreError::Conflict { .. } | StoreError::Exists(_)) => {}
                Err(err) => tracing::warn!(%game_id, "reconcile: cannot write a live server's entry: {err}"),
            }
        }

        let stop_timeout = node.config.game.stop_timeout;
        let strays: Vec<Instance> =
            instances.into_iter().filter(|instance| !known.slots.contains(&instance.game_id)).collect();
        let removed = futures_util::stream::iter(strays)
            .map(|instance| async move {
                let action = if instance.running { "removed_orphan" } else { "removed_exited" };
                match node.driver.discard(&instance.handle, stop_timeout).await {
                    Ok(()) => {
                        tracing::info!(game_id = %instance.game_id, handle = %instance.handle, "reconcile: {action}");
                        act(action, 1);
                        true
                    }
                    Err(err) => {
                        tracing::warn!(game_id = %instance.game_id, "reconcile: cannot remove a server nothing supervises: {err}");
                        false
                    }
                }
            })
            .buffer_unordered(PARALLEL_STOPS)
            .filter(|removed| std::future::ready(*removed))
            .count()
            .await;
        pass.removed = removed;

        pass.reaped = self.reap(others).await;
        act("deleted_stale_entry", pass.deleted);
        act("rewrote_entry", pass.rewritten);
        act("reaped_entry", pass.reaped);
        Ok(pass)
    }

    /// Deletes the entries of nodes silent for `reap_after`, when this node is the first
    /// live node by id; how many.
    async fn reap(&self, others: Vec<Revised<ServerEntry>>) -> usize {
        let node = &self.node;
        let grace = node.config.reap_after;
        let (mut live, silent) = self.directory.liveness(grace);
        let mut by_node: HashMap<String, Vec<Revised<ServerEntry>>> = HashMap::new();
        for entry in others {
            by_node.entry(entry.value.node.clone()).or_default().push(entry);
        }
        let overdue: Vec<(String, Option<u64>)> = {
            let mut missing = self.missing_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            missing.retain(|id, _| by_node.contains_key(id) && !silent.contains_key(id));
            by_node
                .keys()
                .filter_map(|id| {
                    let (quiet, revision) = match silent.get(id) {
                        Some(&(quiet, revision)) => (quiet, Some(revision)),
                        None => (missing.entry(id.clone()).or_insert_with(Instant::now).elapsed(), None),
                    };
                    (quiet >= grace).then(|| (id.clone(), revision))
                })
                .collect()
        };
        live.push(node.id.clone());
        live.sort();
        if overdue.is_empty() || live.first() != Some(&node.id) {
            return 0;
        }
        let mut reaped = 0;
        for (silent_node, revision) in overdue {
            // A fresh look: a node that wrote its entry since (or made one) is back.
            let back = match node.store.node_latest(&silent_node).await {
                Ok(Some(Latest::Value(entry))) => Some(entry.revision) != revision,
                Ok(Some(Latest::Deleted { .. }) | None) => false,
                Err(err) => {
                    tracing::debug!(node = %silent_node, "reap: cannot read its node entry: {err}");
                    true
                }
            };
            if back {
                continue;
            }
            for entry in by_node.remove(&silent_node).unwrap_or_default() {
                // Marked `lost` first (watchers of `servers` see why it goes), then deleted,
                // each only if unchanged since read.
                let mut lost = entry.value.clone();
                let revision = if lost.state == ServerState::Lost {
                    entry.revision
                } else {
                    lost.state = ServerState::Lost;
                    lost.detail = format!(
                        "its node {silent_node} was silent for over {}",
                        mm_shared::duration::format(grace)
                    );
                    lost.updated_at = now_ms();
                    match node.store.update_server(&lost, entry.revision).await {
                        Ok(revision) => revision,
                        Err(err) => {
                            tracing::debug!(game_id = %entry.value.game_id, "reap: cannot mark it lost: {err}");
                            continue;
                        }
                    }
                };
                match node.store.delete_server_if(&entry.value.game_id, revision).await {
                    Ok(true) => reaped += 1,
                    Ok(false) => {}
                    Err(err) => tracing::warn!(game_id = %entry.value.game_id, "reap: cannot delete: {err}"),
                }
            }
            if reaped > 0 {
                tracing::warn!(
                    node = %silent_node,
                    "reaped the entries of a node silent for over {} (orchestrator.reap_after)",
                    mm_shared::duration::format(grace)
                );
            }
        }
        reaped
    }
}

/// At shutdown, after the runners: removes what they could not (every server of this
/// node, or with `keep` only the stopped ones), then, without `keep`, the entries still
/// left of this node. Bounded by `timeout`.
pub async fn sweep_at_shutdown(node: &Arc<Node>, keep: bool, timeout: Duration) {
    let sweep = async {
        // Half the time for the servers to exit after SIGTERM, then they are killed.
        match node.driver.sweep(&node.id, keep, (timeout / 2).min(node.config.game.stop_timeout)).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, "removed the game servers the runners left");
                act("swept", removed);
            }
            Err(err) => tracing::warn!("removing the game servers the runners left: {err}"),
        }
        if keep {
            return;
        }
        match node.store.server_snapshot().await {
            Ok(entries) => {
                for entry in entries.into_iter().filter(|entry| entry.value.node == node.id) {
                    let _ = node.store.delete_server_if(&entry.value.game_id, entry.revision).await;
                }
            }
            Err(err) => tracing::warn!("removing this node's entries: {err}"),
        }
    };
    if tokio::time::timeout(timeout, sweep).await.is_err() {
        tracing::warn!(
            "removing leftovers took over {}; the next start of this node removes the rest",
            mm_shared::duration::format(timeout)
        );
    }
}
