//! The allocation runner: one task per game server, from its start (for a placement or
//! for the warm pool) or its adoption to its end. The decisions are the pure
//! [`crate::machine`]'s; this is the I/O around it.
//!
//! The task waits for the next event — a control message (an exit from the driver's event
//! stream, a stop, a claim), the result of the driver's start or of a `/healthz` probe in
//! flight, or the time the machine asked to be woken — steps the machine, and carries its
//! actions out in order. Actions that answer (an exit code, logs, a KV create, an
//! assignment) give their result as the next event, before anything else is looked at.
//! At most one start or probe is in flight; a stop drops it (and removes what a dropped
//! start created). Exits arrive from the driver; the runner never polls a running
//! server. Every state change is written to KV `servers` and recorded with the node,
//! whose reconciliation rewrites the entry if KV lost it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use mm_shared::protocol::{GameEnded, ServerEntry, ServerState, now_ms, subjects};
use tokio::sync::mpsc;

use crate::driver::LaunchSpec;
use crate::machine::{Action, Begin, CreateFailure, Event, Finish, Machine, Now, Policy};
use crate::node::{ClaimSender, Control, Node, ReadySender, StartTicket};
use crate::results::NoResult;
use crate::store::StoreError;

/// Tries at removing a server through a busy driver before giving it up (to the node's
/// reconciliation).
const REMOVE_ATTEMPTS: usize = 3;
/// How long a game's result may wait for room in the NATS client's outgoing buffer.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// The `result` labels of `mm_orchestrator_game_results_total`.
pub const GAME_RESULTS: [&str; 3] = ["published", "unpublished", "none"];

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
    let slot = entry.game_id.clone();
    let mut shell = Shell::new(node, Begin::Place, slot, entry, port, None, String::new());
    shell.ready = Some(ready);
    shell.ticket = Some(ticket);
    let control = shell.sender.clone();
    node.tasks.spawn(shell.run());
    control
}

/// Starts the runner of a server for the node's warm pool (its `pending` entry, keyed by
/// its warm id, is already in KV), with the token its match will be handed over with.
pub fn spawn_warm(node: &Arc<Node>, entry: ServerEntry, port: u16, token: String, ticket: StartTicket) {
    let slot = entry.game_id.clone();
    let mut shell = Shell::new(node, Begin::Warm, slot, entry, port, None, token);
    shell.ticket = Some(ticket);
    node.tasks.spawn(shell.run());
}

/// Starts the runner of a server found running at start-up on host port `port`, in
/// `slot` (its warm id, for one that came from the pool), warm or running as `entry`
/// says; a warm one needs its bootstrap `token`.
pub fn spawn_adopted(
    node: &Arc<Node>,
    slot: String,
    entry: ServerEntry,
    port: u16,
    handle: String,
    token: String,
) {
    tracing::info!(game_id = %entry.game_id, address = %entry.address, state = entry.state.as_str(), "adopted a running game server");
    let shell = Shell::new(node, Begin::Adopted, slot, entry, port, Some(handle), token);
    node.tasks.spawn(shell.run());
}

/// Where the next event came from.
enum Next {
    Control(Option<Control>),
    Op(Event),
    Timer,
}

struct Shell {
    node: Arc<Node>,
    /// Its registration with the node.
    id: u64,
    slot: String,
    machine: Machine,
    control: mpsc::UnboundedReceiver<Control>,
    sender: mpsc::UnboundedSender<Control>,
    begin: Begin,
    /// A warm server's bootstrap token.
    token: String,
    ready: Option<ReadySender>,
    ticket: Option<StartTicket>,
    claim: Option<ClaimSender>,
    /// The start or probe in flight.
    op: Option<BoxFuture<'static, Event>>,
    /// The state counted in `mm_orchestrator_servers`.
    counted: Option<ServerState>,
    /// When the runner began (a refill's latency runs from here).
    began: Instant,
    /// When the running attempt's driver start returned (its ready time runs from here).
    started: Option<Instant>,
}

