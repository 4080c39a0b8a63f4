//! One orchestrator process is one node: its books, its driver, its runners, its start
//! queue, its pool of warm servers, and its heartbeat in KV `nodes`.
//!
//! **Slots.** A runner is known by its *slot*: the id its driver knows the server by (the
//! `mm.game-id` label, the container name, the key of its books). A server started for a
//! match has its game id as slot; a warm server has its warm id, and keeps it as slot
//! once a claim moves its entry to its match's game id.
//!
//! **Warm pool.** [`Node::claim_warm`] takes the oldest warm server under the pool's
//! lock: two allocations never get the same one, and nothing races in KV. The pool keeper
//! ([`Node::keep_pool`]) starts servers for the pool in the background, as the start
//! queue admits them and the books have room (warm servers count against capacity).
//!
//! **One node, one id.** The node entry is this process's claim on its id: it carries a
//! random `instance`, and every heartbeat is a compare-and-set on the revision this
//! process wrote last. A second process with the same id refuses to start while the
//! holder's heartbeat moves ([`Node::claim`]); a process whose entry was taken over
//! stops writing it and shuts down, leaving its servers to the new holder.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mm_shared::protocol::game_server::Assignment;
use mm_shared::protocol::{NodeEntry, ServerEntry, ServerState, now_ms};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Busy, StartQueue};
use crate::config::OrchestratorSection;
use crate::driver::{Driver, Exit};
use crate::ledger::{Holding, Ledger, Refusal};
pub use crate::machine::StopReason;
use crate::machine::{ClaimFailure, PlaceFailure};
use crate::pool::WarmPool;
use crate::store::{Latest, Store, StoreError};

/// Busy time over which the learnt start rate halves its weight.
const START_RATE_HALF_LIFE: Duration = Duration::from_secs(30);
/// How often the pool keeper looks again when nothing woke it (recycled servers, an
/// `auto` target that moved, room that came back).
const POOL_TICK: Duration = Duration::from_millis(250);

/// What a new server's placement waits for: its address once ready, or why not.
pub type ReadySender = oneshot::Sender<Result<String, PlaceFailure>>;
/// What a claim of a warm server waits for: its address once it has its match, or why not.
pub type ClaimSender = oneshot::Sender<Result<String, ClaimFailure>>;

/// What a runner is told.
#[derive(Debug)]
pub enum Control {
    /// The driver saw a server of this slot stop (maybe an earlier attempt's).
    Exited(Exit),
    /// Stop supervising.
    Stop(StopReason),
    /// An allocation claimed this warm server for a match.
    Claim { assignment: Assignment, reply: ClaimSender },
}

struct RunnerLink {
    id: u64,
    control: mpsc::UnboundedSender<Control>,
    /// The entry as the runner last wrote it (what KV should hold).
    entry: ServerEntry,
}

/// What this node knows of, for reconciliation.
#[derive(Debug, Default)]
pub struct Known {
    /// Keys of KV `servers` it backs: its runners' current game ids, and reservations
    /// whose runner has not started yet.
    pub entries: HashSet<String>,
    /// Slots its driver may run: its runners', and every reservation's.
    pub slots: HashSet<String>,
}

/// One admitted start: counted in the node's start queue until dropped (when the
/// server is ready, or its start failed or was given up).
pub struct StartTicket {
    node: Arc<Node>,
    /// False once withdrawn: nothing was started, so nothing is learnt from it.
    counts: bool,
}

impl StartTicket {
    /// Takes the start back before the driver saw it (the placement failed first).
    pub fn withdraw(mut self) {
        self.counts = false;
        lock(&self.node.starts).withdraw(Instant::now());
    }
}

impl Drop for StartTicket {
    fn drop(&mut self) {
        if self.counts {
            lock(&self.node.starts).finish(Instant::now());
        }
        self.node.changed.notify_one();
    }
}

/// The driver's health as the last check saw it.
#[derive(Debug, Clone)]
pub struct DriverHealth {
    pub healthy: bool,
    pub status: String,
}

