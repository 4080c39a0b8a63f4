//! The orchestrator: a Nomad-style scheduler node that runs one game server per match.
//!
//! One process is one node. It
//! - registers in KV `nodes` with its declared capacity and heartbeats ([`node`]);
//! - serves `orchestrator.allocate` in the `orchestrator` micro service's queue group:
//!   ranks the live nodes ([`scheduler`], pure) and asks the best on its place subject
//!   ([`allocate`]); serves its own `orchestrator.node.<id>.place` ([`place`]);
//! - runs each game server through a driver — rootless Podman or child processes
//!   ([`driver`]) — under an allocation runner ([`runner`]) that records every state
//!   change in KV `servers` ([`store`]);
//! - reconciles KV with its driver at start-up ([`reconcile`]).
//!
//! On SIGTERM it stops answering, stops its game servers (or leaves them for the next
//! start with `on_shutdown = "keep"`), removes its node entry and exits 0.

mod allocate;
mod config;
mod driver;
mod instrument;
mod ledger;
mod node;
mod place;
mod reconcile;
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
    let store = store::Store::open(nats.clone()).await?;

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
    let node = Arc::new(Node::new(node_id.clone(), config.clone(), driver, store, health));
    let dispatcher = node.clone();
    tokio::spawn(async move {
        while let Some(exit) = exits_rx.recv().await {
            dispatcher.dispatch(exit);
        }
    });

    reconcile::reconcile(&node).await?;
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

    let micro = nats
        .service_builder()
        .description("Places game servers on orchestrator nodes and runs them")
        .start(subjects::ORCHESTRATOR_SERVICE, mm_shared::VERSION)
        .await
        .map_err(|err| anyhow::anyhow!("cannot start the orchestrator micro service: {err}"))?;
    let allocate_endpoint = micro
        .endpoint_builder()
        .name("allocate")
        .add(subjects::ORCHESTRATOR_ALLOCATE)
        .await
        .map_err(|err| anyhow::anyhow!("cannot serve {}: {err}", subjects::ORCHESTRATOR_ALLOCATE))?;
    let place_subject = subjects::orchestrator_node_place(&node_id);
    let place_endpoint = micro
        .endpoint_builder()
        .name("place")
        .add(place_subject.clone())
        .await
        .map_err(|err| anyhow::anyhow!("cannot serve {place_subject}: {err}"))?;
    let allocator = Arc::new(Allocator { node: node.clone(), nats: nats.clone(), directory });
    let concurrency = config.concurrency.max(1);
    let serve_allocate = mm_shared::nats::serve_endpoint(
        allocate_endpoint,
        "allocate",
        concurrency,
        service.shutdown.clone(),
        move |request| {
            let allocator = allocator.clone();
            async move { allocator.allocate(request).await }
        },
    );
    let place_node = node.clone();
    let serve_place = mm_shared::nats::serve_endpoint(
        place_endpoint,
        "place",
        concurrency,
        service.shutdown.clone(),
        move |request| place::place(place_node.clone(), request),
    );
    tracing::info!(node = %node_id, "serving {} and {place_subject}", subjects::ORCHESTRATOR_ALLOCATE);
    serving.store(true, Ordering::Relaxed);
    tokio::join!(serve_allocate, serve_place);
    serving.store(false, Ordering::Relaxed);
    if let Err(err) = micro.stop().await {
        tracing::debug!("stopping the micro service: {err}");
    }

    shut_down(&node, config.on_shutdown, heartbeat_stop, heartbeat).await;
    background.cancel();
    nats.drain().await.context("draining the NATS connection")?;
    Ok(())
}

/// Stops (or leaves) this node's game servers and removes its node entry.
async fn shut_down(
    node: &Arc<Node>,
    on_shutdown: OnShutdown,
    heartbeat_stop: CancellationToken,
    heartbeat: tokio::task::JoinHandle<()>,
) {
    // Other nodes' allocators skip this node from its next heartbeat on.
    node.set_draining();
    let keep = on_shutdown == OnShutdown::Keep && node.driver.name() == "podman";
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
    let deadline = node.config.shutdown_timeout;
    if tokio::time::timeout(deadline, node.tasks.wait()).await.is_err() {
        tracing::warn!(
            servers = node.live_servers(),
            "game servers still stopping after {deadline:?}; leaving them"
        );
    }
    // The heartbeat stops first, so it cannot write the entry back.
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    if let Err(err) = node.store.delete_node(&node.id).await {
        tracing::warn!("removing this node's entry: {err}");
    }
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