impl Shell {
    fn new(
        node: &Arc<Node>,
        begin: Begin,
        slot: String,
        entry: ServerEntry,
        port: u16,
        handle: Option<String>,
        token: String,
    ) -> Self {
        let (sender, control) = mpsc::unbounded_channel();
        let id = node.register(&slot, &entry, sender.clone());
        let counted = Some(entry.state);
        crate::instrument::transition(&node.id, None, counted);
        let machine = Machine::new(Policy::from_config(&node.config), begin, entry, port, handle);
        Self {
            node: node.clone(),
            id,
            slot,
            machine,
            control,
            sender,
            begin,
            token,
            ready: None,
            ticket: None,
            claim: None,
            op: None,
            counted,
            began: Instant::now(),
            started: None,
        }
    }

    async fn run(mut self) {
        let mut queue = VecDeque::from([Event::Begin]);
        while !self.machine.is_done() {
            let event = match queue.pop_front() {
                Some(event) => event,
                None => self.next_event().await,
            };
            self.observe(&event);
            let now = Now { at: Instant::now(), wall_ms: now_ms() };
            for action in self.machine.step(event, now) {
                if let Some(event) = self.execute(action).await {
                    queue.push_back(event);
                }
            }
        }
        // Claims that arrived after the end hear so.
        self.control.close();
        while let Ok(control) = self.control.try_recv() {
            if let Control::Claim { reply, .. } = control {
                let _ = reply.send(Err(crate::machine::ClaimFailure::Gone));
            }
        }
        self.node.unregister(&self.slot, self.id);
    }

