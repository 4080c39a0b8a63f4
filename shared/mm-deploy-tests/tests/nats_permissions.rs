//! `nats/nats-server.conf` enforced by a real nats-server: each service's user may do what
//! that service does and is refused the rest, and a client without credentials is the
//! operator, who sees everything but cannot forge `servers` or `nodes` entries.
//!
//! A refusal is proven twice: the server reports the violation to the client, and a
//! marker published afterwards on the same connection reaches the operator while the
//! refused message never did (NATS keeps one connection's messages in order).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::{FutureExt, StreamExt};
use mm_deploy_tests::nats_users::{self, UserClient};
use mm_shared::protocol::{buckets, subjects};

async fn connect(url: &str, user: Option<&str>) -> UserClient {
    UserClient::connect(url, user).await.unwrap_or_else(|err| panic!("{user:?} connects: {err}"))
}

/// A JetStream context for calls the server will refuse: the refused request gets no
/// reply, so it ends at this short deadline rather than the default 5 s.
fn refused_js(user: &UserClient) -> jetstream::Context {
    let mut js = jetstream::new(user.client.clone());
    js.set_timeout(Duration::from_millis(500));
    js
}

/// `publisher` publishes `denied` (refused) and then `marker` (allowed); `watcher` is
/// subscribed to both. The marker arrives, the refused message does not.
async fn assert_refused_publish(
    publisher: &mut UserClient,
    watcher: &UserClient,
    denied: &str,
    marker: &str,
) {
    let mut denied_sub = watcher.client.subscribe(denied.to_owned()).await.expect("subscribe");
    let mut marker_sub = watcher.client.subscribe(marker.to_owned()).await.expect("subscribe");
    watcher.sync().await;
    publisher.client.publish(denied.to_owned(), "forged".into()).await.expect("publish is sent");
    publisher.client.publish(marker.to_owned(), "marker".into()).await.expect("publish is sent");
    publisher.client.flush().await.expect("flush");
    let error = publisher.violation(denied).await;
    assert!(error.contains("Publish"), "{error}");
    tokio::time::timeout(Duration::from_secs(5), marker_sub.next())
        .await
        .expect("the allowed marker arrives")
        .expect("subscription open");
    assert!(denied_sub.next().now_or_never().is_none(), "{denied} must not be delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_is_refused_outside_its_subjects() {
    let server = nats_users::start_server();
    let url = server.url();

    // Credentials are checked: a wrong password is refused, an unknown user too.
    let wrong = async_nats::ConnectOptions::with_user_and_password("gateway".into(), "nope".into())
        .connection_timeout(Duration::from_secs(5))
        .connect(&url)
        .await;
    let message = wrong.expect_err("a wrong password is refused").to_string();
    assert!(message.contains("authorization"), "{message}");

    let operator = connect(&url, None).await;
    let mut orchestrator = connect(&url, Some("orchestrator")).await;
    let mut gateway = connect(&url, Some("gateway")).await;
    let mut harness = connect(&url, Some("harness")).await;
    let mut matchmaker = connect(&url, Some("matchmaker")).await;

    // The orchestrator creates and writes `servers` and `nodes`, as it does at start.
    let orchestrator_js = jetstream::new(orchestrator.client.clone());
    let servers = orchestrator_js
        .create_key_value(kv::Config { bucket: buckets::SERVERS.into(), history: 1, ..Default::default() })
        .await
        .expect("the orchestrator creates `servers`");
    let nodes = orchestrator_js
        .create_key_value(kv::Config { bucket: buckets::NODES.into(), history: 1, ..Default::default() })
        .await
        .expect("the orchestrator creates `nodes`");
    servers.put("g1", r#"{"gameId":"g1"}"#.into()).await.expect("the orchestrator writes `servers`");
    nodes.put("n1", r#"{"node":"n1"}"#.into()).await.expect("the orchestrator writes `nodes`");

    // The gateway reads `servers` (its game proxy does) ...
    let gateway_servers = jetstream::new(gateway.client.clone())
        .get_key_value(buckets::SERVERS)
        .await
        .expect("gateway opens `servers`");
    let entry = gateway_servers.get("g1").await.expect("gateway reads `servers`");
    assert_eq!(entry.as_deref(), Some(&br#"{"gameId":"g1"}"#[..]));
    // ... but writes neither bucket, and does not even read `nodes`.
    assert_refused_publish(&mut gateway, &operator, "$KV.servers.g1", "session.verify").await;
    assert_refused_publish(&mut gateway, &operator, "$KV.nodes.n1", "session.verify").await;
    let nodes_for_gateway = refused_js(&gateway).get_key_value(buckets::NODES).await;
    assert!(nodes_for_gateway.is_err(), "the gateway cannot open `nodes`");
    gateway.violation("$JS.API.STREAM.INFO.KV_nodes").await;

    // The harness publishes its stats and nothing of the backend's: no bucket of the
    // orchestrators, no service call, no event.
    assert_refused_publish(&mut harness, &operator, "$KV.servers.g1", "harness.stats.h1").await;
    assert_refused_publish(&mut harness, &operator, "$KV.nodes.n1", "harness.stats.h1").await;
    assert_refused_publish(&mut harness, &operator, subjects::SESSION_LOGIN, "harness.stats.h1").await;
    assert_refused_publish(&mut harness, &operator, subjects::EVENTS_MATCH_CREATED, "harness.stats.h1").await;
    assert_refused_publish(&mut harness, &operator, subjects::ORCHESTRATOR_ALLOCATE, "harness.stats.h1")
        .await;
    // Nor can it read other users' replies (session tokens, game secrets travel there).
    let snoop = harness.client.subscribe("_INBOX.gateway.>").await.expect("the subscribe is sent");
    harness.client.flush().await.expect("flush");
    let error = harness.violation("_INBOX.gateway.>").await;
    assert!(error.contains("Subscription"), "{error}");
    drop(snoop);
    // Its own bucket works.
    let harness_js = jetstream::new(harness.client.clone());
    let fleet = harness_js
        .create_key_value(kv::Config { bucket: buckets::HARNESS.into(), history: 1, ..Default::default() })
        .await
        .expect("the harness creates its bucket");
    fleet.put("h1", "{}".into()).await.expect("the harness writes its bucket");

    // The matchmaker publishes events and asks for servers, but writes no bucket.
    assert_refused_publish(&mut matchmaker, &operator, "$KV.servers.g1", subjects::EVENTS_MATCH_CREATED)
        .await;

    // Nobody but an orchestrator deletes `servers` either (the API call is refused).
    let deleted = refused_js(&harness).delete_stream("KV_servers").await;
    assert!(deleted.is_err(), "the harness cannot delete `servers`");
    harness.violation("$JS.API.STREAM.DELETE.KV_servers").await;

    // The operator (no credentials) reads everything (it received every marker above) ...
    let operator_js = jetstream::new(operator.client.clone());
    let servers_for_operator =
        operator_js.get_key_value(buckets::SERVERS).await.expect("operator opens `servers`");
    let mut watch = servers_for_operator.watch_with_history(">").await.expect("operator watches `servers`");
    let seen =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("an entry").expect("entry");
    assert_eq!(seen.expect("no watch error").key, "g1");
    // ... and steers the harness, but cannot forge a server entry.
    let mut operator = operator;
    let second_operator = connect(&url, None).await;
    assert_refused_publish(&mut operator, &second_operator, "$KV.servers.g2", subjects::HARNESS_CONTROL)
        .await;

    // None of the allowed operations above drew a complaint.
    for (user, client) in [("orchestrator", &mut orchestrator), ("matchmaker", &mut matchmaker)] {
        let errors = client.errors_so_far();
        let unexpected: Vec<&String> = errors.iter().filter(|e| !e.contains("$KV.servers.g1")).collect();
        assert!(unexpected.is_empty(), "{user} was refused something it needs: {unexpected:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_answer_each_other_through_their_own_inboxes() {
    let server = nats_users::start_server();
    let url = server.url();
    let matchmaker = connect(&url, Some("matchmaker")).await;
    let mut gateway = connect(&url, Some("gateway")).await;

    // The matchmaker serves session.login as a micro service; the gateway asks it. The
    // reply goes to `_INBOX.gateway.*`, which only the gateway may read. Like the real
    // matchmaker, its connection hosts more than one service.
    let service = async_nats::service::ServiceExt::service_builder(&matchmaker.client)
        .start(subjects::SESSION_SERVICE, "0.0.1")
        .await
        .expect("service starts");
    let _store = async_nats::service::ServiceExt::service_builder(&matchmaker.client)
        .start(subjects::STORE_SERVICE, "0.0.1")
        .await
        .expect("service starts");
    let mut endpoint = service.endpoint(subjects::SESSION_LOGIN).await.expect("endpoint");
    let responder = tokio::spawn(async move {
        if let Some(request) = endpoint.next().await {
            let _ = request.respond(Ok("welcome".into())).await;
        }
    });
    // Until the server has the endpoint's subscription, a request finds no responders.
    let reply = async {
        loop {
            match gateway.client.request(subjects::SESSION_LOGIN, "{}".into()).await {
                Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
    };
    let reply =
        tokio::time::timeout(Duration::from_secs(10), reply).await.expect("in time").expect("a reply");
    assert_eq!(&reply.payload[..], b"welcome");
    responder.await.expect("responder");

    // The operator discovers it with no flags, as `nats micro ls` does.
    let operator = connect(&url, None).await;
    let inbox = operator.client.new_inbox();
    let mut answers = operator.client.subscribe(inbox.clone()).await.expect("subscribe");
    // Both services' discovery subscriptions are on the server: the endpoint that just
    // answered was subscribed after them, on the same connection.
    operator.client.publish_with_reply("$SRV.PING", inbox, "".into()).await.expect("ping");
    // Every service answers the one request (each reply is a response the server must let
    // through for the same request).
    let mut names = Vec::new();
    for _ in 0..2 {
        let pong =
            tokio::time::timeout(Duration::from_secs(5), answers.next()).await.expect("pong").expect("open");
        let pong: serde_json::Value = serde_json::from_slice(&pong.payload).expect("JSON");
        names.push(pong["name"].as_str().unwrap_or_default().to_owned());
    }
    names.sort();
    assert_eq!(names, [subjects::SESSION_SERVICE, subjects::STORE_SERVICE]);

    // The gateway is not a service: it may not serve session.login.
    let _ = gateway.client.subscribe(subjects::SESSION_LOGIN).await.expect("the subscribe is sent");
    gateway.client.flush().await.expect("flush");
    gateway.violation(subjects::SESSION_LOGIN).await;
}

/// The config file defines exactly the users the project's tools know
/// (`mm_shared::nats::USERS`): a user added on one side only would be refused, or never
/// given a password.
#[test]
fn the_config_defines_exactly_the_known_users() {
    let config =
        std::fs::read_to_string(mm_deploy_tests::repo().join("nats/nats-server.conf")).expect("config");
    let mut defined: Vec<&str> = config
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("{ user: ")?.split(',').next())
        .collect();
    defined.sort_unstable();
    let mut known = mm_shared::nats::USERS.to_vec();
    known.sort_unstable();
    assert_eq!(defined, known);
    for user in mm_shared::nats::USERS {
        let password = format!("password: ${}", mm_shared::nats::password_env(user));
        assert!(config.contains(&password), "{user}: {password}");
    }
}
