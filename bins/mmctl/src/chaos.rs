//! `mmctl chaos`: the local stack under a steady harness load, one fault after another,
//! then an audit of what the faults left behind.
//!
//! 1. The stack starts exactly as `mmctl dev` starts it ([`Stack::start`]), games of
//!    `--game-duration`; a harness runs `--players` who each queue for a match about every
//!    `--matchmaking-every` while idle. mmctl listens, as the operator, to its
//!    `harness.stats.<instance>` (once a second).
//! 2. After `--warmup`, each fault in turn, `--window` apart: kill -9 of the matchmaker,
//!    the orchestrator, the gateway and nats-server (the supervisor restarts each), a Redis
//!    pause (SIGSTOP for `--redis-pause`, then SIGCONT) and, when game servers run on a
//!    Podman service mmctl started, kill -9 of that service. Signals go only to mmctl's own
//!    children, through their supervisor ([`crate::supervisor::Supervised::signal`]).
//!    For each fault: how long the service took to answer again, and how long until the
//!    per-second success rate of finished scenarios was back above `--min-success`
//!    ([`recovery`]).
//! 3. When the harness has drained, the audit reads Redis, KV `servers` and the driver
//!    directly ([`audit`]), polling up to `--settle` so the live view may converge; the
//!    stack stops (its clean-up counts the containers left); one table says it all. The
//!    exit code is 1 when an invariant broke (or could not be checked, or a fault could
//!    not be injected).

mod audit;
mod recovery;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use mm_shared::duration::format as show;
use mm_shared::protocol::{HarnessStats, buckets, now_ms, subjects};
use tokio_util::sync::CancellationToken;

use self::audit::{EntryRecord, Invariant, MatchRecord, Offenders, RunningServer, Snapshot, TicketRecord};
use self::recovery::Point;
use crate::config::Config;
use crate::games::{DriverChoice, Games};
use crate::output::Output;
use crate::stack::{PassThrough, Stack};
use crate::supervisor::{Program, Ready};

/// `mmctl chaos`'s settings (its flags).
#[derive(Debug, Clone)]
pub struct Chaos {
    pub players: u64,
    /// An idle player queues about this often.
    pub matchmaking_every: Duration,
    pub game_duration: Duration,
    pub warmup: Duration,
    /// From one fault to the next: the time each has to recover.
    pub window: Duration,
    /// The harness's run; default: warm-up, every window, and [`TAIL`].
    pub duration: Option<Duration>,
    pub redis_pause: Duration,
    /// How long the audit may poll for the live view to converge.
    pub settle: Duration,
    /// The success rate (0..=1) a second must reach to count as recovered.
    pub min_success: f64,
    pub report: Option<PathBuf>,
    pub driver: Option<DriverChoice>,
}

/// Load after the last window, so that it is measured under load too.
const TAIL: Duration = Duration::from_secs(10);
/// How long connecting to NATS, and each NATS or Redis read of the audit, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond its run and drain, how long the harness may take to exit before it is stopped.
const HARNESS_GRACE: Duration = Duration::from_secs(30);
/// KV `servers` agrees with the driver within this (docs/ARCHITECTURE.md): a mismatch
/// counts when it lasted this long (or the whole audit, if shorter).
const CONVERGENCE: Duration = Duration::from_secs(10);
/// Beyond the join timeout, how long an uncommitted server may take to end and leave KV.
const UNCOMMITTED_MARGIN: Duration = Duration::from_secs(10);
/// Offenders shown per invariant.
const SHOWN: usize = 3;

/// One fault of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// kill -9 of the supervised child `child` (shown as `shown`).
    Kill { child: &'static str, shown: &'static str },
    /// SIGSTOP of redis-server, SIGCONT after this long.
    RedisPause(Duration),
    /// kill -9 of the Podman API service mmctl runs (the supervisor restarts it).
    PodmanRestart,
    /// The Podman service is not mmctl's: nothing to restart.
    PodmanNotOurs(String),
}

impl Fault {
    /// Every fault for this stack, in order.
    fn plan(games: &Games, redis_pause: Duration) -> Vec<Fault> {
        let mut faults = vec![
            Fault::Kill { child: "matchmaker", shown: "matchmaker" },
            Fault::Kill { child: "orchestrator", shown: "orchestrator" },
            Fault::Kill { child: "gateway", shown: "gateway" },
            Fault::Kill { child: "nats", shown: "nats-server" },
            Fault::RedisPause(redis_pause),
        ];
        if let Games::Podman(podman) = games {
            faults.push(if podman.start_service {
                Fault::PodmanRestart
            } else {
                Fault::PodmanNotOurs(podman.socket.display().to_string())
            });
        }
        faults
    }

    fn describe(&self) -> String {
        match self {
            Fault::Kill { shown, .. } => format!("kill -9 {shown}"),
            Fault::RedisPause(pause) => format!("redis pause (SIGSTOP {})", show(*pause)),
            Fault::PodmanRestart | Fault::PodmanNotOurs(_) => "podman service restart (kill -9)".to_owned(),
        }
    }
}