    async fn next_event(&mut self) -> Event {
        let wake = self.machine.wake_at();
        let next = {
            let (control, op) = (&mut self.control, &mut self.op);
            let op = async {
                match op.as_mut() {
                    Some(op) => op.await,
                    None => std::future::pending().await,
                }
            };
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                control = control.recv() => Next::Control(control),
                event = op => Next::Op(event),
                () = timer => Next::Timer,
            }
        };
        match next {
            Next::Control(Some(Control::Exited(exit))) => {
                Event::Exited { handle: exit.handle, code: exit.code }
            }
            Next::Control(Some(Control::Stop(reason))) => Event::Stop(reason),
            Next::Control(Some(Control::Claim { assignment, reply })) => {
                // One claim at a time: a claim comes from a pool pop, which hands a slot out once.
                if let Some(earlier) = self.claim.replace(reply) {
                    let _ = earlier.send(Err(crate::machine::ClaimFailure::Gone));
                }
                Event::Claim(assignment)
            }
            Next::Control(None) => Event::Stop(crate::machine::StopReason::Shutdown),
            Next::Op(event) => {
                self.op = None;
                event
            }
            Next::Timer => Event::Timer,
        }
    }

    /// Metrics read off events as they pass.
    fn observe(&mut self, event: &Event) {
        let driver = self.node.driver.name();
        match event {
            Event::Started(Ok(_)) => self.started = Some(Instant::now()),
            Event::Probed(true) => {
                if let Some(started) = self.started.take() {
                    metrics::histogram!("mm_orchestrator_server_ready_duration_seconds", "driver" => driver)
                        .record(started.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    fn spec(&self) -> LaunchSpec {
        let entry = self.machine.entry();
        let config = &self.node.config;
        LaunchSpec {
            game_id: self.slot.clone(),
            match_id: entry.match_id.clone(),
            node: self.node.id.clone(),
            player_ids: entry.player_ids.clone(),
            secret: entry.secret.clone(),
            host_ip: config.host_ip,
            port: self.machine.port(),
            ends_at: entry.ends_at,
            cpu_millicores: entry.resources.cpu_millicores,
            memory_mb: entry.resources.memory_mb,
            worker_threads: config.game.worker_threads,
            join_timeout: config.game.join_timeout,
            // A server that has its match (restarted after a claim, too) is started with it;
            // only one without (a warm start) gets the token.
            bootstrap_token: if entry.match_id.is_empty() { self.token.clone() } else { String::new() },
        }
    }

    /// Carries one action out; its result, for those that have one.
    async fn execute(&mut self, action: Action) -> Option<Event> {
        let node = self.node.clone();
        match action {
            Action::Start => {
                let spec = self.spec();
                self.op = Some(
                    async move {
                        let began = Instant::now();
                        let started = node.driver.start(&spec).await;
                        if started.is_ok() {
                            metrics::histogram!("mm_orchestrator_container_start_duration_seconds", "driver" => node.driver.name())
                                .record(began.elapsed().as_secs_f64());
                        }
                        Event::Started(started)
                    }
                    .boxed(),
                );
                None
            }
            Action::CancelStart => {
                // Dropping the start gives it up; it may have created a server already.
                self.op = None;
                if let Err(err) = node.driver.discard_game(&self.slot, node.config.game.stop_timeout).await {
                    tracing::warn!(slot = %self.slot, "removing an interrupted start: {err}");
                }
                None
            }
            Action::CancelOp => {
                self.op = None;
                None
            }
            Action::ChangePort => {
                let port = node.change_port(&self.slot);
                if let Some(port) = port {
                    tracing::info!(game_id = %self.machine.entry().game_id, port, "port taken on the host; trying another");
                }
                Some(Event::PortChanged(port.map(|port| (port, node.address(port)))))
            }
            Action::Probe => {
                let address = self.machine.entry().address.clone();
                self.op =
                    Some(async move { Event::Probed(crate::game_api::healthz(&address).await) }.boxed());
                None
            }
            Action::ExitCode { handle, code } => {
                // The driver's record (Podman's inspect) first; the event's as a fallback.
                Some(Event::ExitCode(node.driver.exit_code(&handle).await.ok().flatten().or(code)))
            }
            Action::FetchLogs(handle) => Some(Event::Logs(node.driver.logs_tail(&handle).await)),
            Action::StopInstance(handle) => {
                let (driver, timeout) = (&node.driver, node.config.game.stop_timeout);
                let discarded =
                    crate::retry::with_retries(REMOVE_ATTEMPTS, Duration::from_millis(200), || {
                        driver.discard(&handle, timeout)
                    })
                    .await;
                if let Err(err) = discarded {
                    tracing::warn!(game_id = %self.machine.entry().game_id, "stopping the game server: {err}");
                }
                None
            }
            Action::RemoveInstance(handle) => {
                if let Err(err) = node.driver.remove(&handle).await {
                    tracing::warn!(game_id = %self.machine.entry().game_id, "removing the game server: {err}");
                }
                None
            }
            Action::Record(entry) => {
                self.record(&entry).await;
                None
            }
            Action::Track(entry) => {
                node.record(&self.slot, self.id, &entry);
                None
            }
            Action::CreateEntry(entry) => {
                let created = match node.store.create_server(&entry).await {
                    Ok(()) => Ok(()),
                    Err(StoreError::Exists(_)) => Err(CreateFailure::Exists),
                    Err(other) => Err(CreateFailure::Failed(other.to_string())),
                };
                Some(Event::Created(created))
            }
            Action::DeleteEntry(key) => {
                if let Err(err) = node.store.delete_server(&key).await {
                    tracing::warn!(game_id = %key, "deleting an entry: {err}");
                }
                None
            }
            Action::AnswerPlacement(result) => {
                let ok = result.is_ok();
                let delivered = self.ready.take().is_some_and(|ready| ready.send(result).is_ok());
                if ok {
                    node.record_cold_start(self.began.elapsed());
                }
                Some(Event::Answered(delivered))
            }
            Action::ReleaseTicket => {
                // Ready or not, this start has left the node's queue.
                self.ticket.take();
                None
            }
            Action::EnterPool => {
                if self.begin == Begin::Warm {
                    let took = self.began.elapsed();
                    metrics::histogram!("mm_orchestrator_pool_refill_duration_seconds", "driver" => node.driver.name())
                        .record(took.as_secs_f64());
                    node.record_cold_start(took);
                }
                node.pool_enter(&self.slot);
                None
            }
            Action::LeavePool => Some(Event::LeftPool(node.pool_leave(&self.slot))),
            Action::ReturnToPool => {
                node.pool_give_back(&self.slot);
                None
            }
            Action::Assign { address, assignment } => {
                Some(Event::Assigned(crate::game_api::assign(&address, &self.token, &assignment).await))
            }
            Action::AnswerClaim(result) => {
                if let Some(reply) = self.claim.take() {
                    let _ = reply.send(result);
                }
                None
            }
            Action::Restarting { restarts, reason } => {
                metrics::counter!("mm_orchestrator_restarts_total", "node" => node.id.clone()).increment(1);
                tracing::warn!(game_id = %self.machine.entry().game_id, restarts, "restarting: {reason}");
                None
            }
            Action::JoinTimedOut => {
                metrics::counter!("mm_orchestrator_join_timeouts_total", "node" => node.id.clone())
                    .increment(1);
                None
            }
            Action::Recycled => {
                metrics::counter!("mm_orchestrator_pool_recycled_total", "node" => node.id.clone())
                    .increment(1);
                None
            }
            Action::Result(result) => {
                publish_result(&node, &self.machine.entry().game_id.clone(), result).await;
                None
            }
            Action::Finish(finish) => {
                self.finish(finish).await;
                None
            }
        }
    }

    async fn record(&mut self, entry: &ServerEntry) {
        crate::instrument::transition(&self.node.id, self.counted.replace(entry.state), Some(entry.state));
        if entry.state.is_final() {
            self.counted = None;
        }
        self.node.record(&self.slot, self.id, entry);
        if let Err(err) = self.node.store.put_server(entry).await {
            tracing::warn!(game_id = %entry.game_id, state = entry.state.as_str(), "server entry not written: {err}");
        }
    }

    async fn finish(&mut self, finish: Finish) {
        self.node.pool_forget(&self.slot);
        let entry = match finish {
            Finish::Kept => {
                crate::instrument::transition(&self.node.id, self.counted.take(), None);
                tracing::info!(game_id = %self.machine.entry().game_id, "left running for the next start of this node");
                return;
            }
            Finish::Ended(entry) => entry,
        };
        // The books first, then KV: a new placement of the same game id may follow at once.
        self.node.release(&self.slot);
        let state = entry.state;
        self.record(&entry).await;
        // Counted before the entry goes: whoever sees it gone sees the count too.
        metrics::counter!("mm_orchestrator_servers_ended_total", "state" => state.as_str(), "node" => self.node.id.clone())
            .increment(1);
        if let Err(err) = self.node.store.delete_server(&entry.game_id).await {
            tracing::warn!(game_id = %entry.game_id, "deleting the server entry: {err}");
        }
        let game_id = &entry.game_id;
        match state {
            ServerState::Failed => tracing::warn!(%game_id, "game server failed: {}", entry.detail),
            _ => tracing::info!(%game_id, "game server {}: {}", state.as_str(), entry.detail),
        }
    }
}

/// Publishes a game's result on `events.game.ended` (core NATS: at most once; the
/// matchmaker applies each game's result once however often it hears it).
async fn publish_result(node: &Node, game_id: &str, result: Result<GameEnded, NoResult>) {
    let result = match result {
        Ok(result) => result,
        Err(why) => {
            metrics::counter!("mm_orchestrator_game_results_total", "result" => "none").increment(1);
            tracing::info!(%game_id, "no game result: {why}");
            return;
        }
    };
    let published = match serde_json::to_vec(&result) {
        Ok(payload) => {
            let publish = node.store.client().publish(subjects::EVENTS_GAME_ENDED, payload.into());
            match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("no room to send it within {PUBLISH_TIMEOUT:?}")),
            }
        }
        Err(err) => Err(err.to_string()),
    };
    match published {
        Ok(()) => {
            metrics::counter!("mm_orchestrator_game_results_total", "result" => "published").increment(1);
            tracing::info!(%game_id, match_id = %result.match_id, winner = result.winner, "game result published");
        }
        Err(err) => {
            metrics::counter!("mm_orchestrator_game_results_total", "result" => "unpublished").increment(1);
            tracing::warn!(%game_id, "game result not published: {err}");
        }
    }
}
