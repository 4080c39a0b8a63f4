//! mmctl: the operator's CLI for the local stack.
//!
//! - `mmctl dev`: runs nats-server, redis-server, matchmaker, orchestrator and gateway in
//!   the foreground, with prefixed logs; restarts a child that dies (with backoff);
//!   Ctrl-C stops everything (twice: at once) and leaves nothing behind.
//! - `mmctl demo`: `dev`, plus one harness run against it, then the report.
//! - `mmctl status`: what each local service's `/healthz` says.
//! - `mmctl fleet`: the harness fleet (instances, players, rates, merged latencies), and
//!   its live control (`--target`, `--rate`, `--reset`).

mod config;
mod fleet;
mod output;
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
    Dev,
    /// Run the backend plus one harness run, then print the report and stop.
    Demo {
        /// Simulated players.
        #[arg(long, default_value_t = 1000)]
        players: u64,
        /// How long the harness runs (`60s`, `5m`).
        #[arg(long, default_value = "60s", value_parser = mm_shared::duration::parse)]
        duration: Duration,
        /// Where the harness writes its JSON report (default: `<data_dir>/demo-report.json`).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Show what each local service's `/healthz` says; exit 1 if any is not ok.
    Status,
    /// Show the harness fleet: instances, players, scenario rates, errors, merged
    /// latency percentiles; with --target/--rate/--reset, first send a harness.control.
    /// Exits 1 when no instance is live.
    Fleet {
        /// NATS URL (default: the local stack's).
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
        /// Forget the fleet target and rates: instances go back to their own config.
        #[arg(long)]
        reset: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
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
        Command::Fleet { nats, listen, target, rates, reset, json } => fleet::run(fleet::FleetArgs {
            nats: nats.unwrap_or_else(|| stack::nats_url(&config)),
            listen,
            target,
            rates,
            reset,
            json,
        }),
        Command::Dev => run_async(dev(config, pass)),
        Command::Demo { players, duration, report } => {
            run_async(demo(config, pass, players, duration, report))
        }
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

async fn dev(config: Config, pass: PassThrough) -> anyhow::Result<ExitCode> {
    let output = Output::new();
    let (shutdown, force) = signals(output)?;
    let Some(stack) = Stack::start(&config, &pass, supervisor(&config, output, force), &shutdown).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    output.say("the backend is up:");
    for (name, endpoint) in stack.endpoints() {
        output.say(&format!("  {name:<13} {endpoint}"));
    }
    output.say(&format!("  players use   http://{}", config.gateway.listen));
    output.say("Ctrl-C stops everything");
    shutdown.cancelled().await;
    stack.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn demo(
    config: Config,
    pass: PassThrough,
    players: u64,
    duration: Duration,
    report: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let output = Output::new();
    let (shutdown, force) = signals(output)?;
    let supervisor = supervisor(&config, output, force);
    let report = report.unwrap_or_else(|| config.dev.data_dir.join("demo-report.json"));
    let _ = std::fs::remove_file(&report);
    let harness_path = stack::project_binary(&config, "harness")?;
    let Some(stack) = Stack::start(&config, &pass, supervisor.clone(), &shutdown).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    output.say(&format!(
        "the backend is up; running the harness: {players} players for {}",
        mm_shared::duration::format(duration)
    ));
    let mut args = pass.args();
    args.extend([
        "--players".into(),
        players.to_string().into(),
        "--duration".into(),
        mm_shared::duration::format(duration).into(),
        "--gateway".into(),
        format!("http://{}", config.gateway.listen).into(),
        "--nats".into(),
        stack::nats_url(&config).into(),
        "--report".into(),
        report.clone().into_os_string(),
    ]);
    let harness = supervisor.start(Program {
        name: "harness",
        path: harness_path,
        args,
        env: stack.credentials.client_env("harness"),
        ready: Ready::Http { addr: config.harness.admin_listen.to_string(), path: "/healthz" },
        restart: false,
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
    stack.stop().await;
    match std::fs::read_to_string(&report) {
        Ok(text) => {
            println!("\nrun report ({}):\n{text}", report.display());
        }
        Err(_) => output.say(&format!("the harness wrote no report at {}", report.display())),
    }
    Ok(match status {
        Some(status) if status.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}
