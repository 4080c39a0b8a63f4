//! One harness run: starts the loops, and at the end drains, stops and reports.
//!
//! ```text
//! start:  fleet join (or standalone settings) → spawner → compositor → stats loop
//! run:    until the duration passes or a signal arrives
//! finish: stop dispatching and spawning → let busy players finish (drain) → abort the
//!         rest and close the pool → leave the fleet → final stats → report
//! ```
//!
//! Loops, each its own task:
//! - *spawner*: brings the pool to its target at `spawn_interval`, retires idle players
//!   when the target shrinks;
//! - *compositor*: every `tick`, plans executions from the rates and idle count and
//!   dispatches them (the pure part is `compositor.rs`); measures tick lag;
//! - *stats*: every `stats_interval`, snapshots the numbers, exports metrics, publishes
//!   `harness.stats.<instance>`, redraws the progress line;
//! - *fleet* (with NATS): membership, heartbeat and control (`fleet.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mm_shared::protocol::HarnessStats;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::compositor::{Compositor, dispatch};
use crate::config::{HarnessSection, Progress};
use crate::fleet::{Fleet, Member, Settings, StatsPublisher};
use crate::http::{Gateway, GatewayUrl};
use crate::player::{self, Context};
use crate::progress::ProgressLine;
use crate::report::{Report, RunFacts};
use crate::scenario::{SCENARIOS, Scenario};
use crate::stats::PlayerState;
use crate::timeline::Recorder;

/// How long the end of a run waits for player tasks to end after aborting them.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// How a run is started.
pub struct Options {
    /// NATS for the fleet; `None` runs standalone.
    pub nats: Option<async_nats::Client>,
    /// Players start with a made-up token instead of logging in (memory benchmarks).
    pub preseeded: bool,
    /// When to draw the live progress line.
    pub progress: Progress,
}

/// Who this instance is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance: String,
    pub host: String,
}

impl Identity {
    /// `harness.instance`, or `<host>-<pid>-<4 random hex>`.
    pub fn from_config(config: &HarnessSection) -> Self {
        let host = hostname();
        let instance = config.instance.clone().unwrap_or_else(|| {
            let host: String = host
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
                .take(40)
                .collect();
            format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
        });
        Self { instance, host }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A run in progress.
pub struct Run {
    pub context: Arc<Context>,
    pub identity: Identity,
    settings: watch::Receiver<Settings>,
    /// The same channel's sending side, for standalone changes ([`Run::set_rates`]).
    settings_tx: watch::Sender<Settings>,
    started: Instant,
    started_at: u64,
    /// Stops the spawner and the compositor (first step of the end).
    stop_dispatch: CancellationToken,
    /// Stops the stats loop and the fleet (last step).
    stop_rest: CancellationToken,
    loops: Vec<JoinHandle<()>>,
    /// The fleet loop; it ends with the stages of the fleet plans it followed.
    fleet: Option<JoinHandle<Vec<crate::stages::FleetStageReport>>>,
    publisher: Option<StatsPublisher>,
    latest: Arc<Mutex<HarnessStats>>,
    progress: Arc<Mutex<ProgressLine>>,
    /// The run over time, for the report's charts.
    timeline: Arc<Mutex<Recorder>>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ValidationError),
    #[error("config key `harness.gateway`: {0}")]
    Gateway(String),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::JoinError),
}

