//! A game server's life as a pure state machine: `(state, event, now) → (state, actions)`.
//! No I/O, no clock: the runner ([`crate::runner`]) feeds it events (driver results,
//! probes, exits, stops, claims, timers) with the time, and carries its actions out.
//!
//! ```text
//!            ┌──────────── placement ────────────┐
//! pending ─▶ starting ─▶ ready ─▶ running ─▶ complete   (its game ended; it exited)
//!    │          ▲   │                │  └───▶ failed     (died early, restarts used up)
//!    │          │   └─ warm ─ claim ─┘  └───▶ lost       (found gone at start-up)
//!    │          └──── restart ◀──────┘
//!    └─ (pool) starting ─▶ warm ─▶ complete              (recycled, or its node stopped)
//! ```
//!
//! - **starting**: the driver is starting it, then its `/healthz` is probed every
//!   [`PROBE_INTERVAL`] until `game.start_timeout`. A port found taken (by the driver, or
//!   by the server's own exit code) moves it to another port, [`PORT_TRIES`] ports at most.
//! - **ready**: healthy; the placement is answered, then it is **running**.
//! - **warm**: healthy and in its node's pool, with no match. A claim records its match's
//!   entry with a KV *create* (one server per match), hands the server its match on its
//!   assignment endpoint, and only then answers: the server is running. A duplicate match
//!   gives it back to the pool untouched; a failed assignment ends it (it may be tainted).
//!   It dies while warm: it ends and is replaced, never handed out. Unclaimed for
//!   `pool.recycle_after`: recycled.
//! - **running**: an exit before the game's end is an early death: the restart policy
//!   (attempts within an interval, a delay between) starts it again on the same port
//!   with the same secret. Its own exit codes say when it ended itself (nobody joined),
//!   which is no crash. Past its end and grace it is stopped.
//! - A stop (shutdown, release, a placement given up) interrupts even a start still
//!   queued in the driver. With `on_shutdown = "keep"` a running or warm server is left
//!   for the next start to adopt.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mm_shared::protocol::game_server::{Assignment, exit_codes};
use mm_shared::protocol::{GameEnded, ServerEntry, ServerState};

use crate::config::OrchestratorSection;
use crate::driver::DriverError;
use crate::results::NoResult;

/// How often `/healthz` is tried while a server starts.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How many ports a start tries when the first one turns out to be taken.
pub const PORT_TRIES: usize = 3;

/// Why a runner is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The placement was given up (its deadline passed): stop the server, it failed.
    Abort,
    /// The orchestrator is stopping and stops its servers.
    Shutdown,
    /// The orchestrator is stopping and leaves its servers running for the next start.
    Keep,
    /// Its match was not committed (`orchestrator.release`): stop the server.
    Released,
}

/// Why a new server's placement got no server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceFailure {
    /// It was stopped before it was ready.
    Stopped(StopReason),
    /// Its start failed.
    Failed(String),
}

/// Why a claim of a warm server got no server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimFailure {
    /// The match has a server already (its entry exists): the warm server stays warm.
    Duplicate,
    /// The server is no longer warm (it ended, or is ending).
    Gone,
    /// Recording or assigning the match failed; the server is discarded.
    Failed(String),
}

/// Why a KV create of a claimed server's entry failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateFailure {
    Exists,
    Failed(String),
}

/// The settings a runner follows (from `[orchestrator]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub start_timeout: Duration,
    pub restart_attempts: u32,
    pub restart_interval: Duration,
    pub restart_delay: Duration,
    pub end_grace: Duration,
    pub join_timeout: Duration,
    /// Zero: warm servers wait forever.
    pub recycle_after: Duration,
}

impl Policy {
    pub fn from_config(config: &OrchestratorSection) -> Self {
        Self {
            start_timeout: config.game.start_timeout,
            restart_attempts: config.restart.attempts,
            restart_interval: config.restart.interval,
            restart_delay: config.restart.delay,
            end_grace: config.game.end_grace,
            join_timeout: config.game.join_timeout,
            recycle_after: config.pool.recycle_after,
        }
    }
}

/// The time as the machine sees it: a monotonic instant (timers, the restart window)
/// and the wall clock in Unix ms (a game's end is a wall-clock time in its entry).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: u64,
}

/// How a runner begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Start it for a placement, which waits for the answer.
    Place,
    /// Start it for the node's pool.
    Warm,
    /// Found running at start-up: supervise it (warm or running, as its entry says).
    Adopted,
}

/// What a start is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    First,
    Warm,
    Restart,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Idle,
    /// The driver's start is in flight.
    Starting {
        launch: Launch,
        tries: usize,
    },
    /// Its port was taken: the node is asked for another.
    ChangingPort {
        launch: Launch,
        tries: usize,
        port: u16,
    },
    /// Started: `/healthz` is probed until `deadline`; `next` is when the next probe goes
    /// (none while one is in flight).
    Probing {
        launch: Launch,
        tries: usize,
        deadline: Instant,
        next: Option<Instant>,
    },
    /// Not healthy in time: its last log lines are read, then it is stopped.
    TimingOut {
        launch: Launch,
    },
    /// It exited while starting: its exit code is read...
    StartExited {
        launch: Launch,
        tries: usize,
    },
    /// ...then its last log lines.
    StartExitedLogs {
        launch: Launch,
        code: Option<i64>,
    },
    /// Ready: the placement is being answered.
    Answering,
    /// In the pool, claimable.
    Warm {
        since: Instant,
        recycle_at: Option<Instant>,
    },
    /// Its time in the pool is up: it is taken out of the pool (unless a claim was first).
    Recycling {
        since: Instant,
    },
    /// Claimed: its match's entry is being created.
    Claiming {
        warm: Box<ServerEntry>,
        since: Instant,
        assignment: Box<Assignment>,
    },
    /// Claimed and recorded: the server is being handed its match.
    Assigning {
        warm: Box<ServerEntry>,
        since: Instant,
    },
    /// Handed to its match; supervised until its game ends.
    Running {
        overrun_at: Instant,
    },
    /// It exited while running: its exit code is read...
    Dying,
    /// ...then its last log lines.
    DyingLogs {
        code: Option<i64>,
    },
    /// It exited after its game's end: its last output lines are read for the result.
    EndedLogs {
        code: Option<i64>,
    },
    /// Waiting `restart.delay` before it is started again.
    RestartDelay {
        until: Instant,
    },
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Begin,
    /// The driver's start: the server's handle, or why not.
    Started(Result<String, DriverError>),
    /// Another port (and its advertised address), or none free.
    PortChanged(Option<(u16, String)>),
    Probed(bool),
    /// The time [`Machine::wake_at`] named has come.
    Timer,
    /// The driver saw a server of this slot exit (maybe an earlier attempt's).
    Exited {
        handle: String,
        code: Option<i64>,
    },
    ExitCode(Option<i64>),
    Logs(String),
    Stop(StopReason),
    /// The placement's answer was delivered (false: the placement had given up).
    Answered(bool),
    /// An allocation claimed this warm server for a match.
    Claim(Assignment),
    Created(Result<(), CreateFailure>),
    Assigned(Result<(), String>),
    /// Taken out of the pool (false: it was no longer there, a claim took it).
    LeftPool(bool),
}