/// What injecting one fault did.
#[derive(Debug, Clone)]
struct Injected {
    fault: Fault,
    /// When (Unix ms), and how far into the harness's run.
    at_ms: u64,
    into_run: Duration,
    /// The end of its window (Unix ms).
    until_ms: u64,
    /// What was hit: `pid 1234`; or why nothing was.
    what: Result<String, String>,
    /// How long until the service answered again (`None`: not within the window).
    back: Option<Duration>,
}

impl Injected {
    /// Injected, or deliberately skipped (not a failure of the run).
    fn skipped(&self) -> bool {
        matches!(self.fault, Fault::PodmanNotOurs(_))
    }
}

/// The harness's stats as they arrive.
struct Collector {
    points: Arc<Mutex<Vec<Point>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Subscribes to `harness.stats.<instance>` (before the harness starts, so nothing is
    /// missed) and keeps every message's counters.
    async fn start(nats: &async_nats::Client, instance: &str) -> anyhow::Result<Collector> {
        let subject = subjects::harness_stats(instance);
        let mut messages = tokio::time::timeout(IO_TIMEOUT, nats.subscribe(subject.clone()))
            .await
            .with_context(|| format!("subscribing to {subject}: no answer within {}", show(IO_TIMEOUT)))?
            .with_context(|| format!("subscribing to {subject}"))?;
        let points = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (points, stop) = (points.clone(), stop.clone());
            async move {
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        () = stop.cancelled() => break,
                    };
                    let Some(message) = message else { break };
                    if let Ok(stats) = serde_json::from_slice::<HarnessStats>(&message.payload) {
                        lock(&points).push(Point::from_stats(&stats));
                    }
                }
            }
        });
        Ok(Collector { points, stop, task })
    }

    /// The samples so far.
    fn samples(&self) -> Vec<recovery::Sample> {
        recovery::samples(&lock(&self.points))
    }

    /// The totals of the latest message.
    fn latest(&self) -> Option<Point> {
        lock(&self.points).iter().max_by_key(|point| point.at_ms).cloned()
    }

    async fn finish(self) -> Vec<recovery::Sample> {
        self.stop.cancel();
        let _ = self.task.await;
        recovery::samples(&lock(&self.points))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub async fn run(mut config: Config, pass: PassThrough, chaos: Chaos) -> anyhow::Result<ExitCode> {
    if !config.dev.restart {
        bail!("mmctl chaos needs the supervisor to restart what it kills: config key `dev.restart` is false");
    }
    if !(chaos.min_success > 0.0 && chaos.min_success <= 1.0) {
        bail!("--min-success must be more than 0 and at most 100 (percent)");
    }
    if chaos.window.is_zero() || chaos.players == 0 || chaos.matchmaking_every.is_zero() {
        bail!("--window, --players and --matchmaking-every must be more than 0");
    }
    if chaos.redis_pause >= chaos.window {
        bail!(
            "--redis-pause ({}) must be shorter than --window ({})",
            show(chaos.redis_pause),
            show(chaos.window)
        );
    }
    let output = Output::new();
    let (shutdown, force) = crate::signals(output)?;
    let supervisor = crate::supervisor(&config, output, force);
    let report = chaos.report.clone().unwrap_or_else(|| config.dev.data_dir.join("chaos-report.json"));
    let _ = std::fs::remove_file(&report);
    let harness_path = crate::stack::project_binary(&config, "harness")?;
    let games = crate::choose_games(&config, chaos.driver, output).await?;
    let faults = Fault::plan(&games, chaos.redis_pause);
    let windows = chaos.window * u32::try_from(faults.len()).unwrap_or(u32::MAX);
    let needed = chaos.warmup + windows;
    let duration = chaos.duration.unwrap_or(needed + TAIL);
    if duration < needed {
        bail!(
            "--duration {} is shorter than the warm-up and the {} fault windows ({})",
            show(duration),
            faults.len(),
            show(needed)
        );
    }
    config.dev.orchestrator_env.push((
        "MM_ORCHESTRATOR__GAME__DURATION".to_owned(),
        mm_shared::duration::format(chaos.game_duration),
    ));
    let Some(stack) = Stack::start(&config, &pass, games, supervisor.clone(), &shutdown).await? else {
        return Ok(ExitCode::SUCCESS);
    };

    // The operator's credentials, as `mmctl dev` wrote them.
    let url = crate::credentials::read_url(&config.dev.data_dir, crate::credentials::OPERATOR)
        .unwrap_or_else(|| {
            let host = format!("127.0.0.1:{}", config.dev.nats_port);
            crate::credentials::url("operator", &stack.credentials.password("operator"), &host)
        });
    let instance = format!("chaos-{}", std::process::id());
    let connected = match crate::credentials::connect(&url, "mmctl-chaos", IO_TIMEOUT).await {
        Ok(nats) => Collector::start(&nats, &instance).await.map(|collector| (nats, collector)),
        Err(err) => Err(err),
    };
    let (nats, collector) = match connected {
        Ok(connected) => connected,
        Err(err) => {
            stack.stop().await;
            return Err(err);
        }
    };

    let drain = chaos.game_duration + crate::DEMO_DRAIN_MARGIN;
    let mut args = pass.args();
    args.extend([
        "--players".into(),
        chaos.players.to_string().into(),
        "--duration".into(),
        show(duration).into(),
        "--gateway".into(),
        format!("http://{}", config.gateway.listen).into(),
        "--nats".into(),
        crate::stack::nats_url(&config).into(),
        "--instance".into(),
        instance.clone().into(),
        "--report".into(),
        report.clone().into_os_string(),
    ]);
    let mut env = stack.credentials.client_env("harness");
    env.extend([
        ("MM_HARNESS__DRAIN".to_owned(), show(drain)),
        ("MM_HARNESS__RATES__MATCHMAKING".to_owned(), format!("1/{}", show(chaos.matchmaking_every))),
        ("MM_HARNESS__PRINT_TABLE".to_owned(), "false".to_owned()),
        ("MM_HARNESS__PROGRESS".to_owned(), "never".to_owned()),
    ]);
    let ready = Ready::Http { addr: config.harness.admin_listen.to_string(), path: "/healthz" };
    let harness = supervisor.start(Program {
        name: "harness",
        path: harness_path,
        args,
        env,
        ready: ready.clone(),
        restart: false,
        current_dir: None,
    });
    let harness_stop = harness.stop.clone();
    let harness_done = CancellationToken::new();
    let harness_status = tokio::spawn({
        let done = harness_done.clone();
        let task = harness.task;
        async move {
            let status = task.await.ok().flatten();
            done.cancel();
            status
        }
    });
    // Faults stop at Ctrl-C, or when the harness is gone (nothing to measure).
    let abort = CancellationToken::new();
    tokio::spawn({
        let (abort, shutdown, done) = (abort.clone(), shutdown.clone(), harness_done.clone());
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = done.cancelled() => {}
            }
            abort.cancel();
        }
    });
    let is_ready = tokio::select! {
        ready = ready.wait(config.dev.ready_timeout) => ready,
        () = abort.cancelled() => false,
    };
    let started = Instant::now();
    let mut injected = Vec::new();
    if is_ready {
        output.say(&format!(
            "chaos: {} players, each queueing about every {} while idle, games of {}, for {}; faults from {} on, \
             {} apart: {}",
            chaos.players,
            show(chaos.matchmaking_every),
            show(chaos.game_duration),
            show(duration),
            show(chaos.warmup),
            show(chaos.window),
            faults.iter().map(Fault::describe).collect::<Vec<_>>().join(", ")
        ));
        injected = inject_all(&stack, &faults, &chaos, &collector, started, output, &abort).await;
    } else if !abort.is_cancelled() {
        output.say("chaos: the harness did not become ready; no fault injected");
    }

    // The harness ends by itself after its run and drain; bounded all the same.
    let deadline = tokio::time::Instant::from_std(started + duration + drain + HARNESS_GRACE);
    tokio::select! {
        () = harness_done.cancelled() => {}
        () = shutdown.cancelled() => harness_stop.cancel(),
        () = tokio::time::sleep_until(deadline) => {
            output.say("chaos: the harness did not end in time; stopping it");
            harness_stop.cancel();
        }
    }
    let harness_exit = harness_status.await.ok().flatten();
    let samples = collector.finish().await;
    if shutdown.is_cancelled() {
        stack.stop().await;
        output.say("chaos: interrupted; no audit");
        return Ok(ExitCode::FAILURE);
    }

    output.say(&format!(
        "chaos: auditing Redis, KV `{}` and the {} (up to {} for the view to converge)",
        buckets::SERVERS,
        match &stack.games {
            Games::Podman(_) => "node's containers",
            Games::Processes { .. } => "orchestrator's game-server processes",
        },
        show(chaos.settle)
    ));
    let join_timeout = if config.orchestrator.game.join_timeout.is_zero() {
        chaos.game_duration
    } else {
        config.orchestrator.game.join_timeout
    };
    let sources = Sources {
        redis_url: crate::stack::redis_url(&config),
        nats: nats.clone(),
        game_duration: chaos.game_duration,
    };
    let audited =
        audit_run(&stack, &sources, chaos.settle, join_timeout + UNCOMMITTED_MARGIN, &shutdown).await;
    let games = stack.games.clone();
    let containers = stack.stop().await;

    let table = Table {
        games: &games,
        chaos: &chaos,
        duration,
        injected: &injected,
        samples: &samples,
        audited: &audited,
        containers: containers.as_ref(),
        harness_exit,
        report: &report,
    };
    let (text, ok) = table.render();
    println!("\n{text}");
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Injects each fault at its time, waiting out its window; stops early on `abort`.
async fn inject_all(
    stack: &Stack,
    faults: &[Fault],
    chaos: &Chaos,
    collector: &Collector,
    started: Instant,
    output: Output,
    abort: &CancellationToken,
) -> Vec<Injected> {
    let mut injected = Vec::new();
    if !pause_until(started + chaos.warmup, abort).await {
        return injected;
    }
    match collector.latest() {
        Some(point) if point.succeeded + point.failed > 0 => output.say(&format!(
            "chaos: warm-up done: {} scenarios finished, {} failed",
            point.succeeded + point.failed,
            point.failed
        )),
        _ => output.say("chaos: warm-up done, but the harness has finished no scenario yet"),
    }
    for (index, fault) in faults.iter().enumerate() {
        let at = started + chaos.warmup + chaos.window * u32::try_from(index).unwrap_or(u32::MAX);
        if !pause_until(at, abort).await {
            break;
        }
        let end = at + chaos.window;
        let at_ms = now_ms();
        let until_ms = at_ms + u64::try_from(chaos.window.as_millis()).unwrap_or(u64::MAX);
        let what = inject(stack, fault, abort).await;
        match &what {
            Ok(what) => output.say(&format!("chaos: {} ({what})", fault.describe())),
            Err(why) => output.say(&format!("chaos: {}: {why}", fault.describe())),
        }
        let back = match (&what, fault) {
            (Ok(_), Fault::RedisPause(pause)) => {
                resumed(stack, fault, end, abort).await.map(|after| after + *pause)
            }
            (Ok(_), _) => back_up(stack, fault, what.as_ref().ok(), end, abort).await,
            (Err(_), _) => None,
        };
        let mut done = Injected {
            fault: fault.clone(),
            at_ms,
            into_run: at.saturating_duration_since(started),
            until_ms,
            what,
            back,
        };
        if done.what.is_ok() {
            match back {
                Some(after) => {
                    output.say(&format!("chaos: answering again after {:.1}s", after.as_secs_f64()))
                }
                None => output.say("chaos: not answering again within the window"),
            }
        }
        let finished = pause_until(end, abort).await;
        done.until_ms = done.until_ms.min(now_ms());
        if done.what.is_ok() {
            let result =
                recovery::recovery(&collector.samples(), done.at_ms, done.until_ms, chaos.min_success);
            output.say(&format!(
                "chaos: {}: success rate back above {}% after {} (worst second {}, {} failed)",
                fault.describe(),
                percent(chaos.min_success),
                result.describe(),
                result.worst.map_or_else(|| "none".to_owned(), |worst| format!("{}%", percent(worst))),
                result.describe_failures()
            ));
        }
        injected.push(done);
        if !finished {
            break;
        }
    }
    injected
}

