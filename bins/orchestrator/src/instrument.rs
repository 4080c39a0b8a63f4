//! The orchestrator's metrics, described once. Label values are bounded: states,
//! reasons, filters, actions and resource names; `node` is this process's own node id.

use mm_shared::protocol::{Resources, ServerState};

pub fn describe() {
    metrics::describe_counter!(
        "mm_orchestrator_allocations_total",
        "orchestrator.allocate requests answered, by result (ok, error) and reason \
         (placed, existing, bad_request, no_capacity, all_refused, ...)."
    );
    metrics::describe_histogram!(
        "mm_orchestrator_allocation_duration_seconds",
        metrics::Unit::Seconds,
        "orchestrator.allocate, request to ready (the server's /healthz answers), successful ones."
    );
    metrics::describe_counter!(
        "mm_orchestrator_rejected_nodes_total",
        "Nodes the scheduler rejected when no node fit, by the filter that rejected them \
         (down, driver_unhealthy, max_servers, cpu, memory, ports)."
    );
    metrics::describe_counter!(
        "mm_orchestrator_placements_total",
        "Placement requests this node answered, by result (placed, refused, failed) and reason \
         (placed, no_room, busy: its start queue could not make the budget, duplicate, released, \
         draining, out_of_time, bad_request, failed)."
    );
    metrics::describe_counter!(
        "mm_orchestrator_place_attempts_total",
        "Nodes an allocation asked, by outcome (placed, refused, unreachable, failed)."
    );
    metrics::describe_histogram!(
        "mm_orchestrator_container_start_duration_seconds",
        metrics::Unit::Seconds,
        "The driver's start of one game server (create + start), by driver."
    );
    metrics::describe_histogram!(
        "mm_orchestrator_server_ready_duration_seconds",
        metrics::Unit::Seconds,
        "From the driver's start until the game server's /healthz answers, by driver."
    );
    metrics::describe_gauge!("mm_orchestrator_servers", "Live game servers on this node, by state and node.");
    metrics::describe_counter!(
        "mm_orchestrator_servers_ended_total",
        "Game servers that ended on this node, by final state (complete, failed, lost) and node."
    );
    metrics::describe_counter!(
        "mm_orchestrator_restarts_total",
        "Game servers restarted after dying before their game ended, by node."
    );
    metrics::describe_counter!(
        "mm_orchestrator_reconcile_actions_total",
        "What reconciliation did, by action: at start-up adopted, removed_orphan, removed_expired, \
         removed_exited, deleted_entry; periodically also deleted_stale_entry, rewrote_entry, \
         reaped_entry (a silent node's); at shutdown swept."
    );
    metrics::describe_counter!(
        "mm_orchestrator_reconcile_runs_total",
        "Anti-entropy passes, by trigger (periodic, reconnect) and result (ok, error)."
    );
    metrics::describe_counter!(
        "mm_orchestrator_releases_total",
        "orchestrator.release requests, by result (released, forwarded, not_found, bad_request, error)."
    );
    metrics::describe_counter!(
        "mm_orchestrator_game_results_total",
        "Games that ended on this node, by what became of their result: published (on \
         events.game.ended), unpublished (NATS refused it), none (the server wrote no valid result line)."
    );
    metrics::describe_counter!(
        "mm_orchestrator_join_timeouts_total",
        "Game servers that ended themselves because no player joined within the join timeout, by node."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_starts_in_flight",
        "Server starts this node admitted that are not ready yet (its driver's queue), by node."
    );
    metrics::describe_counter!(
        "mm_orchestrator_node_claim_lost_total",
        "Times another orchestrator process took this node's id over, by node."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_node_cpu_cores",
        "This node's CPU for game servers, in cores, by kind (capacity, used) and node."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_node_memory_bytes",
        metrics::Unit::Bytes,
        "This node's memory for game servers, by kind (capacity, used) and node."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_node_servers",
        "This node's game-server slots, by kind (capacity, used) and node."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_node_ports",
        "This node's dynamic host ports, by kind (capacity, used) and node."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_driver_healthy",
        "1 while this node's driver can start servers, by driver."
    );
    metrics::describe_counter!(
        "mm_orchestrator_heartbeats_total",
        "Node entry writes to KV `nodes`, by result (ok, error)."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_pool_warm",
        "Warm game servers in this node's pool (started, healthy, unallocated), by node."
    );
    metrics::describe_gauge!(
        "mm_orchestrator_pool_target",
        "How many warm servers this node's pool wants now (orchestrator.pool), by node."
    );
    metrics::describe_counter!(
        "mm_orchestrator_claims_total",
        "Servers this node placed, by kind (warm: a warm server of its pool was claimed; cold: one was \
         started for the match) and node."
    );
    metrics::describe_histogram!(
        "mm_orchestrator_pool_refill_duration_seconds",
        metrics::Unit::Seconds,
        "From the decision to refill the warm pool until the new server is warm, by driver."
    );
    metrics::describe_counter!(
        "mm_orchestrator_pool_recycled_total",
        "Warm servers stopped and replaced because no allocation claimed them within \
         orchestrator.pool.recycle_after, by node."
    );
}