/// How a runner's server ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// Ended: the entry has its final state and detail.
    Ended(Box<ServerEntry>),
    /// Left running for the next orchestrator (`on_shutdown = "keep"`).
    Kept,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the server (entry, port, token as now): [`Event::Started`].
    Start,
    /// Give up the start in flight and remove whatever it created.
    CancelStart,
    /// Give up the probe in flight.
    CancelOp,
    /// Ask the node for another port: [`Event::PortChanged`].
    ChangePort,
    /// `GET /healthz`: [`Event::Probed`].
    Probe,
    /// Read the exit code (the driver's record, else `code`): [`Event::ExitCode`].
    ExitCode { handle: String, code: Option<i64> },
    /// Read its last log lines: [`Event::Logs`].
    FetchLogs(String),
    /// Stop and remove it.
    StopInstance(String),
    /// Remove a server that has exited.
    RemoveInstance(String),
    /// Write the entry to KV `servers` (and to the node's record of it).
    Record(ServerEntry),
    /// Tell the node what the entry is about to be (no KV write).
    Track(ServerEntry),
    /// Create the entry with a KV create: [`Event::Created`].
    CreateEntry(ServerEntry),
    /// Delete an entry by key.
    DeleteEntry(String),
    /// Answer the placement: [`Event::Answered`].
    AnswerPlacement(Result<String, PlaceFailure>),
    /// The start has left the node's start queue.
    ReleaseTicket,
    /// Claimable from now on.
    EnterPool,
    /// No longer claimable: [`Event::LeftPool`].
    LeavePool,
    /// A claim did not go through: claimable again, first in line.
    ReturnToPool,
    /// Hand the server its match: [`Event::Assigned`].
    Assign { address: String, assignment: Assignment },
    /// Answer the claim: the server's address, or why not.
    AnswerClaim(Result<String, ClaimFailure>),
    /// It is restarted (the count so far, and why).
    Restarting { restarts: u32, reason: String },
    /// It ended itself: nobody joined.
    JoinTimedOut,
    /// It was recycled, unclaimed for too long.
    Recycled,
    /// The game's result read from the server's last lines: publish it on
    /// `events.game.ended`, or say why there is none.
    Result(Result<GameEnded, NoResult>),
    /// The end: books, final entry, deletion.
    Finish(Finish),
}

/// One game server's runner state.
#[derive(Debug, Clone)]
pub struct Machine {
    policy: Policy,
    begin: Begin,
    phase: Phase,
    entry: ServerEntry,
    /// The host port the node's books hold for it.
    port: u16,
    /// The running attempt's driver handle.
    handle: Option<String>,
    /// When each restart happened (those within the policy's interval).
    restarts: VecDeque<Instant>,
}

impl Machine {
    /// A machine for `entry` on `port`; `handle` for an adopted server.
    pub fn new(policy: Policy, begin: Begin, entry: ServerEntry, port: u16, handle: Option<String>) -> Self {
        Self { policy, begin, phase: Phase::Idle, entry, port, handle, restarts: VecDeque::new() }
    }

    pub fn entry(&self) -> &ServerEntry {
        &self.entry
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    #[cfg(test)]
    pub fn handle(&self) -> Option<&str> {
        self.handle.as_deref()
    }

    #[cfg(test)]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// When the machine wants [`Event::Timer`], if at all.
    pub fn wake_at(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Probing { next, .. } => *next,
            Phase::Warm { recycle_at, .. } => *recycle_at,
            Phase::Running { overrun_at } => Some(*overrun_at),
            Phase::RestartDelay { until } => Some(*until),
            _ => None,
        }
    }

    /// Applies `event` at `now`: the actions to carry out, in order.
    pub fn step(&mut self, event: Event, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        self.phase = self.apply(phase, event, now, &mut out);
        out
    }

