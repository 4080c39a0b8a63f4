//! The warm pool with the Podman driver: after kill -9 of its node, the next start adopts
//! the warm containers back into the pool (their entries lost meanwhile too, asked of the
//! servers themselves) and the claimed ones as running, and hands the adopted warm ones
//! out.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, ContainerGuard, Node, assert_echo, connect_player, containers_of};
use mm_shared::protocol::{ServerEntry, ServerState, StartKind};
use mm_testkit::{NatsServer, PodmanService};

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_a_restarted_node_adopts_its_warm_containers() {
    common::require_image(None);
    let _guard = ContainerGuard { socket: None, node: "pool-k".to_owned() };
    let podman = PodmanService::start().expect("podman service");
    let nats = NatsServer::start().expect("nats-server");
    let socket = podman.socket().display().to_string();
    let env = [
        ("MM_ORCHESTRATOR__DRIVER", "podman"),
        ("MM_ORCHESTRATOR__PODMAN__SOCKET", socket.as_str()),
        ("MM_ORCHESTRATOR__GAME__DURATION", "60s"),
        ("MM_ORCHESTRATOR__POOL__MIN", "2"),
    ];
    let node = Node::start(&nats, "pool-k", &env);
    let client = Client::connect(&nats).await;
    let first = client.wait_warm("pool-k", 2, Duration::from_secs(60)).await;

    // One is claimed: a player joins.
    let reply = client.allocate("claimed", 2).await.expect("allocated");
    assert_eq!(reply.start, StartKind::Warm);
    let claimed = client.entry(&reply.game_id).await.expect("entry");
    assert!(first.iter().any(|warm| warm.handle == claimed.handle), "one of the warm containers");
    let mut player = connect_player(&reply.address, "claimed-p0", &claimed.secret).await.expect("admitted");
    assert_echo(&mut player).await;
    let warm = client.wait_warm("pool-k", 2, Duration::from_secs(60)).await;
    assert_eq!(containers_of(None, "pool-k").len(), 3);

    mm_shared::process::send_signal(node.process.pid(), libc::SIGKILL).expect("kill -9");
    drop(node);
    // While it is down its view is lost in part: one warm server's entry, and the
    // claimed server's entry (its secret stays in its own bucket).
    client.servers.delete(&warm[0].game_id).await.expect("delete");
    client.servers.delete(&claimed.game_id).await.expect("delete");

    let node = Node::start(&nats, "pool-k", &env);
    let adopted = client.wait_warm("pool-k", 2, Duration::from_secs(60)).await;
    let handles =
        |entries: &[ServerEntry]| entries.iter().map(|entry| entry.handle.clone()).collect::<HashSet<_>>();
    assert_eq!(handles(&adopted), handles(&warm), "the same warm containers, back in the pool");
    assert!(adopted.iter().all(|entry| entry.match_id.is_empty()));
    assert_eq!(containers_of(None, "pool-k").len(), 3, "nothing started, nothing removed");
    let back = client.entry(&claimed.game_id).await.expect("the claimed server's entry is written again");
    assert_eq!(
        (back.state, back.handle.as_str(), back.address.as_str(), back.secret.as_str()),
        (ServerState::Running, claimed.handle.as_str(), claimed.address.as_str(), claimed.secret.as_str())
    );
    assert_eq!((back.match_id.as_str(), back.warm_id.as_str()), ("claimed", claimed.warm_id.as_str()));
    assert_eq!(back.ends_at, claimed.ends_at);
    assert_echo(&mut player).await;
    for action in ["adopted", "recovered"] {
        let count = node.metric(&format!("mm_orchestrator_reconcile_actions_total{{action=\"{action}\"}}"));
        assert!(count >= 1.0, "{action}: {count}\n{}", node.process.log());
    }

    // The adopted warm servers are handed out: their tokens were recovered.
    for i in 0..2 {
        let match_id = format!("after-{i}");
        let reply = client.allocate(&match_id, 2).await.expect("allocated");
        assert_eq!(reply.start, StartKind::Warm, "{}", node.process.log());
        let entry = client.entry(&reply.game_id).await.expect("entry");
        assert!(handles(&warm).contains(&entry.handle), "an adopted warm container");
        let mut socket =
            connect_player(&reply.address, &format!("{match_id}-p1"), &entry.secret).await.expect("admitted");
        assert_echo(&mut socket).await;
    }
}
