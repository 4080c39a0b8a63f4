//! The orchestrator: a Nomad-style scheduler node that runs one game server per match.
//!
//! One process is one node. It
//! - registers in KV `nodes` with its declared capacity and heartbeats ([`node`]);
//! - serves `orchestrator.allocate` in the `orchestrator` micro service's queue group:
//!   ranks the live nodes ([`scheduler`], pure) and asks the best on its place subject
//!   ([`allocate`]); serves its own `orchestrator.node.<id>.place` ([`place`]);
//! - runs each game server through a driver — rootless Podman or child processes
//!   ([`driver`]) — under an allocation runner ([`runner`]) that records every state
//!   change in KV `servers` ([`store`]), admitting only the starts its driver can have
//!   ready within the request's budget ([`admission`]);
//! - serves `orchestrator.release` and its own `orchestrator.node.<id>.release`
//!   ([`release`]);
//! - reconciles KV with its driver at start-up, every `reconcile_interval` and after each
//!   NATS reconnect, and reaps the entries of nodes gone silent ([`reconcile`]);
//! - keeps a pool of warm servers when `[orchestrator.pool]` asks for one ([`pool`]):
//!   allocations claim them in milliseconds ([`place`]), and the pool refills in the
//!   background. Each server's runner is a pure state machine ([`machine`]) with its I/O
//!   around it ([`runner`], [`game_api`]).
//!
//! It holds its node id alone: a second process with a live node's id refuses to start
//! ([`node::Node::claim`]).
//!
//! On SIGTERM it stops taking servers and gives up the placements under way at once,
//! stops its game servers (or leaves them for the next start with `on_shutdown =
//! "keep"`), removes whatever they left, removes its node entry and exits 0.

mod admission;

mod allocate;
mod config;
mod driver;
mod game_api;
mod instrument;
mod ledger;
mod machine;
mod node;
mod place;
mod pool;
mod reconcile;
mod release;
mod results;
mod retry;
mod runner;
mod scheduler;
mod store;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use async_nats::service::ServiceExt;
use clap::Parser;
use mm_shared::protocol::subjects;
use mm_shared::service::{self, CommonArgs, Service};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::allocate::{Allocator, Directory};
use crate::config::{Config, OnShutdown};
use crate::node::{DriverHealth, Node, StopReason};