/// Sleeps until `when`; false when `abort` came first.
async fn pause_until(when: Instant, abort: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(tokio::time::Instant::from_std(when)) => true,
        () = abort.cancelled() => false,
    }
}

/// Injects `fault`: what was hit (`pid 1234`), or why nothing was.
async fn inject(stack: &Stack, fault: &Fault, abort: &CancellationToken) -> Result<String, String> {
    match fault {
        Fault::Kill { child, .. } => kill(stack, child).await,
        Fault::PodmanRestart => kill(stack, "podman").await,
        Fault::PodmanNotOurs(socket) => {
            Err(format!("skipped: the Podman service on {socket} was already running, it is not mmctl's"))
        }
        Fault::RedisPause(pause) => {
            let redis = stack.child("redis").ok_or("no redis-server in this stack")?;
            let pid = redis.signal(libc::SIGSTOP).await.ok_or("redis-server is not running")?;
            // Whatever happens next, it continues.
            let _resume = Resume(redis);
            tokio::select! {
                () = tokio::time::sleep(*pause) => {}
                () = abort.cancelled() => {}
            }
            match redis.signal(libc::SIGCONT).await {
                Some(_) => Ok(format!("pid {pid}, SIGCONT after {}", show(*pause))),
                None => Err(format!("pid {pid} stopped, but SIGCONT could not be sent")),
            }
        }
    }
}

