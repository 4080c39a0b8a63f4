//! mmctl: the operator's CLI for the local stack.
//!
//! - `mmctl dev`: runs nats-server, redis-server, matchmaker, orchestrator and gateway in
//!   the foreground, with prefixed logs; restarts a child that dies (with backoff);
//!   Ctrl-C stops everything (twice: at once) and leaves nothing behind.
//! - `mmctl demo`: `dev`, plus one harness run against it, then the report.
//! - `mmctl chaos`: `dev` under a harness load, with faults injected one after another
//!   (kill -9 of each service, a Redis pause, a NATS restart), then an audit of the
//!   invariants from outside; exits 1 when one broke.
//! - `mmctl status`: what each local service's `/healthz` says.
//! - `mmctl fleet`: the harness fleet (instances, players, rates, merged latencies), and
//!   its live control (`--target`, `--rate`, `--stages`, `--reset`).

mod chaos;
mod config;
mod credentials;
mod fleet;
mod games;
mod output;
mod podman_service;
mod stack;
mod status;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mm_shared::service::CommonArgs;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::games::{DriverChoice, Games};
use crate::output::Output;
use crate::stack::{PassThrough, Stack};
use crate::supervisor::{Program, Ready, Supervisor};

/// Runs and inspects the matchmaking simulation on this machine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the backend in the foreground until Ctrl-C.
    Dev {
        /// How game servers run: `auto` (rootless Podman when this host can, processes
        /// otherwise), `podman` or `process` (config key `dev.driver`).
        #[arg(long, value_enum)]
        driver: Option<DriverChoice>,
        /// Run NATS as a cluster of this many servers (`--cluster` alone: 3; config key
        /// `dev.nats_cluster`); the KV buckets get 3 replicas from 3 servers on.
        #[arg(long, num_args = 0..=1, default_missing_value = "3", value_name = "SERVERS")]
        cluster: Option<u8>,
        /// Listen for other hosts on this address: NATS and the gateway (config key
        /// `dev.bind`; `just dev` passes `MM_BIND`). Default 127.0.0.1.
        #[arg(long, value_name = "ADDR")]
        bind: Option<std::net::IpAddr>,
    },
    /// Run the backend plus one harness run, then print the report and stop.
    Demo {
        /// Simulated players.
        #[arg(long, default_value_t = 1000)]
        players: u64,
        /// How long the harness runs (`60s`, `5m`).
        #[arg(long, default_value = "60s", value_parser = mm_shared::duration::parse)]
        duration: Duration,
        /// How long each game lasts; the run then waits this long (plus a margin) for the
        /// games still going, so that games finish inside the demo.
        #[arg(long, default_value = "15s", value_parser = mm_shared::duration::parse)]
        game_duration: Duration,
        /// Where the harness writes its JSON report (default: `<data_dir>/demo-report.json`);
        /// the HTML report with charts goes beside it (`.html`).
        #[arg(long)]
        report: Option<PathBuf>,
        /// How game servers run (see `mmctl dev --help`).
        #[arg(long, value_enum)]
        driver: Option<DriverChoice>,
    },
    /// Run the backend under a harness load, inject faults one after another (kill -9 of
    /// the matchmaker, orchestrator, gateway and nats-server, a Redis pause, a restart of
    /// the Podman service mmctl runs), then audit the invariants from outside and print one
    /// table. Exits 1 when an invariant broke.
    Chaos {
        /// Simulated players.
        #[arg(long, default_value_t = 600)]
        players: u64,
        /// How often an idle player queues for a match (the harness's matchmaking rate).
        #[arg(long, default_value = "15s", value_parser = mm_shared::duration::parse)]
        matchmaking_every: Duration,
        /// How long each game lasts.
        #[arg(long, default_value = "8s", value_parser = mm_shared::duration::parse)]
        game_duration: Duration,
        /// Load before the first fault.
        #[arg(long, default_value = "20s", value_parser = mm_shared::duration::parse)]
        warmup: Duration,
        /// Time from one fault to the next: each fault's recovery window.
        #[arg(long, default_value = "20s", value_parser = mm_shared::duration::parse)]
        window: Duration,
        /// The harness's run (default: the warm-up, every window and 10 s more).
        #[arg(long, value_parser = mm_shared::duration::parse)]
        duration: Option<Duration>,
        /// How long redis-server stays stopped (SIGSTOP, then SIGCONT).
        #[arg(long, default_value = "4s", value_parser = mm_shared::duration::parse)]
        redis_pause: Duration,
        /// How long the audit polls for KV `servers` and the driver to agree.
        #[arg(long, default_value = "15s", value_parser = mm_shared::duration::parse)]
        settle: Duration,
        /// A second's success rate (percent of finished scenarios) that counts as recovered.
        #[arg(long, default_value_t = 99.0)]
        min_success: f64,
        /// Where the harness writes its JSON report (default: `<data_dir>/chaos-report.json`).
        #[arg(long)]
        report: Option<PathBuf>,
        /// How game servers run (see `mmctl dev --help`).
        #[arg(long, value_enum)]
        driver: Option<DriverChoice>,
    },
    /// Show what each local service's `/healthz` says; exit 1 if any is not ok.
    Status,
    /// The rootless Podman API service `just up` starts for the compose stack (and
    /// `just down` stops).
    PodmanService {
        #[command(subcommand)]
        action: PodmanServiceAction,
    },
    /// Show the harness fleet: instances, players, scenario rates, errors, merged
    /// latency percentiles; with --target/--rate/--stages/--reset, first send a
    /// harness.control.
    /// Exits 1 when no instance is live.
    Fleet {
        /// NATS URL (default: `NATS_URL` of `<data_dir>/operator.env`, which `mmctl dev`
        /// writes; else the local stack's, as the read-only viewer, who cannot steer).
        #[arg(long)]
        nats: Option<String>,
        /// How long to listen to `harness.stats.*` before printing.
        #[arg(long, default_value = "2s", value_parser = mm_shared::duration::parse)]
        listen: Duration,
        /// Set the fleet target: players across all instances.
        #[arg(long)]
        target: Option<u64>,
        /// Set a scenario rate, executions per idle player per second (repeatable).
        #[arg(long = "rate", value_name = "SCENARIO=RATE")]
        rates: Vec<String>,
        /// Give the fleet a plan of stages, starting now: a TOML file of `[[stages]]`
        /// tables (`duration`, `players` across the fleet, optional `rates`), like
        /// `[[harness.stages]]`. While it is set it decides the fleet target.
        #[arg(long, value_name = "FILE.toml")]
        stages: Option<PathBuf>,
        /// Forget the fleet target, rates and plan: instances go back to their own config.
        #[arg(long)]
        reset: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PodmanServiceAction {
    /// Make the project user's Podman ready (image included) and start its API service
    /// unless one answers; print `MM_PODMAN_SOCKET=` and `MM_PODMAN_USER=` lines.
    Start {
        /// The socket (default: the Podman user's `/run/user/<uid>/podman/podman.sock`).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Remove the containers `--node` left, then stop the service `start` started.
    Stop {
        /// The compose stack's orchestrator node (`MM_NODE`).
        #[arg(long, default_value = "compose-node")]
        node: String,
    },
    /// Exit 0 when the service `start` started runs and answers.
    Status,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let config: Config =
        match mm_shared::config::load_with(args.common.config.as_deref(), &args.common.overrides) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("mmctl: {err}");
                return ExitCode::FAILURE;
            }
        };
    if args.common.print_config {
        return match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("mmctl: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(err) = mm_shared::telemetry::init_logging(&config.log, args.common.log_json) {
        eprintln!("mmctl: {err}");
        return ExitCode::FAILURE;
    }
    let pass = PassThrough { config: args.common.config.take(), log_json: args.common.log_json };
    let result = match args.command {
        Command::Status => status::run(&config),
        Command::PodmanService { action } => match action {
            PodmanServiceAction::Start { socket } => podman_service::start(&config.dev.data_dir, socket),
            PodmanServiceAction::Stop { node } => podman_service::stop(&config.dev.data_dir, &node),
            PodmanServiceAction::Status => podman_service::status(&config.dev.data_dir),
        },
        Command::Fleet { nats, listen, target, rates, stages, reset, json } => fleet::run(fleet::FleetArgs {
            nats: nats
                .or_else(|| credentials::read_url(&config.dev.data_dir, credentials::OPERATOR))
                .unwrap_or_else(|| stack::nats_url(&config)),
            listen,
            target,
            rates,
            stages,
            reset,
            json,
        }),
        Command::Dev { driver, cluster, bind } => {
            let mut config = config;
            config.dev.nats_cluster = cluster.unwrap_or(config.dev.nats_cluster);
            config.dev.bind = bind.unwrap_or(config.dev.bind);
            run_async(dev(config, pass, driver))
        }
        Command::Demo { players, duration, game_duration, report, driver } => {
            run_async(demo(config, pass, Demo { players, duration, game_duration, report, driver }))
        }
        Command::Chaos {
            players,
            matchmaking_every,
            game_duration,
            warmup,
            window,
            duration,
            redis_pause,
            settle,
            min_success,
            report,
            driver,
        } => run_async(chaos::run(
            config,
            pass,
            chaos::Chaos {
                players,
                matchmaking_every,
                game_duration,
                warmup,
                window,
                duration,
                redis_pause,
                settle,
                min_success: min_success / 100.0,
                report,
                driver,
            },
        )),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mmctl: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// mmctl supervises a handful of children: one thread is plenty, and spawning every
/// child from the main thread keeps the kernel's parent-death signal tied to mmctl's
/// whole life (see `mm_shared::process`).
///
/// Blocking work left over at the end (a readiness probe, at most half a second) gets
/// one second; the runtime does not wait longer for it.
fn run_async(work: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// First SIGINT/SIGTERM/SIGHUP cancels `shutdown`; the second cancels `force`
/// (kill children now); the third exits.
fn signals(output: Output) -> anyhow::Result<(CancellationToken, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (first, second) = (shutdown.clone(), force.clone());
    tokio::spawn(async move {
        for step in 0.. {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
                _ = hangup.recv() => {},
            }
            match step {
                0 => {
                    output.say("stopping (Ctrl-C again to kill at once)");
                    first.cancel();
                }
                1 => {
                    output.say("killing everything");
                    second.cancel();
                }
                _ => std::process::exit(mm_shared::shutdown::FORCED_EXIT_CODE),
            }
        }
    });
    Ok((shutdown, force))
}

fn supervisor(config: &Config, output: Output, force: CancellationToken) -> Supervisor {
    Supervisor { output, stop_timeout: config.dev.stop_timeout, force }
}

/// Decides where game servers run (the slow checks run off the async thread) and says so.
async fn choose_games(
    config: &Config,
    driver: Option<DriverChoice>,
    output: Output,
) -> anyhow::Result<Games> {
    let choice = driver
        .or(Some(config.dev.driver).filter(|choice| *choice != DriverChoice::Auto))
        .or(config.orchestrator.driver)
        .unwrap_or(DriverChoice::Auto);
    let config = config.clone();
    let games = tokio::task::spawn_blocking(move || games::decide(&config, choice))
        .await
        .context("deciding where game servers run")??;
    output.say(&games.describe());
    Ok(games)
}

async fn dev(config: Config, pass: PassThrough, driver: Option<DriverChoice>) -> anyhow::Result<ExitCode> {
    let output = Output::new();
    let (shutdown, force) = signals(output)?;
    let games = choose_games(&config, driver, output).await?;
    let Some(stack) =
        Stack::start(&config, &pass, games, supervisor(&config, output, force), &shutdown).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    output.say("the backend is up:");
    for (name, endpoint) in stack.endpoints() {
        output.say(&format!("  {name:<13} {endpoint}"));
    }
    output.say(&format!("  NATS clients  {}", stack::nats_url(&config)));
    output.say(&format!("  players use   http://{}", stack::gateway_listen(&config)));
    output.say(&format!("  {}", stack.games.describe()));
    if let Some(ports) = stack::open_ports(&config) {
        output.say(&format!("  {ports}"));
    }
    output.say("Ctrl-C stops everything");
    shutdown.cancelled().await;
    stack.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// `mmctl demo`'s settings.
struct Demo {
    players: u64,
    duration: Duration,
    game_duration: Duration,
    report: Option<PathBuf>,
    driver: Option<DriverChoice>,
}

/// How long past a game's length the demo waits for the last games: the game server's
/// end grace, the close handshake, and the time from matched to connected.
const DEMO_DRAIN_MARGIN: Duration = Duration::from_secs(10);

/// The demo's warm pool: every node keeps at least 4 warm servers (more when its
/// allocation rate asks for them, up to 32), so its time to play shows warm allocations.
/// `MM_ORCHESTRATOR__POOL__*` in the environment overrides it.
const DEMO_POOL: [(&str, &str); 3] = [
    ("MM_ORCHESTRATOR__POOL__MIN", "4"),
    ("MM_ORCHESTRATOR__POOL__POLICY", "auto"),
    ("MM_ORCHESTRATOR__POOL__MAX", "32"),
];

/// The demo's matchmaking mix: half the attempts in `default` (the seed's FIFO), half in
/// `skill` (two teams of five by rating), so the report sets them side by side.
/// `MM_HARNESS__POPULATION__QUEUES__*` in the environment overrides it.
const DEMO_QUEUES: [(&str, &str); 2] =
    [("MM_HARNESS__POPULATION__QUEUES__DEFAULT", "0.5"), ("MM_HARNESS__POPULATION__QUEUES__SKILL", "0.5")];

/// How often an idle demo player queues: often enough that players play several games
/// in a short run, so ratings learn from results and the report's rating convergence
/// means something. `MM_HARNESS__RATES__MATCHMAKING` in the environment overrides it.
const DEMO_MATCHMAKING_RATE: [(&str, &str); 1] = [("MM_HARNESS__RATES__MATCHMAKING", "1/30s")];

/// `defaults` that the environment does not already set (by any key with `prefix`).
fn demo_defaults(prefix: &str, defaults: &[(&str, &str)]) -> Vec<(String, String)> {
    if std::env::vars_os().any(|(key, _)| key.to_string_lossy().starts_with(prefix)) {
        return Vec::new();
    }
    defaults.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
}

async fn demo(mut config: Config, pass: PassThrough, demo: Demo) -> anyhow::Result<ExitCode> {
    let output = Output::new();
    let (shutdown, force) = signals(output)?;
    let supervisor = supervisor(&config, output, force);
    let report = demo.report.clone().unwrap_or_else(|| config.dev.data_dir.join("demo-report.json"));
    let table = report.with_extension("txt");
    let page = report.with_extension("html");
    let _ = std::fs::remove_file(&report);
    let _ = std::fs::remove_file(&table);
    let _ = std::fs::remove_file(&page);
    let harness_path = stack::project_binary(&config, "harness")?;
    let games = choose_games(&config, demo.driver, output).await?;
    // Games of the demo's length, for every orchestrator of the stack.
    config.dev.orchestrator_env.push((
        "MM_ORCHESTRATOR__GAME__DURATION".to_owned(),
        mm_shared::duration::format(demo.game_duration),
    ));
    config.dev.orchestrator_env.extend(demo_defaults("MM_ORCHESTRATOR__POOL__", &DEMO_POOL));
    // Every demo player logs in from this one address: the gateway's per-address login
    // burst (1,000 by default) must hold them all, or most of a large demo meets 429s.
    let burst = demo.players.saturating_add(demo.players / 10).max(1000).to_string();
    config.dev.gateway_env.extend(demo_defaults(
        "MM_GATEWAY__LOGIN_RATE__BURST",
        &[("MM_GATEWAY__LOGIN_RATE__BURST", burst.as_str())],
    ));
    let Some(stack) = Stack::start(&config, &pass, games, supervisor.clone(), &shutdown).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let drain = demo.game_duration + DEMO_DRAIN_MARGIN;
    output.say(&format!(
        "the backend is up; running the harness: {} players for {}, games of {} (then up to {} for the \
         games still going)",
        demo.players,
        mm_shared::duration::format(demo.duration),
        mm_shared::duration::format(demo.game_duration),
        mm_shared::duration::format(drain),
    ));
    let mut args = pass.args();
    args.extend([
        "--players".into(),
        demo.players.to_string().into(),
        "--duration".into(),
        mm_shared::duration::format(demo.duration).into(),
        "--gateway".into(),
        format!("http://{}", config.gateway.listen).into(),
        "--nats".into(),
        stack::nats_url(&config).into(),
        "--report".into(),
        report.clone().into_os_string(),
        "--report-html".into(),
        page.clone().into_os_string(),
    ]);
    let mut env = stack.credentials.client_env("harness");
    env.extend(demo_defaults("MM_HARNESS__POPULATION__QUEUES", &DEMO_QUEUES));
    env.extend(demo_defaults("MM_HARNESS__RATES__MATCHMAKING", &DEMO_MATCHMAKING_RATE));
    env.push(("MM_HARNESS__DRAIN".to_owned(), mm_shared::duration::format(drain)));
    // mmctl prints the table itself, after the stack's last words.
    env.push(("MM_HARNESS__PRINT_TABLE".to_owned(), "false".to_owned()));
    env.push(("MM_HARNESS__REPORT_TABLE".to_owned(), table.display().to_string()));
    let harness = supervisor.start(Program {
        name: "harness",
        path: harness_path,
        args,
        env,
        ready: Ready::Http { addr: config.harness.admin_listen.to_string(), path: "/healthz" },
        restart: false,
        current_dir: None,
    });
    let stop = harness.stop.clone();
    let mut task = harness.task;
    let status = tokio::select! {
        status = &mut task => status.ok().flatten(),
        () = shutdown.cancelled() => {
            stop.cancel();
            task.await.ok().flatten()
        }
    };
    let games = stack.games.clone();
    let containers = stack.stop().await;
    let read = std::fs::read_to_string(&table).map_err(|err| err.to_string()).and_then(|table| {
        let json = std::fs::read_to_string(&report).map_err(|err| err.to_string())?;
        let run = serde_json::from_str::<serde_json::Value>(&json).map_err(|err| err.to_string())?;
        Ok((table, run))
    });
    match read {
        Ok((table, run)) => {
            println!("\n{table}");
            println!("{}", games_summary(&games, containers.as_ref(), &run));
            println!("the full report (JSON): {}", report.display());
            println!("the report with charts (HTML, open it in a browser): {}", page.display());
        }
        Err(err) => {
            output.say(&format!("the harness wrote no readable report at {}: {err}", report.display()))
        }
    }
    Ok(match status {
        Some(status) if status.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// What the demo's game servers were and did.
fn games_summary(
    games: &Games,
    containers: Option<&games::ContainerCount>,
    run: &serde_json::Value,
) -> String {
    let play = |quantile: &str| run["time_to_play_ms"][quantile].as_f64().unwrap_or(0.0);
    let played = format!(
        "time to play (join → first echo): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms",
        play("p50"),
        play("p90"),
        play("p99")
    );
    match (games, containers) {
        (Games::Podman(podman), Some(count)) => format!(
            "game servers: rootless Podman containers (user {}): {} started, {} removed, {} left; {played}",
            podman.user.account.name, count.started, count.removed, count.left
        ),
        (Games::Podman(_), None) => {
            format!("game servers: rootless Podman containers (not counted); {played}")
        }
        (Games::Processes { why }, _) => format!("game servers: child processes ({why}); {played}"),
    }
}