/// Places game servers on nodes and supervises them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// This node's id (config key `orchestrator.node`).
    #[arg(long)]
    node: Option<String>,
    /// `auto`, `podman` or `process` (config key `orchestrator.driver`).
    #[arg(long)]
    driver: Option<String>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(node) = args.node.take() {
        args.common.overrides.set("orchestrator.node", node);
    }
    if let Some(driver) = args.driver.take() {
        args.common.overrides.set("orchestrator.driver", driver);
    }
    service::main("orchestrator", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    raise_open_files_limit();
    let config = service.config.orchestrator.clone();
    config.validate().map_err(anyhow::Error::msg)?;
    let node_id = config::node_id(&config.node).map_err(anyhow::Error::msg)?;
    instrument::describe();
    instrument::init_states(&node_id);
    instrument::init_counters(&node_id);
    service.serve_admin(config.admin_listen, "orchestrator.admin_listen").await?;
    let nats = service.connect_nats(&service.config.nats).await?;
    // Healthy only once this node answers placements (start-up reconciles first).
    let serving = Arc::new(AtomicBool::new(false));
    let serving_check = serving.clone();
    service.health.add_check("serving", move || {
        let serving = serving_check.load(Ordering::Relaxed);
        async move { if serving { Ok("serving".to_owned()) } else { Err("starting".to_owned()) } }
    });
    let replicas = mm_shared::nats::kv_replicas(&nats, service.config.nats.kv_replicas);
    let store = store::Store::open_with(nats.clone(), replicas).await?;

    // Background work that must outlive the endpoints (exit events while servers are
    // being stopped at shutdown): cancelled last.
    let background = CancellationToken::new();
    let (exits_tx, mut exits_rx) = mpsc::unbounded_channel();
    let driver = driver::select(&config, &node_id, exits_tx).await?;
    let health = match driver.check().await {
        Ok(status) => DriverHealth { healthy: true, status },
        Err(err) => DriverHealth { healthy: false, status: err.to_string() },
    };
    if health.healthy {
        tracing::info!(node = %node_id, driver = driver.name(), "using the {} driver: {}", driver.name(), health.status);
    } else {
        tracing::warn!(node = %node_id, driver = driver.name(), "using the {} driver, unhealthy for now: {}", driver.name(), health.status);
    }
    driver.watch(background.clone());
    instrument::init_driver(driver.name());
    let node = Arc::new(Node::new(node_id.clone(), config.clone(), driver, store, health));
    // The id first: reconciling touches the id's containers, which another live process
    // with this id would be running.
    node.claim().await?;
    let dispatcher = node.clone();
    tokio::spawn(async move {
        while let Some(exit) = exits_rx.recv().await {
            dispatcher.dispatch(exit);
        }
    });

    reconcile::reconcile(&node).await?;
    if config.pool.is_on() {
        tracing::info!(
            min = config.pool.min,
            max = config.pool.ceiling(),
            policy = ?config.pool.policy,
            "keeping a pool of warm game servers"
        );
        tokio::spawn(node.clone().keep_pool());
    }
    let health_node = node.clone();
    service.health.add_check("driver", move || {
        let health = health_node.driver_health();
        async move { if health.healthy { Ok(health.status) } else { Err(health.status) } }
    });
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(node.clone().heartbeat(heartbeat_stop.clone()));
    tokio::spawn(node.clone().watch_driver(heartbeat_stop.clone()));
    let janitor = node.clone();
    let janitor_stop = background.clone();
    tokio::spawn(async move { janitor.store.janitor(janitor_stop).await });
    let directory = Arc::new(Directory::default());
    tokio::spawn(directory.clone().follow(node.store.nodes().clone(), background.clone()));
    let reconcile_stop = CancellationToken::new();
    tokio::spawn(
        reconcile::Reconciler::new(node.clone(), directory.clone()).run(nats.clone(), reconcile_stop.clone()),
    );

    // Another process took the id over: stop, leaving the servers to it.
    let (lost, stop_service) = (node.clone(), service.shutdown.clone());
    tokio::spawn(async move {
        lost.claim_lost.cancelled().await;
        stop_service.cancel();
    });
    // At the signal, placements under way are given up at once (not after the endpoints
    // drained), and anti-entropy stops so it does not race the shutdown.
    let (stopping, signal, reconcile_halt) = (node.clone(), service.shutdown.clone(), reconcile_stop.clone());
    let on_shutdown = config.on_shutdown;
    tokio::spawn(async move {
        signal.cancelled().await;
        reconcile_halt.cancel();
        let keep = keeps_servers(&stopping, on_shutdown);
        stopping.begin_shutdown(keep);
        if !keep {
            // All at once, so they end together rather than one by one in the driver's
            // turn as their runners stop them.
            let signalled = stopping.driver.terminate_all(&stopping.id).await;
            if signalled > 0 {
                tracing::info!(servers = signalled, "sent every game server SIGTERM");
            }
        }
    });

    let micro = nats
        .service_builder()
        .description("Places game servers on orchestrator nodes and runs them")
        .start(subjects::ORCHESTRATOR_SERVICE, mm_shared::VERSION)
        .await
        .map_err(|err| anyhow::anyhow!("cannot start the orchestrator micro service: {err}"))?;
    let endpoint = |name: &'static str, subject: String| {
        let micro = &micro;
        async move {
            micro
                .endpoint_builder()
                .name(name)
                .add(subject.clone())
                .await
                .map_err(|err| anyhow::anyhow!("cannot serve {subject}: {err}"))
        }
    };
    let allocate_endpoint = endpoint("allocate", subjects::ORCHESTRATOR_ALLOCATE.to_owned()).await?;
    let release_endpoint = endpoint("release", subjects::ORCHESTRATOR_RELEASE.to_owned()).await?;
    let place_subject = subjects::orchestrator_node_place(&node_id);
    let place_endpoint = endpoint("place", place_subject.clone()).await?;
    let node_release_endpoint =
        endpoint("node_release", subjects::orchestrator_node_release(&node_id)).await?;
    let allocator = Arc::new(Allocator { node: node.clone(), nats: nats.clone(), directory });
    let concurrency = config.concurrency.max(1);
    let serve_allocate = mm_shared::nats::serve_endpoint_with_budget(
        allocate_endpoint,
        "allocate",
        concurrency,
        service.shutdown.clone(),
        move |request, budget| {
            let allocator = allocator.clone();
            async move { allocator.allocate(request, budget).await }
        },
    );
    let place_node = node.clone();
    let place_timeout = config.place_timeout;
    let serve_place = mm_shared::nats::serve_endpoint_with_budget(
        place_endpoint,
        "place",
        concurrency,
        service.shutdown.clone(),
        move |request, budget: mm_shared::nats::Budget| {
            place::place(place_node.clone(), request, budget.deadline_within(place_timeout))
        },
    );
    let (release_node, release_nats) = (node.clone(), nats.clone());
    let serve_release = mm_shared::nats::serve_endpoint_with_budget(
        release_endpoint,
        "release",
        concurrency,
        service.shutdown.clone(),
        move |request, budget| release::release(release_node.clone(), release_nats.clone(), request, budget),
    );
    let node_release_node = node.clone();
    let serve_node_release = mm_shared::nats::serve_endpoint(
        node_release_endpoint,
        "node_release",
        concurrency,
        service.shutdown.clone(),
        move |request| release::release_local(node_release_node.clone(), request),
    );
    tracing::info!(
        node = %node_id,
        "serving {}, {} and {place_subject}",
        subjects::ORCHESTRATOR_ALLOCATE,
        subjects::ORCHESTRATOR_RELEASE
    );
    // The subscriptions reach the server before /healthz says ready (a caller that waited
    // for ready must not meet "no responders").
    if let Err(err) = nats.flush().await {
        tracing::warn!("flushing the service subscriptions: {err}");
    }
    serving.store(true, Ordering::Relaxed);
    tokio::join!(serve_allocate, serve_place, serve_release, serve_node_release);
    serving.store(false, Ordering::Relaxed);
    if let Err(err) = micro.stop().await {
        tracing::debug!("stopping the micro service: {err}");
    }

    reconcile_stop.cancel();
    shut_down(&node, on_shutdown, heartbeat_stop, heartbeat).await;
    background.cancel();
    nats.drain().await.context("draining the NATS connection")?;
    if node.claim_lost.is_cancelled() {
        return Err(anyhow::anyhow!("stopped: another orchestrator took node id `{node_id}` over"));
    }
    Ok(())
}