impl Run {
    /// Starts every loop. Players appear at the spawn rate from here on.
    pub async fn start(
        config: HarnessSection,
        identity: Identity,
        options: Options,
    ) -> Result<Run, StartError> {
        config.validate()?;
        let url = GatewayUrl::parse(&config.gateway).map_err(StartError::Gateway)?;
        let gateway = Gateway::new(url, &config.http);
        crate::fleet::describe_metrics();
        let context = Arc::new(Context::new(config, gateway, &identity.instance, options.preseeded));
        // `players` and `rates`, or the start of the stage plan.
        let standalone = Settings {
            target: context.own.target(),
            rates: context.own.rates(),
            ..Settings::standalone(context.config.players, context.config.rates)
        };
        let (settings_tx, settings) = watch::channel(standalone);
        let stop_dispatch = CancellationToken::new();
        let stop_rest = CancellationToken::new();
        let started_at = mm_shared::protocol::now_ms();

        let in_fleet = options.nats.is_some();
        let (fleet, publisher) = match options.nats {
            Some(nats) => {
                let member =
                    Member { instance: identity.instance.clone(), host: identity.host.clone(), started_at };
                let (fleet, publisher) =
                    Fleet::join(nats, member, context.clone(), settings_tx.clone()).await?;
                let stop = stop_rest.clone();
                let task = tokio::spawn(fleet.run(stop));
                (Some(task), Some(publisher))
            }
            None => (None, None),
        };
        context.pool.set_target(settings.borrow().target);
        tracing::info!(
            instance = %identity.instance,
            gateway = %context.gateway.url().as_str(),
            target = settings.borrow().target,
            fleet = fleet.is_some(),
            "harness run starting"
        );

        let mut run = Run {
            context: context.clone(),
            identity,
            settings: settings.clone(),
            settings_tx,
            started: Instant::now(),
            started_at,
            stop_dispatch: stop_dispatch.clone(),
            stop_rest: stop_rest.clone(),
            loops: Vec::new(),
            fleet,
            publisher: publisher.clone(),
            latest: Arc::default(),
            progress: Arc::new(Mutex::new(ProgressLine::new(options.progress))),
            timeline: Arc::new(Mutex::new(Recorder::new(context.config.fleet.stats_interval))),
        };
        run.loops.push(tokio::spawn(apply_targets(context.clone(), settings.clone(), stop_dispatch.clone())));
        run.loops.push(tokio::spawn(spawn_players(context.clone(), stop_dispatch.clone())));
        if !context.config.stages.is_empty() {
            let settings_tx = (!in_fleet).then(|| run.settings_tx.clone());
            run.loops.push(tokio::spawn(follow_stages(
                context.clone(),
                run.started,
                settings_tx,
                stop_dispatch.clone(),
            )));
        }
        run.loops.push(tokio::spawn(compose(context.clone(), settings.clone(), stop_dispatch)));
        run.loops.push(tokio::spawn(report_stats(StatsLoop {
            context,
            settings,
            identity: run.identity.clone(),
            started: run.started,
            started_at,
            publisher,
            latest: run.latest.clone(),
            progress: run.progress.clone(),
            timeline: run.timeline.clone(),
            stop: stop_rest,
        })));
        Ok(run)
    }

    /// The settings in force now (target, rates, fleet).
    pub fn settings(&self) -> Settings {
        self.settings.borrow().clone()
    }

    /// Changes the rates of a standalone run (a fleet's rates come from
    /// `harness.control`, and the fleet would overwrite this on its next change).
    pub fn set_rates(&self, rates: [crate::config::Rate; SCENARIOS]) {
        self.settings_tx.send_modify(|settings| settings.rates = rates);
    }

    /// Changes the player target of a standalone run (see [`Run::set_rates`]).
    pub fn set_target(&self, target: u64) {
        self.settings_tx.send_modify(|settings| settings.target = target);
    }

