//! The matcher pipeline against a real Redis and NATS, in-process (several matchers
//! behave as several matchmaker processes would: each has its own connections), with a
//! stand-in orchestrator that records every allocation and release.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Allocator, Answer, Releases, Servers};
use futures_util::StreamExt;
use matchmaker::config::{MatcherConfig, TicketSettings};
use matchmaker::matcher::{Fifo, Group, MatchFunction, Matcher, Settled};
use matchmaker::release::Releaser;
use matchmaker::tickets::{Cancelled, Joined, TicketStore};
use mm_shared::protocol::{MATCH_SIZE, Ticket, TicketStatus};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn settings() -> TicketSettings {
    TicketSettings { ttl: Duration::from_secs(600), retention: Duration::from_secs(600) }
}

fn fast_config() -> MatcherConfig {
    MatcherConfig {
        allocate_timeout: Duration::from_millis(200),
        lease: Duration::from_secs(2),
        max_attempts: 1000,
        retry_backoff_min: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(20),
        idle_poll: Duration::from_millis(20),
        reap_interval: Duration::from_millis(100),
        max_allocations: 8,
        ..MatcherConfig::default()
    }
}

async fn matcher(
    redis_url: &str,
    nats_url: &str,
    function: Arc<dyn MatchFunction>,
    config: MatcherConfig,
) -> Arc<Matcher> {
    let store = TicketStore::new(common::redis(redis_url).await, settings());
    matcher_on(store, nats_url, function, config).await
}

/// A matcher on `store`, with its own NATS connection and releaser.
async fn matcher_on(
    store: TicketStore,
    nats_url: &str,
    function: Arc<dyn MatchFunction>,
    config: MatcherConfig,
) -> Arc<Matcher> {
    let nats = common::nats(nats_url).await;
    let releaser = Releaser::new(nats.clone(), config.release());
    Arc::new(Matcher::new(store, nats, function, config, Arc::new(Notify::new()), releaser))
}

