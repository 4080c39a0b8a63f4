//! The matchmaker: tickets and the queue in Redis, matches of ten, over NATS.
//!
//! One process hosts three NATS micro services and the matcher:
//!
//! | module | what |
//! |---|---|
//! | [`matchmaking`] | `matchmaking.join/status/cancel/queues`: tickets for players |
//! | [`queues`] | `[[matchmaker.queues]]`: each queue's match function and settings |
//! | [`matcher`] | per queue: pops batches, runs the match function, asks `orchestrator.allocate`, commits matches; the reaper |
//! | [`tickets`] | every Redis change to tickets, the queues and leases (Lua scripts) |
//! | [`ratings`] | player ratings (Weng-Lin); `events.game.ended` → once-per-game updates; `session.rating.get/set` |
//! | [`party`] | `party.create/join/get/leave` |
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
pub mod party;
pub mod queues;
pub mod ratings;
pub mod release;
pub mod retry;
pub mod session;
pub mod store;
pub mod tickets;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::Events;
use crate::matcher::Matcher;
use crate::micro::MicroService;
use crate::release::Releaser;
use crate::tickets::TicketStore;

/// The services and matcher of one process, running until `shutdown`.
pub struct Running {
    services: Vec<MicroService>,
    matcher: Option<JoinHandle<()>>,
    results: JoinHandle<()>,
    token_upkeep: JoinHandle<()>,
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
        if let Err(err) = self.token_upkeep.await {
            tracing::warn!("the token upkeep task ended abnormally: {err}");
        }
        if let Err(err) = self.results.await {
            tracing::warn!("the game results task ended abnormally: {err}");
        }
        if let Some(matcher) = self.matcher
            && let Err(err) = matcher.await
        {
            tracing::warn!("matcher task ended abnormally: {err}");
        }
        self.releaser.finish(self.release_grace).await;
    }
}

/// Starts the `session`, `matchmaking`, `party` and `store` services, the game results
/// subscription and (if enabled) one matcher per queue.
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
    let queues = Arc::new(queues::Queues::from_config(config).map_err(anyhow::Error::msg)?);
    metrics::register_queues(&queues.names());
    let concurrency = config.matchmaker.endpoint_concurrency.max(1);
    let tickets = TicketStore::new(redis.clone(), config.matchmaker.tickets());
    upgrade_queue(&tickets, config).await?;
    let releaser = Releaser::new(nats.clone(), config.matcher.release());
    let ratings = ratings::Ratings::new(redis.clone(), config.ratings.clone(), config.session.account_ttl);
    let wake = Arc::new(Notify::new());
    let mut services = Vec::new();
    let matchmaking = matchmaking::Matchmaking::with(
        tickets.clone(),
        Events::new(nats.clone()),
        wake.clone(),
        releaser.clone(),
        queues.clone(),
        ratings.clone(),
    );
    let parties = party::Parties::new(redis.clone(), config.parties.clone(), matchmaking.clone());
    let replicas = mm_shared::nats::kv_replicas(nats, config.nats.kv_replicas);
    let tokens =
        tokens::Tokens::start(nats, redis.clone(), config.session.key_lifetime, config.session.ttl, replicas)
            .await?;
    let token_upkeep = tokens.spawn_upkeep(shutdown.clone());
    let sessions =
        session::Sessions::new(redis.clone(), &config.session, tokens).with_parties(parties.clone());
    services.push(session::serve(nats, sessions, ratings.clone(), concurrency, shutdown.clone()).await?);
    services.push(matchmaking::serve(nats, matchmaking, concurrency, shutdown.clone()).await?);
    services.push(party::serve(nats, parties, concurrency, shutdown.clone()).await?);
    let store = store::Store::new(redis, config.store.clone());
    services.push(store::serve(nats, store, concurrency, shutdown.clone()).await?);
    let results = ratings::serve_results(nats.clone(), ratings, shutdown.clone()).await?;
    let matcher = config.matcher.enabled.then(|| {
        let mut matchers = tokio::task::JoinSet::new();
        for queue in queues.iter() {
            let matcher = Matcher::new(
                tickets.for_queue(&queue.info.name),
                nats.clone(),
                queue.function.clone(),
                config.matcher.clone(),
                wake.clone(),
                releaser.clone(),
            )
            .with_teams(queue.teams)
            .with_default_rating(config.ratings.initial);
            matchers.spawn(Arc::new(matcher).run(shutdown.clone()));
        }
        tokio::spawn(async move { while matchers.join_next().await.is_some() {} })
    });
    if matcher.is_none() {
        tracing::info!("matcher disabled (matcher.enabled = false): serving requests only");
    }
    Ok(Running {
        services,
        matcher,
        results,
        token_upkeep,
        releaser,
        release_grace: config.matcher.release_timeout,
    })
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
