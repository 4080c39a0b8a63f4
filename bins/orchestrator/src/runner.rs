//! The allocation runner: one task per game server, from placement to its end.
//!
//! ```text
//! pending ─▶ starting ─▶ ready ─▶ running ─▶ complete   (its game ended; it exited)
//!               ▲                    │  └───▶ failed     (died early, restarts used up)
//!               └──── restart ◀──────┘  └───▶ lost       (found gone at start-up)
//! ```
//!
//! - **starting**: the driver started it; the runner waits for its `/healthz`.
//! - **ready**: `/healthz` answered: the placement is answered now.
//! - **running**: handed to its match. An exit before the game's end is an early death:
//!   the restart policy (attempts within an interval, a delay between) starts it again
//!   on the same port with the same secret, so the address players use stays valid.
//! - At the end (or a stop), the server is stopped and removed, its resources and port
//!   go back to the node, the final state is written and the KV entry deleted.
//!
//! Exits arrive as [`Control::Exited`] from the driver's event stream; the runner never
//! polls a running server. Every state change is written to KV `servers`, and recorded
//! with the node, whose reconciliation rewrites the entry if KV lost it.
//!
//! A server says why it ended early by its exit code
//! ([`mm_shared::protocol::game_server::exit_codes`]): nobody joined within the join
//! timeout (it ended itself: complete, no restart), or its port was taken (start it on
//! another port). A stop (shutdown, release, a placement given up) interrupts even a
//! start that is still queued in the driver; whatever that start created is removed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mm_shared::protocol::game_server::exit_codes;
use mm_shared::protocol::{ServerEntry, ServerState, now_ms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{DriverError, LaunchSpec};
use crate::node::{Control, Node, StartTicket, StopReason};

/// Why a new server's placement got no server.
#[derive(Debug)]
pub enum PlaceFailure {
    /// It was stopped before it was ready.
    Stopped(StopReason),
    /// Its start failed.
    Failed(String),
}

/// What a new server's placement waits for: its address once ready, or why not.
pub type ReadySender = oneshot::Sender<Result<String, PlaceFailure>>;

/// Tries at removing a server through a busy driver before giving it up (to the node's
/// reconciliation).
const REMOVE_ATTEMPTS: usize = 3;

/// How often `/healthz` is tried while a server starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How many ports a start tries when the first one turns out to be taken.
const PORT_TRIES: usize = 3;

/// How a runner's server ended.
enum Outcome {
    Ended {
        state: ServerState,
        detail: String,
    },
    /// Left running for the next orchestrator (on_shutdown = keep).
    Kept,
}

enum LaunchError {
    Stopped(StopReason),
    Failed(String),
}

/// How one start attempt failed.
enum Attempt {
    PortTaken(u16),
    Stopped(StopReason),
    Failed(String),
}

struct Runner {
    node: Arc<Node>,
    /// Its registration with the node.
    id: u64,
    entry: ServerEntry,
    /// The host port the server is published on: the node's books hold it, and
    /// `entry.address` is this port on the advertised address.
    port: u16,
    control: mpsc::UnboundedReceiver<Control>,
    /// The running attempt's driver handle.
    handle: Option<String>,
    /// When each restart happened (those within the policy's interval).
    restarts: VecDeque<Instant>,
    /// The state counted in `mm_orchestrator_servers`.
    counted: Option<ServerState>,
}

/// Starts the runner of a newly placed server (its `pending` entry is already in KV) on
/// the host port the node reserved for it. `ticket` counts its start in the node's
/// queue until it is ready or failed.
pub fn spawn(
    node: &Arc<Node>,
    entry: ServerEntry,
    port: u16,
    ready: ReadySender,
    ticket: StartTicket,
) -> mpsc::UnboundedSender<Control> {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = node.register(&entry, tx.clone());
    let runner = Runner::new(node.clone(), id, entry, port, rx);
    node.tasks.spawn(runner.run(Some((ready, ticket)), None));
    tx
}

/// Starts the runner of a server found running at start-up on host port `port`.
pub fn spawn_adopted(node: &Arc<Node>, entry: ServerEntry, port: u16, handle: String) {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = node.register(&entry, tx);
    let runner = Runner::new(node.clone(), id, entry, port, rx);
    node.tasks.spawn(runner.run(None, Some(handle)));
}

impl Runner {
    fn new(
        node: Arc<Node>,
        id: u64,
        entry: ServerEntry,
        port: u16,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        let counted = Some(entry.state);
        crate::instrument::transition(&node.id, None, counted);
        Self { node, id, entry, port, control, handle: None, restarts: VecDeque::new(), counted }
    }

    async fn run(mut self, placement: Option<(ReadySender, StartTicket)>, adopted: Option<String>) {
        let outcome = match (adopted, placement) {
            (Some(handle), _) => {
                self.handle = Some(handle);
                tracing::info!(game_id = %self.entry.game_id, address = %self.entry.address, "adopted a running game server");
                self.supervise().await
            }
            (None, Some((ready, ticket))) => self.first_start(ready, ticket).await,
            (None, None) => Outcome::Ended {
                state: ServerState::Failed,
                detail: "a runner with neither a placement nor a server".to_owned(),
            },
        };
        self.finish(outcome).await;
        self.node.unregister(&self.entry.game_id, self.id);
    }

    async fn first_start(&mut self, ready: ReadySender, ticket: StartTicket) -> Outcome {
        let launched = self.launch().await;
        // Ready or not, this start has left the node's queue.
        drop(ticket);
        match launched {
            Ok(()) => {}
            Err(LaunchError::Stopped(reason)) => {
                let _ = ready.send(Err(PlaceFailure::Stopped(reason)));
                return self.stopped(reason).await;
            }
            Err(LaunchError::Failed(detail)) => {
                let _ = ready.send(Err(PlaceFailure::Failed(detail.clone())));
                return Outcome::Ended { state: ServerState::Failed, detail };
            }
        }
        self.set_state(ServerState::Ready).await;
        if ready.send(Ok(self.entry.address.clone())).is_err() {
            // The placement gave up waiting (its deadline passed) a moment ago.
            return self.stopped(StopReason::Abort).await;
        }
        self.set_state(ServerState::Running).await;
        self.supervise().await
    }

    /// Starts the server and waits until its `/healthz` answers, moving to another port
    /// when its port turns out to be taken by another program.
    async fn launch(&mut self) -> Result<(), LaunchError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.start_once().await {
                Ok(()) => return Ok(()),
                Err(Attempt::PortTaken(port)) if tries < PORT_TRIES => {
                    let Some(new_port) = self.node.change_port(&self.entry.game_id) else {
                        return Err(LaunchError::Failed(format!(
                            "port {port} is taken and no other port is free"
                        )));
                    };
                    tracing::info!(game_id = %self.entry.game_id, port, new_port, "port taken on the host; trying another");
                    self.port = new_port;
                    self.entry.address = self.node.address(new_port);
                }
                Err(Attempt::PortTaken(port)) => {
                    return Err(LaunchError::Failed(format!(
                        "port {port} is taken on the host ({tries} ports tried)"
                    )));
                }
                Err(Attempt::Failed(detail)) => return Err(LaunchError::Failed(detail)),
                Err(Attempt::Stopped(reason)) => return Err(LaunchError::Stopped(reason)),
            }
        }
    }

    /// The driver's start, given up when the runner is told to stop meanwhile (a start
    /// waiting for its turn in a busy driver would otherwise hold a shutdown up).
    async fn driver_start(&mut self) -> Result<Result<String, DriverError>, StopReason> {
        let node = self.node.clone();
        let spec = self.spec();
        // A boxed future: dropping it below gives the start up.
        let mut start = node.driver.start(&spec);
        loop {
            tokio::select! {
                started = &mut start => return Ok(started),
                control = self.control.recv() => match control {
                    Some(Control::Exited(_)) => {}
                    Some(Control::Stop(reason)) => {
                        drop(start);
                        // The start may have created a server before it was dropped.
                        let timeout = node.config.game.stop_timeout;
                        if let Err(err) = node.driver.discard_game(&spec.game_id, timeout).await {
                            tracing::warn!(game_id = %spec.game_id, "removing an interrupted start: {err}");
                        }
                        return Err(reason);
                    }
                    None => return Err(StopReason::Shutdown),
                },
            }
        }
    }

    async fn start_once(&mut self) -> Result<(), Attempt> {
        let node = self.node.clone();
        let driver_name = node.driver.name();
        let started = Instant::now();
        let handle = match self.driver_start().await {
            Err(reason) => return Err(Attempt::Stopped(reason)),
            Ok(Ok(handle)) => handle,
            Ok(Err(DriverError::PortTaken(port))) => return Err(Attempt::PortTaken(port)),
            Ok(Err(err)) => return Err(Attempt::Failed(err.to_string())),
        };
        metrics::histogram!("mm_orchestrator_container_start_duration_seconds", "driver" => driver_name)
            .record(started.elapsed().as_secs_f64());
        self.handle = Some(handle.clone());
        self.entry.handle = handle.clone();
        self.set_state(ServerState::Starting).await;

        let started = Instant::now();
        let deadline = started + node.config.game.start_timeout;
        loop {
            // Probed at the advertised address, the one the gateway dials: it must work
            // from where this node runs, which under compose is a container of its own,
            // where neither `host_ip` nor loopback is the host.
            if healthz(&self.entry.address).await {
                metrics::histogram!("mm_orchestrator_server_ready_duration_seconds", "driver" => driver_name)
                    .record(started.elapsed().as_secs_f64());
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let logs = node.driver.logs_tail(&handle).await;
                self.stop_instance().await;
                return Err(Attempt::Failed(format!(
                    "the game server's /healthz did not answer within {}{}",
                    mm_shared::duration::format(node.config.game.start_timeout),
                    quote_logs(&logs)
                )));
            }
            let wait = PROBE_INTERVAL.min(deadline - now);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                control = self.control.recv() => match control {
                    Some(Control::Exited(exit)) if exit.handle == handle => {
                        // The driver's record (Podman's inspect) first; the event's as a fallback.
                        let code = node.driver.exit_code(&handle).await.ok().flatten().or(exit.code);
                        let logs = node.driver.logs_tail(&handle).await;
                        self.remove_instance().await;
                        // Another program bound the port between our check and its start.
                        if code == Some(exit_codes::ADDRESS_IN_USE) {
                            return Err(Attempt::PortTaken(self.port));
                        }
                        return Err(Attempt::Failed(format!(
                            "the game server exited ({}) before it was ready{}",
                            describe_code(code),
                            quote_logs(&logs)
                        )));
                    }
                    Some(Control::Exited(_)) => {}
                    Some(Control::Stop(reason)) => return Err(Attempt::Stopped(reason)),
                    None => return Err(Attempt::Stopped(StopReason::Shutdown)),
                },
            }
        }
    }

    /// Watches a running server until its game ends, restarting it if it dies early.
    async fn supervise(&mut self) -> Outcome {
        loop {
            let overrun_at = self.entry.ends_at + self.node.config.game.end_grace.as_millis() as u64;
            let overrun_in = Duration::from_millis(overrun_at.saturating_sub(now_ms()));
            let control = tokio::select! {
                control = self.control.recv() => control,
                () = tokio::time::sleep(overrun_in) => {
                    self.stop_instance().await;
                    return Outcome::Ended {
                        state: ServerState::Complete,
                        detail: "its game ended; it did not exit by itself and was stopped".to_owned(),
                    };
                }
            };
            let exit = match control {
                Some(Control::Exited(exit)) if Some(&exit.handle) == self.handle.as_ref() => exit,
                Some(Control::Exited(_)) => continue,
                Some(Control::Stop(reason)) => return self.stopped(reason).await,
                None => return self.stopped(StopReason::Shutdown).await,
            };
            let code = self.node.driver.exit_code(&exit.handle).await.ok().flatten().or(exit.code);
            if now_ms() >= self.entry.ends_at {
                return Outcome::Ended {
                    state: ServerState::Complete,
                    detail: format!("its game ended ({})", describe_code(code)),
                };
            }
            if code == Some(exit_codes::NO_PLAYERS) {
                metrics::counter!("mm_orchestrator_join_timeouts_total", "node" => self.node.id.clone())
                    .increment(1);
                return Outcome::Ended {
                    state: ServerState::Complete,
                    detail: format!(
                        "no player joined within {} (orchestrator.game.join_timeout): it ended itself",
                        mm_shared::duration::format(self.node.config.game.join_timeout)
                    ),
                };
            }
            let logs = self.node.driver.logs_tail(&exit.handle).await;
            let mut reason =
                format!("it exited ({}) before its game ended{}", describe_code(code), quote_logs(&logs));
            self.remove_instance().await;
            loop {
                if !self.may_restart() {
                    let policy = &self.node.config.restart;
                    return Outcome::Ended {
                        state: ServerState::Failed,
                        detail: format!(
                            "{reason}; no restart left ({} allowed within {})",
                            policy.attempts,
                            mm_shared::duration::format(policy.interval)
                        ),
                    };
                }
                self.entry.restarts += 1;
                self.entry.detail = format!("restart {}: {reason}", self.entry.restarts);
                metrics::counter!("mm_orchestrator_restarts_total", "node" => self.node.id.clone())
                    .increment(1);
                tracing::warn!(game_id = %self.entry.game_id, restarts = self.entry.restarts, "restarting: {reason}");
                tokio::select! {
                    () = tokio::time::sleep(self.node.config.restart.delay) => {}
                    control = self.control.recv() => match control {
                        Some(Control::Stop(reason)) => return self.stopped(reason).await,
                        None => return self.stopped(StopReason::Shutdown).await,
                        Some(Control::Exited(_)) => {}
                    },
                }
                match self.launch().await {
                    Ok(()) => {
                        self.set_state(ServerState::Running).await;
                        break;
                    }
                    Err(LaunchError::Stopped(reason)) => return self.stopped(reason).await,
                    Err(LaunchError::Failed(detail)) => reason = detail,
                }
            }
        }
    }

    /// Does the restart policy allow one more restart now? (Records it if so.)
    fn may_restart(&mut self) -> bool {
        let policy = &self.node.config.restart;
        let now = Instant::now();
        while self.restarts.front().is_some_and(|at| now.duration_since(*at) > policy.interval) {
            self.restarts.pop_front();
        }
        if self.restarts.len() < policy.attempts as usize && now_ms() < self.entry.ends_at {
            self.restarts.push_back(now);
            true
        } else {
            false
        }
    }

    async fn stopped(&mut self, reason: StopReason) -> Outcome {
        let placed = matches!(self.entry.state, ServerState::Ready | ServerState::Running);
        match reason {
            // Only a server handed to its match is worth leaving for the next start.
            StopReason::Keep if placed && self.handle.is_some() => Outcome::Kept,
            StopReason::Keep | StopReason::Shutdown => {
                self.stop_instance().await;
                Outcome::Ended {
                    state: ServerState::Complete,
                    detail: "stopped early: its node shut down".to_owned(),
                }
            }
            StopReason::Released => {
                self.stop_instance().await;
                Outcome::Ended {
                    state: ServerState::Complete,
                    detail: "released: its match was not committed (orchestrator.release)".to_owned(),
                }
            }
            StopReason::Abort => {
                self.stop_instance().await;
                Outcome::Ended {
                    state: ServerState::Failed,
                    detail: "the placement gave up before the server was ready".to_owned(),
                }
            }
        }
    }

    /// Stops and removes the current attempt's server, trying again through a busy
    /// driver; what is still left then is the node's reconciliation's to remove.
    async fn stop_instance(&mut self) {
        let Some(handle) = self.handle.take() else { return };
        let (driver, timeout) = (&self.node.driver, self.node.config.game.stop_timeout);
        let discarded = crate::retry::with_retries(REMOVE_ATTEMPTS, Duration::from_millis(200), || {
            driver.discard(&handle, timeout)
        })
        .await;
        if let Err(err) = discarded {
            tracing::warn!(game_id = %self.entry.game_id, "stopping the game server: {err}");
        }
    }

    async fn remove_instance(&mut self) {
        if let Some(handle) = self.handle.take()
            && let Err(err) = self.node.driver.remove(&handle).await
        {
            tracing::warn!(game_id = %self.entry.game_id, "removing the game server: {err}");
        }
    }

    async fn finish(&mut self, outcome: Outcome) {
        let (state, detail) = match outcome {
            Outcome::Kept => {
                crate::instrument::transition(&self.node.id, self.counted.take(), None);
                tracing::info!(game_id = %self.entry.game_id, "left running for the next start of this node");
                return;
            }
            Outcome::Ended { state, detail } => (state, detail),
        };
        self.stop_instance().await;
        // The books first, then KV: a new placement of the same game id may follow at once.
        self.node.release(&self.entry.game_id);
        self.entry.detail = detail;
        self.set_state(state).await;
        // Counted before the entry goes: whoever sees it gone sees the count too.
        metrics::counter!("mm_orchestrator_servers_ended_total", "state" => state.as_str(), "node" => self.node.id.clone())
            .increment(1);
        if let Err(err) = self.node.store.delete_server(&self.entry.game_id).await {
            tracing::warn!(game_id = %self.entry.game_id, "deleting the server entry: {err}");
        }
        let game_id = &self.entry.game_id;
        match state {
            ServerState::Failed => tracing::warn!(%game_id, "game server failed: {}", self.entry.detail),
            _ => tracing::info!(%game_id, "game server {}: {}", state.as_str(), self.entry.detail),
        }
    }

    async fn set_state(&mut self, state: ServerState) {
        crate::instrument::transition(&self.node.id, self.counted.replace(state), Some(state));
        if state.is_final() {
            self.counted = None;
        }
        self.entry.state = state;
        self.entry.updated_at = now_ms();
        self.node.record(&self.entry.game_id, self.id, &self.entry);
        if let Err(err) = self.node.store.put_server(&self.entry).await {
            tracing::warn!(game_id = %self.entry.game_id, state = state.as_str(), "server entry not written: {err}");
        }
    }

    fn spec(&self) -> LaunchSpec {
        LaunchSpec {
            game_id: self.entry.game_id.clone(),
            match_id: self.entry.match_id.clone(),
            node: self.node.id.clone(),
            player_ids: self.entry.player_ids.clone(),
            secret: self.entry.secret.clone(),
            host_ip: self.node.config.host_ip,
            port: self.port,
            ends_at: self.entry.ends_at,
            cpu_millicores: self.entry.resources.cpu_millicores,
            memory_mb: self.entry.resources.memory_mb,
            worker_threads: self.node.config.game.worker_threads,
            join_timeout: self.node.config.game.join_timeout,
        }
    }
}

fn describe_code(code: Option<i64>) -> String {
    match code {
        Some(code) if code < 0 => format!("killed by signal {}", -code),
        Some(code) => format!("exit code {code}"),
        None => "exit code unknown".to_owned(),
    }
}

fn quote_logs(logs: &str) -> String {
    let last = logs.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("");
    if last.is_empty() { String::new() } else { format!("; its last log line: {}", last.trim()) }
}

/// `GET /healthz` on `address`: true on a 200, within half a second.
async fn healthz(address: &str) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: game\r\n\r\n").await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    matches!(tokio::time::timeout(Duration::from_millis(500), probe).await, Ok(Some(true)))
}