pub struct Node {
    pub id: String,
    pub config: OrchestratorSection,
    pub driver: Box<dyn Driver>,
    pub store: Store,
    /// Runner tasks, awaited when the orchestrator stops.
    pub tasks: TaskTracker,
    ledger: Mutex<Ledger>,
    /// By slot.
    runners: Mutex<HashMap<String, RunnerLink>>,
    pool: Mutex<WarmPool>,
    /// Woken when the pool changes (a server left it, a refill ended).
    pool_changed: Notify,
    next_runner: AtomicU64,
    health: Mutex<DriverHealth>,
    /// Woken when the books change, so the heartbeat publishes them at once.
    changed: Notify,
    /// Set when the node stops: its driver checks no longer mark it healthy.
    draining: AtomicBool,
    /// When the node started stopping: its shutdown's time limit counts from here.
    draining_since: std::sync::OnceLock<Instant>,
    /// Cancelled when the node starts stopping (placements waiting for a server answer).
    pub stopping: CancellationToken,
    started_at: u64,
    starts: Mutex<StartQueue>,
    /// This process's claim on the node id (random per start), its pid and host.
    pub instance: String,
    pid: u32,
    host: String,
    /// The revision of this process's last write of its node entry.
    claim: Mutex<Option<u64>>,
    /// Cancelled when another process took the node id over.
    pub claim_lost: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Node {
    pub fn new(
        id: String,
        config: OrchestratorSection,
        driver: Box<dyn Driver>,
        store: Store,
        health: DriverHealth,
    ) -> Self {
        let range = (config.port_range.0, config.port_range.1);
        // A start somewhere in the range, so nodes on one host rarely race for a port.
        let span = u64::from(range.1 - range.0) + 1;
        let offset = (u64::from(uuid::Uuid::new_v4().as_u128() as u32) % span) as u16;
        let ledger = Ledger::new(config.capacity.resolve(), range, range.0 + offset);
        let learning = driver.parallel() as u64;
        let pool = WarmPool::new(&config.pool);
        Self {
            id,
            config,
            driver,
            store,
            tasks: TaskTracker::new(),
            ledger: Mutex::new(ledger),
            runners: Mutex::new(HashMap::new()),
            pool: Mutex::new(pool),
            pool_changed: Notify::new(),
            next_runner: AtomicU64::new(1),
            health: Mutex::new(health),
            changed: Notify::new(),
            draining: AtomicBool::new(false),
            draining_since: std::sync::OnceLock::new(),
            stopping: CancellationToken::new(),
            started_at: now_ms(),
            starts: Mutex::new(StartQueue::new(Instant::now(), START_RATE_HALF_LIFE, learning)),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            pid: std::process::id(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_default(),
            claim: Mutex::new(None),
            claim_lost: CancellationToken::new(),
        }
    }

    /// When the node started stopping (now, if it has not).
    pub fn draining_since(&self) -> Instant {
        *self.draining_since.get_or_init(Instant::now)
    }

    /// Is the node stopping (it takes no new servers)?
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Admits one more server start that must be ready within `budget`, or refuses it
    /// at once because the driver's queue could not have it ready in time.
    pub fn admit_start(self: &Arc<Self>, budget: Duration) -> Result<StartTicket, Busy> {
        let admitted = lock(&self.starts).admit(Instant::now(), budget);
        let in_flight = lock(&self.starts).in_flight();
        metrics::gauge!("mm_orchestrator_starts_in_flight", "node" => self.id.clone()).set(in_flight as f64);
        admitted?;
        self.changed.notify_one();
        Ok(StartTicket { node: self.clone(), counts: true })
    }

    /// The address written to KV for a server on `port`.
    pub fn address(&self, port: u16) -> String {
        SocketAddr::new(self.config.advertise_ip.unwrap_or(self.config.host_ip), port).to_string()
    }

    /// The URL players connect to for `game_id` (the gateway's proxy).
    pub fn player_url(&self, game_id: &str) -> String {
        format!("{}/game/{game_id}/connect", self.config.public_url.trim_end_matches('/'))
    }

    pub fn driver_health(&self) -> DriverHealth {
        lock(&self.health).clone()
    }

    /// Marks the node as taking no new servers (it is stopping), from now on.
    pub fn set_draining(&self) {
        let _ = self.draining_since.set(Instant::now());
        self.draining.store(true, Ordering::Relaxed);
        self.stopping.cancel();
        *lock(&self.health) = DriverHealth { healthy: false, status: "the node is shutting down".to_owned() };
        self.changed.notify_one();
    }

    /// This node's entry for KV `nodes`, as of now.
    pub fn entry(&self) -> NodeEntry {
        let ledger = lock(&self.ledger);
        let health = self.driver_health();
        NodeEntry {
            node: self.id.clone(),
            driver: self.driver.name().to_owned(),
            driver_healthy: health.healthy,
            capacity: ledger.capacity(),
            used: ledger.used(),
            port_range: ledger.port_range(),
            ports_used: ledger.ports_used(),
            heartbeat_at: now_ms(),
            started_at: self.started_at,
            driver_status: health.status,
            version: mm_shared::VERSION.to_owned(),
            instance: self.instance.clone(),
            pid: self.pid,
            host: self.host.clone(),
            starting: lock(&self.starts).in_flight(),
            warm: lock(&self.pool).warm() as u64,
            region: self.config.region.clone(),
        }
    }

    /// Takes the node id for this process: creates the node entry, or takes over one
    /// whose holder has stopped heartbeating (no new revision within two heartbeat
    /// intervals, watched on this process's own clock). Refuses, naming the holder,
    /// while another process with this id is alive.
    pub async fn claim(&self) -> anyhow::Result<()> {
        let quiet = self.config.heartbeat_interval * 2 + Duration::from_millis(250);
        for _ in 0..5 {
            let latest = self.store.node_latest(&self.id).await.map_err(|err| {
                anyhow::anyhow!(
                    "cannot read this node's entry in KV nodes to claim the id `{}`: {err}",
                    self.id
                )
            })?;
            let written = match latest {
                None | Some(Latest::Deleted { .. }) => self.store.create_node(&self.entry()).await,
                Some(Latest::Value(held)) => {
                    // Alive if its entry gets a new revision while we watch.
                    let watched_since = Instant::now();
                    let mut alive = false;
                    while watched_since.elapsed() < quiet {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        match self.store.node_latest(&self.id).await {
                            Ok(Some(Latest::Value(now))) if now.revision == held.revision => {}
                            Ok(_) => {
                                alive = true;
                                break;
                            }
                            Err(err) => tracing::debug!("watching the node entry: {err}"),
                        }
                    }
                    if alive {
                        return Err(anyhow::anyhow!(holder_message(&self.id, &held.value, quiet)));
                    }
                    tracing::info!(
                        node = %self.id,
                        "taking the node id over from instance {} (pid {} on {}): no heartbeat for {}",
                        held.value.instance,
                        held.value.pid,
                        held.value.host,
                        mm_shared::duration::format(quiet)
                    );
                    self.store.update_node(&self.entry(), held.revision).await
                }
            };
            match written {
                Ok(revision) => {
                    *lock(&self.claim) = Some(revision);
                    return Ok(());
                }
                // Someone wrote it meanwhile: look again.
                Err(StoreError::Conflict { .. }) => {}
                Err(err) => {
                    return Err(anyhow::anyhow!("cannot claim the node id `{}` in KV nodes: {err}", self.id));
                }
            }
        }
        Err(anyhow::anyhow!(
            "cannot claim the node id `{}`: its entry in KV nodes keeps changing (another orchestrator \
             with this id?)",
            self.id
        ))
    }

    /// Writes this node's entry over this process's last revision. When the revision
    /// moved: rewritten by this same process (a lost acknowledgement, or a NATS restart
    /// that lost writes) → carry on from the entry's revision; gone → create it again;
    /// another process's → the claim is lost.
    async fn write_entry(&self, entry: &NodeEntry) -> Result<(), StoreError> {
        let last = *lock(&self.claim);
        let written = match last {
            Some(revision) => self.store.update_node(entry, revision).await,
            None => self.store.create_node(entry).await,
        };
        let conflict = match written {
            Ok(revision) => {
                *lock(&self.claim) = Some(revision);
                return Ok(());
            }
            Err(StoreError::Conflict { bucket, key }) => StoreError::Conflict { bucket, key },
            Err(other) => return Err(other),
        };
        match self.store.node_latest(&self.id).await? {
            Some(Latest::Value(held)) if held.value.instance != self.instance => {
                metrics::counter!("mm_orchestrator_node_claim_lost_total", "node" => self.id.clone())
                    .increment(1);
                tracing::error!(
                    node = %self.id,
                    "another orchestrator took this node id over: instance {} (pid {} on {}); this one stops, \
                     leaving its game servers to it",
                    held.value.instance,
                    held.value.pid,
                    held.value.host
                );
                self.claim_lost.cancel();
                Err(conflict)
            }
            Some(Latest::Value(held)) => {
                *lock(&self.claim) = Some(held.revision);
                Err(conflict)
            }
            Some(Latest::Deleted { .. }) | None => {
                *lock(&self.claim) = None;
                Err(conflict)
            }
        }
    }

    /// Removes this node's entry at shutdown, unless another process holds it now.
    pub async fn release_claim(&self) {
        if self.claim_lost.is_cancelled() {
            return;
        }
        let Some(revision) = *lock(&self.claim) else { return };
        match self.store.delete_node_if(&self.id, revision).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("this node's entry changed since its last heartbeat; left as it is"),
            Err(err) => tracing::warn!("removing this node's entry: {err}"),
        }
    }

    /// Records the entry a runner just wrote (what KV should hold for it).
    pub fn record(&self, slot: &str, runner: u64, entry: &ServerEntry) {
        if let Some(link) = lock(&self.runners).get_mut(slot)
            && link.id == runner
        {
            link.entry = entry.clone();
        }
    }

    /// The entries this node's runners last wrote.
    pub fn runner_entries(&self) -> Vec<ServerEntry> {
        lock(&self.runners).values().map(|link| link.entry.clone()).collect()
    }

    /// What this node knows: servers supervised by a runner, and resources held (a
    /// placement or refill between its reservation and its runner).
    pub fn known(&self) -> Known {
        let runners = lock(&self.runners);
        let mut known = Known::default();
        for (slot, link) in runners.iter() {
            known.slots.insert(slot.clone());
            known.entries.insert(link.entry.game_id.clone());
        }
        for slot in lock(&self.ledger).games() {
            if !runners.contains_key(&slot) {
                known.entries.insert(slot.clone());
            }
            known.slots.insert(slot);
        }
        known
    }

    /// Stops the server of `game_id` because its match was released; false if this node
    /// runs none.
    pub fn release_game(&self, game_id: &str) -> bool {
        let runners = lock(&self.runners);
        // A claimed warm server runs under its match's game id in another slot.
        let link = runners
            .get(game_id)
            .filter(|link| link.entry.game_id == game_id)
            .or_else(|| runners.values().find(|link| link.entry.game_id == game_id));
        match link {
            Some(link) => link.control.send(Control::Stop(StopReason::Released)).is_ok(),
            None => false,
        }
    }

    /// The node starts stopping: it takes no new servers, and the placements still under
    /// way are given up at once (their servers stopped, their callers answered) rather
    /// than after the endpoints drained. Without `keep`, every server is stopped now.
    pub fn begin_shutdown(&self, keep: bool) {
        self.set_draining();
        let runners = lock(&self.runners);
        for link in runners.values() {
            let placed =
                matches!(link.entry.state, ServerState::Ready | ServerState::Running | ServerState::Warm);
            if !keep || !placed {
                let _ = link.control.send(Control::Stop(StopReason::Shutdown));
            }
        }
    }

    /// Reserves resources and a host port nothing else has bound.
    pub fn reserve(&self, game_id: &str, ask: crate::scheduler::Ask) -> Result<Holding, Refusal> {
        let host_ip = self.config.host_ip;
        let holding = lock(&self.ledger).reserve(game_id, ask, |port| port_is_free(host_ip, port))?;
        self.changed.notify_one();
        Ok(holding)
    }

    /// Gives `game_id` another port (its own was taken by someone else meanwhile).
    pub fn change_port(&self, game_id: &str) -> Option<u16> {
        let host_ip = self.config.host_ip;
        lock(&self.ledger).change_port(game_id, |port| port_is_free(host_ip, port))
    }

    /// Counts a server found running at start-up.
    pub fn adopt(&self, game_id: &str, holding: Holding) -> Result<(), Refusal> {
        lock(&self.ledger).adopt(game_id, holding)?;
        self.changed.notify_one();
        Ok(())
    }

    pub fn release(&self, game_id: &str) {
        if lock(&self.ledger).release(game_id).is_some() {
            self.changed.notify_one();
        }
    }

    /// Registers a runner for the server in `slot`; returns the id to unregister it with.
    pub fn register(&self, slot: &str, entry: &ServerEntry, control: mpsc::UnboundedSender<Control>) -> u64 {
        let id = self.next_runner.fetch_add(1, Ordering::Relaxed);
        lock(&self.runners).insert(slot.to_owned(), RunnerLink { id, control, entry: entry.clone() });
        id
    }

    /// Unregisters runner `id` (a newer runner of the same slot stays).
    pub fn unregister(&self, slot: &str, id: u64) {
        let mut runners = lock(&self.runners);
        if runners.get(slot).is_some_and(|link| link.id == id) {
            runners.remove(slot);
        }
    }

    /// Takes the oldest warm server for an allocation: no other claim can get it from
    /// now on. Its runner hears of the claim on the control channel returned.
    pub fn claim_warm(&self) -> Option<(String, mpsc::UnboundedSender<Control>)> {
        loop {
            let slot = self.with_pool(WarmPool::claim)?;
            // Its runner ended meanwhile (it had left the pool as it did): the next one.
            if let Some(link) = lock(&self.runners).get(&slot) {
                return Some((slot, link.control.clone()));
            }
        }
    }

    fn pool_gauge(&self, pool: &WarmPool) {
        metrics::gauge!("mm_orchestrator_pool_warm", "node" => self.id.clone()).set(pool.warm() as f64);
    }

    /// Changes the pool under its lock, then wakes the keeper, and the heartbeat when the
    /// pool became empty or stopped being empty (what ranking needs at once; the count
    /// goes out with the next heartbeat).
    fn with_pool<T>(&self, change: impl FnOnce(&mut WarmPool) -> T) -> T {
        let (result, flipped) = {
            let mut pool = lock(&self.pool);
            let before = pool.warm() > 0;
            let result = change(&mut pool);
            self.pool_gauge(&pool);
            (result, before != (pool.warm() > 0))
        };
        self.pool_changed.notify_one();
        if flipped {
            self.changed.notify_one();
        }
        result
    }

    /// `slot` is warm: claimable from now on.
    pub fn pool_enter(&self, slot: &str) {
        self.with_pool(|pool| pool.enter(slot));
    }

    /// `slot` is no longer claimable; false if a claim took it first.
    pub fn pool_leave(&self, slot: &str) -> bool {
        self.with_pool(|pool| pool.leave(slot))
    }

    /// A claim of `slot` did not go through: claimable again, first in line.
    pub fn pool_give_back(&self, slot: &str) {
        self.with_pool(|pool| pool.give_back(slot));
    }

    /// `slot`'s runner ended.
    pub fn pool_forget(&self, slot: &str) {
        self.with_pool(|pool| pool.forget(slot));
    }

    /// One allocation served here (for the pool's `auto` sizing).
    pub fn record_allocation(&self) {
        lock(&self.pool).sizer.record_allocation(Instant::now());
    }

    /// How long a cold start took, decision to ready (for the pool's `auto` sizing).
    pub fn record_cold_start(&self, took: Duration) {
        lock(&self.pool).sizer.record_cold_start(took);
    }

    /// Keeps the pool at its target until the node stops: starts warm servers as the
    /// start queue admits them and the books have room, after failures with a backoff.
    pub async fn keep_pool(self: Arc<Self>) {
        let stop = self.stopping.clone();
        loop {
            let backoff = lock(&self.pool).backoff();
            let wait = if backoff.is_zero() { POOL_TICK } else { backoff };
            tokio::select! {
                () = self.pool_changed.notified(), if backoff.is_zero() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            if self.is_draining() || !self.driver_health().healthy {
                continue;
            }
            let wanted = {
                let mut pool = lock(&self.pool);
                let wanted = pool.wanted(Instant::now());
                let target = pool.sizer.target(Instant::now());
                metrics::gauge!("mm_orchestrator_pool_target", "node" => self.id.clone()).set(target as f64);
                wanted
            };
            // Side by side: each refill waits for its KV create, and one after another
            // those round trips, not the starts, would bound the refill rate.
            let refills = futures_util::future::join_all((0..wanted).map(|_| self.refill())).await;
            if let Some(Err(why)) = refills.into_iter().find(Result::is_err) {
                tracing::debug!("not refilling the warm pool fully now: {why}");
            }
        }
    }

    /// Starts one server for the pool.
    async fn refill(self: &Arc<Self>) -> Result<(), String> {
        let slot = crate::allocate::new_warm_id();
        let game = &self.config.game;
        let holding = self.reserve(&slot, game.ask()).map_err(|refusal| refusal.to_string())?;
        let ticket = match self.admit_start(game.start_timeout) {
            Ok(ticket) => ticket,
            Err(busy) => {
                self.release(&slot);
                return Err(busy.to_string());
            }
        };
        let now = now_ms();
        let entry = ServerEntry {
            game_id: slot.clone(),
            node: self.id.clone(),
            state: ServerState::Pending,
            address: self.address(holding.port),
            started_at: now,
            driver: self.driver.name().to_owned(),
            updated_at: now,
            resources: holding.resources,
            warm_id: slot.clone(),
            ..ServerEntry::default()
        };
        if let Err(err) = self.store.create_server(&entry).await {
            ticket.withdraw();
            self.release(&slot);
            return Err(format!("cannot record a warm server: {err}"));
        }
        self.with_pool(|pool| pool.start(&slot));
        crate::runner::spawn_warm(self, entry, holding.port, crate::place::new_secret(), ticket);
        Ok(())
    }

    /// Hands a driver's exit report to the slot's runner, if it has one.
    pub fn dispatch(&self, exit: Exit) {
        let runners = lock(&self.runners);
        match runners.get(&exit.game_id) {
            Some(link) => {
                let _ = link.control.send(Control::Exited(exit));
            }
            None => tracing::debug!(game_id = %exit.game_id, "exit of a server no runner supervises"),
        }
    }

    /// Tells every runner to stop.
    pub fn stop_all(&self, reason: StopReason) -> usize {
        let runners = lock(&self.runners);
        for link in runners.values() {
            let _ = link.control.send(Control::Stop(reason));
        }
        runners.len()
    }

    pub fn live_servers(&self) -> usize {
        lock(&self.runners).len()
    }

    /// Rewrites this node's KV entry every heartbeat interval and whenever its books or
    /// its driver's health change. Returns at `shutdown`.
    pub async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.heartbeat_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = self.changed.notified() => {}
                () = shutdown.cancelled() => return,
            }
            if self.claim_lost.is_cancelled() {
                return;
            }
            let entry = self.entry();
            crate::instrument::node_usage(
                &entry.node,
                entry.capacity,
                entry.used,
                (crate::scheduler::port_count(entry.port_range), entry.ports_used),
            );
            let result = self.write_entry(&entry).await;
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!("mm_orchestrator_heartbeats_total", "result" => outcome).increment(1);
            if let Err(err) = result {
                tracing::warn!("heartbeat not written: {err}");
            }
        }
    }

    /// Checks the driver every heartbeat interval, each check bounded by
    /// `driver_timeout`. It runs apart from [`Node::heartbeat`], so a slow driver (a busy
    /// Podman) never holds a heartbeat up; a change of health is published at once.
    /// Returns at `shutdown`.
    pub async fn watch_driver(self: Arc<Self>, shutdown: CancellationToken) {
        let timeout = self.config.driver_timeout;
        let mut interval = tokio::time::interval(self.config.heartbeat_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy_before = None;
        loop {
            let check = async {
                interval.tick().await;
                tokio::time::timeout(timeout, self.driver.check()).await
            };
            let checked = tokio::select! {
                checked = check => checked,
                () = shutdown.cancelled() => return,
            };
            let health = match checked {
                Ok(Ok(status)) => DriverHealth { healthy: true, status },
                Ok(Err(err)) => DriverHealth { healthy: false, status: err.to_string() },
                Err(_) => DriverHealth {
                    healthy: false,
                    status: format!(
                        "the driver check did not answer within {} (orchestrator.driver_timeout)",
                        mm_shared::duration::format(timeout)
                    ),
                },
            };
            if healthy_before != Some(health.healthy) {
                if health.healthy {
                    tracing::info!(driver = self.driver.name(), "driver healthy: {}", health.status);
                } else {
                    tracing::warn!(driver = self.driver.name(), "driver unhealthy: {}", health.status);
                }
                healthy_before = Some(health.healthy);
            }
            metrics::gauge!("mm_orchestrator_driver_healthy", "driver" => self.driver.name())
                .set(if health.healthy { 1.0 } else { 0.0 });
            let changed = {
                let mut current = lock(&self.health);
                // A draining node stays unhealthy whatever its driver says.
                let changed = !self.draining.load(Ordering::Relaxed)
                    && (current.healthy != health.healthy || current.status != health.status);
                if changed {
                    *current = health;
                }
                changed
            };
            if changed {
                self.changed.notify_one();
            }
        }
    }
}

