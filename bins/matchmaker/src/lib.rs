//! The matchmaker: tickets and the queue in Redis, matches of ten, over NATS.
//!
//! One process hosts three NATS micro services and the matcher:
//!
//! | module | what |
//! |---|---|
//! | [`matchmaking`] | `matchmaking.join/status/cancel`: tickets for players |
//! | [`matcher`] | pops batches, asks `orchestrator.allocate`, commits matches; the reaper |
//! | [`tickets`] | every Redis change to tickets, the queue and leases (Lua scripts) |
//! | [`release`] | `orchestrator.release` for matches that were not committed, in the background |
//! | [`retry`] | the one backoff (with jitter) every retry and every backing-off loop uses |
//! | [`session`] | `session.login/verify/logout`: accounts and tokens |
//! | [`store`] | `store.offers/purchase`: catalogue, balances, idempotent purchases |
//! | [`events`] | `events.ticket.<id>`, `events.match.created` |
//!
//! Every endpoint subscribes in its service's queue group, so any number of matchmaker
//! processes share the load; every Redis change is one atomic script, so they never
//! step on each other.

#![forbid(unsafe_code)]

pub mod config;
pub mod events;
pub mod matcher;
pub mod matchmaking;
pub mod metrics;
pub mod micro;
pub mod release;
pub mod retry;
pub mod session;
pub mod store;
pub mod tickets;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::Events;
use crate::matcher::{Fifo, Matcher};
use crate::micro::MicroService;
use crate::release::Releaser;
use crate::tickets::TicketStore;

/// The services and matcher of one process, running until `shutdown`.
pub struct Running {
    services: Vec<MicroService>,
    matcher: Option<JoinHandle<()>>,
    releaser: Releaser,
    release_grace: Duration,
}

impl Running {
    /// Waits for the services to finish their requests, the matcher its allocations and
    /// then, for one release deadline at most, the releases they started (call after
    /// `shutdown` was cancelled).
    pub async fn finish(self) {
        for service in self.services {
            service.finish().await;
        }
        if let Some(matcher) = self.matcher
            && let Err(err) = matcher.await
        {
            tracing::warn!("matcher task ended abnormally: {err}");
        }
        self.releaser.finish(self.release_grace).await;
    }
}

/// Starts the `session`, `matchmaking` and `store` services and (if enabled) the matcher.
///
/// `config` is expected to have passed [`Config::validate`]; the binary checks it at
/// startup, before it connects to anything.
pub async fn start(
    nats: &Client,
    redis: ConnectionManager,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    metrics::describe();
    let concurrency = config.matchmaker.endpoint_concurrency.max(1);
    let tickets = TicketStore::new(redis.clone(), config.matchmaker.tickets());
    upgrade_queue(&tickets, config).await?;
    let releaser = Releaser::new(nats.clone(), config.matcher.release());
    let wake = Arc::new(Notify::new());
    let mut services = Vec::new();
    let sessions = session::Sessions::new(redis.clone(), &config.session);
    services.push(session::serve(nats, sessions, concurrency, shutdown.clone()).await?);
    let matchmaking = matchmaking::Matchmaking::new(
        tickets.clone(),
        Events::new(nats.clone()),
        wake.clone(),
        releaser.clone(),
    );
    services.push(matchmaking::serve(nats, matchmaking, concurrency, shutdown.clone()).await?);
    let store = store::Store::new(redis, config.store.clone());
    services.push(store::serve(nats, store, concurrency, shutdown.clone()).await?);
    let matcher = config.matcher.enabled.then(|| {
        let matcher = Arc::new(Matcher::new(
            tickets,
            nats.clone(),
            Arc::new(Fifo),
            config.matcher.clone(),
            wake,
            releaser.clone(),
        ));
        tokio::spawn(matcher.run(shutdown))
    });
    if matcher.is_none() {
        tracing::info!("matcher disabled (matcher.enabled = false): serving requests only");
    }
    Ok(Running { services, matcher, releaser, release_grace: config.matcher.release_timeout })
}

/// Turns a queue an older matchmaker left (a list) into the sorted set this one uses,
/// trying a few times while Redis fails.
async fn upgrade_queue(tickets: &TicketStore, config: &Config) -> anyhow::Result<()> {
    let moved = config
        .matcher
        .backoff()
        .retry(
            5,
            || tickets.upgrade(),
            |err| matches!(err, tickets::StoreError::Redis(_)),
            |err, pause| tracing::warn!("cannot check the queue's type, trying again in {pause:?}: {err}"),
        )
        .await
        .map_err(|err| anyhow::anyhow!("cannot upgrade the queue in redis: {err}"))?;
    if let Some(moved) = moved {
        tracing::info!(moved, "queue upgraded from a list to a sorted set by join order");
    }
    Ok(())
}
