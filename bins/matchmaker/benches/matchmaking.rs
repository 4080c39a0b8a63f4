//! Tickets joined and matched per second: through the matchmaker (the release binary,
//! joins over NATS, a trivial allocator answering `orchestrator.allocate`), and beside it
//! the ceiling of the same Redis scripts called directly (join, pop, claim, commit; no
//! NATS, no pipeline). The ratio says what the service layer costs.
//!
//! Then the queue at scale: join, cancel and pop, one at a time, with 100,000 tickets
//! queued, and one pop behind 10,000 overdue tickets, for the seed's list scripts (kept
//! in `support/seed_list.rs` as the baseline) and for the sorted set, side by side.
//!
//! Then the queues at depth: 50,000 tickets of random ratings waiting in `default` (FIFO)
//! and, in the same run, 50,000 in `skill` (two teams of five, ratings within a widening
//! window): tickets matched per second through the matchmaker while the queue is deep,
//! and the ratio of the two.
//!
//! `cargo bench -p matchmaker` (or `just bench`). Every loop is bounded in count and
//! time; all traffic stays on 127.0.0.1. `MM_BENCH_TICKETS` changes the ticket count,
//! `MM_BENCH_QUEUED` the queue at scale, `MM_BENCH_WAITING` the queues at depth;
//! `MM_BENCH_CASES` picks cases (comma-separated: `throughput`, `scale`, `queues`; all by
//! default), e.g. `MM_BENCH_CASES=queues cargo bench -p matchmaker --bench matchmaking`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/seed_list.rs"]
mod seed_list;

use common::{Allocator, Answer};
use futures_util::StreamExt;
use matchmaker::config::TicketSettings;
use matchmaker::tickets::{Cancelled, Claim, Joined, NewTicket, TicketStore};
use mm_shared::nats::request_json;
use mm_shared::protocol::{
    JoinReply, JoinRequest, MATCH_SIZE, MatchCreated, MatchRecord, ServerAssignment, keys, now_ms, subjects,
};
use mm_testkit::{NatsServer, RedisServer};

/// Requests in flight at once, for both measurements.
const CONCURRENCY: usize = 64;
/// No phase may run longer than this.
const TIME_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    let tickets: u64 = std::env::var("MM_BENCH_TICKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let tickets = tickets - tickets % MATCH_SIZE as u64;
    let cases = std::env::var("MM_BENCH_CASES").unwrap_or_default();
    let wanted = |case: &str| cases.trim().is_empty() || cases.split(',').any(|c| c.trim() == case);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let nats = NatsServer::start().expect("nats-server (run `just setup`)");
    let redis = RedisServer::start().expect("redis-server (run `just setup`)");
    if wanted("throughput") {
        throughput(&runtime, &nats, &redis, tickets);
    }
    if wanted("scale") {
        scale(&runtime, &redis);
    }
    if wanted("queues") {
        let waiting: usize =
            std::env::var("MM_BENCH_WAITING").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
        queues_at_depth(&runtime, &nats, &redis, waiting);
    }
}

fn throughput(runtime: &tokio::runtime::Runtime, nats: &NatsServer, redis: &RedisServer, tickets: u64) {
    flush(runtime, &redis.url());

    let direct = runtime.block_on(direct_scripts(&redis.url(), tickets));
    flush(runtime, &redis.url());
    let through = runtime.block_on(through_matchmaker(nats, redis, tickets));

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
    println!();
}

