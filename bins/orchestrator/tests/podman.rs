//! The Podman driver against a real (rootful, test-owned) Podman service: a match's whole
//! journey, kill -9 and adoption, SIGTERM, and quick errors when Podman cannot work.

mod common;

use std::time::{Duration, Instant};

use common::{Client, ContainerGuard, Node, assert_echo, connect_player, containers_of, wait_closed};
use mm_shared::nats::RequestError;
use mm_shared::protocol::ServerState;
use mm_testkit::{NatsServer, PodmanService};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A test-owned Podman service, NATS, and the env that points a node at them; the
/// node's containers are removed when it is dropped.
struct Setup {
    _guard: ContainerGuard<'static>,
    podman: PodmanService,
    nats: NatsServer,
    env: Vec<(&'static str, String)>,
}

fn setup(node: &str) -> Setup {
    let podman = PodmanService::start().expect("podman service");
    let env = vec![
        ("MM_ORCHESTRATOR__DRIVER", "podman".to_owned()),
        ("MM_ORCHESTRATOR__PODMAN__SOCKET", podman.socket().display().to_string()),
    ];
    Setup {
        _guard: ContainerGuard { socket: None, node: node.to_owned() },
        podman,
        nats: NatsServer::start().expect("nats-server"),
        env,
    }
}

fn with<'a>(
    base: &'a [(&'static str, String)],
    extra: &[(&'static str, &'a str)],
) -> Vec<(&'static str, &'a str)> {
    base.iter().map(|(key, value)| (*key, value.as_str())).chain(extra.iter().copied()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_journey_and_sigterm_leaves_no_container() {
    common::require_image(None);
    let Setup { nats, env, .. } = &setup("pod-a");
    let mut node = Node::start(nats, "pod-a", &with(env, &[]));
    let client = Client::connect(nats).await;
    let registered = client.node("pod-a").await.expect("node entry");
    assert_eq!(registered.driver, "podman");
    assert!(registered.driver_status.starts_with("podman 4"), "{}", registered.driver_status);
    assert!(node.process.log().contains("using the podman driver"), "the driver is logged at start");

    common::journey(&client, None, "pod-a", "pod-match").await;
    assert!(node.metric("mm_orchestrator_container_start_duration_seconds_count{driver=\"podman\"}") >= 1.0);

    for i in 0..2 {
        client.allocate(&format!("pod-stop-{i}"), 2).await.expect("allocated");
    }
    assert_eq!(containers_of(None, "pod-a").len(), 2);
    let status = node.process.terminate(Duration::from_secs(15)).expect("stops by itself");
    assert!(status.success(), "exit 0: {status}");
    assert!(containers_of(None, "pod-a").is_empty(), "SIGTERM stops and removes its containers");
    assert!(client.entries().await.is_empty(), "and deletes their entries");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_a_restarted_node_adopts_its_games_and_cleans_up_the_rest() {
    common::require_image(None);
    let Setup { nats, env, .. } = &setup("pod-k");
    let node_env = with(env, &[("MM_ORCHESTRATOR__GAME__DURATION", "8s")]);
    let node = Node::start(nats, "pod-k", &node_env);
    let client = Client::connect(nats).await;

    let reply = client.allocate("survivor", 10).await.expect("allocated");
    let entry = client.entry(&reply.game_id).await.expect("entry");
    let mut player = connect_player(&reply.address, "survivor-p1", &entry.secret).await.expect("admitted");
    assert_echo(&mut player).await;
    let lost = client.allocate("lost", 2).await.expect("allocated");
    let lost_entry = client.entry(&lost.game_id).await.expect("entry");
    let mut lost_player =
        connect_player(&lost.address, "lost-p1", &lost_entry.secret).await.expect("admitted");

    mm_shared::process::send_signal(node.process.pid(), libc::SIGKILL).expect("kill -9");
    drop(node);
    // Its entry is lost while the node is down (another node reaped it, or the store
    // lost it): the container alone tells its game.
    client.servers.delete(&lost.game_id).await.expect("delete");
    // While the node is down: an orphan container of this node (no entry), and an entry
    // whose server is gone.
    let orphan = common::podman(
        None,
        &[
            "run",
            "-d",
            "--label",
            "mm.node=pod-k",
            "--label",
            "mm.game-id=gorphan",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            common::IMAGE,
        ],
    );
    let mut stale = entry.clone();
    stale.game_id = "gstale".to_owned();
    client.servers.put("gstale", serde_json::to_vec(&stale).expect("json").into()).await.expect("put");

    let node = Node::start(nats, "pod-k", &node_env);
    assert_echo(&mut player).await;
    let adopted = client.entry(&reply.game_id).await.expect("the game's entry stays");
    assert_eq!((adopted.state, adopted.handle.as_str()), (ServerState::Running, entry.handle.as_str()));
    assert!(client.entry("gstale").await.is_none(), "the entry without a server is deleted");
    let recovered = client.entry(&lost.game_id).await.expect("the lost entry is written again");
    assert_eq!(
        (recovered.state, recovered.address.as_str(), recovered.secret.as_str(), recovered.handle.as_str()),
        (ServerState::Running, lost.address.as_str(), lost_entry.secret.as_str(), lost_entry.handle.as_str())
    );
    assert_eq!(
        (recovered.match_id.as_str(), &recovered.player_ids),
        (lost_entry.match_id.as_str(), &lost_entry.player_ids)
    );
    assert_eq!(recovered.ends_at, lost_entry.ends_at);
    assert_echo(&mut lost_player).await;
    let left = containers_of(None, "pod-k");
    assert!(
        !left.iter().any(|id| orphan.starts_with(id.as_str()) || id.starts_with(&orphan)),
        "the orphan is removed"
    );
    assert_eq!(left.len(), 2, "only the adopted games' containers are left: {left:?}");
    for action in ["adopted", "recovered", "removed_orphan", "deleted_entry"] {
        assert_eq!(
            node.metric(&format!("mm_orchestrator_reconcile_actions_total{{action=\"{action}\"}}")),
            1.0,
            "{action}"
        );
    }

    // The games play on and end on time; then nothing is left.
    assert_eq!(wait_closed(&mut player, Duration::from_secs(15)).await, Some(CloseCode::Normal));
    assert_eq!(wait_closed(&mut lost_player, Duration::from_secs(15)).await, Some(CloseCode::Normal));
    client.wait_gone(&reply.game_id, Duration::from_secs(15)).await;
    client.wait_gone(&lost.game_id, Duration::from_secs(15)).await;
    common::eventually(Duration::from_secs(10), "no container left", || async {
        containers_of(None, "pod-k").is_empty().then_some(())
    })
    .await;
    assert!(client.entries().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_or_a_dead_podman_is_a_quick_clear_error() {
    let Setup { podman, nats, env, .. } = &mut setup("pod-e");
    let node = Node::start_unhealthy(
        nats,
        "pod-e",
        &with(env, &[("MM_ORCHESTRATOR__PODMAN__IMAGE", "localhost/mm/not-built:latest")]),
    );
    let client = Client::connect(nats).await;
    assert!(node.process.log().contains("unhealthy for now"), "the missing image is reported at start");

    let started = Instant::now();
    let err = client.allocate("no-image", 10).await.expect_err("no image");
    assert!(started.elapsed() < Duration::from_secs(3), "quick: {:?}", started.elapsed());
    let RequestError::Service { code: 503, message, .. } = err else { panic!("expected a 503, got {err}") };
    assert!(message.contains("1 driver unhealthy") && message.contains("just image"), "{message}");
    drop(node);

    // Podman going away under a working node.
    common::require_image(None);
    let _node = Node::start(nats, "pod-e", &with(env, &[]));
    client.allocate("before", 2).await.expect("works while Podman runs");
    podman.process().stop_with(libc::SIGKILL, Duration::from_secs(5));
    let started = Instant::now();
    let err = client.allocate("after", 2).await.expect_err("Podman is gone");
    assert!(started.elapsed() < Duration::from_secs(3), "quick: {:?}", started.elapsed());
    let RequestError::Service { code: 503, message, .. } = err else { panic!("expected a 503, got {err}") };
    assert!(message.to_lowercase().contains("podman"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_leaves_no_container() {
    common::require_image(None);
    let Setup { nats, env, .. } = &setup("pod-load");
    // A slow, narrow Podman pipe, short games (so exited containers pile up in it), and
    // more allocations than it can start: SIGTERM arrives with starts queued, games
    // ending and removals waiting their turn.
    // One Podman change at a time, players who never answer the close frame (each
    // server takes its 2 s close timeout to stop) and a 4 s limit on the shutdown: more
    // removals are due than the runners can make one by one in time.
    let node_env = with(
        env,
        &[
            ("MM_ORCHESTRATOR__PODMAN__PARALLEL", "1"),
            ("MM_ORCHESTRATOR__GAME__DURATION", "30s"),
            ("MM_ORCHESTRATOR__SHUTDOWN_TIMEOUT", "4s"),
        ],
    );
    let mut node = Node::start(nats, "pod-load", &node_env);
    let client = std::sync::Arc::new(Client::connect(nats).await);
    // A matcher that keeps asking (refusals come at once, so it asks again soon).
    let load_stop = tokio_util::sync::CancellationToken::new();
    let players = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let load = {
        let (client, stop, players) = (client.clone(), load_stop.clone(), players.clone());
        tokio::spawn(async move {
            let mut asked = 0;
            let mut in_flight = tokio::task::JoinSet::new();
            while !stop.is_cancelled() {
                let (client, players) = (client.clone(), players.clone());
                let match_id = format!("load-{asked}");
                in_flight.spawn(async move {
                    let Ok(reply) = client.allocate(&match_id, 2).await else { return false };
                    if let Some(entry) = client.entry(&reply.game_id).await
                        && let Ok(socket) =
                            connect_player(&reply.address, &format!("{match_id}-p0"), &entry.secret).await
                    {
                        players.lock().await.push(socket);
                    }
                    true
                });
                asked += 1;
                while in_flight.len() >= 12 {
                    let _ = in_flight.join_next().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut placed = 0;
            while let Some(ok) = in_flight.join_next().await {
                placed += usize::from(ok.unwrap_or(false));
            }
            (asked, placed)
        })
    };
    // Games start, end and pile up for removal while the pipe stays full.
    common::eventually(Duration::from_secs(30), "a few containers", || async {
        (containers_of(None, "pod-load").len() >= 8).then_some(())
    })
    .await;
    let status = node.process.terminate(Duration::from_secs(40)).expect("stops by itself");
    assert!(status.success(), "exit 0: {status}");
    load_stop.cancel();
    let (asked, _) = load.await.expect("load");
    assert!(asked > 20, "it was under load: {asked} asked");
    drop(players);
    let left = containers_of(None, "pod-load");
    assert!(left.is_empty(), "no container left after SIGTERM under load: {left:?}\n{}", node.process.log());
    assert!(client.entries().await.is_empty(), "and no entry");
}