    /// The latest stats snapshot (refreshed every `stats_interval`).
    pub fn latest(&self) -> HarnessStats {
        self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Runs until `duration` has passed since the start or `shutdown` fires.
    /// A `duration` too long for the clock (validation caps it well below) runs until
    /// `shutdown`.
    pub async fn run_for(&self, duration: Duration, shutdown: &CancellationToken) {
        let end = self.started.checked_add(duration).map(tokio::time::Instant::from_std);
        let elapsed = async {
            match end {
                Some(end) => tokio::time::sleep_until(end).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = elapsed => {}
            () = shutdown.cancelled() => tracing::info!("stopping early: the report covers the run so far"),
        }
    }

    /// Ends the run and makes its report.
    pub async fn finish(mut self) -> Report {
        let context = self.context.clone();
        let duration = self.started.elapsed();
        self.stop_dispatch.cancel();
        let drain_start = tokio::time::Instant::now();
        while context.stats.players_in(PlayerState::Busy) > 0 && drain_start.elapsed() < context.config.drain
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        context.abort.cancel();
        context.pool.close();
        if tokio::time::timeout(STOP_DEADLINE, context.all_tasks_ended()).await.is_err() {
            tracing::warn!(left = context.tasks(), "player tasks still running after {STOP_DEADLINE:?}");
        }
        self.stop_rest.cancel();
        for task in self.loops.drain(..) {
            let _ = task.await;
        }
        let fleet_stages = match self.fleet.take() {
            Some(fleet) => fleet.await.unwrap_or_default(),
            None => Vec::new(),
        };
        self.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).finish();

        // Over the whole run, the actual rate is what was dispatched per second.
        let seconds = duration.as_secs_f64().max(1e-9);
        let actual = context.stats.dispatched_counts().map(|count| count as f64 / seconds);
        let settings = self.settings.borrow().clone();
        let snapshot = snapshot(&context, &self.identity, &settings, self.started_at, &actual);
        if let Some(publisher) = &self.publisher {
            publisher.publish(&snapshot).await;
        }
        let facts = RunFacts {
            instance: &self.identity.instance,
            host: &self.identity.host,
            gateway: context.gateway.url().as_str(),
            started_at: self.started_at,
            duration,
            target: settings.target,
            spawned: context.stats.spawned(),
            fleet_instances: settings.instances,
        };
        let errors: Vec<_> = Scenario::ALL.into_iter().map(|s| (s, context.stats.errors_of(s))).collect();
        let timeline = {
            let mut recorder = self.timeline.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            recorder.record(duration.as_secs_f64(), settings.target, &snapshot, true);
            recorder.timeline().clone()
        };
        let mut report = Report::build(&snapshot, &facts)
            .with_scenario_errors(&errors)
            .with_quality(context.quality.report())
            .with_timeline(timeline)
            .with_stages(crate::stages::report(&context.config.stages))
            .with_fleet_stages(fleet_stages);
        report.judge(context.config.max_error_rate, context.config.max_time_to_match_p99);
        report
    }
}

/// The stats message for this instance now.
fn snapshot(
    context: &Context,
    identity: &Identity,
    settings: &Settings,
    started_at: u64,
    actual: &[f64; SCENARIOS],
) -> HarnessStats {
    HarnessStats {
        instance: identity.instance.clone(),
        host: identity.host.clone(),
        started_at,
        target: settings.target,
        fleet_target: settings.fleet_target,
        ..context.stats.snapshot(actual)
    }
}

/// Moves this instance's own target and rates along the stage plan, every
/// [`crate::stages::STEP`]. A standalone run applies them itself (`settings`); in a fleet
/// the fleet loop does, so that a fleet target and control rates stay on top.
async fn follow_stages(
    context: Arc<Context>,
    started: Instant,
    settings: Option<watch::Sender<Settings>>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(crate::stages::STEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stage = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let config = &context.config;
        let Some(point) = crate::stages::point(&config.stages, config.rates, started.elapsed()) else {
            return;
        };
        if stage != Some(point.stage) {
            stage = Some(point.stage);
            let planned = &config.stages[point.stage];
            tracing::info!(
                stage = point.stage + 1,
                of = config.stages.len(),
                players = planned.players,
                duration = %mm_shared::duration::format(planned.duration),
                "stage starting"
            );
        }
        if context.own.set(point.target, point.rates)
            && let Some(settings) = &settings
        {
            settings.send_if_modified(|current| {
                let changed = current.target != point.target || current.rates != point.rates;
                current.target = point.target;
                current.rates = point.rates;
                changed
            });
        }
    }
}

/// Passes target changes (from the fleet) to the pool.
async fn apply_targets(
    context: Arc<Context>,
    mut settings: watch::Receiver<Settings>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = settings.changed() => {
                if changed.is_err() {
                    return;
                }
                let target = settings.borrow_and_update().target;
                context.pool.set_target(target);
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Keeps the pool at its target: at most one new player per `spawn_interval` (several
/// per wake-up when the interval is below the timer's millisecond), replacements for
/// players who left, and retirement of idle players when the target shrinks.
async fn spawn_players(context: Arc<Context>, stop: CancellationToken) {
    let interval = context.config.spawn_interval.max(Duration::from_nanos(1));
    let wake = interval.max(Duration::from_millis(1));
    // Never bank more than a second's worth of spawns: after a quiet spell, refilling
    // starts at the configured pace, not with a burst.
    let max_budget = (1.0 / interval.as_secs_f64()).max(1.0);
    loop {
        context.pool.retire_idle();
        if context.pool.deficit() == 0 {
            tokio::select! {
                () = context.pool.changed() => continue,
                () = stop.cancelled() => return,
            }
        }
        let mut budget = 1.0f64;
        let mut last = Instant::now();
        while context.pool.deficit() > 0 {
            while budget >= 1.0 {
                let Some(alive) = context.pool.claim_spawn() else { break };
                player::spawn(&context, alive);
                budget -= 1.0;
            }
            tokio::select! {
                () = tokio::time::sleep(wake) => {}
                () = stop.cancelled() => return,
            }
            let now = Instant::now();
            budget =
                (budget + now.duration_since(last).as_secs_f64() / interval.as_secs_f64()).min(max_budget);
            last = now;
            context.pool.retire_idle();
        }
    }
}

/// The compositor's clock: a tick every `tick` on a fixed grid, measuring how late each
/// one runs, and dispatching what the pure compositor plans.
async fn compose(context: Arc<Context>, mut settings: watch::Receiver<Settings>, stop: CancellationToken) {
    let tick = context.config.tick;
    let origin = tokio::time::Instant::now();
    let mut compositor = Compositor::new(settings.borrow_and_update().rates, Duration::ZERO);
    let mut scheduled = origin + tick;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(scheduled) => {}
            () = stop.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        context.stats.tick_lag(now.saturating_duration_since(scheduled));
        if settings.has_changed().unwrap_or(false) {
            compositor.set_rates(settings.borrow_and_update().rates);
        }
        let idle = context.pool.idle_count();
        let plan = compositor.tick(now.duration_since(origin), idle);
        let result = dispatch(&plan, |scenario| context.pool.give(scenario));
        context.stats.dispatched(&result.started, &result.starved);
        context.stats.set_rates(compositor.rates(), &compositor.desired_per_second(idle));
        // Stay on the grid; ticks missed entirely are skipped (the elapsed time of the
        // next one covers them).
        scheduled += tick;
        if scheduled <= now {
            let behind = now.duration_since(scheduled).as_nanos() / tick.as_nanos().max(1);
            scheduled += tick * u32::try_from(behind + 1).unwrap_or(u32::MAX);
        }
    }
}

struct StatsLoop {
    context: Arc<Context>,
    settings: watch::Receiver<Settings>,
    identity: Identity,
    started: Instant,
    started_at: u64,
    publisher: Option<StatsPublisher>,
    latest: Arc<Mutex<HarnessStats>>,
    progress: Arc<Mutex<ProgressLine>>,
    timeline: Arc<Mutex<Recorder>>,
    stop: CancellationToken,
}

/// Every `stats_interval`: snapshot, metrics, `harness.stats.<instance>`, progress line.
async fn report_stats(state: StatsLoop) {
    let context = &state.context;
    let mut ticker = tokio::time::interval(context.config.fleet.stats_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = (Instant::now(), context.stats.dispatched_counts(), 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = state.stop.cancelled() => return,
        }
        let now = Instant::now();
        let seconds = now.duration_since(previous.0).as_secs_f64().max(1e-3);
        let dispatched = context.stats.dispatched_counts();
        let actual: [f64; SCENARIOS] =
            std::array::from_fn(|index| dispatched[index].saturating_sub(previous.1[index]) as f64 / seconds);
        let settings = state.settings.borrow().clone();
        let snapshot = snapshot(context, &state.identity, &settings, state.started_at, &actual);
        let attempts: u64 = snapshot.scenarios.values().map(|s| s.attempted).sum();
        let per_second = attempts.saturating_sub(previous.2) as f64 / seconds;
        previous = (now, dispatched, attempts);
        context.stats.export(&snapshot, settings.target);
        context.quality.tick();
        state.timeline.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).record(
            state.started.elapsed().as_secs_f64(),
            settings.target,
            &snapshot,
            false,
        );
        state.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).draw(
            &snapshot,
            state.started.elapsed(),
            context.config.run_duration(),
            per_second,
        );
        if let Some(publisher) = &state.publisher {
            publisher.publish(&snapshot).await;
        }
        *state.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
    }
}