fn scale(runtime: &tokio::runtime::Runtime, redis: &RedisServer) {
    let queued: usize = std::env::var("MM_BENCH_QUEUED").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    flush(runtime, &redis.url());
    let list = runtime.block_on(at_scale(&redis.url(), queued, Queue::SeedList));
    flush(runtime, &redis.url());
    let sorted = runtime.block_on(at_scale(&redis.url(), queued, Queue::SortedSet));
    println!(
        "queue:default at scale: {queued} tickets queued; {OPS} operations of each kind, one at a time \
         (client-side latency, loopback round trip included)"
    );
    println!("  {:<34} {:>28}   {:>28}", "", "list (seed scripts)", "sorted set (now)");
    for (name, seed, now) in [
        ("join", &list.join, &sorted.join),
        ("cancel (a random queued ticket)", &list.cancel, &sorted.cancel),
        ("pop (10 into a lease)", &list.pop, &sorted.pop),
    ] {
        println!("  {name:<34} {:>28}   {:>28}", seed.summary(), now.summary());
    }
    println!(
        "  {:<34} {:>28}   {:>28}",
        format!("one pop behind {OVERDUE} overdue"),
        format!("{:.2} ms, expired {}", ms(list.overdue_pop), list.overdue_expired),
        format!("{:.2} ms, expired {}", ms(sorted.overdue_pop), sorted.overdue_expired),
    );
    println!();
}

/// The share of the waiting tickets the queues-at-depth rate is measured over: the queue
/// stays deep (a fifth still waiting) for the whole measurement.
const DEPTH_MEASURED: f64 = 0.8;

/// `waiting` tickets with random ratings in `default`, then as many in `skill`, each
/// matched through the matchmaker; prints both rates and their ratio.
fn queues_at_depth(
    runtime: &tokio::runtime::Runtime,
    nats: &NatsServer,
    redis: &RedisServer,
    waiting: usize,
) {
    let waiting = waiting - waiting % MATCH_SIZE;
    let mut rates = Vec::new();
    for queue in ["default", "skill"] {
        flush(runtime, &redis.url());
        let run = runtime.block_on(at_depth(nats, redis, queue, waiting));
        rates.push(run);
    }
    let (fifo, skill) = (&rates[0], &rates[1]);
    println!(
        "queues at depth: {waiting} tickets waiting, ratings ~ N(1500, 300); the first {:.0}% of them \
         matched through the matchmaker (allocations answered at once)",
        DEPTH_MEASURED * 100.0
    );
    for (name, run) in [("default (fifo, 10)", fifo), ("skill (2 teams of 5)", skill)] {
        println!(
            "  {name:<22} {:>9.0} tickets/s  ({} matched in {:.2?}; {} of {waiting} by the last match, at {:.2?})",
            rate(run.measured as u64, run.elapsed),
            run.measured,
            run.elapsed,
            run.matched,
            run.last,
        );
    }
    println!(
        "  skill/fifo ratio: {:.2}",
        rate(skill.measured as u64, skill.elapsed) / rate(fifo.measured as u64, fifo.elapsed)
    );
}

/// One queue at depth.
struct AtDepth {
    /// Tickets matched over the measurement.
    measured: usize,
    /// From the first match to the measured share.
    elapsed: Duration,
    /// Tickets matched in all (the tail waits for its window to widen; fewer than a
    /// match's worth can never play).
    matched: usize,
    /// From the first match to the last.
    last: Duration,
}

/// How long the tail of a queue at depth may go without a match before the run ends.
const TAIL_IDLE: Duration = Duration::from_secs(10);

