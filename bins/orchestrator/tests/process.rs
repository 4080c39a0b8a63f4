//! The process driver (no Podman): a match's whole journey, its result published, the
//! restart policy, quick refusals, and nothing left behind on SIGTERM or kill -9.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Node, alive, assert_echo, connect_player, wait_closed};
use futures_util::{SinkExt, StreamExt};
use mm_shared::nats::RequestError;
use mm_shared::protocol::{GameEnded, ServerState, subjects};
use mm_testkit::NatsServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test(flavor = "multi_thread")]
async fn a_match_gets_a_server_plays_and_leaves_nothing_behind() {
    let nats = NatsServer::start().expect("nats-server");
    let node = Node::start(&nats, "proc-a", &[("MM_ORCHESTRATOR__PUBLIC_URL", "ws://gateway.test:8080")]);
    let client = Client::connect(&nats).await;

    let reply = client.allocate("match-1", 10).await.expect("allocated");
    assert_eq!(reply.node, "proc-a");
    assert_eq!(reply.url, format!("ws://gateway.test:8080/game/{}/connect", reply.game_id));
    let port: u16 = reply.address.strip_prefix("127.0.0.1:").expect("on 127.0.0.1").parse().expect("port");
    assert!((20000..=32000).contains(&port), "port {port} in the dynamic range");

    let entry = client.entry(&reply.game_id).await.expect("KV entry");
    assert_eq!(entry.state, ServerState::Running);
    assert_eq!(
        (entry.match_id.as_str(), entry.node.as_str(), entry.driver.as_str()),
        ("match-1", "proc-a", "process")
    );
    assert_eq!(entry.address, reply.address);
    assert_eq!(entry.player_ids, common::players_of("match-1", 10));
    assert_eq!(entry.secret.len(), 64, "a per-match secret");
    assert!(alive(&entry.handle), "the game server process {} runs", entry.handle);

    // The same match again: the same server (allocation is idempotent).
    let again = client.allocate("match-1", 10).await.expect("allocated again");
    assert_eq!(
        (again.game_id.as_str(), again.address.as_str()),
        (reply.game_id.as_str(), reply.address.as_str())
    );

    // A player of the match plays; anyone else is turned away.
    let mut socket = connect_player(&reply.address, "match-1-p3", &entry.secret).await.expect("admitted");
    assert_echo(&mut socket).await;
    assert_eq!(connect_player(&reply.address, "match-2-p0", &entry.secret).await.err(), Some(403));
    assert_eq!(connect_player(&reply.address, "match-1-p0", "not-the-secret").await.err(), Some(401));

    // The game ends: the socket is closed, the entry and the process are gone.
    assert_eq!(wait_closed(&mut socket, Duration::from_secs(10)).await, Some(CloseCode::Normal));
    client.wait_gone(&reply.game_id, Duration::from_secs(10)).await;
    assert!(!alive(&entry.handle), "the game server process is gone");
    let metrics = node.metrics();
    assert!(
        common::metric_value(&metrics, "mm_orchestrator_allocations_total{result=\"ok\",reason=\"placed\"}")
            >= 1.0,
        "{metrics}"
    );
    assert!(
        common::metric_value(&metrics, "mm_orchestrator_servers_ended_total{state=\"complete\"}") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        client.node("proc-a").await.expect("node entry").used.servers,
        0,
        "the node's books are back to empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_game_publishes_its_result_with_the_matchs_teams() {
    let nats = NatsServer::start().expect("nats-server");
    // One server cold, then one from the warm pool: both report the same way.
    let node = Node::start(&nats, "proc-res", &[("MM_ORCHESTRATOR__POOL__MIN", "1")]);
    let client = Client::connect(&nats).await;
    let mut results = client.nats.subscribe(subjects::EVENTS_GAME_ENDED).await.expect("subscribe");
    client.nats.flush().await.expect("flush");

    // The first match's first side is far stronger, the second match's second side: 2,200
    // points apart, the strong side wins all but once in 300,000 games.
    for (match_id, strong) in [("result-1", 0), ("result-2", 1)] {
        let reply = client.allocate(match_id, 4).await.expect("allocated");
        let entry = client.entry(&reply.game_id).await.expect("KV entry");
        // Everyone sends their true skill as the harness does.
        for index in 0..4 {
            let skill = if index / 2 == strong { 2600.0 } else { 400.0 };
            let player = format!("{match_id}-p{index}");
            let mut socket = connect_player(&reply.address, &player, &entry.secret).await.expect("admitted");
            let text = format!("{player}#1 {{\"trueSkill\":{skill:.1}}}");
            socket.send(Message::text(text.clone())).await.expect("send");
            let echo =
                tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("echo in time");
            assert_eq!(echo.expect("open").expect("frame"), Message::text(text));
            tokio::spawn(async move { wait_closed(&mut socket, Duration::from_secs(15)).await });
        }
        let message = tokio::time::timeout(Duration::from_secs(15), results.next())
            .await
            .expect("a result within the game's length")
            .expect("subscribed");
        let result: GameEnded = serde_json::from_slice(&message.payload).expect("a GameEnded");
        let players = common::players_of(match_id, 4);
        assert_eq!((result.game_id.as_str(), result.match_id.as_str()), (reply.game_id.as_str(), match_id));
        assert_eq!(result.teams, vec![players[..2].to_vec(), players[2..].to_vec()], "halves, in order");
        assert_eq!(result.winner, strong, "{result:?}");
        client.wait_gone(&reply.game_id, Duration::from_secs(10)).await;
    }
    assert_eq!(node.metric("mm_orchestrator_game_results_total{result=\"published\"}"), 2.0);
    assert!(node.metric("mm_orchestrator_claims_total{kind=\"warm\"}") >= 1.0, "{}", node.metrics());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_dies_early_is_restarted_until_the_policy_gives_up() {
    let nats = NatsServer::start().expect("nats-server");
    let node = Node::start(
        &nats,
        "proc-r",
        &[("MM_ORCHESTRATOR__GAME__DURATION", "30s"), ("MM_ORCHESTRATOR__RESTART__ATTEMPTS", "1")],
    );
    let client = Client::connect(&nats).await;
    let reply = client.allocate("crashy", 2).await.expect("allocated");
    let first = client.entry(&reply.game_id).await.expect("entry");

    mm_shared::process::send_signal(first.handle.parse().expect("pid"), libc::SIGKILL).expect("kill");
    let restarted = common::eventually(Duration::from_secs(10), "a restart", || async {
        client
            .entry(&reply.game_id)
            .await
            .filter(|e| e.restarts == 1 && e.state == ServerState::Running && e.handle != first.handle)
    })
    .await;
    assert_eq!(restarted.address, first.address, "same address after a restart");
    assert_eq!(restarted.secret, first.secret, "same secret after a restart");
    assert!(restarted.detail.contains("before its game ended"), "{}", restarted.detail);
    let mut socket =
        connect_player(&restarted.address, "crashy-p1", &restarted.secret).await.expect("admitted");
    assert_echo(&mut socket).await;
    assert_eq!(node.metric("mm_orchestrator_restarts_total{node=\"proc-r\"}"), 1.0);

    // The policy allows one restart: the next early death fails the server.
    mm_shared::process::send_signal(restarted.handle.parse().expect("pid"), libc::SIGKILL).expect("kill");
    client.wait_gone(&reply.game_id, Duration::from_secs(10)).await;
    assert_eq!(node.metric("mm_orchestrator_servers_ended_total{state=\"failed\"}"), 1.0);
    assert!(node.process.log().contains("no restart left"), "{}", node.process.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn mistakes_and_a_full_node_get_a_quick_clear_answer() {
    let nats = NatsServer::start().expect("nats-server");
    let _node = Node::start(&nats, "proc-full", &[("MM_ORCHESTRATOR__CAPACITY__MAX_SERVERS", "1")]);
    let client = Client::connect(&nats).await;
    client.allocate("only-one", 10).await.expect("the first fits");

    let started = Instant::now();
    let err = client.allocate("one-too-many", 10).await.expect_err("no room");
    assert!(started.elapsed() < Duration::from_secs(2), "answered quickly: {:?}", started.elapsed());
    match err {
        RequestError::Service { code, message, .. } => {
            assert_eq!(code, 503);
            assert_eq!(message, "no node can run a game server: 1 node: 1 at max servers");
        }
        other => panic!("expected a service error, got {other}"),
    }

    for (body, needle) in [
        (&br#"{"matchId": "m", "playerIds": []}"#[..], "at least one"),
        (&br#"{"matchId": "bad id", "playerIds": ["p"]}"#[..], "matchId"),
        (&br#"{"matchId": "m"}"#[..], "unexpected JSON shape"),
        (&b"not json"[..], "malformed JSON"),
    ] {
        let reply =
            client.nats.request(subjects::ORCHESTRATOR_ALLOCATE, body.to_vec().into()).await.expect("reply");
        let headers = reply.headers.expect("micro error headers");
        assert_eq!(headers.get("Nats-Service-Error-Code").map(|v| v.as_str()), Some("400"), "{needle}");
        let message = headers.get("Nats-Service-Error").map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert!(message.contains(needle), "{needle}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_every_server_and_kill_9_leaves_no_process() {
    let nats = NatsServer::start().expect("nats-server");
    let long = [("MM_ORCHESTRATOR__GAME__DURATION", "60s")];
    let mut node = Node::start(&nats, "proc-s", &long);
    let client = Client::connect(&nats).await;
    let mut pids = Vec::new();
    for i in 0..3 {
        let reply = client.allocate(&format!("stop-{i}"), 2).await.expect("allocated");
        pids.push(client.entry(&reply.game_id).await.expect("entry").handle);
    }
    let status = node.process.terminate(Duration::from_secs(10)).expect("stops by itself");
    assert!(status.success(), "exit 0: {status}");
    assert!(pids.iter().all(|pid| !alive(pid)), "every game server stopped");
    assert!(client.entries().await.is_empty(), "no entry left");
    assert!(client.node("proc-s").await.is_none(), "the node entry is removed");

    // kill -9: the children die with the orchestrator (kernel death signal); the next
    // start finds their entries stale and deletes them.
    let node = Node::start(&nats, "proc-s", &long);
    let reply = client.allocate("killed", 2).await.expect("allocated");
    let pid = client.entry(&reply.game_id).await.expect("entry").handle;
    mm_shared::process::send_signal(node.process.pid(), libc::SIGKILL).expect("kill -9");
    let gone =
        mm_shared::probe::wait_until(Duration::from_secs(5), Duration::from_millis(20), || !alive(&pid));
    assert!(gone, "the game server died with its orchestrator");
    drop(node);
    let node = Node::start(&nats, "proc-s", &long);
    client.wait_gone(&reply.game_id, Duration::from_secs(5)).await;
    assert_eq!(node.metric("mm_orchestrator_reconcile_actions_total{action=\"deleted_entry\"}"), 1.0);
}
