//! One orchestrator process is one node: its books, its driver, its runners, and its
//! heartbeat in KV `nodes`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mm_shared::protocol::{NodeEntry, now_ms};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::OrchestratorSection;
use crate::driver::{Driver, Exit};
use crate::ledger::{Holding, Ledger, Refusal};
use crate::store::Store;

/// What a runner is told.
#[derive(Debug)]
pub enum Control {
    /// The driver saw a server of this game stop (maybe an earlier attempt's).
    Exited(Exit),
    /// Stop supervising.
    Stop(StopReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The placement was given up (its deadline passed): stop the server, it failed.
    Abort,
    /// The orchestrator is stopping and stops its servers.
    Shutdown,
    /// The orchestrator is stopping and leaves its servers running for the next start.
    Keep,
}

struct RunnerLink {
    id: u64,
    control: mpsc::UnboundedSender<Control>,
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
    runners: Mutex<HashMap<String, RunnerLink>>,
    next_runner: AtomicU64,
    health: Mutex<DriverHealth>,
    /// Woken when the books change, so the heartbeat publishes them at once.
    changed: Notify,
    /// Set when the node stops: its driver checks no longer mark it healthy.
    draining: AtomicBool,
    started_at: u64,
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
        Self {
            id,
            config,
            driver,
            store,
            tasks: TaskTracker::new(),
            ledger: Mutex::new(ledger),
            runners: Mutex::new(HashMap::new()),
            next_runner: AtomicU64::new(1),
            health: Mutex::new(health),
            changed: Notify::new(),
            draining: AtomicBool::new(false),
            started_at: now_ms(),
        }
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
        self.draining.store(true, Ordering::Relaxed);
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

    /// Registers a runner for `game_id`; returns the id to unregister it with.
    pub fn register(&self, game_id: &str, control: mpsc::UnboundedSender<Control>) -> u64 {
        let id = self.next_runner.fetch_add(1, Ordering::Relaxed);
        lock(&self.runners).insert(game_id.to_owned(), RunnerLink { id, control });
        id
    }

    /// Unregisters runner `id` (a newer runner of the same game id stays).
    pub fn unregister(&self, game_id: &str, id: u64) {
        let mut runners = lock(&self.runners);
        if runners.get(game_id).is_some_and(|link| link.id == id) {
            runners.remove(game_id);
        }
    }

    /// Hands a driver's exit report to the game's runner, if it has one.
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
            let entry = self.entry();
            crate::instrument::node_usage(
                &entry.node,
                entry.capacity,
                entry.used,
                (crate::scheduler::port_count(entry.port_range), entry.ports_used),
            );
            let result = self.store.put_node(&entry).await;
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

/// Is `port` free on `ip` (nothing else on the host has bound it)?
fn port_is_free(ip: IpAddr, port: u16) -> bool {
    TcpListener::bind((ip, port)).is_ok()
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