/// What a second process with a live node's id is told.
fn holder_message(id: &str, holder: &NodeEntry, quiet: Duration) -> String {
    let who = if holder.instance.is_empty() {
        "an orchestrator of an older version".to_owned()
    } else {
        format!("instance {} (pid {} on host {})", holder.instance, holder.pid, holder.host)
    };
    format!(
        "node id `{id}` is held by a live orchestrator: {who} heartbeated within the last {}; \
         stop it first, or give this one another id (config key `orchestrator.node`)",
        mm_shared::duration::format(quiet)
    )
}

/// Is `port` free on `ip` (nothing else on the host has bound it)? When `ip` is no
/// address of this network namespace (a node in a container publishing on the host's
/// side of its network, as under compose) nothing can be learnt here: the port counts as
/// free, and the driver refuses it if it is not ([`crate::driver::DriverError::PortTaken`]).
fn port_is_free(ip: IpAddr, port: u16) -> bool {
    match TcpListener::bind((ip, port)) {
        Ok(_) => true,
        Err(err) => err.kind() == std::io::ErrorKind::AddrNotAvailable,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::driver::{DriverResult, Instance, LaunchSpec};

    /// A driver whose health check never answers (a Podman that hangs).
    struct StalledDriver;

    impl Driver for StalledDriver {
        fn name(&self) -> &'static str {
            "stalled"
        }
        fn check(&self) -> BoxFuture<'_, DriverResult<String>> {
            std::future::pending().boxed()
        }
        fn parallel(&self) -> usize {
            1
        }
        fn start<'a>(&'a self, _: &'a LaunchSpec) -> BoxFuture<'a, DriverResult<String>> {
            std::future::pending().boxed()
        }
        fn stop<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, DriverResult<()>> {
            async { Ok(()) }.boxed()
        }
        fn remove<'a>(&'a self, _: &'a str) -> BoxFuture<'a, DriverResult<()>> {
            async { Ok(()) }.boxed()
        }
        fn exit_code<'a>(&'a self, _: &'a str) -> BoxFuture<'a, DriverResult<Option<i64>>> {
            async { Ok(None) }.boxed()
        }
        fn logs_tail<'a>(&'a self, _: &'a str) -> BoxFuture<'a, String> {
            async { String::new() }.boxed()
        }
        fn list<'a>(&'a self, _: &'a str) -> BoxFuture<'a, DriverResult<Vec<Instance>>> {
            async { Ok(Vec::new()) }.boxed()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_hanging_driver_check_does_not_hold_the_heartbeat_up() {
        let nats = mm_testkit::NatsServer::start().expect("nats-server");
        let client = async_nats::connect(nats.url()).await.expect("connects");
        let store = Store::open(client).await.expect("opens the buckets");
        let config = OrchestratorSection {
            heartbeat_interval: Duration::from_millis(100),
            driver_timeout: Duration::from_secs(2),
            ..OrchestratorSection::default()
        };
        let healthy = DriverHealth { healthy: true, status: "fine at start".to_owned() };
        let node = Arc::new(Node::new("n1".to_owned(), config, Box::new(StalledDriver), store, healthy));
        let stop = CancellationToken::new();
        let started = Instant::now();
        tokio::spawn(node.clone().heartbeat(stop.clone()));
        tokio::spawn(node.clone().watch_driver(stop.clone()));

        // Heartbeats go on while the check hangs.
        let mut beats = HashSet::new();
        while beats.len() < 3 {
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "heartbeats held up by the driver check"
            );
            if let Ok(Some(entry)) = node.store.nodes().get("n1").await
                && let Ok(entry) = serde_json::from_slice::<NodeEntry>(&entry)
            {
                assert!(entry.driver_healthy, "not yet past driver_timeout");
                beats.insert(entry.heartbeat_at);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // After driver_timeout, the check's failure is published.
        loop {
            assert!(started.elapsed() < Duration::from_secs(5), "the hung check is never reported");
            if let Ok(Some(entry)) = node.store.nodes().get("n1").await
                && let Ok(entry) = serde_json::from_slice::<NodeEntry>(&entry)
                && !entry.driver_healthy
            {
                assert!(
                    entry.driver_status.contains("orchestrator.driver_timeout"),
                    "{}",
                    entry.driver_status
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(started.elapsed() >= Duration::from_secs(2));
        stop.cancel();
    }
}