    fn apply(&mut self, phase: Phase, event: Event, now: Now, out: &mut Vec<Action>) -> Phase {
        // A claim of a server that is not warm (any more) is refused wherever it lands.
        if let Event::Claim(_) = event
            && !matches!(phase, Phase::Warm { .. } | Phase::Recycling { .. })
        {
            out.push(Action::AnswerClaim(Err(ClaimFailure::Gone)));
            return phase;
        }
        match (phase, event) {
            (Phase::Idle, Event::Begin) => match self.begin {
                Begin::Place => self.start(Launch::First, 1, out),
                Begin::Warm => self.start(Launch::Warm, 1, out),
                Begin::Adopted if self.entry.state == ServerState::Warm => {
                    out.push(Action::EnterPool);
                    self.warm(now.at)
                }
                Begin::Adopted => self.running(now),
            },
            (Phase::Idle, Event::Stop(reason)) => self.stopped(reason, now, out),

            // The driver's start.
            (Phase::Starting { launch, tries }, Event::Started(Ok(handle))) => {
                self.handle = Some(handle.clone());
                self.entry.handle = handle;
                self.record(ServerState::Starting, now, out);
                out.push(Action::Probe);
                Phase::Probing { launch, tries, deadline: now.at + self.policy.start_timeout, next: None }
            }
            (Phase::Starting { launch, tries }, Event::Started(Err(DriverError::PortTaken(port)))) => {
                self.port_taken(launch, tries, port, now, out)
            }
            (Phase::Starting { launch, .. }, Event::Started(Err(err))) => {
                self.launch_failed(launch, err.to_string(), now, out)
            }
            (Phase::Starting { launch, .. }, Event::Stop(reason)) => {
                out.push(Action::CancelStart);
                self.launch_stopped(launch, reason, now, out)
            }
            (Phase::ChangingPort { launch, tries, .. }, Event::PortChanged(Some((port, address)))) => {
                self.port = port;
                self.entry.address = address;
                self.start(launch, tries + 1, out)
            }
            (Phase::ChangingPort { launch, port, .. }, Event::PortChanged(None)) => self.launch_failed(
                launch,
                format!("port {port} is taken and no other port is free"),
                now,
                out,
            ),

            // Waiting for /healthz.
            (Phase::Probing { launch, .. }, Event::Probed(true)) => self.launched(launch, now, out),
            (Phase::Probing { launch, tries, deadline, .. }, Event::Probed(false)) => {
                if now.at >= deadline {
                    match self.handle.clone() {
                        Some(handle) => {
                            out.push(Action::FetchLogs(handle));
                            Phase::TimingOut { launch }
                        }
                        None => self.launch_failed(launch, self.not_healthy(""), now, out),
                    }
                } else {
                    let next = (now.at + PROBE_INTERVAL).min(deadline);
                    Phase::Probing { launch, tries, deadline, next: Some(next) }
                }
            }
            (Phase::Probing { launch, tries, deadline, next: Some(_) }, Event::Timer) => {
                out.push(Action::Probe);
                Phase::Probing { launch, tries, deadline, next: None }
            }
            (Phase::Probing { launch, tries, .. }, Event::Exited { handle, code })
                if self.handle.as_deref() == Some(handle.as_str()) =>
            {
                out.push(Action::CancelOp);
                out.push(Action::ExitCode { handle, code });
                Phase::StartExited { launch, tries }
            }
            (Phase::Probing { launch, .. }, Event::Stop(reason)) => {
                out.push(Action::CancelOp);
                self.launch_stopped(launch, reason, now, out)
            }
            (Phase::TimingOut { launch }, Event::Logs(logs)) => {
                self.stop_instance(out);
                self.launch_failed(launch, self.not_healthy(&logs), now, out)
            }
            (Phase::StartExited { launch, tries }, Event::ExitCode(code)) => {
                if code == Some(exit_codes::ADDRESS_IN_USE) {
                    // Another program bound the port between our check and its start.
                    self.remove_instance(out);
                    return self.port_taken(launch, tries, self.port, now, out);
                }
                match self.handle.clone() {
                    Some(handle) => {
                        out.push(Action::FetchLogs(handle));
                        Phase::StartExitedLogs { launch, code }
                    }
                    None => self.launch_failed(launch, exited_before_ready(code, ""), now, out),
                }
            }
            (Phase::StartExitedLogs { launch, code }, Event::Logs(logs)) => {
                self.remove_instance(out);
                self.launch_failed(launch, exited_before_ready(code, &logs), now, out)
            }

            // Ready: the placement hears of it.
            (Phase::Answering, Event::Answered(true)) => {
                self.record(ServerState::Running, now, out);
                self.running(now)
            }
            // The placement gave up waiting (its deadline passed) a moment ago.
            (Phase::Answering, Event::Answered(false)) => self.stopped(StopReason::Abort, now, out),

            // Warm, in the pool.
            (Phase::Warm { since, .. }, Event::Timer) => {
                out.push(Action::LeavePool);
                Phase::Recycling { since }
            }
            (Phase::Recycling { .. }, Event::LeftPool(true)) => {
                out.push(Action::Recycled);
                let detail = format!(
                    "recycled: unclaimed for {} (orchestrator.pool.recycle_after)",
                    mm_shared::duration::format(self.policy.recycle_after)
                );
                self.end(ServerState::Complete, detail, now, out)
            }
            // A claim took it first: it is on its way.
            (Phase::Recycling { since }, Event::LeftPool(false)) => Phase::Warm { since, recycle_at: None },
            (Phase::Warm { .. } | Phase::Recycling { .. }, Event::Exited { handle, code })
                if self.handle.as_deref() == Some(handle.as_str()) =>
            {
                // Never handed out: out of the pool, ended; the node starts another.
                out.push(Action::LeavePool);
                let detail = format!("it exited while warm ({})", describe_code(code));
                self.end(ServerState::Failed, detail, now, out)
            }
            (Phase::Warm { .. } | Phase::Recycling { .. }, Event::Stop(reason)) => {
                out.push(Action::LeavePool);
                self.stopped(reason, now, out)
            }
            (Phase::Warm { since, .. } | Phase::Recycling { since }, Event::Claim(assignment)) => {
                let warm = Box::new(self.entry.clone());
                self.entry.game_id = assignment.game_id.clone();
                self.entry.match_id = assignment.match_id.clone();
                self.entry.player_ids = assignment.player_ids.clone();
                self.entry.secret = assignment.secret.clone();
                self.entry.ends_at = assignment.ends_at;
                self.entry.state = ServerState::Pending;
                self.entry.detail = String::new();
                self.entry.updated_at = now.wall_ms;
                out.push(Action::Track(self.entry.clone()));
                out.push(Action::CreateEntry(self.entry.clone()));
                Phase::Claiming { warm, since, assignment: Box::new(assignment) }
            }
            (Phase::Claiming { warm, since, assignment }, Event::Created(Ok(()))) => {
                out.push(Action::Assign { address: self.entry.address.clone(), assignment: *assignment });
                Phase::Assigning { warm, since }
            }
            (Phase::Claiming { warm, since, .. }, Event::Created(Err(failure))) => {
                self.entry = *warm;
                out.push(Action::Track(self.entry.clone()));
                out.push(Action::ReturnToPool);
                let failure = match failure {
                    CreateFailure::Exists => ClaimFailure::Duplicate,
                    CreateFailure::Failed(reason) => {
                        ClaimFailure::Failed(format!("cannot record the match's server: {reason}"))
                    }
                };
                out.push(Action::AnswerClaim(Err(failure)));
                self.warm(since)
            }
            (Phase::Assigning { warm, .. }, Event::Assigned(Ok(()))) => {
                self.record(ServerState::Running, now, out);
                out.push(Action::AnswerClaim(Ok(self.entry.address.clone())));
                out.push(Action::DeleteEntry(warm.game_id));
                self.running(now)
            }
            (Phase::Assigning { warm, .. }, Event::Assigned(Err(reason))) => {
                // It may have taken the match or not: it is not handed out, nor kept.
                out.push(Action::DeleteEntry(self.entry.game_id.clone()));
                out.push(Action::AnswerClaim(Err(ClaimFailure::Failed(reason.clone()))));
                self.entry = *warm;
                out.push(Action::Track(self.entry.clone()));
                self.end(ServerState::Failed, format!("its assignment failed: {reason}"), now, out)
            }

            // Running its game.
            (Phase::Running { .. }, Event::Timer) => {
                let detail = "its game ended; it did not exit by itself and was stopped".to_owned();
                self.end(ServerState::Complete, detail, now, out)
            }
            (Phase::Running { .. }, Event::Exited { handle, code })
                if self.handle.as_deref() == Some(handle.as_str()) =>
            {
                out.push(Action::ExitCode { handle, code });
                Phase::Dying
            }
            (Phase::Running { .. } | Phase::RestartDelay { .. }, Event::Stop(reason)) => {
                self.stopped(reason, now, out)
            }
            (Phase::Dying, Event::ExitCode(code)) => {
                if now.wall_ms >= self.entry.ends_at {
                    // Its game is over: its last line is the result.
                    return match self.handle.clone() {
                        Some(handle) => {
                            out.push(Action::FetchLogs(handle));
                            Phase::EndedLogs { code }
                        }
                        None => {
                            let detail = format!("its game ended ({})", describe_code(code));
                            self.end(ServerState::Complete, detail, now, out)
                        }
                    };
                }
                if code == Some(exit_codes::NO_PLAYERS) {
                    out.push(Action::JoinTimedOut);
                    let detail = format!(
                        "no player joined within {} (orchestrator.game.join_timeout): it ended itself",
                        mm_shared::duration::format(self.policy.join_timeout)
                    );
                    return self.end(ServerState::Complete, detail, now, out);
                }
                match self.handle.clone() {
                    Some(handle) => {
                        out.push(Action::FetchLogs(handle));
                        Phase::DyingLogs { code }
                    }
                    None => self.restart(died_early(code, ""), now, out),
                }
            }
            (Phase::DyingLogs { code }, Event::Logs(logs)) => {
                self.remove_instance(out);
                self.restart(died_early(code, &logs), now, out)
            }
            (Phase::EndedLogs { code }, Event::Logs(logs)) => {
                let result = crate::results::read(&logs, &self.entry);
                let detail = match &result {
                    Ok(result) => {
                        format!("its game ended ({}); side {} won", describe_code(code), result.winner)
                    }
                    Err(why) => format!("its game ended ({}); no result: {why}", describe_code(code)),
                };
                out.push(Action::Result(result));
                self.end(ServerState::Complete, detail, now, out)
            }
            (Phase::RestartDelay { .. }, Event::Timer) => self.start(Launch::Restart, 1, out),

            // Anything else changes nothing: exits of earlier attempts, late results.
            (phase, _) => phase,
        }
    }