/// Sends SIGCONT when dropped (a Redis pause cut short still ends).
struct Resume<'a>(&'a crate::supervisor::Supervised);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal_detached(libc::SIGCONT);
    }
}

async fn kill(stack: &Stack, child: &str) -> Result<String, String> {
    let supervised = stack.child(child).ok_or_else(|| format!("no {child} in this stack"))?;
    let pid = supervised.signal(libc::SIGKILL).await.ok_or_else(|| format!("{child} is not running"))?;
    Ok(format!("pid {pid}"))
}

/// How long after the kill the supervisor's new child answered its readiness check.
async fn back_up(
    stack: &Stack,
    fault: &Fault,
    what: Option<&String>,
    end: Instant,
    abort: &CancellationToken,
) -> Option<Duration> {
    let name = match fault {
        Fault::Kill { child, .. } => *child,
        Fault::PodmanRestart => "podman",
        _ => return None,
    };
    let supervised = stack.child(name)?;
    let killed: Option<u32> = what.and_then(|what| what.strip_prefix("pid ")?.parse().ok());
    let since = Instant::now();
    while Instant::now() < end && !abort.is_cancelled() {
        let pid = supervised.pid().await;
        if pid.is_some() && pid != killed && supervised.ready.wait(Duration::ZERO).await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// After a Redis pause: how long until `PING` answered again.
async fn resumed(stack: &Stack, _fault: &Fault, end: Instant, abort: &CancellationToken) -> Option<Duration> {
    let url = stack_redis_url(stack)?;
    let since = Instant::now();
    while Instant::now() < end && !abort.is_cancelled() {
        if ping(&url).await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The stack's Redis address, from its readiness check (`127.0.0.1:<port>`).
fn stack_redis_url(stack: &Stack) -> Option<String> {
    match &stack.child("redis")?.ready {
        Ready::Tcp { addr } => Some(format!("redis://{addr}/")),
        _ => None,
    }
}

async fn ping(url: &str) -> bool {
    let Ok(mut connection) = redis_connection(url, Duration::from_millis(500)).await else { return false };
    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut connection).await;
    pong.is_ok()
}

async fn redis_connection(url: &str, timeout: Duration) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|err| format!("redis {url}: {err}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    tokio::time::timeout(timeout * 2, client.get_multiplexed_async_connection_with_config(&config))
        .await
        .map_err(|_| format!("redis {url}: no connection within {}", show(timeout * 2)))?
        .map_err(|err| format!("redis {url}: {err}"))
}

/// Where the audit reads from.
struct Sources {
    redis_url: String,
    nats: async_nats::Client,
    game_duration: Duration,
}

/// The audit's outcome per invariant.
#[derive(Debug)]
enum Audited {
    /// Its offenders after the view converged (none: it holds).
    Checked(BTreeMap<Invariant, Offenders>),
    /// No reading succeeded.
    Unchecked(String),
}

/// Reads everything every second until nothing is wrong or `settle` has passed, then
/// keeps the offenders that stayed ([`audit::persistent`]); uncommitted servers count
/// only once older than `uncommitted_after`.
async fn audit_run(
    stack: &Stack,
    sources: &Sources,
    settle: Duration,
    uncommitted_after: Duration,
    shutdown: &CancellationToken,
) -> Audited {
    let deadline = Instant::now() + settle;
    let mut readings: Vec<(u64, BTreeMap<Invariant, Offenders>)> = Vec::new();
    let mut failure = None;
    loop {
        match snapshot(stack, sources).await {
            Ok(snapshot) => {
                let found = audit::check(&snapshot);
                let clean = found.values().all(BTreeMap::is_empty);
                readings.push((snapshot.at_ms, found));
                if clean {
                    break;
                }
            }
            Err(err) => failure = Some(err),
        }
        if Instant::now() >= deadline || shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => break,
        }
    }
    if readings.is_empty() {
        return Audited::Unchecked(failure.unwrap_or_else(|| "no reading was taken".to_owned()));
    }
    let persist = CONVERGENCE.min(settle);
    let declared = Invariant::ALL
        .iter()
        .map(|invariant| {
            let series: Vec<(u64, Offenders)> = readings
                .iter()
                .map(|(at, found)| (*at, found.get(invariant).cloned().unwrap_or_default()))
                .collect();
            let mut kept = audit::persistent(&series, persist);
            if *invariant == Invariant::Uncommitted {
                kept = audit::old_enough(&kept, uncommitted_after);
            }
            (*invariant, kept)
        })
        .collect();
    Audited::Checked(declared)
}

/// One reading of Redis, KV `servers` and the driver (in that order: a match committed
/// after Redis was read shows its server as uncommitted; the next reading clears it).
async fn snapshot(stack: &Stack, sources: &Sources) -> Result<Snapshot, String> {
    let mut snapshot = read_redis(&sources.redis_url).await?;
    snapshot.entries = read_entries(&sources.nats).await?;
    snapshot.servers = read_servers(stack, sources.game_duration).await?;
    snapshot.at_ms = now_ms();
    Ok(snapshot)
}

/// Tickets, queues, leases and matches, read key by key (SCAN, never KEYS).
async fn read_redis(url: &str) -> Result<Snapshot, String> {
    let mut redis = redis_connection(url, IO_TIMEOUT).await?;
    let mut snapshot = Snapshot::default();
    let prefix = mm_shared::protocol::keys::TICKET_PREFIX;
    let ticket_keys = scan(&mut redis, &format!("{prefix}*")).await?;
    for (key, raw) in values(&mut redis, &ticket_keys).await? {
        if let Ok(mut ticket) = serde_json::from_str::<TicketRecord>(&raw) {
            let id = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
            if ticket.id.is_empty() {
                ticket.id.clone_from(&id);
            }
            snapshot.tickets.insert(id, ticket);
        }
    }
    for key in scan(&mut redis, "queue:*").await? {
        for id in members(&mut redis, &key).await? {
            snapshot.queued.entry(id).or_default().push(key.clone());
        }
    }
    let mut live = std::collections::BTreeSet::new();
    for key in scan(&mut redis, "leases:*").await? {
        for batch in members(&mut redis, &key).await? {
            live.insert(mm_shared::protocol::keys::lease(&batch));
        }
    }
    for key in scan(&mut redis, "lease:*").await? {
        let place = if live.contains(&key) { &mut snapshot.leased } else { &mut snapshot.stranded };
        for id in members(&mut redis, &key).await? {
            place.entry(id).or_default().push(key.clone());
        }
    }
    let match_key = mm_shared::protocol::keys::match_record("");
    let match_keys = scan(&mut redis, &format!("{match_key}*")).await?;
    for (key, raw) in values(&mut redis, &match_keys).await? {
        if let Ok(mut record) = serde_json::from_str::<MatchRecord>(&raw) {
            if record.id.is_empty() {
                record.id = key.strip_prefix(&match_key).unwrap_or(&key).to_owned();
            }
            snapshot.matches.push(record);
        }
    }
    Ok(snapshot)
}

/// Every key matching `pattern` (SCAN; bounded: at most a million rounds).
async fn scan(redis: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Result<Vec<String>, String> {
    let mut keys = std::collections::BTreeSet::new();
    let mut cursor: u64 = 0;
    for _ in 0..1_000_000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await
            .map_err(|err| format!("redis SCAN {pattern}: {err}"))?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys.into_iter().collect());
        }
        cursor = next;
    }
    Err(format!("redis SCAN {pattern}: did not finish"))
}

