//! Several nodes on one NATS: placement by capacity, a refusing node is skipped, and a
//! node whose heartbeat stopped gets nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use common::{Client, Node};
use futures_util::StreamExt;
use mm_shared::nats::RequestError;
use mm_shared::protocol::{
    AllocateReply, AllocateRequest, NodeEntry, RegionalAllocateRequest, Resources, now_ms, subjects,
};
use mm_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread")]
async fn placements_follow_capacity_until_every_node_is_full() {
    let nats = NatsServer::start().expect("nats-server");
    let long = ("MM_ORCHESTRATOR__GAME__DURATION", "60s");
    let _small = Node::start(&nats, "small", &[long, ("MM_ORCHESTRATOR__CAPACITY__MAX_SERVERS", "2")]);
    let _big = Node::start(&nats, "big", &[long, ("MM_ORCHESTRATOR__CAPACITY__MAX_SERVERS", "4")]);
    let client = Arc::new(Client::connect(&nats).await);
    common::eventually(Duration::from_secs(5), "both nodes registered", || async {
        (client.node("small").await.is_some() && client.node("big").await.is_some()).then_some(())
    })
    .await;

    // Six at once: whichever node receives each request, the stale views and races end
    // in refusals and retries, never in an over-full node.
    let allocations: Vec<_> = (0..6)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.allocate(&format!("cap-{i}"), 10).await })
        })
        .collect();
    let mut per_node = std::collections::BTreeMap::new();
    for allocation in allocations {
        let reply = allocation.await.expect("task").expect("allocated");
        *per_node.entry(reply.node).or_insert(0) += 1;
    }
    assert_eq!(per_node, [("big".to_owned(), 4), ("small".to_owned(), 2)].into_iter().collect());

    let err = client.allocate("cap-6", 10).await.expect_err("both full");
    match err {
        RequestError::Service { code: 503, message, .. } => {
            assert_eq!(message, "no node can run a game server: 2 nodes: 2 at max servers");
        }
        other => panic!("expected a 503, got {other}"),
    }
    let mut keys = client.servers.keys().await.expect("keys");
    let mut count = 0;
    while keys.next().await.is_some() {
        count += 1;
    }
    assert_eq!(count, 6, "one entry per live server");
}