    fn start(&mut self, launch: Launch, tries: usize, out: &mut Vec<Action>) -> Phase {
        out.push(Action::Start);
        Phase::Starting { launch, tries }
    }

    fn port_taken(
        &mut self,
        launch: Launch,
        tries: usize,
        port: u16,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Phase {
        if tries < PORT_TRIES {
            out.push(Action::ChangePort);
            Phase::ChangingPort { launch, tries, port }
        } else {
            let detail = format!("port {port} is taken on the host ({tries} ports tried)");
            self.launch_failed(launch, detail, now, out)
        }
    }

    fn not_healthy(&self, logs: &str) -> String {
        format!(
            "the game server's /healthz did not answer within {}{}",
            mm_shared::duration::format(self.policy.start_timeout),
            quote_logs(logs)
        )
    }

    /// The start is healthy.
    fn launched(&mut self, launch: Launch, now: Now, out: &mut Vec<Action>) -> Phase {
        match launch {
            Launch::First => {
                out.push(Action::ReleaseTicket);
                self.record(ServerState::Ready, now, out);
                out.push(Action::AnswerPlacement(Ok(self.entry.address.clone())));
                Phase::Answering
            }
            Launch::Warm => {
                out.push(Action::ReleaseTicket);
                self.record(ServerState::Warm, now, out);
                out.push(Action::EnterPool);
                self.warm(now.at)
            }
            Launch::Restart => {
                self.record(ServerState::Running, now, out);
                self.running(now)
            }
        }
    }

    fn launch_failed(&mut self, launch: Launch, detail: String, now: Now, out: &mut Vec<Action>) -> Phase {
        match launch {
            Launch::First => {
                out.push(Action::ReleaseTicket);
                out.push(Action::AnswerPlacement(Err(PlaceFailure::Failed(detail.clone()))));
                self.end(ServerState::Failed, detail, now, out)
            }
            Launch::Warm => {
                out.push(Action::ReleaseTicket);
                self.end(ServerState::Failed, format!("its warm start failed: {detail}"), now, out)
            }
            Launch::Restart => self.restart(detail, now, out),
        }
    }

    fn launch_stopped(
        &mut self,
        launch: Launch,
        reason: StopReason,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Phase {
        match launch {
            Launch::First => {
                out.push(Action::ReleaseTicket);
                out.push(Action::AnswerPlacement(Err(PlaceFailure::Stopped(reason))));
            }
            Launch::Warm => out.push(Action::ReleaseTicket),
            Launch::Restart => {}
        }
        self.stopped(reason, now, out)
    }

    fn warm(&self, since: Instant) -> Phase {
        let recycle = self.policy.recycle_after;
        Phase::Warm { since, recycle_at: (!recycle.is_zero()).then(|| since + recycle) }
    }

    fn running(&self, now: Now) -> Phase {
        let overrun = self.entry.ends_at + self.policy.end_grace.as_millis() as u64;
        Phase::Running { overrun_at: now.at + Duration::from_millis(overrun.saturating_sub(now.wall_ms)) }
    }

    /// It died early (or a restart failed): start it again if the policy allows.
    fn restart(&mut self, reason: String, now: Now, out: &mut Vec<Action>) -> Phase {
        if !self.may_restart(now) {
            let detail = format!(
                "{reason}; no restart left ({} allowed within {})",
                self.policy.restart_attempts,
                mm_shared::duration::format(self.policy.restart_interval)
            );
            return self.end(ServerState::Failed, detail, now, out);
        }
        self.entry.restarts += 1;
        self.entry.detail = format!("restart {}: {reason}", self.entry.restarts);
        out.push(Action::Restarting { restarts: self.entry.restarts, reason });
        Phase::RestartDelay { until: now.at + self.policy.restart_delay }
    }

    /// Does the restart policy allow one more restart now? (Records it if so.)
    fn may_restart(&mut self, now: Now) -> bool {
        let interval = self.policy.restart_interval;
        while self.restarts.front().is_some_and(|at| now.at.saturating_duration_since(*at) > interval) {
            self.restarts.pop_front();
        }
        if self.restarts.len() < self.policy.restart_attempts as usize && now.wall_ms < self.entry.ends_at {
            self.restarts.push_back(now.at);
            true
        } else {
            false
        }
    }

    fn stopped(&mut self, reason: StopReason, now: Now, out: &mut Vec<Action>) -> Phase {
        let state = self.entry.state;
        let placed = matches!(state, ServerState::Ready | ServerState::Running | ServerState::Warm);
        match reason {
            // Only a server handed to its match (or warm) is worth leaving for the next start.
            StopReason::Keep if placed && self.handle.is_some() => {
                out.push(Action::Finish(Finish::Kept));
                Phase::Done
            }
            StopReason::Keep | StopReason::Shutdown => {
                let detail = if state == ServerState::Warm {
                    "stopped while warm: its node shut down"
                } else {
                    "stopped early: its node shut down"
                };
                self.end(ServerState::Complete, detail.to_owned(), now, out)
            }
            StopReason::Released => {
                let detail = "released: its match was not committed (orchestrator.release)".to_owned();
                self.end(ServerState::Complete, detail, now, out)
            }
            StopReason::Abort => {
                let detail = "the placement gave up before the server was ready".to_owned();
                self.end(ServerState::Failed, detail, now, out)
            }
        }
    }

    fn end(&mut self, state: ServerState, detail: String, now: Now, out: &mut Vec<Action>) -> Phase {
        self.stop_instance(out);
        self.entry.state = state;
        self.entry.detail = detail;
        self.entry.updated_at = now.wall_ms;
        out.push(Action::Finish(Finish::Ended(Box::new(self.entry.clone()))));
        Phase::Done
    }

    fn record(&mut self, state: ServerState, now: Now, out: &mut Vec<Action>) {
        self.entry.state = state;
        self.entry.updated_at = now.wall_ms;
        out.push(Action::Record(self.entry.clone()));
    }

    fn stop_instance(&mut self, out: &mut Vec<Action>) {
        if let Some(handle) = self.handle.take() {
            out.push(Action::StopInstance(handle));
        }
    }

    fn remove_instance(&mut self, out: &mut Vec<Action>) {
        if let Some(handle) = self.handle.take() {
            out.push(Action::RemoveInstance(handle));
        }
    }
}

fn exited_before_ready(code: Option<i64>, logs: &str) -> String {
    format!("the game server exited ({}) before it was ready{}", describe_code(code), quote_logs(logs))
}

fn died_early(code: Option<i64>, logs: &str) -> String {
    format!("it exited ({}) before its game ended{}", describe_code(code), quote_logs(logs))
}

pub fn describe_code(code: Option<i64>) -> String {
    match code {
        Some(code) if code < 0 => format!("killed by signal {}", -code),
        Some(code) => format!("exit code {code}"),
        None => "exit code unknown".to_owned(),
    }
}

pub fn quote_logs(logs: &str) -> String {
    let last = logs.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("");
    if last.is_empty() { String::new() } else { format!("; its last log line: {}", last.trim()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::SplitMix;

    const WALL: u64 = 1_700_000_000_000;
    const ADDRESS: &str = "127.0.0.1:20001";

    fn policy() -> Policy {
        Policy {
            start_timeout: Duration::from_secs(5),
            restart_attempts: 2,
            restart_interval: Duration::from_secs(60),
            restart_delay: Duration::from_millis(250),
            end_grace: Duration::from_secs(5),
            join_timeout: Duration::from_secs(15),
            recycle_after: Duration::from_secs(600),
        }
    }

    fn entry(game_id: &str) -> ServerEntry {
        ServerEntry {
            game_id: game_id.to_owned(),
            match_id: "m1".to_owned(),
            address: ADDRESS.to_owned(),
            secret: "s".to_owned(),
            ends_at: WALL + 30_000,
            ..ServerEntry::default()
        }
    }

    fn warm_entry() -> ServerEntry {
        ServerEntry {
            game_id: "w1".to_owned(),
            warm_id: "w1".to_owned(),
            address: ADDRESS.to_owned(),
            ..ServerEntry::default()
        }
    }

    fn assignment() -> Assignment {
        Assignment {
            game_id: "g-match".to_owned(),
            match_id: "match".to_owned(),
            player_ids: vec!["p1".to_owned()],
            secret: "match-secret".to_owned(),
            ends_at: WALL + 30_000,
        }
    }

    /// A machine and a clock it is driven with.
    struct Run {
        machine: Machine,
        t0: Instant,
        ms: u64,
    }

    impl Run {
        fn new(begin: Begin, entry: ServerEntry, handle: Option<&str>) -> Self {
            let machine = Machine::new(policy(), begin, entry, 20001, handle.map(str::to_owned));
            Self { machine, t0: Instant::now(), ms: 0 }
        }

        fn now(&self) -> Now {
            Now { at: self.t0 + Duration::from_millis(self.ms), wall_ms: WALL + self.ms }
        }

        fn advance(&mut self, ms: u64) {
            self.ms += ms;
        }

        fn step(&mut self, event: Event) -> Vec<Action> {
            let now = self.now();
            self.machine.step(event, now)
        }

        /// Steps and returns the actions' kinds with their key data, for compact checks.
        fn kinds(&mut self, event: Event) -> Vec<String> {
            self.step(event).iter().map(kind).collect()
        }

        /// Begin → started as `handle` → healthy.
        fn healthy(&mut self, handle: &str) -> Vec<Action> {
            self.step(Event::Begin);
            self.step(Event::Started(Ok(handle.to_owned())));
            self.step(Event::Probed(true))
        }

        fn running(&mut self, handle: &str) {
            self.healthy(handle);
            self.step(Event::Answered(true));
            assert!(matches!(self.machine.phase(), Phase::Running { .. }));
        }
    }

    fn kind(action: &Action) -> String {
        match action {
            Action::Record(entry) => format!("record {}", entry.state.as_str()),
            Action::Track(entry) => format!("track {}", entry.game_id),
            Action::CreateEntry(entry) => format!("create {} {}", entry.game_id, entry.state.as_str()),
            Action::DeleteEntry(key) => format!("delete {key}"),
            Action::AnswerPlacement(Ok(address)) => format!("answer {address}"),
            Action::AnswerPlacement(Err(failure)) => format!("answer {failure:?}"),
            Action::AnswerClaim(Ok(address)) => format!("claimed {address}"),
            Action::AnswerClaim(Err(failure)) => format!("claim {failure:?}"),
            Action::StopInstance(handle) => format!("stop {handle}"),
            Action::RemoveInstance(handle) => format!("remove {handle}"),
            Action::FetchLogs(handle) => format!("logs {handle}"),
            Action::ExitCode { handle, .. } => format!("exit code {handle}"),
            Action::Assign { address, assignment } => format!("assign {} at {address}", assignment.match_id),
            Action::Restarting { restarts, .. } => format!("restart {restarts}"),
            Action::Finish(Finish::Kept) => "kept".to_owned(),
            Action::Finish(Finish::Ended(entry)) => format!("end {}", entry.state.as_str()),
            other => format!("{other:?}"),
        }
    }

    fn ended(actions: &[Action]) -> ServerEntry {
        match actions.last() {
            Some(Action::Finish(Finish::Ended(entry))) => (**entry).clone(),
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[test]
    fn a_placement_starts_probes_answers_and_runs() {
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        assert_eq!(run.kinds(Event::Begin), ["Start"]);
        assert_eq!(run.kinds(Event::Started(Ok("h1".into()))), ["record starting", "Probe"]);
        assert_eq!(run.machine.entry().handle, "h1");
        // Not healthy yet: probed again after the interval.
        assert!(run.kinds(Event::Probed(false)).is_empty());
        assert_eq!(run.machine.wake_at(), Some(run.now().at + PROBE_INTERVAL));
        run.advance(10);
        assert_eq!(run.kinds(Event::Timer), ["Probe"]);
        assert_eq!(run.machine.wake_at(), None, "no timer while a probe is in flight");
        let ready = run.kinds(Event::Probed(true));
        assert_eq!(ready, ["ReleaseTicket", "record ready", &format!("answer {ADDRESS}")]);
        assert_eq!(run.kinds(Event::Answered(true)), ["record running"]);
        // Stopped when its game is over and its grace too.
        let overrun = run.t0 + Duration::from_millis(run.ms) + Duration::from_millis(30_000 - run.ms + 5_000);
        assert_eq!(run.machine.wake_at(), Some(overrun));
        // Exits of other handles change nothing.
        assert!(run.kinds(Event::Exited { handle: "old".into(), code: Some(1) }).is_empty());
        run.advance(35_000);
        let end = run.step(Event::Timer);
        assert_eq!(end.iter().map(kind).collect::<Vec<_>>(), ["stop h1", "end complete"]);
        assert!(ended(&end).detail.contains("did not exit by itself"));
        assert!(run.machine.is_done());
    }

    #[test]
    fn a_taken_port_moves_the_start_until_the_tries_run_out() {
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.step(Event::Begin);
        assert_eq!(run.kinds(Event::Started(Err(DriverError::PortTaken(20001)))), ["ChangePort"]);
        assert_eq!(run.kinds(Event::PortChanged(Some((20002, "127.0.0.1:20002".into())))), ["Start"]);
        assert_eq!((run.machine.port(), run.machine.entry().address.as_str()), (20002, "127.0.0.1:20002"));
        run.step(Event::Started(Ok("h2".into())));
        // The server itself says the port was taken (another program bound it first).
        assert_eq!(
            run.kinds(Event::Exited { handle: "h2".into(), code: None }),
            ["CancelOp", "exit code h2"]
        );
        assert_eq!(run.kinds(Event::ExitCode(Some(exit_codes::ADDRESS_IN_USE))), ["remove h2", "ChangePort"]);
        run.step(Event::PortChanged(Some((20003, "127.0.0.1:20003".into()))));
        let out = run.step(Event::Started(Err(DriverError::PortTaken(20003))));
        let kinds: Vec<String> = out.iter().map(kind).collect();
        assert_eq!(kinds[0], "ReleaseTicket");
        assert!(kinds[1].contains("port 20003 is taken on the host (3 ports tried)"), "{kinds:?}");
        assert_eq!(ended(&out).state, ServerState::Failed);
        // No other port at all.
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.step(Event::Begin);
        run.step(Event::Started(Err(DriverError::PortTaken(20001))));
        let out = run.step(Event::PortChanged(None));
        assert!(ended(&out).detail.contains("no other port is free"), "{out:?}");
    }

    #[test]
    fn a_start_that_never_gets_healthy_or_dies_fails_with_its_last_log_line() {
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.step(Event::Begin);
        run.step(Event::Started(Ok("h1".into())));
        run.advance(5_000);
        assert_eq!(run.kinds(Event::Probed(false)), ["logs h1"]);
        let out = run.step(Event::Logs("first\nsecond line\n\n".into()));
        let kinds: Vec<String> = out.iter().map(kind).collect();
        assert_eq!((kinds[0].as_str(), kinds[1].as_str()), ("stop h1", "ReleaseTicket"));
        let detail = ended(&out).detail;
        assert_eq!(
            detail,
            "the game server's /healthz did not answer within 5s; its last log line: second line"
        );
        assert!(matches!(&out[2], Action::AnswerPlacement(Err(PlaceFailure::Failed(d))) if *d == detail));

        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.step(Event::Begin);
        run.step(Event::Started(Ok("h1".into())));
        run.step(Event::Exited { handle: "h1".into(), code: Some(2) });
        assert_eq!(run.kinds(Event::ExitCode(Some(2))), ["logs h1"]);
        let out = run.step(Event::Logs("panicked".into()));
        assert_eq!(kind(&out[0]), "remove h1");
        assert!(
            ended(&out)
                .detail
                .contains("exited (exit code 2) before it was ready; its last log line: panicked")
        );
    }

    #[test]
    fn a_stop_interrupts_a_start_still_queued_and_a_late_answer_aborts() {
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.step(Event::Begin);
        let out = run.step(Event::Stop(StopReason::Shutdown));
        let kinds: Vec<String> = out.iter().map(kind).collect();
        assert_eq!(kinds, ["CancelStart", "ReleaseTicket", "answer Stopped(Shutdown)", "end complete"]);
        assert_eq!(ended(&out).detail, "stopped early: its node shut down");

        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.healthy("h1");
        let out = run.step(Event::Answered(false));
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["stop h1", "end failed"]);
        assert_eq!(ended(&out).detail, "the placement gave up before the server was ready");

        // A stop while probing gives the probe up and stops what started.
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.step(Event::Begin);
        run.step(Event::Started(Ok("h1".into())));
        let out = run.kinds(Event::Stop(StopReason::Abort));
        assert_eq!(out, ["CancelOp", "ReleaseTicket", "answer Stopped(Abort)", "stop h1", "end failed"]);
    }

    #[test]
    fn an_early_death_restarts_it_on_its_port_until_the_policy_gives_up() {
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.running("h1");
        run.advance(1_000);
        assert_eq!(run.kinds(Event::Exited { handle: "h1".into(), code: Some(-9) }), ["exit code h1"]);
        assert_eq!(run.kinds(Event::ExitCode(Some(-9))), ["logs h1"]);
        let out = run.step(Event::Logs("oops".into()));
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["remove h1", "restart 1"]);
        let Action::Restarting { reason, .. } = &out[1] else { unreachable!() };
        assert_eq!(reason, "it exited (killed by signal 9) before its game ended; its last log line: oops");
        assert_eq!(run.machine.wake_at(), Some(run.now().at + Duration::from_millis(250)));
        run.advance(250);
        assert_eq!(run.kinds(Event::Timer), ["Start"]);
        run.step(Event::Started(Ok("h2".into())));
        assert_eq!(run.kinds(Event::Probed(true)), ["record running"]);
        let entry = run.machine.entry();
        assert_eq!((entry.restarts, entry.address.as_str(), entry.secret.as_str()), (1, ADDRESS, "s"));
        assert!(entry.detail.starts_with("restart 1: it exited"), "{}", entry.detail);
        // The old attempt's exit changes nothing.
        assert!(run.kinds(Event::Exited { handle: "h1".into(), code: None }).is_empty());

        // A restart whose start fails counts as a death too; then the policy gives up.
        run.step(Event::Exited { handle: "h2".into(), code: Some(1) });
        run.step(Event::ExitCode(Some(1)));
        assert_eq!(run.kinds(Event::Logs(String::new())), ["remove h2", "restart 2"]);
        run.advance(250);
        run.step(Event::Timer);
        let out = run.step(Event::Started(Err(DriverError::Failed("no".into()))));
        let end = ended(&out);
        assert_eq!(
            (end.state, end.detail.as_str()),
            (ServerState::Failed, "no; no restart left (2 allowed within 1m)")
        );
    }

    #[test]
    fn restarts_outside_the_window_do_not_count_and_none_come_after_the_end() {
        let mut run = Run::new(Begin::Adopted, entry("g1"), Some("h1"));
        run.machine.entry.ends_at = WALL + 10 * 60_000;
        run.machine.entry.state = ServerState::Running;
        assert!(run.kinds(Event::Begin).is_empty(), "adopted: supervised as it is");
        for (n, handle) in ["h1", "h2", "h3", "h4"].into_iter().enumerate() {
            run.step(Event::Exited { handle: handle.into(), code: Some(1) });
            run.step(Event::ExitCode(Some(1)));
            let expected = [format!("remove {handle}"), format!("restart {}", n + 1)];
            assert_eq!(run.kinds(Event::Logs(String::new())), expected, "restarts a minute apart");
            run.advance(61_000);
            run.step(Event::Timer);
            run.step(Event::Started(Ok(format!("h{}", n + 2))));
            run.step(Event::Probed(true));
        }
        // A death after the game's end is its end, not a crash: its last lines are read
        // for the result.
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.running("h1");
        run.advance(30_000);
        run.step(Event::Exited { handle: "h1".into(), code: Some(0) });
        assert_eq!(run.kinds(Event::ExitCode(Some(0))), ["logs h1"]);
        let out = run.step(Event::Logs("INFO game ended".into()));
        assert!(matches!(&out[0], Action::Result(Err(NoResult::Missing))), "{out:?}");
        let end = ended(&out);
        assert_eq!(
            (end.state, end.detail.as_str()),
            (ServerState::Complete, "its game ended (exit code 0); no result: its output has no result line")
        );
    }

    #[test]
    fn a_game_that_ended_publishes_the_result_its_server_wrote() {
        let players: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
        let mut run =
            Run::new(Begin::Place, ServerEntry { player_ids: players.clone(), ..entry("g1") }, None);
        run.running("h1");
        run.advance(31_000);
        run.step(Event::Exited { handle: "h1".into(), code: Some(0) });
        assert_eq!(run.kinds(Event::ExitCode(Some(0))), ["logs h1"]);
        let line = format!(
            r#"{}{{"gameId":"g1","matchId":"m1","teams":[["p0","p1"],["p2","p3"]],"winner":0}}"#,
            mm_shared::protocol::game_server::RESULT_PREFIX
        );
        let out = run.step(Event::Logs(format!("INFO game ended\n{line}\nINFO game-server stopped")));
        let expected = GameEnded {
            game_id: "g1".into(),
            match_id: "m1".into(),
            teams: vec![players[..2].to_vec(), players[2..].to_vec()],
            winner: 0,
        };
        assert_eq!(out[0], Action::Result(Ok(expected)));
        assert_eq!(out.iter().skip(1).map(kind).collect::<Vec<_>>(), ["stop h1", "end complete"]);
        assert_eq!(ended(&out).detail, "its game ended (exit code 0); side 0 won");
        assert!(run.machine.is_done());
    }

    #[test]
    fn a_server_that_nobody_joined_ended_itself_and_is_not_restarted() {
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.running("h1");
        run.step(Event::Exited { handle: "h1".into(), code: None });
        let out = run.step(Event::ExitCode(Some(exit_codes::NO_PLAYERS)));
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["JoinTimedOut", "stop h1", "end complete"]);
        let end = ended(&out);
        assert!(end.detail.contains("no player joined within 15s (orchestrator.game.join_timeout)"));
        assert_eq!(end.restarts, 0);
    }

    #[test]
    fn stops_end_it_or_keep_it_as_their_reason_says() {
        for (reason, expected, detail) in [
            (StopReason::Keep, "kept", ""),
            (StopReason::Shutdown, "end complete", "stopped early: its node shut down"),
            (StopReason::Released, "end complete", "released: its match was not committed"),
        ] {
            let mut run = Run::new(Begin::Place, entry("g1"), None);
            run.running("h1");
            let out = run.step(Event::Stop(reason));
            assert_eq!(kind(out.last().expect("an end")), expected, "{reason:?}");
            if let Action::Finish(Finish::Ended(entry)) = &out[out.len() - 1] {
                assert!(entry.detail.starts_with(detail), "{}", entry.detail);
                assert_eq!(kind(&out[0]), "stop h1");
            }
        }
        // Waiting to restart there is nothing to keep.
        let mut run = Run::new(Begin::Place, entry("g1"), None);
        run.running("h1");
        run.step(Event::Exited { handle: "h1".into(), code: Some(1) });
        run.step(Event::ExitCode(Some(1)));
        run.step(Event::Logs(String::new()));
        assert_eq!(run.kinds(Event::Stop(StopReason::Keep)), ["end complete"]);
    }

    #[test]
    fn a_warm_server_joins_the_pool_and_a_claim_hands_it_its_match() {
        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        let warm = run.healthy("h1");
        assert_eq!(warm.iter().map(kind).collect::<Vec<_>>(), ["ReleaseTicket", "record warm", "EnterPool"]);
        assert_eq!(run.machine.wake_at(), Some(run.now().at + Duration::from_secs(600)), "recycled some day");
        run.advance(1_000);
        let out = run.step(Event::Claim(assignment()));
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["track g-match", "create g-match pending"]);
        let Action::CreateEntry(created) = &out[1] else { unreachable!() };
        assert_eq!(
            (
                created.match_id.as_str(),
                created.secret.as_str(),
                created.warm_id.as_str(),
                created.handle.as_str()
            ),
            ("match", "match-secret", "w1", "h1")
        );
        assert_eq!(run.kinds(Event::Created(Ok(()))), [format!("assign match at {ADDRESS}")]);
        let out = run.kinds(Event::Assigned(Ok(())));
        assert_eq!(out, ["record running", &format!("claimed {ADDRESS}"), "delete w1"]);
        let entry = run.machine.entry();
        assert_eq!((entry.game_id.as_str(), entry.state), ("g-match", ServerState::Running));
        assert!(matches!(run.machine.phase(), Phase::Running { .. }));
        // Never a second match.
        assert_eq!(run.kinds(Event::Claim(assignment())), ["claim Gone"]);
    }

    #[test]
    fn a_duplicate_claim_leaves_it_warm_and_a_failed_assignment_ends_it() {
        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        run.healthy("h1");
        run.step(Event::Claim(assignment()));
        let out = run.kinds(Event::Created(Err(CreateFailure::Exists)));
        assert_eq!(out, ["track w1", "ReturnToPool", "claim Duplicate"]);
        assert_eq!(run.machine.entry(), &{
            let mut warm = warm_entry();
            warm.state = ServerState::Warm;
            warm.handle = "h1".into();
            warm.updated_at = WALL;
            warm
        });
        assert!(matches!(run.machine.phase(), Phase::Warm { .. }));

        run.step(Event::Claim(assignment()));
        run.step(Event::Created(Ok(())));
        let out = run.step(Event::Assigned(Err("connection refused".into())));
        let kinds: Vec<String> = out.iter().map(kind).collect();
        assert_eq!(
            kinds[..4],
            ["delete g-match", "claim Failed(\"connection refused\")", "track w1", "stop h1"]
        );
        let end = ended(&out);
        assert_eq!((end.game_id.as_str(), end.state), ("w1", ServerState::Failed), "ends under its warm key");
    }

    #[test]
    fn a_warm_server_that_dies_is_never_handed_out() {
        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        run.healthy("h1");
        let out = run.step(Event::Exited { handle: "h1".into(), code: Some(-9) });
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["LeavePool", "stop h1", "end failed"]);
        assert_eq!(ended(&out).detail, "it exited while warm (killed by signal 9)");
        // A claim that took it just before hears it is gone.
        assert_eq!(run.kinds(Event::Claim(assignment())), ["claim Gone"]);
        // A warm start that fails ends it (the pool starts another).
        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        run.step(Event::Begin);
        let out = run.step(Event::Started(Err(DriverError::ImageMissing { image: "i".into() })));
        assert_eq!(kind(&out[0]), "ReleaseTicket");
        assert!(ended(&out).detail.starts_with("its warm start failed: image i"));
    }

    #[test]
    fn an_unclaimed_server_is_recycled_unless_a_claim_came_first() {
        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        run.healthy("h1");
        run.advance(600_000);
        assert_eq!(run.kinds(Event::Timer), ["LeavePool"]);
        let out = run.step(Event::LeftPool(true));
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["Recycled", "stop h1", "end complete"]);
        assert_eq!(ended(&out).detail, "recycled: unclaimed for 10m (orchestrator.pool.recycle_after)");

        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        run.healthy("h1");
        run.advance(600_000);
        run.step(Event::Timer);
        assert!(run.kinds(Event::LeftPool(false)).is_empty());
        assert_eq!(run.machine.wake_at(), None, "claimed meanwhile: no recycling");
        assert_eq!(run.kinds(Event::Claim(assignment())), ["track g-match", "create g-match pending"]);
    }