/// The string values of `keys` (keys gone or of another type are left out).
async fn values(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let got: Vec<Option<String>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(redis)
            .await
            .map_err(|err| format!("redis MGET: {err}"))?;
        out.extend(chunk.iter().cloned().zip(got).filter_map(|(key, value)| Some((key, value?))));
    }
    Ok(out)
}

/// The members of a sorted set, set or list at `key` (nothing for other types).
async fn members(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> Result<Vec<String>, String> {
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(redis)
        .await
        .map_err(|err| format!("redis TYPE {key}: {err}"))?;
    let command = match kind.as_str() {
        "zset" => redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).clone(),
        "set" => redis::cmd("SMEMBERS").arg(key).clone(),
        "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).clone(),
        _ => return Ok(Vec::new()),
    };
    command.query_async(redis).await.map_err(|err| format!("redis {kind} {key}: {err}"))
}

/// Every live entry of KV `servers`.
async fn read_entries(nats: &async_nats::Client) -> Result<Vec<EntryRecord>, String> {
    let bucket = buckets::SERVERS;
    let jetstream = async_nats::jetstream::new(nats.clone());
    let store = bounded(jetstream.get_key_value(bucket), &format!("opening KV {bucket}")).await?;
    let mut keys = bounded(store.keys(), &format!("listing KV {bucket}")).await?;
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(IO_TIMEOUT, keys.next()).await {
            Ok(Some(Ok(key))) => names.push(key),
            Ok(Some(Err(err))) => return Err(format!("listing KV {bucket}: {err}")),
            Ok(None) => break,
            Err(_) => return Err(format!("listing KV {bucket}: no answer within {}", show(IO_TIMEOUT))),
        }
    }
    let mut entries = Vec::new();
    for name in names {
        let value = bounded(store.get(name.as_str()), &format!("reading {bucket}/{name}")).await?;
        if let Some(entry) = value.and_then(|value| serde_json::from_slice::<EntryRecord>(&value).ok()) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// `work`, within [`IO_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    work: impl std::future::Future<Output = Result<T, E>>,
    what: &str,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(format!("{what}: {err}")),
        Err(_) => Err(format!("{what}: no answer within {}", show(IO_TIMEOUT))),
    }
}

