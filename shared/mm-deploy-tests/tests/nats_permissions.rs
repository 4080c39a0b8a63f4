//! `nats/nats-server.conf` enforced by a real nats-server, tried as an attacker would:
//! each service's user may do what that service does and is refused the rest; a client
//! without credentials is a read-only viewer; the harness, whose credentials go to load
//! machines nobody vouches for, lives in an account of its own; the operator steers but
//! cannot forge `servers` or `nodes` entries.
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

    let operator = connect(&url, Some("operator")).await;
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
    assert_refused_publish(&mut gateway, &operator, "$KV.servers.g1", "session.login").await;
    assert_refused_publish(&mut gateway, &operator, "$KV.nodes.n1", "session.login").await;
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

    // The operator reads everything (it received every marker above) ...
    let operator_js = jetstream::new(operator.client.clone());
    let servers_for_operator =
        operator_js.get_key_value(buckets::SERVERS).await.expect("operator opens `servers`");
    let mut watch = servers_for_operator.watch_with_history(">").await.expect("operator watches `servers`");
    let seen =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("an entry").expect("entry");
    assert_eq!(seen.expect("no watch error").key, "g1");
    // ... and steers the harness, but cannot forge a server entry.
    let mut operator = operator;
    let second_operator = connect(&url, Some("operator")).await;
    assert_refused_publish(&mut operator, &second_operator, "$KV.servers.g2", subjects::HARNESS_CONTROL)
        .await;

    // None of the allowed operations above drew a complaint.
    for (user, client) in [("orchestrator", &mut orchestrator), ("matchmaker", &mut matchmaker)] {
        let errors = client.errors_so_far();
        let unexpected: Vec<&String> = errors.iter().filter(|e| !e.contains("$KV.servers.g1")).collect();
        assert!(unexpected.is_empty(), "{user} was refused something it needs: {unexpected:?}");
    }
}

/// The buckets that let gateways check tokens alone: only matchmakers write the signing
/// keys and the revocations; gateways read and watch both; nobody else may change them
/// (a forged key would mint tokens, a dropped revocation revive a logged-out one).
#[tokio::test(flavor = "multi_thread")]
async fn only_matchmakers_write_token_keys_and_revocations() {
    let server = nats_users::start_server();
    let url = server.url();
    let mut operator = connect(&url, Some("operator")).await;
    let second_operator = connect(&url, Some("operator")).await;
    let mut matchmaker = connect(&url, Some("matchmaker")).await;
    let mut gateway = connect(&url, Some("gateway")).await;
    let mut orchestrator = connect(&url, Some("orchestrator")).await;
    let mut harness = connect(&url, Some("harness")).await;
    let mut viewer = connect(&url, None).await;

    let matchmaker_js = jetstream::new(matchmaker.client.clone());
    let config = |bucket: &str| kv::Config { bucket: bucket.into(), history: 1, ..Default::default() };
    let keys =
        matchmaker_js.create_key_value(config(buckets::SESSION_KEYS)).await.expect("creates session_keys");
    let revoked = matchmaker_js
        .create_key_value(config(buckets::REVOKED_TOKENS))
        .await
        .expect("creates revoked_tokens");
    keys.put("00112233aabbccdd", "{}".into()).await.expect("the matchmaker writes a key");
    revoked.put("jti1", "{}".into()).await.expect("the matchmaker writes a revocation");

    // The gateway reads and watches both.
    let gateway_js = jetstream::new(gateway.client.clone());
    for (bucket, key) in [(buckets::SESSION_KEYS, "00112233aabbccdd"), (buckets::REVOKED_TOKENS, "jti1")] {
        let store = gateway_js
            .get_key_value(bucket)
            .await
            .unwrap_or_else(|err| panic!("gateway opens {bucket}: {err}"));
        assert!(store.get(key).await.expect("gateway reads").is_some(), "{bucket}");
        let mut watch = store.watch_with_history(">").await.expect("gateway watches");
        let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("an entry")
            .expect("entry");
        assert_eq!(seen.expect("no watch error").key, key);
    }
    // Nobody else writes either bucket, the gateway included.
    for (who, marker) in [(&mut gateway, "session.login"), (&mut orchestrator, "events.game.ended")] {
        for denied in ["$KV.session_keys.00112233aabbccdd", "$KV.revoked_tokens.jti1"] {
            assert_refused_publish(who, &second_operator, denied, marker).await;
        }
    }
    assert_refused_publish(&mut operator, &second_operator, "$KV.session_keys.x", subjects::HARNESS_CONTROL)
        .await;
    assert_refused_publish(
        &mut operator,
        &second_operator,
        "$KV.revoked_tokens.x",
        subjects::HARNESS_CONTROL,
    )
    .await;
    assert_refused_publish(&mut harness, &second_operator, "$KV.revoked_tokens.x", "harness.stats.h1").await;
    for stream in ["KV_revoked_tokens", "KV_session_keys"] {
        assert!(
            refused_js(&operator).delete_stream(stream).await.is_err(),
            "the operator cannot delete {stream}"
        );
        operator.violation(&format!("$JS.API.STREAM.DELETE.{stream}")).await;
        let purge = refused_js(&operator)
            .request::<_, _, serde_json::Value>(format!("STREAM.PURGE.{stream}"), &serde_json::json!({}))
            .await;
        assert!(purge.is_err(), "nor purge it: {purge:?}");
        operator.violation(&format!("$JS.API.STREAM.PURGE.{stream}")).await;
    }
    // The viewer may read the public keys, not the revocations.
    let viewer_keys = jetstream::new(viewer.client.clone())
        .get_key_value(buckets::SESSION_KEYS)
        .await
        .expect("the viewer opens session_keys");
    assert!(viewer_keys.get("00112233aabbccdd").await.expect("reads").is_some());
    assert!(refused_js(&viewer).get_key_value(buckets::REVOKED_TOKENS).await.is_err());
    viewer.violation("$JS.API.STREAM.INFO.KV_revoked_tokens").await;

    let errors = matchmaker.errors_so_far();
    assert!(errors.is_empty(), "the matchmaker was refused something it needs: {errors:?}");
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

    // A client without credentials discovers it, as `nats micro ls` does with no flags.
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
    // Every user with a password, and the viewer, who has none (`no_auth_user`).
    let mut known = mm_shared::nats::USERS.to_vec();
    known.push("viewer");
    known.sort_unstable();
    assert_eq!(defined, known);
    assert!(config.contains("no_auth_user: viewer"));
    for user in mm_shared::nats::USERS {
        let password = format!("password: ${}", mm_shared::nats::password_env(user));
        assert!(config.contains(&password), "{user}: {password}");
    }
}