/// Does this shutdown leave the servers running? With `on_shutdown = "keep"` under
/// Podman (process-driver servers die with their node anyway), and always once another
/// process holds the node id: the servers are its now.
fn keeps_servers(node: &Node, on_shutdown: OnShutdown) -> bool {
    node.claim_lost.is_cancelled() || (on_shutdown == OnShutdown::Keep && node.driver.name() == "podman")
}

/// Stops (or leaves) this node's game servers, removes what they left behind, and
/// removes its node entry.
async fn shut_down(
    node: &Arc<Node>,
    on_shutdown: OnShutdown,
    heartbeat_stop: CancellationToken,
    heartbeat: tokio::task::JoinHandle<()>,
) {
    // Other nodes' allocators skip this node from its next heartbeat on.
    node.set_draining();
    let keep = keeps_servers(node, on_shutdown);
    let reason = if keep { StopReason::Keep } else { StopReason::Shutdown };
    let live = node.stop_all(reason);
    if live > 0 {
        tracing::info!(
            servers = live,
            "{} this node's game servers",
            if keep { "leaving" } else { "stopping" }
        );
    }
    node.tasks.close();
    // One time limit for the whole shutdown, from the signal: the runners get most of
    // it, the bulk removal of what they leave the last quarter (at least a second).
    let limit = node.config.shutdown_timeout;
    let deadline = node.draining_since() + limit;
    let runners_until = deadline - limit / 4;
    if tokio::time::timeout_at(runners_until.into(), node.tasks.wait()).await.is_err() {
        tracing::warn!(
            servers = node.live_servers(),
            "game servers still stopping after {}; removing what is left in bulk",
            mm_shared::duration::format(runners_until.saturating_duration_since(node.draining_since()))
        );
    }
    // What the runners could not remove in time (a busy Podman), in as few calls as the
    // driver allows. Not once the id is another process's: those servers are its.
    if !node.claim_lost.is_cancelled() {
        let left = deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(std::time::Duration::from_secs(1));
        reconcile::sweep_at_shutdown(node, keep, left).await;
    }
    // The heartbeat stops first, so it cannot write the entry back.
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    node.release_claim().await;
}

/// Raises the soft open-files limit to the hard one: each game server of the process
/// driver holds pipes here, and the default soft limit (often 1024) would cap a node
/// at a few hundred servers.
#[allow(unsafe_code)]
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("could not raise the open-files limit");
            }
        }
    }
}