/// Moves one server from `from` to `to` in `mm_orchestrator_servers` (`None`: not counted).
pub fn transition(node: &str, from: Option<ServerState>, to: Option<ServerState>) {
    if let Some(from) = from.filter(|state| !state.is_final()) {
        metrics::gauge!("mm_orchestrator_servers", "state" => from.as_str(), "node" => node.to_owned())
            .decrement(1.0);
    }
    if let Some(to) = to.filter(|state| !state.is_final()) {
        metrics::gauge!("mm_orchestrator_servers", "state" => to.as_str(), "node" => node.to_owned())
            .increment(1.0);
    }
}

/// Sets every live state to 0 once, so the series exist before the first server.
pub fn init_states(node: &str) {
    for state in ServerState::ALL.into_iter().filter(|state| !state.is_final()) {
        metrics::gauge!("mm_orchestrator_servers", "state" => state.as_str(), "node" => node.to_owned())
            .set(0.0);
    }
}

/// Registers the counters of rare events at 0 (Prometheus's advice for known label
/// values), so dashboards and alerts have a series, and `rate()` a first sample, before
/// the first restart or rejection.
pub fn init_counters(node: &str) {
    metrics::counter!("mm_orchestrator_restarts_total", "node" => node.to_owned()).increment(0);
    for filter in crate::scheduler::Filter::ALL {
        metrics::counter!("mm_orchestrator_rejected_nodes_total", "filter" => filter.label()).increment(0);
    }
    for action in crate::reconcile::ACTIONS {
        metrics::counter!("mm_orchestrator_reconcile_actions_total", "action" => action).increment(0);
    }
    for trigger in crate::reconcile::TRIGGERS {
        for result in ["ok", "error"] {
            metrics::counter!("mm_orchestrator_reconcile_runs_total", "trigger" => trigger, "result" => result)
                .increment(0);
        }
    }
    for result in crate::release::RESULTS {
        metrics::counter!("mm_orchestrator_releases_total", "result" => result).increment(0);
    }
    for (result, reason) in crate::place::PLACEMENT_LABELS {
        metrics::counter!("mm_orchestrator_placements_total", "result" => result, "reason" => reason)
            .increment(0);
    }
    metrics::counter!("mm_orchestrator_join_timeouts_total", "node" => node.to_owned()).increment(0);
    for result in crate::runner::GAME_RESULTS {
        metrics::counter!("mm_orchestrator_game_results_total", "result" => result).increment(0);
    }
    metrics::counter!("mm_orchestrator_node_claim_lost_total", "node" => node.to_owned()).increment(0);
    metrics::gauge!("mm_orchestrator_starts_in_flight", "node" => node.to_owned()).set(0.0);
    metrics::gauge!("mm_orchestrator_pool_warm", "node" => node.to_owned()).set(0.0);
    metrics::gauge!("mm_orchestrator_pool_target", "node" => node.to_owned()).set(0.0);
    for kind in mm_shared::protocol::StartKind::ALL {
        metrics::counter!("mm_orchestrator_claims_total", "kind" => kind.as_str(), "node" => node.to_owned())
            .increment(0);
    }
    metrics::counter!("mm_orchestrator_pool_recycled_total", "node" => node.to_owned()).increment(0);
    // What the orchestrator dashboard charts from the first request on: at 0 before it.
    metrics::counter!("mm_orchestrator_allocations_total", "result" => "ok", "reason" => "placed")
        .increment(0);
    let _ = metrics::histogram!("mm_orchestrator_allocation_duration_seconds");
    for outcome in ["placed", "refused", "unreachable", "failed"] {
        metrics::counter!("mm_orchestrator_place_attempts_total", "outcome" => outcome).increment(0);
    }
    for state in ServerState::ALL.into_iter().filter(|state| state.is_final()) {
        metrics::counter!("mm_orchestrator_servers_ended_total", "state" => state.as_str(), "node" => node.to_owned())
            .increment(0);
    }
}

/// Registers a driver's histograms of the warm pool with no sample yet, so the series
/// exist (with zero counts) before the first refill.
pub fn init_driver(driver: &'static str) {
    let _ = metrics::histogram!("mm_orchestrator_pool_refill_duration_seconds", "driver" => driver);
    let _ = metrics::histogram!("mm_orchestrator_container_start_duration_seconds", "driver" => driver);
    let _ = metrics::histogram!("mm_orchestrator_server_ready_duration_seconds", "driver" => driver);
}

/// The node's capacity and use, in base units, labelled with the node like every other
/// per-node series (the dashboards group by it).
pub fn node_usage(node: &str, capacity: Resources, used: Resources, ports: (u64, u64)) {
    for (kind, resources) in [("capacity", capacity), ("used", used)] {
        metrics::gauge!("mm_orchestrator_node_cpu_cores", "kind" => kind, "node" => node.to_owned())
            .set(resources.cpu_millicores as f64 / 1000.0);
        metrics::gauge!("mm_orchestrator_node_memory_bytes", "kind" => kind, "node" => node.to_owned())
            .set(resources.memory_mb as f64 * 1024.0 * 1024.0);
        metrics::gauge!("mm_orchestrator_node_servers", "kind" => kind, "node" => node.to_owned())
            .set(resources.servers as f64);
    }
    metrics::gauge!("mm_orchestrator_node_ports", "kind" => "capacity", "node" => node.to_owned())
        .set(ports.0 as f64);
    metrics::gauge!("mm_orchestrator_node_ports", "kind" => "used", "node" => node.to_owned())
        .set(ports.1 as f64);
}