/// A JetStream API request as a raw NATS request: the server's JSON answer, or why none came.
async fn js_request(
    client: &async_nats::Client,
    subject: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(subject.to_owned(), serde_json::to_vec(&body).expect("JSON").into()),
    )
    .await
    .map_err(|_| "no answer".to_owned())?
    .map_err(|err| err.to_string())?;
    serde_json::from_slice(&answer.payload).map_err(|err| err.to_string())
}

/// The anonymous viewer looks and never touches: discovery, events, `servers` and `nodes`
/// (read and watched), the harness's stats and bucket; no service call, no publish, no
/// other user's replies, no secrets.
#[tokio::test(flavor = "multi_thread")]
async fn the_viewer_without_credentials_only_looks() {
    let server = nats_users::start_server();
    let url = server.url();
    let mut viewer = connect(&url, None).await;
    let operator = connect(&url, Some("operator")).await;
    let orchestrator = connect(&url, Some("orchestrator")).await;
    let matchmaker = connect(&url, Some("matchmaker")).await;
    let gateway = connect(&url, Some("gateway")).await;
    let harness = connect(&url, Some("harness")).await;

    let orchestrator_js = jetstream::new(orchestrator.client.clone());
    let config = |bucket: &str| kv::Config { bucket: bucket.into(), history: 1, ..Default::default() };
    let servers = orchestrator_js.create_key_value(config(buckets::SERVERS)).await.expect("`servers`");
    let nodes = orchestrator_js.create_key_value(config(buckets::NODES)).await.expect("`nodes`");
    let secrets = orchestrator_js.create_key_value(config(buckets::SECRETS)).await.expect("`secrets`");
    servers.put("g1", r#"{"gameId":"g1"}"#.into()).await.expect("put");
    nodes.put("n1", r#"{"node":"n1"}"#.into()).await.expect("put");
    secrets.put("g1", "the-secret".into()).await.expect("put");
    let fleet = jetstream::new(harness.client.clone())
        .create_key_value(config(buckets::HARNESS))
        .await
        .expect("the harness creates its bucket");
    fleet.put("h1", r#"{"instance":"h1"}"#.into()).await.expect("put");

    // Discovery: a micro service of the matchmaker answers the viewer's $SRV.PING, INFO
    // and STATS (what `nats micro ls/info/stats` send).
    let _service = async_nats::service::ServiceExt::service_builder(&matchmaker.client)
        .start(subjects::SESSION_SERVICE, "0.0.1")
        .await
        .expect("service starts");
    for subject in ["$SRV.PING", "$SRV.INFO", "$SRV.STATS", "$SRV.INFO.session"] {
        // Until the server has the service's subscriptions, a request finds no responders.
        let ask = async {
            loop {
                match viewer.client.request(subject, "".into()).await {
                    Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), ask)
            .await
            .unwrap_or_else(|_| panic!("{subject}: an answer in time"))
            .unwrap_or_else(|err| panic!("{subject}: {err}"));
        let answer: serde_json::Value = serde_json::from_slice(&answer.payload).expect("JSON");
        assert_eq!(answer["name"], subjects::SESSION_SERVICE, "{subject}: {answer}");
    }

    // `nats kv watch servers`, `nats kv get nodes n1`.
    let viewer_js = jetstream::new(viewer.client.clone());
    let mut watch = viewer_js
        .get_key_value(buckets::SERVERS)
        .await
        .expect("the viewer opens `servers`")
        .watch_with_history(">")
        .await
        .expect("the viewer watches `servers`");
    let seen =
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("in time").expect("entry");
    assert_eq!(seen.expect("no watch error").key, "g1");
    let node =
        viewer_js.get_key_value(buckets::NODES).await.expect("open `nodes`").get("n1").await.expect("get");
    assert_eq!(node.as_deref(), Some(&br#"{"node":"n1"}"#[..]));
    // The harness's bucket, from the harness account, read-only through JS.harness.API.
    let harness_view = jetstream::with_prefix(viewer.client.clone(), "JS.harness.API");
    let stream =
        harness_view.get_stream("KV_harness").await.expect("the viewer reads the harness bucket's info");
    let entry = stream.direct_get_last_for_subject("$KV.harness.h1").await.expect("and its entries");
    assert_eq!(&entry.payload[..], br#"{"instance":"h1"}"#);

    // `nats sub 'events.>'` and `nats sub 'harness.stats.*'`.
    let mut events = viewer.client.subscribe("events.>").await.expect("subscribe events");
    let mut stats = viewer.client.subscribe("harness.stats.*").await.expect("subscribe stats");
    viewer.client.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;
    matchmaker.client.publish(subjects::EVENTS_MATCH_CREATED, "{}".into()).await.expect("publish");
    harness.client.publish("harness.stats.h1", "{}".into()).await.expect("publish");
    matchmaker.client.flush().await.expect("flush");
    harness.client.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("an event").expect("open");
    tokio::time::timeout(Duration::from_secs(5), stats.next())
        .await
        .expect("the harness's stats")
        .expect("open");

    // No service call, no publish of anything.
    for subject in [
        subjects::ORCHESTRATOR_ALLOCATE,
        subjects::ORCHESTRATOR_RELEASE,
        subjects::SESSION_LOGIN,
        "events.ticket.t1",
        subjects::HARNESS_CONTROL,
        "$KV.servers.g1",
    ] {
        // The marker is a discovery request, the one kind of message the viewer sends.
        assert_refused_publish(&mut viewer, &operator, subject, "$SRV.PING").await;
    }

    // No other user's replies: asking for them is refused, and a catch-all subscription
    // of the inbox space does not receive them.
    let _ = viewer.client.subscribe("_INBOX.gateway.>").await.expect("the subscribe is sent");
    viewer.client.flush().await.expect("flush");
    let error = viewer.violation("_INBOX.gateway.>").await;
    assert!(error.contains("Subscription"), "{error}");
    let mut everything = viewer.client.subscribe("_INBOX.>").await.expect("subscribe");
    viewer.client.flush().await.expect("flush");
    let matchmaking = async_nats::service::ServiceExt::service_builder(&matchmaker.client)
        .start(subjects::MATCHMAKING_SERVICE, "0.0.1")
        .await
        .expect("service");
    let token_reply = matchmaking.endpoint(subjects::MATCHMAKING_STATUS).await.expect("endpoint");
    let answering = tokio::spawn(async move {
        let mut endpoint = token_reply;
        if let Some(request) = endpoint.next().await {
            let _ = request.respond(Ok("private to the gateway".into())).await;
        }
    });
    let reply = loop {
        match gateway.client.request(subjects::MATCHMAKING_STATUS, "{}".into()).await {
            Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.expect("the gateway gets its reply"),
        }
    };
    assert_eq!(&reply.payload[..], b"private to the gateway");
    answering.await.expect("answered");
    let overheard = tokio::time::timeout(Duration::from_millis(500), everything.next()).await;
    assert!(overheard.is_err(), "the viewer overheard a reply: {overheard:?}");

    // Secrets are out of reach.
    let refused =
        js_request(&viewer.client, "$JS.API.DIRECT.GET.KV_secrets.$KV.secrets.g1", serde_json::json!({}))
            .await;
    assert!(refused.is_err(), "the viewer read a secret: {refused:?}");
    viewer.violation("$JS.API.DIRECT.GET.KV_secrets").await;
    let mut viewer_js = jetstream::new(viewer.client.clone());
    viewer_js.set_timeout(Duration::from_millis(500));
    assert!(viewer_js.get_key_value(buckets::SECRETS).await.is_err(), "the viewer opened `secrets`");
}

/// The harness's credentials are safe on a machine nobody vouches for: its account sees
/// none of the backend's subjects or streams, whatever it does with its own stream, and
/// its JetStream has limits of its own.
#[tokio::test(flavor = "multi_thread")]
async fn the_harness_account_is_isolated_and_bounded() {
    let server = nats_users::start_server();
    let url = server.url();
    let mut harness = connect(&url, Some("harness")).await;
    let operator = connect(&url, Some("operator")).await;
    let gateway = connect(&url, Some("gateway")).await;
    let orchestrator = connect(&url, Some("orchestrator")).await;
    let servers = jetstream::new(orchestrator.client.clone())
        .create_key_value(kv::Config { bucket: buckets::SERVERS.into(), history: 1, ..Default::default() })
        .await
        .expect("`servers`");

    // Its own bucket works, and it hears the operator's harness.control.
    let harness_js = jetstream::new(harness.client.clone());
    let fleet = harness_js
        .create_key_value(kv::Config { bucket: buckets::HARNESS.into(), history: 1, ..Default::default() })
        .await
        .expect("the harness creates its bucket");
    fleet.put("h1", "{}".into()).await.expect("the harness writes its bucket");
    let mut control = harness.client.subscribe(subjects::HARNESS_CONTROL).await.expect("subscribe");
    harness.client.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;
    operator.client.publish(subjects::HARNESS_CONTROL, r#"{"fleetTarget":1}"#.into()).await.expect("publish");
    operator.client.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(5), control.next())
        .await
        .expect("control arrives")
        .expect("open");

    // The attack that worked before: widen its stream to capture players' logins. Inside
    // its own account the update is its business, but the backend's `session.login` never
    // reaches that account, so the stream captures nothing of it.
    let mut widened =
        harness_js.get_stream("KV_harness").await.expect("its stream").cached_info().config.clone();
    widened.subjects.push(subjects::SESSION_LOGIN.to_owned());
    widened.subjects.push("events.>".to_owned());
    harness_js.update_stream(&widened).await.expect("the harness may reshape its own stream");
    let _ = gateway
        .client
        .publish(subjects::SESSION_LOGIN, r#"{"id":"victim","password":"hunter2"}"#.into())
        .await;
    gateway.client.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stream = harness_js.get_stream("KV_harness").await.expect("its stream");
    let captured = stream.info().await.expect("info").state.messages;
    assert_eq!(captured, 1, "only its own entry is in its stream, no login");

    // Nothing else: no other stream created, none of the backend's touched.
    let mut refused_harness_js = refused_js(&harness);
    refused_harness_js.set_timeout(Duration::from_millis(500));
    let created = refused_harness_js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "CAPTURE".into(),
            subjects: vec!["captured.>".into()],
            ..Default::default()
        })
        .await;
    assert!(created.is_err(), "the harness created another stream");
    harness.violation("$JS.API.STREAM.CREATE.CAPTURE").await;
    assert!(refused_harness_js.delete_stream("KV_servers").await.is_err());
    harness.violation("$JS.API.STREAM.DELETE.KV_servers").await;
    assert!(refused_harness_js.get_stream("KV_servers").await.is_err(), "the harness sees `servers`");
    harness.violation("$JS.API.STREAM.INFO.KV_servers").await;
    let _ = harness.client.subscribe(subjects::SESSION_LOGIN).await.expect("the subscribe is sent");
    harness.client.flush().await.expect("flush");
    harness.violation(subjects::SESSION_LOGIN).await;

    // Its JetStream quota is its own: a bucket as large as it likes fails at the account's
    // limit, and the backend's buckets keep working.
    let huge = harness_js
        .update_key_value(kv::Config {
            bucket: buckets::HARNESS.into(),
            history: 1,
            max_bytes: 1024 * 1024 * 1024,
            ..Default::default()
        })
        .await;
    assert!(huge.is_err(), "a 1 GiB harness bucket was accepted");
    let chunk = vec![b'x'; 512 * 1024];
    let mut refused_at = None;
    for i in 0..400 {
        if fleet.put(format!("fill-{i}"), chunk.clone().into()).await.is_err() {
            refused_at = Some(i);
            break;
        }
    }
    let refused_at = refused_at.expect("the harness account's store has a limit");
    assert!(refused_at * 512 < 80 * 1024, "refused only after {} KiB", refused_at * 512);
    servers.put("g1", "{}".into()).await.expect("`servers` still takes writes");
}

/// A push consumer delivers wherever its creator says, permission or not
/// (nats-io/nats-server#8274): the viewer, who may watch `servers`, makes the server
/// deliver copies of its entries (which carry a `matchId`) to `orchestrator.release`. The
/// server does deliver them; the service (mm_shared::nats) does not act on them, while a
/// real request on the same endpoint is served.
#[tokio::test(flavor = "multi_thread")]
async fn jetstream_deliveries_a_viewer_aims_at_a_service_are_not_served() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let server = nats_users::start_server();
    let url = server.url();
    let viewer = connect(&url, None).await;
    let orchestrator = connect(&url, Some("orchestrator")).await;
    let matchmaker = connect(&url, Some("matchmaker")).await;
    let operator = connect(&url, Some("operator")).await;
    let servers = jetstream::new(orchestrator.client.clone())
        .create_key_value(kv::Config { bucket: buckets::SERVERS.into(), history: 1, ..Default::default() })
        .await
        .expect("`servers`");
    servers.put("g1", r#"{"gameId":"g1","matchId":"m-victim"}"#.into()).await.expect("put");

    // The orchestrator's release endpoint, served the way every service is.
    let handled = Arc::new(AtomicUsize::new(0));
    let service = async_nats::service::ServiceExt::service_builder(&orchestrator.client)
        .start(subjects::ORCHESTRATOR_SERVICE, "0.0.1")
        .await
        .expect("service");
    let endpoint = service.endpoint(subjects::ORCHESTRATOR_RELEASE).await.expect("endpoint");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let counter = handled.clone();
    let serving = tokio::spawn(mm_shared::nats::serve_endpoint(
        endpoint,
        "release",
        4,
        shutdown.clone(),
        move |request: mm_shared::protocol::ReleaseRequest| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(mm_shared::protocol::ReleaseReply { game_id: request.match_id, released: true })
            }
        },
    ));
    // Someone watching the subject sees what the server delivers there.
    let mut delivered = operator.client.subscribe(subjects::ORCHESTRATOR_RELEASE).await.expect("subscribe");
    operator.sync().await;

    // The attack: a push consumer on KV_servers delivering to orchestrator.release.
    let created = js_request(
        &viewer.client,
        "$JS.API.CONSUMER.CREATE.KV_servers",
        serde_json::json!({
            "stream_name": "KV_servers",
            "config": {"deliver_subject": subjects::ORCHESTRATOR_RELEASE, "ack_policy": "none", "deliver_policy": "all"}
        }),
    )
    .await
    .expect("the server answers the consumer creation");
    assert!(created.get("error").is_none(), "the viewer may create consumers on `servers`: {created}");
    let copy = tokio::time::timeout(Duration::from_secs(5), delivered.next())
        .await
        .expect("the server delivers the entry to orchestrator.release (the upstream behaviour)")
        .expect("open");
    assert!(String::from_utf8_lossy(&copy.payload).contains("m-victim"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0, "the service acted on a JetStream delivery");

    // A real request from the matchmaker is served.
    let reply = loop {
        match matchmaker
            .client
            .request(subjects::ORCHESTRATOR_RELEASE, r#"{"matchId":"m-real"}"#.into())
            .await
        {
            Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.expect("a reply"),
        }
    };
    assert!(String::from_utf8_lossy(&reply.payload).contains("m-real"));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
}