/// The game servers the driver runs now.
async fn read_servers(stack: &Stack, game_duration: Duration) -> Result<Vec<RunningServer>, String> {
    match &stack.games {
        Games::Podman(podman) => {
            let (user, node) = (podman.user.clone(), stack.node.clone());
            tokio::task::spawn_blocking(move || containers(&user, &node))
                .await
                .map_err(|err| format!("listing containers: {err}"))?
        }
        Games::Processes { .. } => {
            let Some(orchestrator) = stack.child("orchestrator") else { return Ok(Vec::new()) };
            // No orchestrator now: no game server either (they die with it).
            let Some(pid) = orchestrator.pid().await else { return Ok(Vec::new()) };
            tokio::task::spawn_blocking(move || game_processes(pid, game_duration))
                .await
                .map_err(|err| format!("listing game-server processes: {err}"))
        }
    }
}

/// The running game-server containers of `node` (labels `mm.game-id`, `mm.node=<node>`),
/// asked of Podman itself (its CLI, which needs no API service).
fn containers(user: &mm_rootless::PodmanUser, node: &str) -> Result<Vec<RunningServer>, String> {
    use mm_shared::protocol::game_server::labels;
    let listed = user.podman(&[
        "ps",
        "--filter",
        &format!("label={}", labels::GAME_ID),
        "--filter",
        &format!("label={}={node}", labels::NODE),
        "--format",
        "json",
    ])?;
    parse_containers(&listed)
}