    #[test]
    fn a_warm_server_stops_with_its_node_or_is_kept_and_adopted_warm() {
        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        run.healthy("h1");
        let out = run.step(Event::Stop(StopReason::Shutdown));
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["LeavePool", "stop h1", "end complete"]);
        assert_eq!(ended(&out).detail, "stopped while warm: its node shut down");
        let mut run = Run::new(Begin::Warm, warm_entry(), None);
        run.healthy("h1");
        assert_eq!(run.kinds(Event::Stop(StopReason::Keep)), ["LeavePool", "kept"]);

        let mut adopted = warm_entry();
        adopted.state = ServerState::Warm;
        let mut run = Run::new(Begin::Adopted, adopted, Some("h1"));
        assert_eq!(run.kinds(Event::Begin), ["EnterPool"]);
        assert!(matches!(run.machine.phase(), Phase::Warm { .. }));
    }

    /// Every event, any time: the machine never answers a placement twice, answers every
    /// claim exactly once, stops each handle at most once, ends once and then does nothing
    /// but refuse claims, and never hands out a server that exited while warm.
    #[test]
    fn property_random_events_keep_the_promises() {
        let mut rng = SplitMix(0x51ee9);
        for round in 0..3_000 {
            let begin = [Begin::Place, Begin::Warm, Begin::Adopted][rng.below(3) as usize];
            let mut start = if begin == Begin::Warm { warm_entry() } else { entry("g1") };
            if begin == Begin::Adopted {
                start.state = if rng.below(2) == 0 { ServerState::Warm } else { ServerState::Running };
            }
            let handle = (begin == Begin::Adopted).then_some("h0");
            let mut run = Run::new(begin, start, handle);
            let mut actions = run.step(Event::Begin);
            let (mut claims, mut answered_claims, mut placements) = (0, 0, 0);
            let mut stopped: Vec<String> = Vec::new();
            let mut finished = 0;
            let mut died_warm = false;
            let mut handles = 0;
            for step in 0..60 {
                for action in &actions {
                    match action {
                        Action::AnswerPlacement(_) => placements += 1,
                        Action::AnswerClaim(result) => {
                            answered_claims += 1;
                            assert!(
                                !(died_warm && result.is_ok()),
                                "round {round}: a dead warm server handed out"
                            );
                        }
                        Action::StopInstance(h) | Action::RemoveInstance(h) => {
                            assert!(!stopped.contains(h), "round {round} step {step}: {h} removed twice");
                            stopped.push(h.clone());
                        }
                        Action::Finish(_) => finished += 1,
                        _ => {}
                    }
                }
                assert!(placements <= 1, "round {round}: the placement answered twice");
                assert!(finished <= 1, "round {round}: ended twice");
                if finished == 1 {
                    assert!(run.machine.is_done());
                }
                let current = run.machine.handle().map(str::to_owned);
                let warm = matches!(run.machine.phase(), Phase::Warm { .. } | Phase::Recycling { .. });
                let event = match rng.below(16) {
                    0 => Event::Started(Ok({
                        handles += 1;
                        format!("h{handles}")
                    })),
                    1 => Event::Started(Err(DriverError::PortTaken(20001))),
                    2 => Event::Probed(rng.below(2) == 0),
                    3 => Event::Timer,
                    4 => {
                        let handle = current.clone().unwrap_or_else(|| "other".to_owned());
                        if warm && current.is_some() {
                            died_warm = true;
                        }
                        Event::Exited { handle, code: Some(rng.below(5) as i64) }
                    }
                    5 => Event::ExitCode(Some(rng.below(5) as i64)),
                    6 => Event::Logs("x".into()),
                    7 => Event::Stop(
                        [StopReason::Abort, StopReason::Shutdown, StopReason::Keep, StopReason::Released]
                            [rng.below(4) as usize],
                    ),
                    8 => Event::Answered(rng.below(2) == 0),
                    9 => {
                        claims += 1;
                        Event::Claim(assignment())
                    }
                    10 => Event::Created(if rng.below(3) == 0 { Err(CreateFailure::Exists) } else { Ok(()) }),
                    11 => Event::Assigned(if rng.below(3) == 0 { Err("x".into()) } else { Ok(()) }),
                    12 => Event::LeftPool(rng.below(2) == 0),
                    13 => Event::PortChanged(Some((20002, "127.0.0.1:20002".into()))),
                    14 => Event::PortChanged(None),
                    _ => {
                        run.advance(rng.below(700_000));
                        Event::Timer
                    }
                };
                run.advance(rng.below(100));
                actions = run.step(event);
            }
            for action in &actions {
                if let Action::AnswerClaim(_) = action {
                    answered_claims += 1;
                }
            }
            // A claim in flight (Claiming/Assigning) is answered when its result comes.
            let in_flight =
                usize::from(matches!(run.machine.phase(), Phase::Claiming { .. } | Phase::Assigning { .. }));
            assert_eq!(answered_claims + in_flight, claims, "round {round}: every claim answered once");
        }
    }
}
