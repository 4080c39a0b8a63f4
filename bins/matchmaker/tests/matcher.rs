//! The matcher pipeline against a real Redis and NATS, in-process (several matchers
//! behave as several matchmaker processes would: each has its own connections).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Allocator, Answer, Servers};
use futures_util::StreamExt;
use matchmaker::config::{MatcherConfig, TicketSettings};
use matchmaker::matcher::{Fifo, MatchFunction, Matcher, Settled};
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
    Arc::new(Matcher::new(store, common::nats(nats_url).await, function, config, Arc::new(Notify::new())))
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
                    Joined::Existing(ticket) => panic!("{player} already had {}", ticket.id),
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
    let shutdown = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo), fast_config()).await;
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
                let head: Vec<String> = redis::cmd("LRANGE")
                    .arg(mm_shared::protocol::keys::QUEUE_DEFAULT)
                    .arg(0)
                    .arg(199)
                    .query_async(&mut connection.clone())
                    .await
                    .expect("LRANGE");
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

    let seq_of = &seq_by_id;
    let records = common::matches(&connection).await;
    assert_eq!(records.len(), 1000, "one match per ten tickets");
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
    let _allocator =
        Allocator::start(&nats.url(), |n| Answer::Server(Duration::from_micros((n * 7919) % 2000))).await;
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo), fast_config()).await;
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
            Cancelled::Cancelled(_) => {
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
    fn propose(&self, candidates: &[Ticket]) -> Vec<Vec<usize>> {
        let mut groups = Vec::new();
        for parity in 0..2 {
            let side: Vec<usize> =
                (0..candidates.len()).filter(|&i| candidates[i].seq % 2 == parity).collect();
            groups.extend(side.chunks_exact(MATCH_SIZE).map(<[usize]>::to_vec));
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
    let _allocator = Allocator::start(&nats.url(), |_| Answer::Fail(500)).await;
    let config = MatcherConfig { max_attempts: 2, ..fast_config() };
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo), config).await;

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_failing_one_after_another_go_back_in_join_order() {
    let Servers { nats, redis, connection } = common::servers().await;
    let store = TicketStore::new(connection.clone(), settings());
    let joined = join_many(&store, "p", 25).await;
    let _allocator = Allocator::start(&nats.url(), |_| Answer::Fail(500)).await;
    let matcher = matcher(&redis.url(), &nats.url(), Arc::new(Fifo), fast_config()).await;
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
    let matcher = Matcher::new(
        store.clone(),
        common::nats(&nats.url()).await,
        Arc::new(Fifo),
        fast_config(),
        Arc::new(Notify::new()),
    );
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
        matchmaker::tickets::Status::Found { ticket, expired_now } => {
            assert!(expired_now);
            assert_eq!(ticket.status, TicketStatus::Expired);
        }
        other => panic!("{other:?}"),
    }
    match store.join(&late[1].player_id).await.expect("join") {
        Joined::Created { expired: Some(old), ticket } => {
            assert_eq!(old.id, late[1].id);
            assert_eq!(old.status, TicketStatus::Expired);
            assert_eq!(common::queue(&connection).await, vec![ticket.id]);
        }
        other => panic!("{other:?}"),
    }
}
