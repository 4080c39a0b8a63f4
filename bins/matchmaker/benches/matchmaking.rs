//! Tickets joined and matched per second: through the matchmaker (the release binary,
//! joins over NATS, a trivial allocator answering `orchestrator.allocate`), and beside it
//! the ceiling of the same Redis scripts called directly (join, pop, commit; no NATS, no
//! pipeline). The ratio says what the service layer costs.
//!
//! `cargo bench -p matchmaker` (or `just bench`). Every loop is bounded in count and
//! time; all traffic stays on 127.0.0.1. `MM_BENCH_TICKETS` changes the ticket count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Allocator, Answer};
use futures_util::StreamExt;
use matchmaker::config::TicketSettings;
use matchmaker::tickets::{Joined, TicketStore};
use mm_shared::nats::request_json;
use mm_shared::protocol::{
    JoinReply, JoinRequest, MATCH_SIZE, MatchRecord, ServerAssignment, keys, now_ms, subjects,
};
use mm_testkit::{NatsServer, RedisServer};

/// Requests in flight at once, for both measurements.
const CONCURRENCY: usize = 64;
/// No phase may run longer than this.
const TIME_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    let tickets: u64 = std::env::var("MM_BENCH_TICKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let tickets = tickets - tickets % MATCH_SIZE as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let nats = NatsServer::start().expect("nats-server (run `just setup`)");
    let redis = RedisServer::start().expect("redis-server (run `just setup`)");

    let direct = runtime.block_on(direct_scripts(&redis.url(), tickets));
    flush(&runtime, &redis.url());
    let through = runtime.block_on(through_matchmaker(&nats, &redis, tickets));

    println!("matchmaker: {tickets} tickets joined and matched, {CONCURRENCY} in flight");
    println!(
        "  Redis scripts called directly (ceiling): {:>9.0} tickets/s  ({:?})",
        rate(tickets, direct),
        direct
    );
    println!(
        "  through the matchmaker over NATS:        {:>9.0} tickets/s  ({:?})",
        rate(tickets, through),
        through
    );
    println!(
        "  ratio matchmaker / ceiling:              {:>9.2}",
        direct.as_secs_f64() / through.as_secs_f64()
    );
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn flush(runtime: &tokio::runtime::Runtime, url: &str) {
    runtime.block_on(async {
        let mut redis = common::redis(url).await;
        let () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("FLUSHALL");
    });
}

/// The ceiling: the join script for every ticket, then pop + commit per ten, with the
/// same concurrency, straight to Redis.
async fn direct_scripts(redis_url: &str, tickets: u64) -> Duration {
    let settings = TicketSettings { ttl: Duration::from_secs(600), retention: Duration::from_secs(600) };
    let store = TicketStore::new(common::redis(redis_url).await, settings);
    let started = Instant::now();
    let deadline = started + TIME_LIMIT;
    futures_util::stream::iter(0..tickets)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .for_each_concurrent(CONCURRENCY, |index| {
            let store = store.clone();
            async move {
                match store.join(&format!("direct-{index}")).await.expect("join") {
                    Joined::Created { .. } => {}
                    Joined::Existing(_) => panic!("player joined twice"),
                }
            }
        })
        .await;
    let matches = tickets / MATCH_SIZE as u64;
    futures_util::stream::iter(0..matches)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .for_each_concurrent(CONCURRENCY, |index| {
            let store = store.clone();
            async move {
                let batch = format!("batch-{index}");
                let popped =
                    store.pop(&batch, MATCH_SIZE, MATCH_SIZE, Duration::from_secs(30)).await.expect("pop");
                assert_eq!(popped.tickets.len(), MATCH_SIZE, "a full batch");
                let record = MatchRecord {
                    id: format!("match-{index}"),
                    ticket_ids: popped.tickets.iter().map(|ticket| ticket.id.clone()).collect(),
                    player_ids: popped.tickets.iter().map(|ticket| ticket.player_id.clone()).collect(),
                    server: ServerAssignment {
                        url: "ws://127.0.0.1/game/g/connect".into(),
                        game_id: "g".into(),
                    },
                    created_at: now_ms(),
                };
                store.commit(&batch, &record).await.expect("commit");
            }
        })
        .await;
    let elapsed = started.elapsed();
    assert!(elapsed < TIME_LIMIT, "the direct run hit its time limit");
    elapsed
}

/// Through the service: joins as NATS requests to the matchmaker binary; its matcher pops
/// and allocates (from a trivial responder here) and commits; done when every ticket's
/// match has been announced.
async fn through_matchmaker(nats: &NatsServer, redis: &RedisServer, tickets: u64) -> Duration {
    let (nats_url, redis_url) = (nats.url(), redis.url());
    let (mut matchmaker, _admin) = common::start_matchmaker(nats, redis, &[("MM_LOG__FILTER", "warn")]);

    let client = async_nats::connect(&nats_url).await.expect("nats");
    let allocator = Allocator::start(&nats_url, |_| Answer::Server(Duration::ZERO)).await;
    let mut created = client.subscribe(subjects::EVENTS_MATCH_CREATED).await.expect("subscribe");
    common::synced(&client).await;
    let matched = Arc::new(AtomicU64::new(0));
    let counter = {
        let matched = matched.clone();
        tokio::spawn(async move {
            while created.next().await.is_some() {
                if matched.fetch_add(MATCH_SIZE as u64, Ordering::Relaxed) + MATCH_SIZE as u64 >= tickets {
                    break;
                }
            }
        })
    };

    let started = Instant::now();
    let deadline = started + TIME_LIMIT;
    futures_util::stream::iter(0..tickets)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .for_each_concurrent(CONCURRENCY, |index| {
            let client = client.clone();
            async move {
                let request = JoinRequest { player_id: format!("nats-{index}") };
                let _: JoinReply =
                    request_json(&client, subjects::MATCHMAKING_JOIN, &request, Duration::from_secs(10))
                        .await
                        .expect("join");
            }
        })
        .await;
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, counter)
        .await
        .expect("every ticket matched within the time limit")
        .expect("counter");
    let elapsed = started.elapsed();
    drop(allocator);
    let depth: u64 = redis::cmd("LLEN")
        .arg(keys::QUEUE_DEFAULT)
        .query_async(&mut common::redis(&redis_url).await)
        .await
        .expect("LLEN");
    assert_eq!(depth, 0, "nothing left in the queue");
    matchmaker.terminate(Duration::from_secs(10));
    elapsed
}