/// `podman ps --format json` → the game servers.
fn parse_containers(listed: &str) -> Result<Vec<RunningServer>, String> {
    use mm_shared::protocol::game_server::labels;
    if listed.trim().is_empty() {
        return Ok(Vec::new());
    }
    let containers: Vec<serde_json::Value> =
        serde_json::from_str(listed).map_err(|err| format!("podman ps --format json: {err}"))?;
    Ok(containers
        .iter()
        .filter_map(|container| {
            let game_id = container["Labels"][labels::GAME_ID].as_str()?.to_owned();
            let name = container["Names"][0].as_str().unwrap_or("container").to_owned();
            let started_at = container["StartedAt"]
                .as_u64()
                .or_else(|| container["Created"].as_u64())
                .filter(|secs| *secs > 0)
                .map(|secs| secs * 1000);
            Some(RunningServer { game_id, started_at, handle: format!("container {name}") })
        })
        .collect())
}

/// The game-server processes under the orchestrator `pid` (process driver), by their
/// `MM_GAME__*` environment.
fn game_processes(pid: u32, game_duration: Duration) -> Vec<RunningServer> {
    use mm_shared::protocol::game_server::env;
    mm_shared::process::descendants(pid)
        .into_iter()
        .filter(|child| mm_shared::process::is_alive(*child))
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|comm| comm.trim() == "game-server")
        })
        .filter_map(|child| {
            let environ = std::fs::read(format!("/proc/{child}/environ")).ok()?;
            let vars = parse_environ(&environ);
            let game_id = vars.get(env::GAME_ID)?.clone();
            let ends_at = vars.get(env::ENDS_AT).and_then(|at| at.parse::<u64>().ok());
            let game_ms = u64::try_from(game_duration.as_millis()).unwrap_or(0);
            Some(RunningServer {
                game_id,
                started_at: ends_at.map(|at| at.saturating_sub(game_ms)),
                handle: format!("pid {child}"),
            })
        })
        .collect()
}

/// `KEY=VALUE\0...` → the `MM_*` variables, figment's quoting removed (`"abc"` → `abc`).
fn parse_environ(environ: &[u8]) -> BTreeMap<String, String> {
    environ
        .split(|byte| *byte == 0)
        .filter_map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            let (key, value) = text.split_once('=')?;
            key.starts_with("MM_").then(|| {
                let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
                (key.to_owned(), value.to_owned())
            })
        })
        .collect()
}

fn percent(rate: f64) -> String {
    let value = rate * 100.0;
    if (value - value.round()).abs() < 0.05 { format!("{value:.0}") } else { format!("{value:.1}") }
}

/// Everything the final table says.
struct Table<'a> {
    games: &'a Games,
    chaos: &'a Chaos,
    duration: Duration,
    injected: &'a [Injected],
    samples: &'a [recovery::Sample],
    audited: &'a Audited,
    containers: Option<&'a crate::games::ContainerCount>,
    harness_exit: Option<std::process::ExitStatus>,
    report: &'a std::path::Path,
}

