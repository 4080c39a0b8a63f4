//! Nothing allocated for nobody keeps running: `orchestrator.release` ends a match's
//! server from whichever node receives it, and a server no player joins ends itself.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Node, alive, assert_echo, connect_player};
use futures_util::StreamExt;
use mm_shared::protocol::{ServerEntry, ServerState};
use mm_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread")]
async fn release_ends_the_server_from_any_node_and_is_idempotent() {
    let nats = NatsServer::start().expect("nats-server");
    let long = [("MM_ORCHESTRATOR__GAME__DURATION", "60s")];
    // The servers go to `owner` (alone at first); `other` receives a share of the
    // releases (a queue group) and forwards them.
    let owner = Node::start(&nats, "owner", &long);
    let client = Client::connect(&nats).await;
    let mut games = Vec::new();
    for i in 0..10 {
        let reply = client.allocate(&format!("rel-{i}"), 2).await.expect("allocated");
        assert_eq!(reply.node, "owner");
        games.push((format!("rel-{i}"), client.entry(&reply.game_id).await.expect("entry")));
    }
    let other = Node::start(&nats, "other", &long);

    for (match_id, entry) in &games {
        let reply = client.release(match_id).await.expect("released");
        assert_eq!((reply.game_id.as_str(), reply.released), (entry.game_id.as_str(), true));
    }
    for (match_id, entry) in &games {
        client.wait_gone(&entry.game_id, Duration::from_secs(10)).await;
        assert!(!alive(&entry.handle), "the server of {match_id} is stopped");
    }
    // Again: nothing left to release.
    for (match_id, entry) in games.iter().take(3) {
        let reply = client.release(match_id).await.expect("answered");
        assert_eq!((reply.game_id.as_str(), reply.released), (entry.game_id.as_str(), false));
    }
    let reply = client.release("never-allocated").await.expect("answered");
    assert!(!reply.released);
    let err = client.release("bad id").await.expect_err("a bad match id");
    assert!(matches!(err, mm_shared::nats::RequestError::Service { code: 400, .. }), "{err}");

    let forwarded = other.metric("mm_orchestrator_releases_total{result=\"forwarded\"}");
    let released = owner.metric("mm_orchestrator_releases_total{result=\"released\"}");
    assert!(forwarded >= 1.0, "some releases reached the other node, which forwarded them");
    assert_eq!(released, 10.0, "the owner stopped every one, asked directly or forwarded");
    assert!(owner.process.log().contains("released: its match was not committed"), "{}", owner.process.log());
}

/// Follows KV `servers` and returns the last entry written for `game_id` before its
/// deletion (its final state and detail).
async fn final_entry(client: &Client, game_id: &str, within: Duration) -> ServerEntry {
    let mut watch = client.servers.watch(game_id).await.expect("watch");
    let mut last = None;
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, watch.next()).await.expect("the entry is deleted in time");
        let entry = next.expect("watching").expect("an entry");
        match entry.operation {
            async_nats::jetstream::kv::Operation::Put => {
                last = Some(serde_json::from_slice::<ServerEntry>(&entry.value).expect("an entry"));
            }
            _ => return last.expect("written before it was deleted"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_nobody_joins_ends_itself_and_its_entry_says_why() {
    let nats = NatsServer::start().expect("nats-server");
    let node = Node::start(
        &nats,
        "lonely",
        &[("MM_ORCHESTRATOR__GAME__DURATION", "60s"), ("MM_ORCHESTRATOR__GAME__JOIN_TIMEOUT", "1500ms")],
    );
    let client = Client::connect(&nats).await;

    let started = Instant::now();
    let nobody = client.allocate("nobody-joins", 2).await.expect("allocated");
    let joined = client.allocate("someone-joins", 2).await.expect("allocated");
    let joined_entry = client.entry(&joined.game_id).await.expect("entry");
    let mut socket =
        connect_player(&joined.address, "someone-joins-p0", &joined_entry.secret).await.expect("admitted");

    let last = final_entry(&client, &nobody.game_id, Duration::from_secs(10)).await;
    assert_eq!(last.state, ServerState::Complete, "{last:?}");
    assert!(
        last.detail.contains("no player joined within 1.5s (orchestrator.game.join_timeout)"),
        "{}",
        last.detail
    );
    assert_eq!(last.restarts, 0, "ending itself is no crash to restart");
    assert!(started.elapsed() < Duration::from_secs(8), "ended at its join timeout: {:?}", started.elapsed());
    assert_eq!(node.metric("mm_orchestrator_join_timeouts_total{node=\"lonely\"}"), 1.0);
    assert_eq!(node.metric("mm_orchestrator_restarts_total{node=\"lonely\"}"), 0.0);

    // The server a player joined plays on.
    assert_echo(&mut socket).await;
    assert_eq!(client.entry(&joined.game_id).await.map(|entry| entry.state), Some(ServerState::Running));
}