/// A node the test plays itself: registered in KV `nodes` with room to spare (and fuller
/// than the real node, so bin-packing asks it first), answering every placement with a
/// refusal, as a node that filled up meanwhile does.
async fn fake_node(client: &Client, heartbeat_at: u64) -> NodeEntry {
    let entry = NodeEntry {
        node: "ghost".to_owned(),
        driver: "process".to_owned(),
        driver_healthy: true,
        capacity: Resources { cpu_millicores: 1_000_000, memory_mb: 1_000_000, servers: 1000 },
        used: Resources { cpu_millicores: 990_000, memory_mb: 990_000, servers: 990 },
        port_range: (40000, 41000),
        ports_used: 990,
        heartbeat_at,
        started_at: 0,
        driver_status: "fake".to_owned(),
        ..NodeEntry::default()
    };
    client.nodes.put("ghost", serde_json::to_vec(&entry).expect("json").into()).await.expect("put");
    entry
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_node_is_skipped_and_a_silent_one_is_never_asked() {
    let nats = NatsServer::start().expect("nats-server");
    let real = Node::start(&nats, "real", &[("MM_ORCHESTRATOR__GAME__DURATION", "60s")]);
    let client = Client::connect(&nats).await;

    let asked = Arc::new(AtomicUsize::new(0));
    let mut place =
        client.nats.subscribe(subjects::orchestrator_node_place("ghost")).await.expect("subscribe");
    let (nats_client, counter) = (client.nats.clone(), asked.clone());
    tokio::spawn(async move {
        while let Some(request) = place.next().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut headers = HeaderMap::new();
            headers.insert(NATS_SERVICE_ERROR_CODE, "409");
            headers.insert(NATS_SERVICE_ERROR, "node ghost has no room: out of memory");
            if let Some(reply) = request.reply {
                let _ = nats_client.publish_with_headers(reply, headers, "".into()).await;
            }
        }
    });

    // Fresh heartbeat: the ghost ranks first, refuses, and the real node takes the server.
    fake_node(&client, now_ms()).await;
    let mut tries = 0;
    common::eventually(Duration::from_secs(5), "the real node sees the ghost", || {
        tries += 1;
        let (client, asked) = (&client, &asked);
        async move {
            let reply = client.allocate(&format!("first-{tries}"), 10).await.expect("allocated");
            assert_eq!(reply.node, "real");
            (asked.load(Ordering::SeqCst) > 0).then_some(())
        }
    })
    .await;
    let reply = client.allocate("second", 10).await.expect("allocated");
    assert_eq!(reply.node, "real", "the refusing node was skipped");
    assert!(asked.load(Ordering::SeqCst) >= 2, "the ghost was asked first each time");
    assert!(real.metric("mm_orchestrator_place_attempts_total{outcome=\"refused\"}") >= 2.0);

    // Its heartbeat stops: after the node timeout it is down and never asked again.
    let stale = fake_node(&client, now_ms() - 3_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = asked.load(Ordering::SeqCst);
    for i in 0..3 {
        let reply = client.allocate(&format!("later-{i}"), 10).await.expect("allocated");
        assert_eq!(reply.node, "real");
    }
    assert_eq!(asked.load(Ordering::SeqCst), before, "a node without a heartbeat gets no servers");
    assert!(now_ms() - stale.heartbeat_at > 2_000, "the ghost's heartbeat is older than the node timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_with_a_live_nodes_id_refuses_to_start_naming_the_holder() {
    let nats = NatsServer::start().expect("nats-server");
    let long = ("MM_ORCHESTRATOR__GAME__DURATION", "60s");
    let holder = Node::start(&nats, "twin", &[long]);
    let client = Client::connect(&nats).await;
    let reply = client.allocate("twin-match", 2).await.expect("allocated");

    let admin = format!("127.0.0.1:{}", mm_testkit::free_port());
    let url = nats.url();
    let env = [
        ("MM_NATS__URL", url.as_str()),
        ("MM_ORCHESTRATOR__ADMIN_LISTEN", admin.as_str()),
        ("MM_ORCHESTRATOR__NODE", "twin"),
        ("MM_ORCHESTRATOR__DRIVER", "process"),
        ("MM_ORCHESTRATOR__HEARTBEAT_INTERVAL", "200ms"),
        ("MM_ORCHESTRATOR__NODE_TIMEOUT", "2s"),
        long,
    ];
    let mut second = mm_testkit::ServiceProcess::start("orchestrator", &[], &env).expect("spawned");
    let exited = mm_shared::probe::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        second.process().exited().is_some()
    });
    assert!(exited, "the second process must refuse to start: {}", second.log());
    let status = second.process().exited().expect("exited");
    assert_eq!(status.code(), Some(1), "{}", second.log());
    let log = second.log();
    let holder_entry = client.node("twin").await.expect("the holder's entry");
    assert!(log.contains("node id `twin` is held by a live orchestrator"), "{log}");
    assert!(log.contains(&format!("instance {}", holder_entry.instance)), "names the holder: {log}");
    assert!(log.contains(&format!("pid {}", holder.process.pid())), "names the holder's pid: {log}");

    // The holder never noticed: same entry holder, its server still there, still placing.
    assert_eq!(client.node("twin").await.expect("entry").instance, holder_entry.instance);
    assert!(client.entry(&reply.game_id).await.is_some());
    client.allocate("twin-after", 2).await.expect("still placing");
    assert_eq!(holder.metric("mm_orchestrator_node_claim_lost_total{node=\"twin\"}"), 0.0);

    // Once the holder is gone (kill -9), the id is free again after its heartbeat stops.
    mm_shared::process::send_signal(holder.process.pid(), libc::SIGKILL).expect("kill -9");
    let successor = Node::start(&nats, "twin", &[long]);
    let taken = client.node("twin").await.expect("entry");
    assert_ne!(taken.instance, holder_entry.instance, "the new process holds the id");
    assert!(successor.process.log().contains("taking the node id over"), "{}", successor.process.log());
    drop(holder);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_match_placed_in_a_region_goes_to_a_node_of_that_region() {
    let nats = NatsServer::start().expect("nats-server");
    let long = ("MM_ORCHESTRATOR__GAME__DURATION", "60s");
    let _eu = Node::start(&nats, "eu-node", &[long, ("MM_ORCHESTRATOR__REGION", "eu")]);
    let _us = Node::start(&nats, "us-node", &[long, ("MM_ORCHESTRATOR__REGION", "us")]);
    let client = Client::connect(&nats).await;
    common::eventually(Duration::from_secs(5), "both nodes registered with their regions", || async {
        let eu = client.node("eu-node").await.is_some_and(|node| node.region == "eu");
        let us = client.node("us-node").await.is_some_and(|node| node.region == "us");
        (eu && us).then_some(())
    })
    .await;
    let allocate = |match_id: &str, region: Option<&str>| {
        let request = RegionalAllocateRequest {
            request: AllocateRequest {
                match_id: match_id.to_owned(),
                player_ids: common::players_of(match_id, 2),
            },
            region: region.map(str::to_owned),
        };
        let nats = client.nats.clone();
        async move {
            mm_shared::nats::request_json::<_, AllocateReply>(
                &nats,
                subjects::ORCHESTRATOR_ALLOCATE,
                &request,
                Duration::from_secs(15),
            )
            .await
        }
    };
    // Whichever node takes each request, the server lands in the match's region.
    for i in 0..4 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let reply = allocate(&format!("reg-{i}"), Some(region)).await.expect("allocated");
        assert_eq!(reply.node, format!("{region}-node"), "match {i} in {region}");
    }
    // A region nobody serves: anywhere.
    allocate("reg-ap", Some("ap")).await.expect("a region no node declares is placed anywhere");
    // A region that is not a name: the caller's mistake.
    match allocate("reg-bad", Some("eu.west")).await {
        Err(RequestError::Service { code: 400, .. }) => {}
        other => panic!("expected a 400, got {other:?}"),
    }
}