/// A normal draw (Box-Muller) from `rng`.
fn normal(rng: &mut fastrand::Rng, mean: f64, sd: f64) -> f64 {
    let (u, v) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
    mean + sd * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// Fills `queue` with `waiting` solo tickets of random ratings straight through the join
/// script, then starts the matchmaker and times its matches of that queue.
async fn at_depth(nats: &NatsServer, redis: &RedisServer, queue: &str, waiting: usize) -> AtDepth {
    let settings = TicketSettings { ttl: Duration::from_secs(600), retention: Duration::from_secs(600) };
    let store = TicketStore::new(common::redis(&redis.url()).await, settings).for_queue(queue);
    let mut rng = fastrand::Rng::with_seed(42);
    let ratings: Vec<f64> = (0..waiting).map(|_| normal(&mut rng, 1500.0, 300.0)).collect();
    let filled = Instant::now();
    futures_util::stream::iter(ratings.into_iter().enumerate())
        .for_each_concurrent(CONCURRENCY, |(index, rating)| {
            let store = store.clone();
            async move {
                let new = NewTicket {
                    player_id: format!("{queue}-{index}"),
                    rating: Some(rating),
                    ..NewTicket::default()
                };
                match store.join_ticket(new).await.expect("join") {
                    Joined::Created { .. } => {}
                    other => panic!("a new player's join: {other:?}"),
                }
            }
        })
        .await;
    assert!(filled.elapsed() < TIME_LIMIT, "filling the queue took too long");

    let client = async_nats::connect(&nats.url()).await.expect("nats");
    let mut created = client.subscribe(subjects::EVENTS_MATCH_CREATED).await.expect("subscribe");
    common::synced(&client).await;
    let allocator = Allocator::start(&nats.url(), |_| Answer::Server(Duration::ZERO)).await;
    let (mut matchmaker, _admin) = common::start_matchmaker(nats, redis, &[("MM_LOG__FILTER", "warn")]);
    let target = (waiting as f64 * DEPTH_MEASURED) as usize;
    let deadline = Instant::now() + TIME_LIMIT;
    let (mut matched, mut first, mut measured) = (0usize, None::<(Instant, usize)>, None);
    let mut last = Duration::ZERO;
    while waiting - matched >= MATCH_SIZE {
        let left = deadline.saturating_duration_since(Instant::now()).min(TAIL_IDLE);
        let Ok(Some(message)) = tokio::time::timeout(left, created.next()).await else { break };
        let Ok(event) = serde_json::from_slice::<MatchCreated>(&message.payload) else { continue };
        if event.queue != queue {
            continue;
        }
        matched += event.player_ids.len();
        let (started, before) = *first.get_or_insert((Instant::now(), event.player_ids.len()));
        last = started.elapsed();
        if measured.is_none() && matched >= target {
            measured = Some((matched - before, last));
        }
    }
    drop(allocator);
    matchmaker.terminate(Duration::from_secs(10));
    let (measured, elapsed) = measured.expect("the measured share matched within the time limit");
    AtDepth { measured, elapsed, matched, last }
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
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
                    other => panic!("a new player's join: {other:?}"),
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
                let ids: Vec<String> = popped.tickets.iter().map(|ticket| ticket.id.clone()).collect();
                let match_id =
                    match store.claim(&batch, &format!("match-{index}"), &ids).await.expect("claim") {
                        Claim::Claimed { match_id, .. } => match_id,
                        other => panic!("{other:?}"),
                    };
                let record = MatchRecord {
                    id: match_id,
                    ticket_ids: popped.tickets.iter().map(|ticket| ticket.id.clone()).collect(),
                    player_ids: popped.tickets.iter().map(|ticket| ticket.player_id.clone()).collect(),
                    server: ServerAssignment {
                        url: "ws://127.0.0.1/game/g/connect".into(),
                        game_id: "g".into(),
                    },
                    created_at: now_ms(),
                    queue: "default".into(),
                    teams: None,
                    region: None,
                    quality: None,
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
                let request = JoinRequest { player_id: format!("nats-{index}"), ..JoinRequest::default() };
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
    let depth: u64 = redis::cmd("ZCARD")
        .arg(keys::QUEUE_DEFAULT)
        .query_async(&mut common::redis(&redis_url).await)
        .await
        .expect("ZCARD");
    assert_eq!(depth, 0, "nothing left in the queue");
    matchmaker.terminate(Duration::from_secs(10));
    elapsed
}

/// Operations of each kind measured at scale.
const OPS: usize = 2_000;
/// Overdue tickets ahead of the queue for the one-pop measurement.
const OVERDUE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    SeedList,
    SortedSet,
}

/// Latencies of one kind of operation.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn summary(&self) -> String {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
        let mean = sorted.iter().sum::<Duration>() / sorted.len().max(1) as u32;
        format!("{:>7.1} µs mean, p99 {:>7.1} µs", micros(mean), micros(at(0.99)))
    }
}

fn micros(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6
}

struct AtScale {
    join: Latencies,
    cancel: Latencies,
    pop: Latencies,
    overdue_pop: Duration,
    overdue_expired: usize,
}

