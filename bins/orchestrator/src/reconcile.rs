//! Start-up reconciliation: make KV `servers` and the driver agree before serving.
//!
//! KV `servers` is a live view that can be rebuilt from the driver. After a crash (or a
//! `keep` shutdown) this node's containers may still run and its entries may be stale:
//!
//! | found | action |
//! |---|---|
//! | running, with a ready/running entry, game not over | adopt: count it, supervise it again |
//! | running, game over (past its end and grace) | stop and remove, delete the entry |
//! | running, no entry (or one that never got ready) | orphan: stop and remove |
//! | not running | remove (and delete its entry) |
//! | an entry of this node with no server | mark it lost, delete it |

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use mm_shared::protocol::{Resources, ServerEntry, ServerState, now_ms};

use crate::driver::{Exit, Instance};
use crate::ledger::Holding;
use crate::node::Node;

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
    // Adopted games and their handles.
    let mut kept: HashMap<String, String> = HashMap::new();
    let mut doomed: Vec<(Instance, &'static str)> = Vec::new();

    for instance in instances {
        let entry = entries.get(&instance.game_id);
        let action = match entry {
            _ if !instance.running => "removed_exited",
            None => "removed_orphan",
            Some(entry) if now >= entry.ends_at + grace => "removed_expired",
            Some(entry) if !matches!(entry.state, ServerState::Ready | ServerState::Running) => {
                "removed_orphan"
            }
            Some(entry) if !kept.contains_key(&entry.game_id) => match adopt(node, entry, &instance) {
                Ok(()) => {
                    kept.insert(entry.game_id.clone(), instance.handle.clone());
                    "adopted"
                }
                Err(reason) => {
                    tracing::warn!(game_id = %entry.game_id, "not adopting: {reason}");
                    "removed_orphan"
                }
            },
            Some(_) => "removed_orphan",
        };
        metrics::counter!("mm_orchestrator_reconcile_actions_total", "action" => action).increment(1);
        if action == "adopted" {
            report.adopted += 1;
        } else {
            doomed.push((instance, action));
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
        for (game_id, handle) in kept {
            if !running.contains(handle.as_str()) {
                node.dispatch(Exit { game_id, handle, code: None });
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

fn adopt(node: &Arc<Node>, entry: &ServerEntry, instance: &Instance) -> Result<(), String> {
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
    node.adopt(&entry.game_id, Holding { resources, port }).map_err(|err| err.to_string())?;
    let mut entry = entry.clone();
    entry.handle = instance.handle.clone();
    crate::runner::spawn_adopted(node, entry, port, instance.handle.clone());
    Ok(())
}