impl Table<'_> {
    /// The table, and whether the run passed.
    fn render(&self) -> (String, bool) {
        let mut problems: Vec<String> = Vec::new();
        let mut out = String::new();
        let driver = match self.games {
            Games::Podman(podman) => {
                format!("rootless Podman containers (user {})", podman.user.account.name)
            }
            Games::Processes { .. } => "child processes of the orchestrator".to_owned(),
        };
        out.push_str(&format!(
            "chaos run: {} players, matchmaking about every {} per idle player, games of {}, {} of load; game \
             servers: {driver}\n\n",
            self.chaos.players,
            show(self.chaos.matchmaking_every),
            show(self.chaos.game_duration),
            show(self.duration)
        ));

        let threshold = percent(self.chaos.min_success);
        let mut rows = vec![vec![
            "fault".to_owned(),
            "at".to_owned(),
            "hit".to_owned(),
            "answering again".to_owned(),
            format!("success ≥{threshold}% again"),
            "worst second".to_owned(),
            "failed in window".to_owned(),
        ]];
        for done in self.injected {
            let result = recovery::recovery(self.samples, done.at_ms, done.until_ms, self.chaos.min_success);
            let (hit, back, recovered, worst, failed) = match &done.what {
                Ok(what) => (
                    what.clone(),
                    done.back
                        .map_or_else(|| "never".to_owned(), |after| format!("{:.1}s", after.as_secs_f64())),
                    result.describe(),
                    result.worst.map_or_else(|| "-".to_owned(), |worst| format!("{}%", percent(worst))),
                    result.describe_failures(),
                ),
                Err(why) => {
                    if !done.skipped() {
                        problems.push(format!("{} was not injected: {why}", done.fault.describe()));
                    }
                    (why.clone(), "-".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned())
                }
            };
            rows.push(vec![
                done.fault.describe(),
                format!("{}s", done.into_run.as_secs()),
                hit,
                back,
                recovered,
                worst,
                failed,
            ]);
        }
        out.push_str(&columns(&rows));
        out.push('\n');

        let mut rows = vec![vec!["invariant".to_owned(), "count".to_owned(), "first offenders".to_owned()]];
        match self.audited {
            Audited::Checked(found) => {
                for invariant in Invariant::ALL {
                    let offenders = found.get(&invariant).cloned().unwrap_or_default();
                    let shown: Vec<String> =
                        offenders.values().take(SHOWN).map(|offense| offense.what.clone()).collect();
                    let more = offenders.len().saturating_sub(SHOWN);
                    let mut first = shown.join("; ");
                    if more > 0 {
                        first.push_str(&format!("; and {more} more"));
                    }
                    if !offenders.is_empty() {
                        problems.push(format!("{}: {}", invariant.describe(), offenders.len()));
                    }
                    rows.push(vec![invariant.describe().to_owned(), offenders.len().to_string(), first]);
                }
            }
            Audited::Unchecked(why) => {
                for invariant in Invariant::ALL {
                    rows.push(vec![
                        invariant.describe().to_owned(),
                        "?".to_owned(),
                        format!("not checked: {why}"),
                    ]);
                }
                problems.push(format!("the audit could not read the state: {why}"));
            }
        }
        out.push_str(&columns(&rows));
        out.push('\n');

        match (self.games, self.containers) {
            (Games::Podman(_), Some(count)) => out.push_str(&format!(
                "game-server containers: {} started, {} removed, {} left ({} removed by mmctl's clean-up)\n",
                count.started, count.removed, count.left, count.cleaned_up
            )),
            (Games::Podman(_), None) => out.push_str("game-server containers: not counted\n"),
            (Games::Processes { .. }, _) => {}
        }
        let finished: u64 = self.samples.iter().map(|sample| sample.succeeded + sample.failed).sum();
        let failed: u64 = self.samples.iter().map(|sample| sample.failed).sum();
        if finished == 0 {
            problems.push("the harness reported no finished scenario: nothing was measured".to_owned());
        }
        let exit =
            self.harness_exit.map_or_else(|| "did not exit normally".to_owned(), |status| status.to_string());
        out.push_str(&format!(
            "harness: {finished} scenarios finished, {failed} failed ({}% ok); {exit}; report {}\n",
            if finished == 0 {
                "-".to_owned()
            } else {
                percent((finished - failed) as f64 / finished as f64)
            },
            self.report.display()
        ));
        let ok = problems.is_empty();
        if ok {
            out.push_str("result: every invariant holds\n");
        } else {
            out.push_str(&format!("result: FAILED: {}\n", problems.join("; ")));
        }
        (out, ok)
    }
}

/// Rows as left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|column| {
            rows.iter().filter_map(|row| row.get(column)).map(|cell| cell.chars().count()).max().unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[column] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_has_every_fault_and_podman_only_with_podman() {
        let processes = Games::Processes { why: "asked".to_owned() };
        let plan: Vec<String> =
            Fault::plan(&processes, Duration::from_secs(4)).iter().map(Fault::describe).collect();
        assert_eq!(
            plan,
            [
                "kill -9 matchmaker",
                "kill -9 orchestrator",
                "kill -9 gateway",
                "kill -9 nats-server",
                "redis pause (SIGSTOP 4s)"
            ]
        );
    }

    #[test]
    fn containers_and_processes_are_read_from_what_the_drivers_say() {
        let listed = r#"[{"Names": ["mm-g1"], "Labels": {"mm.game-id": "g1", "mm.node": "n"}, "StartedAt": 1700000000},
                         {"Names": ["other"], "Labels": {"mm.node": "n"}}]"#;
        let servers = parse_containers(listed).expect("parses");
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].game_id, "g1");
        assert_eq!(servers[0].started_at, Some(1_700_000_000_000));
        assert_eq!(servers[0].handle, "container mm-g1");
        assert!(parse_containers("").expect("empty").is_empty());
        assert!(parse_containers("not json").is_err());

        let environ = b"PATH=/bin\0MM_GAME__GAME_ID=\"g2\"\0MM_GAME__ENDS_AT=1700000008000\0";
        let vars = parse_environ(environ);
        assert_eq!(vars.get("MM_GAME__GAME_ID").map(String::as_str), Some("g2"));
        assert_eq!(vars.get("MM_GAME__ENDS_AT").map(String::as_str), Some("1700000008000"));
        assert!(!vars.contains_key("PATH"));
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["a".to_owned(), "bb".to_owned(), "c".to_owned()],
            vec!["dddd".to_owned(), "e".to_owned(), String::new()],
        ];
        assert_eq!(columns(&rows), "a     bb  c\ndddd  e\n");
        assert_eq!(percent(0.99), "99");
        assert_eq!(percent(0.9876), "98.8");
    }
}