/// `OVERDUE` overdue tickets, then `queued` fresh ones; one pop (timed); then `OPS`
/// joins, cancels of random queued tickets and pops, each timed alone.
async fn at_scale(redis_url: &str, queued: usize, queue: Queue) -> AtScale {
    let redis = common::redis(redis_url).await;
    let fresh = TicketSettings { ttl: Duration::from_secs(600), retention: Duration::from_secs(600) };
    let overdue = TicketSettings { ttl: Duration::from_millis(1), retention: Duration::from_secs(600) };
    let store = TicketStore::new(redis.clone(), fresh);
    let seed = seed_list::SeedList::new(redis.clone(), fresh.ttl);
    let seed_overdue = seed_list::SeedList::new(redis.clone(), overdue.ttl);
    let store_overdue = TicketStore::new(redis.clone(), overdue);
    let started = Instant::now();
    let join = |player: String, late: bool| {
        let (store, seed) = if late { (&store_overdue, &seed_overdue) } else { (&store, &seed) };
        async move {
            match queue {
                Queue::SeedList => seed.join(&player).await,
                Queue::SortedSet => match store.join(&player).await.expect("join") {
                    Joined::Created { ticket, .. } => ticket.id,
                    Joined::Existing(ticket) => panic!("{player} joined twice: {}", ticket.id),
                    other => panic!("{player}: {other:?}"),
                },
            }
        }
    };
    futures_util::stream::iter(0..OVERDUE)
        .for_each_concurrent(CONCURRENCY, |index| {
            let join = &join;
            async move {
                join(format!("overdue-{index}"), true).await;
            }
        })
        .await;
    let tickets: Vec<(String, String)> = futures_util::stream::iter(0..queued)
        .map(|index| {
            let join = &join;
            async move {
                let player = format!("queued-{index}");
                let ticket = join(player.clone(), false).await;
                (player, ticket)
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    assert!(started.elapsed() < TIME_LIMIT * 2, "filling the queue took too long");

    let (store, seed) = (&store, &seed);
    let pop = |batch: String| async move {
        match queue {
            Queue::SeedList => seed.pop(&batch, MATCH_SIZE).await,
            Queue::SortedSet => {
                let popped =
                    store.pop(&batch, MATCH_SIZE, MATCH_SIZE, Duration::from_secs(30)).await.expect("pop");
                (popped.tickets.len(), popped.expired.len())
            }
        }
    };
    let timed = Instant::now();
    let (_, overdue_expired) = pop("behind-overdue".to_owned()).await;
    let overdue_pop = timed.elapsed();
    // The reaper's sweep clears what one pop left of the overdue head (not timed).
    while queue == Queue::SortedSet && !store.sweep(1000).await.expect("sweep").expired.is_empty() {}

    let mut joins = Vec::with_capacity(OPS);
    for index in 0..OPS {
        let timed = Instant::now();
        join(format!("measured-{index}"), false).await;
        joins.push(timed.elapsed());
    }
    // Random queued tickets, the same ones for both queues (a fixed stride through them).
    let mut cancels = Vec::with_capacity(OPS);
    for index in 0..OPS {
        let (player, ticket) = &tickets[(index * 7919 + 13) % tickets.len()];
        let timed = Instant::now();
        match queue {
            Queue::SeedList => seed.cancel(player, ticket).await,
            Queue::SortedSet => match store.cancel(player, ticket).await.expect("cancel") {
                Cancelled::Cancelled { .. } => {}
                other => panic!("{other:?}"),
            },
        }
        cancels.push(timed.elapsed());
    }
    let mut pops = Vec::with_capacity(OPS);
    for index in 0..OPS {
        let timed = Instant::now();
        let (taken, _) = pop(format!("measured-{index}")).await;
        pops.push(timed.elapsed());
        assert_eq!(taken, MATCH_SIZE, "a full batch");
    }
    assert!(started.elapsed() < TIME_LIMIT * 4, "the at-scale run hit its time limit");
    AtScale {
        join: Latencies(joins),
        cancel: Latencies(cancels),
        pop: Latencies(pops),
        overdue_pop,
        overdue_expired,
    }
}
