//! The warm pool with the process driver: claims that never share a server, a dead warm
//! server replaced and never handed out, the cold fallback, recycling, and SIGTERM.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Node, alive, assert_echo, connect_player, eventually};
use mm_shared::protocol::{AllocateReply, ServerEntry, ServerState, StartKind};
use mm_testkit::NatsServer;

/// A player of the match connects with the match's secret, and the echo works.
async fn plays(client: &Client, reply: &AllocateReply, match_id: &str) -> ServerEntry {
    let entry = client.entry(&reply.game_id).await.expect("the match's entry");
    assert_eq!((entry.state, entry.match_id.as_str()), (ServerState::Running, match_id));
    assert_eq!(entry.address, reply.address);
    let mut socket =
        connect_player(&reply.address, &format!("{match_id}-p0"), &entry.secret).await.expect("admitted");
    assert_echo(&mut socket).await;
    entry
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_allocators_never_share_a_warm_server() {
    let nats = NatsServer::start().expect("nats-server");
    let env = [("MM_ORCHESTRATOR__GAME__DURATION", "60s"), ("MM_ORCHESTRATOR__POOL__MIN", "6")];
    let pool = Node::start(&nats, "pool-a", &env);
    let client = Arc::new(Client::connect(&nats).await);
    let warm = client.wait_warm("pool-a", 6, Duration::from_secs(15)).await;
    assert!(warm.iter().all(|entry| entry.match_id.is_empty() && entry.player_ids.is_empty()));
    assert!(warm.iter().all(|entry| entry.secret.is_empty()), "no secret before a match");
    // A second node, with no pool, serves `orchestrator.allocate` too: two allocators
    // claim from the same pool at once (it ranks first: it has warm servers).
    let _other = Node::start(&nats, "pool-b", &[("MM_ORCHESTRATOR__GAME__DURATION", "60s")]);
    eventually(Duration::from_secs(5), "the other node registered", || async {
        client.node("pool-b").await.map(|_| ())
    })
    .await;

    let allocations: Vec<_> = (0..12)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let match_id = format!("share-{i}");
                (client.allocate(&match_id, 2).await.expect("allocated"), match_id)
            })
        })
        .collect();
    let mut replies = Vec::new();
    for allocation in allocations {
        replies.push(allocation.await.expect("task"));
    }
    let warm_replies: Vec<&(AllocateReply, String)> =
        replies.iter().filter(|(reply, _)| reply.start == StartKind::Warm).collect();
    assert!(warm_replies.len() >= 6, "the 6 warm servers were claimed: {replies:?}");
    assert!(warm_replies.iter().all(|(reply, _)| reply.node == "pool-a"), "warm servers are pool-a's");

    // Every match has a server of its own: its own process, address, warm slot; and each
    // server admits its own match's players only.
    let mut handles = HashSet::new();
    let mut addresses = HashSet::new();
    let mut slots = HashSet::new();
    for (reply, match_id) in &replies {
        let entry = plays(&client, reply, match_id).await;
        assert!(handles.insert(entry.handle.clone()), "{} shares a process", entry.game_id);
        assert!(addresses.insert(entry.address.clone()), "{} shares an address", entry.game_id);
        if reply.start == StartKind::Warm {
            assert!(!entry.warm_id.is_empty() && entry.warm_id != entry.game_id);
            assert!(slots.insert(entry.warm_id.clone()), "warm server {} claimed twice", entry.warm_id);
        }
    }
    for pair in warm_replies.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let b_entry = client.entry(&b.0.game_id).await.expect("entry");
        assert_eq!(
            connect_player(&a.0.address, &format!("{}-p0", b.1), &b_entry.secret).await.err(),
            Some(401),
            "a warm server takes one match only"
        );
    }
    let warm_claims = pool.metric("mm_orchestrator_claims_total{kind=\"warm\",node=\"pool-a\"}");
    assert_eq!(warm_claims, warm_replies.len() as f64);
    // The claimed servers' warm entries are gone; the pool refills behind them.
    client.wait_warm("pool-a", 6, Duration::from_secs(15)).await;
    for slot in &slots {
        assert!(client.entry(slot).await.is_none(), "the warm entry {slot} is gone once claimed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_server_that_dies_is_replaced_and_never_handed_out() {
    let nats = NatsServer::start().expect("nats-server");
    let env = [("MM_ORCHESTRATOR__GAME__DURATION", "60s"), ("MM_ORCHESTRATOR__POOL__MIN", "2")];
    let node = Node::start(&nats, "pool-d", &env);
    let client = Client::connect(&nats).await;
    let warm = client.wait_warm("pool-d", 2, Duration::from_secs(15)).await;
    let dead: HashSet<String> = warm.iter().map(|entry| entry.handle.clone()).collect();

    // Both die at once, and an allocation comes at once: it gets a live server.
    for entry in &warm {
        mm_shared::process::send_signal(entry.handle.parse().expect("pid"), libc::SIGKILL).expect("kill");
    }
    let reply = client.allocate("after-death", 2).await.expect("allocated");
    let entry = plays(&client, &reply, "after-death").await;
    assert!(!dead.contains(&entry.handle), "a dead warm server was handed out");
    assert!(alive(&entry.handle));

    // The pool is whole again, with new servers; the dead ones' entries are gone.
    let refilled = client.wait_warm("pool-d", 2, Duration::from_secs(15)).await;
    for entry in &refilled {
        assert!(!dead.contains(&entry.handle), "a dead server back in the pool");
        assert!(alive(&entry.handle));
    }
    for entry in &warm {
        assert!(client.entry(&entry.game_id).await.is_none(), "the dead server's entry is deleted");
    }
    assert!(node.metric("mm_orchestrator_servers_ended_total{state=\"failed\"}") >= 1.0);
    assert!(node.process.log().contains("exited while warm"), "{}", node.process.log());
    // And the next allocations get the new ones.
    for i in 0..2 {
        let reply = client.allocate(&format!("next-{i}"), 2).await.expect("allocated");
        assert_eq!(reply.start, StartKind::Warm);
        let entry = plays(&client, &reply, &format!("next-{i}")).await;
        assert!(refilled.iter().any(|warm| warm.handle == entry.handle));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_pool_falls_back_to_a_cold_start_and_no_pool_is_the_default() {
    let nats = NatsServer::start().expect("nats-server");
    let dir =
        std::env::temp_dir().join(format!("mm-warm-{}-{}", std::process::id(), mm_testkit::free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    // A start of 0.5 s, so the pool refills slowly.
    let binary = common::wrapped_game_server(&dir, "/bin/sleep 0.5");
    let env = [
        ("MM_ORCHESTRATOR__GAME__DURATION", "60s"),
        ("MM_ORCHESTRATOR__POOL__MIN", "1"),
        ("MM_ORCHESTRATOR__PROCESS__BINARY", binary.as_str()),
    ];
    let node = Node::start(&nats, "pool-e", &env);
    let client = Arc::new(Client::connect(&nats).await);
    client.wait_warm("pool-e", 1, Duration::from_secs(15)).await;

    // Three at once: one claims the warm server; the refill takes half a second, so the
    // other two are started cold.
    let started = Instant::now();
    let allocations: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.allocate(&format!("empty-{i}"), 2).await.expect("allocated") })
        })
        .collect();
    let mut kinds = Vec::new();
    for (i, allocation) in allocations.into_iter().enumerate() {
        let reply = allocation.await.expect("task");
        plays(&client, &reply, &format!("empty-{i}")).await;
        kinds.push(reply.start);
    }
    kinds.sort_by_key(|kind| kind.as_str());
    assert_eq!(kinds, [StartKind::Cold, StartKind::Cold, StartKind::Warm], "after {:?}", started.elapsed());
    assert_eq!(node.metric("mm_orchestrator_claims_total{kind=\"warm\",node=\"pool-e\"}"), 1.0);
    assert_eq!(node.metric("mm_orchestrator_claims_total{kind=\"cold\",node=\"pool-e\"}"), 2.0);
    client.wait_warm("pool-e", 1, Duration::from_secs(15)).await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);

    // Without [orchestrator.pool]: no warm server, every allocation cold, as before.
    let plain = Node::start(&nats, "no-pool", &[("MM_ORCHESTRATOR__GAME__DURATION", "60s")]);
    let reply = client.allocate("plain", 2).await.expect("allocated");
    assert_eq!((reply.start, reply.node.as_str()), (StartKind::Cold, "no-pool"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(client.warm_entries("no-pool").await.is_empty(), "no pool unless configured");
    // The pool's series exist from the start, at 0.
    let metrics = plain.metrics();
    for name in
        ["mm_orchestrator_pool_warm", "mm_orchestrator_pool_recycled_total", "mm_orchestrator_claims_total"]
    {
        let exported =
            metrics.lines().any(|line| line.starts_with(name) && line.contains("node=\"no-pool\""));
        assert!(exported, "{name} is exported:\n{metrics}");
    }
    assert_eq!(common::metric_value(&metrics, "mm_orchestrator_pool_warm{node=\"no-pool\"}"), 0.0);
    assert_eq!(
        common::metric_value(&metrics, "mm_orchestrator_claims_total{kind=\"warm\",node=\"no-pool\"}"),
        0.0
    );
    assert_eq!(
        common::metric_value(&metrics, "mm_orchestrator_claims_total{kind=\"cold\",node=\"no-pool\"}"),
        1.0
    );
    assert!(metrics.contains("mm_orchestrator_pool_refill_duration_seconds"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unclaimed_warm_server_is_recycled() {
    let nats = NatsServer::start().expect("nats-server");
    let env = [("MM_ORCHESTRATOR__POOL__MIN", "1"), ("MM_ORCHESTRATOR__POOL__RECYCLE_AFTER", "1s")];
    let node = Node::start(&nats, "pool-r", &env);
    let client = Client::connect(&nats).await;
    let first = client.wait_warm("pool-r", 1, Duration::from_secs(15)).await.remove(0);
    let seen = Instant::now();
    let second = eventually(Duration::from_secs(10), "a new warm server in its place", || async {
        client.warm_entries("pool-r").await.into_iter().find(|entry| entry.game_id != first.game_id)
    })
    .await;
    assert!(seen.elapsed() >= Duration::from_millis(500), "not before its time: {:?}", seen.elapsed());
    assert!(!alive(&first.handle), "the recycled server is stopped");
    assert!(client.entry(&first.game_id).await.is_none(), "and its entry deleted");
    assert!(alive(&second.handle));
    assert!(node.metric("mm_orchestrator_pool_recycled_total{node=\"pool-r\"}") >= 1.0);
    assert!(node.process.log().contains("recycled: unclaimed for 1s"), "{}", node.process.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_warm_servers_too() {
    let nats = NatsServer::start().expect("nats-server");
    let env = [("MM_ORCHESTRATOR__GAME__DURATION", "60s"), ("MM_ORCHESTRATOR__POOL__MIN", "3")];
    let mut node = Node::start(&nats, "pool-s", &env);
    let client = Client::connect(&nats).await;
    let warm = client.wait_warm("pool-s", 3, Duration::from_secs(15)).await;
    let claimed = client.allocate("before-stop", 2).await.expect("allocated");
    assert_eq!(claimed.start, StartKind::Warm);
    let claimed = client.entry(&claimed.game_id).await.expect("entry");
    let status = node.process.terminate(Duration::from_secs(10)).expect("stops by itself");
    assert!(status.success(), "exit 0: {status}");
    for entry in warm.iter().chain([&claimed]) {
        assert!(!alive(&entry.handle), "{} ({}) still runs", entry.game_id, entry.handle);
    }
    assert!(client.entries().await.is_empty(), "no entry left");
    assert!(node.process.log().contains("stopped while warm: its node shut down"), "{}", node.process.log());
}