/// Joins `count` new players; returns their ticket ids in join order.
async fn join_many(store: &TicketStore, prefix: &str, count: usize) -> Vec<Ticket> {
    let mut joined: Vec<Ticket> = futures_util::stream::iter(0..count)
        .map(|index| {
            let store = store.clone();
            let player = format!("{prefix}{index}");
            async move {
                match store.join(&player).await.expect("join") {
                    Joined::Created { ticket, .. } => ticket,
                    other => panic!("{player} could not join: {other:?}"),
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    joined.sort_by_key(|ticket| ticket.seq);
    joined
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_matchers_lose_and_duplicate_nothing_while_one_allocation_in_ten_fails() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let started = Instant::now();
    // Ten thousand to match, and five that can never make a match of ten.
    let joined = join_many(&store, "player-", 10_005).await;
    let joined_in = started.elapsed();

    // One request in ten fails: two in a row time out (batches that fail together come
    // back together), and one more gets an error reply.
    let allocator = Allocator::start(&nats.url(), |n| match n % 30 {
        7 | 8 => Answer::Silent,
        21 => Answer::Fail(500),
        _ => Answer::Server(Duration::ZERO),
    })
    .await;
    let releases = Releases::start(&nats.url()).await;
    let shutdown = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;
        workers.push(tokio::spawn(matcher.run(shutdown.clone())));
    }
    // While they work, the queue must stay in join order at every look.
    let seq_by_id: Arc<HashMap<String, u64>> =
        Arc::new(joined.iter().map(|ticket| (ticket.id.clone(), ticket.seq)).collect());
    let watcher = {
        let (connection, seq_by_id, stop) = (connection.clone(), seq_by_id.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut looks = 0u32;
            while !stop.is_cancelled() {
                let head = common::queue_head(&connection, 200).await;
                let seqs: Vec<u64> = head.iter().map(|id| seq_by_id[id]).collect();
                assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "queue out of join order: {seqs:?}");
                looks += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            looks
        })
    };
    let settled = common::eventually(Duration::from_secs(120), || async {
        common::lease_count(&connection).await == 0 && common::queue(&connection).await.len() == 5
    })
    .await;
    let matched_in = started.elapsed() - joined_in;
    shutdown.cancel();
    for worker in workers {
        worker.await.expect("matcher stops");
    }
    let looks = watcher.await.expect("the queue stayed in join order");
    assert!(looks > 10, "the order was watched");
    assert!(settled, "matching did not settle: queue {:?}", common::queue(&connection).await.len());
    eprintln!(
        "joined 10,005 in {joined_in:?}; matched 10,000 in {matched_in:?}; {} allocation requests",
        allocator.requests()
    );
    assert!(allocator.requests() >= 1100, "failures happened and were retried: {}", allocator.requests());
    // Batches come back whole and are popped again whole: each of the thousand groups
    // kept one match id through its retries, and nothing was left to release.
    let asked: HashSet<String> = allocator.asked().into_iter().collect();
    assert_eq!(asked.len(), 1000, "one match id per group, retries included");
    assert!(releases.ids().is_empty(), "released {:?}", releases.ids());

    let seq_of = &seq_by_id;
    let records = common::matches(&connection).await;
    assert_eq!(records.len(), 1000, "one match per ten tickets");
    assert!(records.iter().all(|record| asked.contains(&record.id)));
    let mut match_of: HashMap<String, String> = HashMap::new();
    for record in &records {
        assert_eq!(record.ticket_ids.len(), MATCH_SIZE);
        for ticket_id in &record.ticket_ids {
            let previous = match_of.insert(ticket_id.clone(), record.id.clone());
            assert!(previous.is_none(), "ticket {ticket_id} is in two matches");
        }
        // Queue order held: each match is ten tickets that joined one after another,
        // from an aligned block (failed batches went back to the head in order).
        let mut seqs: Vec<u64> = record.ticket_ids.iter().map(|id| seq_of[id]).collect();
        seqs.sort_unstable();
        assert_eq!(seqs[0] % 10, 1, "match {} starts mid-block: {seqs:?}", record.id);
        assert!(
            seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "match {} not consecutive: {seqs:?}",
            record.id
        );
    }
    let ids: Vec<String> = joined.iter().map(|ticket| ticket.id.clone()).collect();
    let stored = common::tickets(&connection, &ids).await;
    assert_eq!(stored.len(), ids.len(), "no ticket record is lost");
    for ticket in &joined[..10_000] {
        let stored = &stored[&ticket.id];
        assert_eq!(stored.status, TicketStatus::Matched, "{}", ticket.id);
        assert_eq!(stored.match_id.as_ref(), match_of.get(&ticket.id), "ticket and match agree");
        assert!(stored.server.is_some());
    }
    let leftover: Vec<String> = joined[10_000..].iter().map(|ticket| ticket.id.clone()).collect();
    assert_eq!(common::queue(&connection).await, leftover, "the five newest wait, in join order");
    assert!(leftover.iter().all(|id| stored[id].status == TicketStatus::Searching));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_matcher_never_ends_in_a_match() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    // Allocation takes 0-2 ms, so cancels land before the pop, during the allocation,
    // and after the commit.
    let allocator =
        Allocator::start(&nats.url(), |n| Answer::Server(Duration::from_micros((n * 7919) % 2000))).await;
    let releases = Releases::start(&nats.url()).await;
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;
    let (before_pop, during, too_late) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let mut cancelled: HashSet<String> = HashSet::new();
    let mut all: Vec<String> = Vec::new();
    for round in 0..1000u64 {
        let joined = join_many(&store, &format!("r{round}-"), MATCH_SIZE).await;
        all.extend(joined.iter().map(|ticket| ticket.id.clone()));
        // The victim is one of the ten the next pop takes (earlier rounds may have left
        // tickets at the head), so the cancel meets it queued, in flight or matched.
        let head = common::queue(&connection).await;
        let victim_id = &head[(round as usize * 3) % MATCH_SIZE];
        let victim = common::ticket(&connection, victim_id).await.expect("queued ticket");
        // Cancel first, a moment after the pop, during the allocation, or after it.
        let cancel = async {
            match round % 4 {
                0 => {}
                1 => {
                    for _ in 0..round % 64 {
                        tokio::task::yield_now().await;
                    }
                }
                2 => tokio::time::sleep(Duration::from_millis(1)).await,
                _ => tokio::time::sleep(Duration::from_millis(3)).await,
            }
            store.cancel(&victim.player_id, &victim.id).await.expect("cancel")
        };
        let matching = async {
            match matcher.form_batch().await.expect("pop") {
                Some(batch) => matcher.settle_batch(batch).await,
                None => Vec::new(),
            }
        };
        let (outcome, settled) = tokio::join!(cancel, matching);
        match outcome {
            Cancelled::Cancelled { .. } => {
                cancelled.insert(victim.id.clone());
                if settled.iter().any(|settled| matches!(settled, Settled::Abandoned)) {
                    during.fetch_add(1, Ordering::Relaxed);
                } else {
                    before_pop.fetch_add(1, Ordering::Relaxed);
                }
            }
            Cancelled::TooLate(ticket) => {
                assert_eq!(ticket.status, TicketStatus::Matched);
                too_late.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("round {round}: unexpected cancel outcome {other:?}"),
        }
    }
    let (before_pop, during, too_late) =
        (before_pop.into_inner(), during.into_inner(), too_late.into_inner());
    eprintln!("cancelled before the pop: {before_pop}, during allocation: {during}, too late: {too_late}");
    assert!(before_pop > 0 && during > 0 && too_late > 0, "the race was exercised every way");

    let stored = common::tickets(&connection, &all).await;
    let mut in_a_match = HashSet::new();
    for record in common::matches(&connection).await {
        for ticket_id in &record.ticket_ids {
            assert!(
                !cancelled.contains(ticket_id),
                "cancelled ticket {ticket_id} ended in match {}",
                record.id
            );
            assert!(in_a_match.insert(ticket_id.clone()), "{ticket_id} in two matches");
            assert_eq!(stored[ticket_id].status, TicketStatus::Matched);
        }
    }
    // Every server allocated went to a match or was released, and no match's was.
    let committed: HashSet<String> = common::matches(&connection).await.into_iter().map(|m| m.id).collect();
    let unused: HashSet<String> = allocator.placed().difference(&committed).cloned().collect();
    assert!(!unused.is_empty(), "some allocations were abandoned");
    let all_released = common::eventually(Duration::from_secs(10), || async {
        unused.iter().all(|id| releases.ids().contains(id))
    })
    .await;
    assert!(all_released, "unused {unused:?}, released {:?}", releases.ids());
    let released: HashSet<String> = releases.ids().into_iter().collect();
    assert!(released.is_disjoint(&committed), "a committed match's server was released");
    assert_eq!(released, unused, "released only what was allocated for nobody");

    let queued: HashSet<String> = common::queue(&connection).await.into_iter().collect();
    for id in &all {
        let status = stored[id].status;
        let places = [in_a_match.contains(id), cancelled.contains(id), queued.contains(id)];
        assert_eq!(places.iter().filter(|&&here| here).count(), 1, "{id} ({status:?}) is in {places:?}");
        if cancelled.contains(id) {
            assert_eq!(status, TicketStatus::Cancelled);
        }
    }
    assert_eq!(common::lease_count(&connection).await, 0);
}

/// Groups even and odd join orders apart: a stand-in for skill or region buckets, to
/// show that a function other than FIFO runs through the same pipeline.
struct Parity;

impl MatchFunction for Parity {
    fn name(&self) -> &'static str {
        "parity"
    }
    fn window(&self) -> usize {
        30
    }
    fn propose(&self, candidates: &[Ticket], _now_ms: u64) -> Vec<Group> {
        let mut groups = Vec::new();
        for parity in 0..2 {
            let side: Vec<usize> =
                (0..candidates.len()).filter(|&i| candidates[i].seq % 2 == parity).collect();
            groups.extend(side.chunks_exact(MATCH_SIZE).map(|chunk| Group::halves(chunk.to_vec())));
        }
        groups
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_match_function_runs_through_the_same_pipeline() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let _allocator = Allocator::start(&nats.url(), |_| Answer::Server(Duration::ZERO)).await;
    let joined = join_many(&store, "p", 25).await;
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Parity), fast_config()).await;
    let batch = matcher.form_batch().await.expect("pop").expect("25 queued");
    assert_eq!(batch.groups.len(), 2);
    // The five left out are already back at the head, in join order.
    let left: Vec<String> = common::queue(&connection).await;
    assert_eq!(left.len(), 5);
    let seq_of: HashMap<&str, u64> = joined.iter().map(|ticket| (ticket.id.as_str(), ticket.seq)).collect();
    assert!(left.windows(2).all(|pair| seq_of[pair[0].as_str()] < seq_of[pair[1].as_str()]));
    let settled = matcher.settle_batch(batch).await;
    assert!(settled.iter().all(|settled| matches!(settled, Settled::Matched(_))), "{settled:?}");
    for record in common::matches(&connection).await {
        let parities: HashSet<u64> = record.ticket_ids.iter().map(|id| seq_of[id.as_str()] % 2).collect();
        assert_eq!(parities.len(), 1, "a group mixes parities");
    }
    assert_eq!(common::lease_count(&connection).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_allocations_go_back_in_order_then_fail_after_the_last_attempt() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let joined = join_many(&store, "p", 12).await;
    let allocator = Allocator::start(&nats.url(), |_| Answer::Fail(500)).await;
    let releases = Releases::start(&nats.url()).await;
    let config = MatcherConfig { max_attempts: 2, ..fast_config() };
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), config).await;

    let first = matcher.form_batch().await.expect("pop").expect("batch");
    let settled = matcher.settle_batch(first).await;
    assert!(matches!(&settled[..], [Settled::Requeued { counted: true, failed: 0, .. }]), "{settled:?}");
    let order: Vec<String> = joined.iter().map(|ticket| ticket.id.clone()).collect();
    assert_eq!(common::queue(&connection).await, order, "back at the head in join order");
    assert_eq!(common::ticket(&connection, &order[0]).await.expect("ticket").attempts, 1);

    let second = matcher.form_batch().await.expect("pop").expect("batch");
    let settled = matcher.settle_batch(second).await;
    assert!(matches!(&settled[..], [Settled::Requeued { failed: 10, .. }]), "{settled:?}");
    assert_eq!(common::queue(&connection).await, order[10..].to_vec(), "the failed left the queue");
    let failed = common::ticket(&connection, &order[0]).await.expect("ticket");
    assert_eq!(failed.status, TicketStatus::Failed);
    let reason = failed.reason.expect("a failed ticket says why");
    assert!(reason.contains("no game server after 2 attempts") && reason.contains("500"), "{reason}");
    assert_eq!(common::lease_count(&connection).await, 0);
    // Both tries were for one match; once its tickets failed, it was released.
    let asked = allocator.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0], asked[1], "the retry asked for the same match");
    assert!(common::eventually(Duration::from_secs(5), || async { releases.ids() == asked[..1] }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_failing_one_after_another_go_back_in_join_order() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let joined = join_many(&store, "p", 25).await;
    let _allocator = Allocator::start(&nats.url(), |_| Answer::Fail(500)).await;
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;
    let older = matcher.form_batch().await.expect("pop").expect("batch");
    let newer = matcher.form_batch().await.expect("pop").expect("batch");
    // The older batch comes back first; the newer one must land behind it, not at the head.
    matcher.settle_batch(older).await;
    matcher.settle_batch(newer).await;
    let order: Vec<String> = joined.iter().map(|ticket| ticket.id.clone()).collect();
    assert_eq!(common::queue(&connection).await, order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_tickets_expire_wherever_they_are_met_in_the_queue() {
    let Servers { nats, redis: _redis, connection } = common::servers().await;
    let short = TicketSettings { ttl: Duration::from_millis(300), retention: Duration::from_secs(60) };
    let store = TicketStore::new(connection.clone(), short);
    let early = join_many(&store, "early", 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = join_many(&store, "late", 2).await;

    // The sweep takes the overdue ones off the head and stops at the first live ticket.
    let matcher = matcher_on(store.clone(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;
    let reaped = matcher.reap().await.expect("reap");
    assert_eq!(reaped.expired_tickets, 3);
    let late_ids: Vec<String> = late.iter().map(|ticket| ticket.id.clone()).collect();
    assert_eq!(common::queue(&connection).await, late_ids);
    let expired = common::ticket(&connection, &early[0].id).await.expect("kept for retention");
    assert_eq!(expired.status, TicketStatus::Expired);
    assert!(expired.reason.is_some());

    // A status read expires an overdue ticket too, and joining again replaces it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    match store.status(&late[0].player_id, &late[0].id).await.expect("status") {
        matchmaker::tickets::Status::Found { ticket, expired_now, .. } => {
            assert!(expired_now);
            assert_eq!(ticket.status, TicketStatus::Expired);
        }
        other => panic!("{other:?}"),
    }
    match store.join(&late[1].player_id).await.expect("join") {
        Joined::Created { expired, ticket, .. } if expired.len() == 1 => {
            let old = &expired[0];
            assert_eq!(old.id, late[1].id);
            assert_eq!(old.status, TicketStatus::Expired);
            assert_eq!(common::queue(&connection).await, vec![ticket.id]);
        }
        other => panic!("{other:?}"),
    }
}

/// Pops a batch and settles it (nothing when fewer than ten are queued).
async fn settle_once(matcher: &Matcher) -> Vec<Settled> {
    match matcher.form_batch().await.expect("pop") {
        Some(batch) => matcher.settle_batch(batch).await,
        None => Vec::new(),
    }
}

fn ids_of(tickets: &[Ticket]) -> Vec<String> {
    tickets.iter().map(|ticket| ticket.id.clone()).collect()
}

/// A matcher whose allocations may outlast its lease (a stalled matcher, as far as the
/// lease is concerned).
fn stalling_config() -> MatcherConfig {
    MatcherConfig {
        allocate_timeout: Duration::from_secs(3),
        lease: Duration::from_millis(300),
        ..fast_config()
    }
}

/// Reaps until one expired lease was returned.
async fn reap_one_lease(reaper: &Matcher) {
    let returned = common::eventually(Duration::from_secs(5), || async {
        reaper.reap().await.expect("reap").leases_returned == 1
    })
    .await;
    assert!(returned, "the lease never expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_cancelled_during_the_allocation_makes_the_matcher_release_that_server() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let allocator = Allocator::start(&nats.url(), |n| {
        Answer::Server(if n == 0 { Duration::from_secs(1) } else { Duration::ZERO })
    })
    .await;
    let releases = Releases::start(&nats.url()).await;
    let joined = join_many(&store, "p", MATCH_SIZE).await;
    let config = MatcherConfig {
        allocate_timeout: Duration::from_secs(2),
        lease: Duration::from_secs(5),
        ..fast_config()
    };
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), config).await;

    let batch = matcher.form_batch().await.expect("pop").expect("ten queued");
    let settling = tokio::spawn({
        let matcher = matcher.clone();
        async move { matcher.settle_batch(batch).await }
    });
    assert!(common::eventually(Duration::from_secs(5), || async { allocator.requests() == 1 }).await);
    let victim = &joined[4];
    match store.cancel(&victim.player_id, &victim.id).await.expect("cancel") {
        Cancelled::Cancelled { orphaned, .. } => {
            assert_eq!(orphaned, None, "in flight: its matcher releases")
        }
        other => panic!("{other:?}"),
    }
    let settled = settling.await.expect("settles");
    assert!(matches!(&settled[..], [Settled::Abandoned]), "{settled:?}");
    let allocated = allocator.asked();
    assert_eq!(allocated.len(), 1);
    let released = common::eventually(Duration::from_secs(5), || async { releases.ids() == allocated }).await;
    assert!(released, "released {:?}, allocated {allocated:?}", releases.ids());

    // The nine others are queued again with that match id retired: with a newcomer they
    // are another group, under another id, and nothing more is released.
    assert_eq!(common::queue(&connection).await.len(), MATCH_SIZE - 1);
    join_many(&store, "late", 1).await;
    let settled = settle_once(&matcher).await;
    let [Settled::Matched(record)] = &settled[..] else { panic!("{settled:?}") };
    assert_ne!(record.id, allocated[0]);
    assert_eq!(allocator.asked().len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(releases.ids(), allocated, "a committed match is never released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_that_times_out_is_retried_for_the_same_ten_under_the_same_match_id() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    // The first server is placed but answers after the matcher's deadline (200 ms).
    let allocator = Allocator::start(&nats.url(), |n| {
        Answer::Server(if n == 0 { Duration::from_millis(600) } else { Duration::ZERO })
    })
    .await;
    let releases = Releases::start(&nats.url()).await;
    let joined = join_many(&store, "p", 2 * MATCH_SIZE).await;
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;

    let settled = settle_once(&matcher).await;
    assert!(matches!(&settled[..], [Settled::Requeued { counted: true, failed: 0 }]), "{settled:?}");
    let settled = settle_once(&matcher).await;
    let [Settled::Matched(record)] = &settled[..] else { panic!("{settled:?}") };
    let asked = allocator.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0], asked[1], "the retry asks for the match it asked for before");
    assert_eq!(record.id, asked[0]);
    assert_eq!(record.ticket_ids, ids_of(&joined[..MATCH_SIZE]));

    // The next ten are another group: another id.
    let settled = settle_once(&matcher).await;
    let [Settled::Matched(other)] = &settled[..] else { panic!("{settled:?}") };
    assert_ne!(other.id, record.id);
    assert_eq!(other.ticket_ids, ids_of(&joined[MATCH_SIZE..]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(releases.ids().is_empty(), "released {:?}", releases.ids());
    assert_eq!(common::lease_count(&connection).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_during_the_allocation_releases_its_server() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let allocator = Allocator::start(&nats.url(), |n| {
        Answer::Server(if n == 0 { Duration::from_millis(1500) } else { Duration::ZERO })
    })
    .await;
    let releases = Releases::start(&nats.url()).await;
    let joined = join_many(&store, "p", MATCH_SIZE).await;
    let stalled = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), stalling_config()).await;
    let other = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;

    let batch = stalled.form_batch().await.expect("pop").expect("ten queued");
    let settling = tokio::spawn({
        let stalled = stalled.clone();
        async move { stalled.settle_batch(batch).await }
    });
    assert!(common::eventually(Duration::from_secs(5), || async { allocator.requests() == 1 }).await);
    reap_one_lease(&other).await;
    assert_eq!(common::queue(&connection).await, ids_of(&joined), "the reaper returned the ten");
    let settled = settling.await.expect("settles");
    assert!(matches!(&settled[..], [Settled::LeaseLost]), "{settled:?}");
    let lost = allocator.asked();
    let released = common::eventually(Duration::from_secs(5), || async { releases.ids() == lost }).await;
    assert!(released, "released {:?}, allocated {lost:?}", releases.ids());

    // The id was retired with the release: the same ten, popped again, get a new one.
    let settled = settle_once(&other).await;
    let [Settled::Matched(record)] = &settled[..] else { panic!("{settled:?}") };
    assert_ne!(record.id, lost[0]);
    assert_eq!(record.ticket_ids, ids_of(&joined));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(releases.ids(), lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_to_a_matcher_that_took_the_same_group_leaves_it_the_server() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let allocator = Allocator::start(&nats.url(), |n| {
        Answer::Server(if n == 0 { Duration::from_millis(1500) } else { Duration::ZERO })
    })
    .await;
    let releases = Releases::start(&nats.url()).await;
    let joined = join_many(&store, "p", MATCH_SIZE).await;
    let stalled = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), stalling_config()).await;
    let other = matcher(&redis.url(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;

    let batch = stalled.form_batch().await.expect("pop").expect("ten queued");
    let settling = tokio::spawn({
        let stalled = stalled.clone();
        async move { stalled.settle_batch(batch).await }
    });
    assert!(common::eventually(Duration::from_secs(5), || async { allocator.requests() == 1 }).await);
    reap_one_lease(&other).await;
    // Another matcher pops the same ten while the first still waits: same group, same id.
    let settled = settle_once(&other).await;
    let [Settled::Matched(record)] = &settled[..] else { panic!("{settled:?}") };
    let asked = allocator.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0], asked[1]);
    assert_eq!(record.id, asked[0]);
    // The first matcher's commit finds its lease gone and the match the other's.
    let settled = settling.await.expect("settles");
    assert!(matches!(&settled[..], [Settled::LeaseLost]), "{settled:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(releases.ids().is_empty(), "the committed match's server was released: {:?}", releases.ids());
    let stored = common::tickets(&connection, &ids_of(&joined)).await;
    assert!(stored.values().all(|ticket| ticket.match_id.as_deref() == Some(record.id.as_str())));
    assert_eq!(common::matches(&connection).await.len(), 1);
}

/// Groups the first ten of eleven candidates in round 0, the last ten after: the same
/// tickets grouped otherwise.
struct Shifting(AtomicUsize);

impl MatchFunction for Shifting {
    fn name(&self) -> &'static str {
        "shifting"
    }
    fn window(&self) -> usize {
        MATCH_SIZE + 1
    }
    fn propose(&self, candidates: &[Ticket], _now_ms: u64) -> Vec<Group> {
        let first = usize::from(self.0.fetch_add(1, Ordering::SeqCst) > 0);
        if candidates.len() < first + MATCH_SIZE {
            return Vec::new();
        }
        vec![Group::halves((first..first + MATCH_SIZE).collect())]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_grouped_otherwise_get_a_new_match_id_and_the_old_one_is_released() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let allocator =
        Allocator::start(
            &nats.url(),
            |n| if n == 0 { Answer::Silent } else { Answer::Server(Duration::ZERO) },
        )
        .await;
    let releases = Releases::start(&nats.url()).await;
    let joined = join_many(&store, "p", MATCH_SIZE + 1).await;
    let matcher =
        matcher(&redis.url(), &nats.url(), Arc::new(Shifting(AtomicUsize::new(0))), fast_config()).await;

    let settled = settle_once(&matcher).await;
    assert!(matches!(&settled[..], [Settled::Requeued { .. }]), "{settled:?}");
    let settled = settle_once(&matcher).await;
    let [Settled::Matched(record)] = &settled[..] else { panic!("{settled:?}") };
    assert_eq!(record.ticket_ids, ids_of(&joined[1..]));
    let asked = allocator.asked();
    assert_eq!(asked.len(), 2);
    assert_ne!(asked[0], asked[1], "another group, another id");
    assert_eq!(record.id, asked[1]);
    let released =
        common::eventually(Duration::from_secs(5), || async { releases.ids() == asked[..1] }).await;
    assert!(released, "released {:?}, the first id {}", releases.ids(), asked[0]);

    // The ticket left over still carries the first id; cancelling it (through the
    // service, as a player would) releases that id again, which is harmless.
    let wake = Arc::new(Notify::new());
    let nats_client = common::nats(&nats.url()).await;
    let releaser = Releaser::new(nats_client.clone(), fast_config().release());
    let service = matchmaker::matchmaking::Matchmaking::new(
        store.clone(),
        matchmaker::events::Events::new(nats_client),
        wake,
        releaser,
    );
    let request = mm_shared::protocol::TicketRequest {
        player_id: joined[0].player_id.clone(),
        ticket_id: joined[0].id.clone(),
    };
    service.cancel(request).await.expect("cancel");
    let released = common::eventually(Duration::from_secs(5), || async {
        releases.ids() == [asked[0].clone(), asked[0].clone()]
    })
    .await;
    assert!(released, "released {:?}", releases.ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_release_the_match_their_group_was_allocated_under() {
    let Servers { nats, redis: _redis, connection } = common::servers().await;
    let short = TicketSettings { ttl: Duration::from_millis(800), retention: Duration::from_secs(60) };
    let store = TicketStore::new(connection.clone(), short);
    let allocator = Allocator::start(&nats.url(), |_| Answer::Fail(500)).await;
    let releases = Releases::start(&nats.url()).await;
    let joined = join_many(&store, "p", MATCH_SIZE).await;
    let matcher = matcher_on(store.clone(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;
    let settled = settle_once(&matcher).await;
    assert!(matches!(&settled[..], [Settled::Requeued { .. }]), "{settled:?}");
    let asked = allocator.asked();
    tokio::time::sleep(Duration::from_millis(900)).await;

    // A status read expires one ticket (through the service, as the gateway asks)...
    let nats_client = common::nats(&nats.url()).await;
    let service = matchmaker::matchmaking::Matchmaking::new(
        store.clone(),
        matchmaker::events::Events::new(nats_client.clone()),
        Arc::new(Notify::new()),
        Releaser::new(nats_client, fast_config().release()),
    );
    let request = mm_shared::protocol::TicketRequest {
        player_id: joined[0].player_id.clone(),
        ticket_id: joined[0].id.clone(),
    };
    let view = service.status(request).await.expect("status");
    assert_eq!(view.status, TicketStatus::Expired);
    assert!(common::eventually(Duration::from_secs(5), || async { releases.ids() == asked }).await);
    // ...and the reaper's sweep the nine others: one more release of the same id.
    assert_eq!(matcher.reap().await.expect("reap").expired_tickets, MATCH_SIZE - 1);
    let twice = [asked[0].clone(), asked[0].clone()];
    assert!(common::eventually(Duration::from_secs(5), || async { releases.ids() == twice }).await);
    assert!(common::queue(&connection).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pop_looks_at_its_window_however_many_overdue_tickets_lead_the_queue() {
    let Servers { nats, redis: _redis, connection } = common::servers().await;
    let short = TicketSettings { ttl: Duration::from_millis(300), retention: Duration::from_secs(60) };
    let store = TicketStore::new(connection.clone(), short);
    let overdue = join_many(&store, "old", 50).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = join_many(&store, "new", MATCH_SIZE).await;

    // One pop looks at ten entries: all overdue, so it expires them and takes nothing.
    let popped = store.pop("b1", MATCH_SIZE, MATCH_SIZE, Duration::from_secs(5)).await.expect("pop");
    assert!(popped.tickets.is_empty());
    assert_eq!(ids_of(&popped.expired), ids_of(&overdue[..MATCH_SIZE]));
    assert_eq!(popped.removed, MATCH_SIZE);
    assert_eq!(common::queue(&connection).await.len(), 50, "forty overdue and ten fresh are left");

    // The matcher pops again while windows hold only dead entries, a bounded number of times.
    let _allocator = Allocator::start(&nats.url(), |_| Answer::Server(Duration::ZERO)).await;
    let matcher = matcher_on(store.clone(), &nats.url(), Arc::new(Fifo::default()), fast_config()).await;
    let batch = matcher.form_batch().await.expect("pop").expect("the fresh ten behind the overdue");
    assert_eq!(batch.groups.len(), 1);
    assert_eq!(ids_of(&batch.groups[0].tickets), ids_of(&fresh));
    let expired = common::tickets(&connection, &ids_of(&overdue)).await;
    assert!(expired.values().all(|ticket| ticket.status == TicketStatus::Expired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_left_as_a_list_by_an_older_matchmaker_is_upgraded_in_join_order() {
    let Servers { nats: _nats, redis: _redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let joined = join_many(&store, "p", 25).await;
    let cancelled = &joined[3];
    store.cancel(&cancelled.player_id, &cancelled.id).await.expect("cancel");
    // What an older matchmaker left: a list, in join order, with a stale entry.
    let mut list: Vec<String> = ids_of(&joined);
    list.insert(7, "no-such-ticket".to_owned());
    let mut redis = connection.clone();
    let () = redis::cmd("DEL")
        .arg(mm_shared::protocol::keys::QUEUE_DEFAULT)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    let _: u64 = redis::cmd("RPUSH")
        .arg(mm_shared::protocol::keys::QUEUE_DEFAULT)
        .arg(&list)
        .query_async(&mut redis)
        .await
        .expect("RPUSH");

    assert_eq!(store.upgrade().await.expect("upgrade"), Some(24));
    let mut expected = ids_of(&joined);
    expected.remove(3);
    assert_eq!(common::queue(&connection).await, expected);
    assert_eq!(store.upgrade().await.expect("again"), None, "nothing to do the second time");
    assert_eq!(common::queue(&connection).await, expected);
}

/// Splits a request number into a well-spread pseudo-random number (SplitMix64), so the
/// stand-in orchestrator's answers look random but each run is the same.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchers_under_random_cancels_and_lost_leases_lose_nothing_and_leave_no_server_for_nobody() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    // The lease (300 ms) is shorter than the allocation deadline (600 ms): answers that
    // take 350-500 ms come after the reaper returned the lease; 700 ms ones time out
    // with their server placed; silence and errors place none.
    let allocator = Allocator::start(&nats.url(), |n| {
        let roll = mix(n);
        match roll % 100 {
            0..=59 => Answer::Server(Duration::from_millis(roll / 100 % 20)),
            60..=71 => Answer::Server(Duration::from_millis(350 + roll / 100 % 150)),
            72..=79 => Answer::Server(Duration::from_millis(700)),
            80..=89 => Answer::Silent,
            _ => Answer::Fail(500),
        }
    })
    .await;
    let releases = Releases::start(&nats.url()).await;
    let config = MatcherConfig {
        allocate_timeout: Duration::from_millis(600),
        lease: Duration::from_millis(300),
        reap_interval: Duration::from_millis(50),
        ..fast_config()
    };
    let shutdown = CancellationToken::new();
    let (mut workers, mut releasers) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let store = TicketStore::new(common::redis(&redis.url()).await, settings());
        let nats_client = common::nats(&nats.url()).await;
        let releaser = Releaser::new(nats_client.clone(), config.release());
        releasers.push(releaser.clone());
        let matcher = Arc::new(Matcher::new(
            store,
            nats_client,
            Arc::new(Fifo::default()),
            config.clone(),
            Arc::new(Notify::new()),
            releaser,
        ));
        workers.push(tokio::spawn(matcher.run(shutdown.clone())));
    }
    let nats_client = common::nats(&nats.url()).await;
    let service_releaser = Releaser::new(nats_client.clone(), config.release());
    releasers.push(service_releaser.clone());
    let service = matchmaker::matchmaking::Matchmaking::new(
        store.clone(),
        matchmaker::events::Events::new(nats_client),
        Arc::new(Notify::new()),
        service_releaser,
    );

    // 1,500 players join over about a second; one in five cancels 0-400 ms later,
    // whether its ticket is queued, in flight or already matched.
    const PLAYERS: u64 = 1500;
    let cancels = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut cancellers = Vec::new();
    let mut all = Vec::new();
    for index in 0..PLAYERS {
        let player_id = format!("p{index}");
        let ticket = match store.join(&player_id).await.expect("join") {
            Joined::Created { ticket, .. } => ticket,
            other => panic!("{other:?}"),
        };
        all.push(ticket.id.clone());
        let roll = mix(index + 1_000_000);
        if roll.is_multiple_of(5) {
            let (service, cancels) = (service.clone(), cancels.clone());
            cancellers.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(roll / 5 % 400)).await;
                let request = mm_shared::protocol::TicketRequest { player_id, ticket_id: ticket.id.clone() };
                if service.cancel(request).await.is_ok() {
                    cancels.lock().expect("lock").insert(ticket.id);
                }
            }));
        }
        if index.is_multiple_of(25) {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    for canceller in cancellers {
        canceller.await.expect("cancel task");
    }
    let quiet = common::eventually(Duration::from_secs(90), || async {
        common::lease_count(&connection).await == 0 && common::queue(&connection).await.len() < MATCH_SIZE
    })
    .await;
    assert!(quiet, "matching never settled: {} queued", common::queue(&connection).await.len());
    shutdown.cancel();
    for worker in workers {
        worker.await.expect("matcher stops");
    }
    // The few left waiting give up (their players cancel).
    let leftover = common::queue(&connection).await;
    let stored = common::tickets(&connection, &leftover).await;
    for id in &leftover {
        let request = mm_shared::protocol::TicketRequest {
            player_id: stored[id].player_id.clone(),
            ticket_id: id.clone(),
        };
        service.cancel(request).await.expect("cancel");
        cancels.lock().expect("lock").insert(id.clone());
    }
    for releaser in &releasers {
        assert!(releaser.finish(Duration::from_secs(10)).await, "releases ended");
    }
    let cancelled = cancels.lock().expect("lock").clone();

    // No ticket lost, none in two matches, no cancelled one in a match.
    let records = common::matches(&connection).await;
    let stored = common::tickets(&connection, &all).await;
    assert_eq!(stored.len(), all.len(), "no ticket record is lost");
    let mut match_of: HashMap<String, String> = HashMap::new();
    for record in &records {
        assert_eq!(record.ticket_ids.len(), MATCH_SIZE);
        for id in &record.ticket_ids {
            assert!(match_of.insert(id.clone(), record.id.clone()).is_none(), "{id} is in two matches");
            assert!(!cancelled.contains(id), "cancelled {id} is in match {}", record.id);
        }
    }
    for id in &all {
        let ticket = &stored[id];
        match ticket.status {
            TicketStatus::Matched => assert_eq!(ticket.match_id.as_ref(), match_of.get(id)),
            TicketStatus::Cancelled => assert!(cancelled.contains(id)),
            other => panic!("{id} ended {other:?}"),
        }
    }
    // Every server placed went to a match or was released; no match's server was.
    let committed: HashSet<String> = records.iter().map(|record| record.id.clone()).collect();
    let placed = allocator.placed();
    let released: HashSet<String> = releases.ids().into_iter().collect();
    assert!(committed.is_subset(&placed));
    assert!(
        released.is_disjoint(&committed),
        "released committed matches: {:?}",
        released.intersection(&committed)
    );
    let left: Vec<&String> =
        placed.iter().filter(|id| !committed.contains(*id) && !released.contains(*id)).collect();
    assert!(left.is_empty(), "servers allocated for nobody and never released: {left:?}");

    let asked = allocator.asked();
    let mut times: HashMap<&String, usize> = HashMap::new();
    for id in &asked {
        *times.entry(id).or_default() += 1;
    }
    let retried = times.values().filter(|&&count| count > 1).count();
    eprintln!(
        "{} tickets: {} matches, {} cancelled; {} allocations for {} match ids ({retried} retried under \
         their id); {} servers placed, {} releases of {} ids",
        all.len(),
        records.len(),
        cancelled.len(),
        asked.len(),
        times.len(),
        placed.len(),
        releases.ids().len(),
        released.len()
    );
    assert!(records.len() >= 80, "most tickets matched");
    assert!(retried > 0 && !released.is_empty(), "the scenario retried and released");
}
