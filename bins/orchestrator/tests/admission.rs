//! Budgets, not clocks, and back-pressure instead of time-outs: a request whose budget ran
//! out is dropped unworked, and a node whose driver cannot start a server within the
//! request's budget says so at once.

mod common;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use common::{Client, Node};
use mm_shared::nats::{BUDGET_HEADER, RequestError};
use mm_shared::protocol::{AllocateRequest, PlaceRequest, subjects};
use mm_testkit::NatsServer;

/// The micro error code of a raw reply (`None` for a success).
fn error_code(reply: &async_nats::Message) -> Option<String> {
    reply
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_budget_is_dropped_unworked() {
    let nats = NatsServer::start().expect("nats-server");
    let node = Node::start(&nats, "budget", &[]);
    let client = Client::connect(&nats).await;

    let allocate = AllocateRequest { match_id: "late".to_owned(), player_ids: common::players_of("late", 2) };
    let mut headers = HeaderMap::new();
    headers.insert(BUDGET_HEADER, "0");
    let body = serde_json::to_vec(&allocate).expect("json");
    let reply = client
        .nats
        .request_with_headers(subjects::ORCHESTRATOR_ALLOCATE, headers.clone(), body.into())
        .await
        .expect("a reply");
    assert_eq!(error_code(&reply).as_deref(), Some("504"));

    // The node's own place subject too: no server is placed for a spent budget.
    let game_id = {
        let ok = client.allocate("warm-up", 2).await.expect("allocated");
        assert_eq!(ok.node, "budget");
        // The game id of "late" is derived the same way; read it from a place answer.
        let place = PlaceRequest {
            game_id: "gx".to_owned(),
            match_id: "late".to_owned(),
            player_ids: common::players_of("late", 2),
        };
        let body = serde_json::to_vec(&place).expect("json");
        let reply = client
            .nats
            .request_with_headers(subjects::orchestrator_node_place("budget"), headers, body.into())
            .await
            .expect("a reply");
        assert_eq!(error_code(&reply).as_deref(), Some("504"), "dropped before the id was even checked");
        ok.game_id
    };
    let entries = client.entries().await;
    assert_eq!(entries.len(), 1, "only the warm-up's server: {entries:?}");
    assert_eq!(entries[0].game_id, game_id);

    let metrics = node.metrics();
    for endpoint in ["allocate", "place"] {
        assert_eq!(
            common::metric_value(
                &metrics,
                &format!("mm_nats_service_budget_expired_total{{endpoint=\"{endpoint}\"}}")
            ),
            1.0,
            "{endpoint}"
        );
    }
    assert_eq!(
        common::metric_value(&metrics, "mm_orchestrator_allocations_total{result=\"ok\",reason=\"placed\"}"),
        1.0,
        "the late request never reached the allocator"
    );
}

/// A game-server "binary" whose start is slow and one at a time (a lock around a sleep),
/// like a busy container engine.
fn slow_game_server(dir: &std::path::Path) -> String {
    let lock = dir.join("starts.lock");
    common::wrapped_game_server(dir, &format!("/usr/bin/flock {} /bin/sleep 0.3", lock.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overloaded_node_refuses_at_once_what_it_cannot_start_in_time() {
    let nats = NatsServer::start().expect("nats-server");
    let dir =
        std::env::temp_dir().join(format!("mm-slow-{}-{}", std::process::id(), mm_testkit::free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let binary = slow_game_server(&dir);
    let node = Node::start(
        &nats,
        "slow",
        &[("MM_ORCHESTRATOR__GAME__DURATION", "60s"), ("MM_ORCHESTRATOR__PROCESS__BINARY", binary.as_str())],
    );
    let client = std::sync::Arc::new(Client::connect(&nats).await);

    // The node learns how fast its starts are (about 3 a second, one at a time).
    for i in 0..5 {
        client.allocate(&format!("learn-{i}"), 2).await.expect("allocated");
    }

    // Then 16 at once, each with 3 s: about 7 can be ready in time; the rest are refused
    // at once, and nothing runs into its timeout.
    let budget = Duration::from_secs(3);
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = client.allocate_within(&format!("burst-{i}"), 2, budget).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut placed = 0;
    let mut refused = 0;
    for outcome in burst {
        let (result, took) = outcome.await.expect("task");
        match result {
            Ok(_) => {
                placed += 1;
                assert!(took < budget, "placed within its budget: {took:?}");
            }
            Err(RequestError::Service { code: 503, message, .. }) => {
                refused += 1;
                assert!(message.contains("busy"), "{message}");
                assert!(took < Duration::from_secs(1), "refused at once, not after a wait: {took:?}");
            }
            Err(other) => panic!("neither placed nor refused at once: {other} after {took:?}"),
        }
    }
    assert!(placed >= 3, "it still starts what fits: {placed} placed");
    assert!(refused >= 4, "and refuses the rest: {refused} refused");
    assert!(
        node.metric("mm_orchestrator_placements_total{result=\"refused\",reason=\"busy\"}") >= refused as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
