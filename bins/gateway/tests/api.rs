//! The player API over real HTTP: the gateway and matchmaker binaries, a real
//! nats-server and redis-server, and a stand-in orchestrator (tests only) answering
//! `orchestrator.allocate`.

mod support;

use support::http::{Answer, Http};

use std::time::Duration;

use hyper::Method;
use mm_shared::protocol::{ServerEntry, ServerState, buckets, subjects};
use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port};
use serde_json::{Value, json};

/// The backend under test: servers, matchmaker, gateway.
struct Backend {
    nats: NatsServer,
    _redis: RedisServer,
    _matchmaker: Option<ServiceProcess>,
    gateway: ServiceProcess,
    addr: String,
}

impl Backend {
    /// Everything, or (`with_matchmaker` false) a gateway with nothing behind it.
    fn start(with_matchmaker: bool, gateway_env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().expect("nats-server");
        let redis = RedisServer::start().expect("redis-server");
        let (nats_url, redis_url) = (nats.url(), redis.url());
        let matchmaker = with_matchmaker.then(|| {
            let admin = format!("127.0.0.1:{}", free_port());
            let mut matchmaker = ServiceProcess::start(
                "matchmaker",
                &[],
                &[
                    ("MM_NATS__URL", &nats_url),
                    ("MM_REDIS__URL", &redis_url),
                    ("MM_MATCHMAKER__ADMIN_LISTEN", &admin),
                    ("MM_MATCHER__IDLE_POLL", "20ms"),
                    ("MM_STORE__STARTING_BALANCE", "2000"),
                ],
            )
            .expect("matchmaker starts");
            matchmaker.wait_healthy(&admin).expect("matchmaker healthy");
            matchmaker
        });
        let addr = format!("127.0.0.1:{}", free_port());
        let mut env = vec![("MM_NATS__URL", nats_url.as_str()), ("MM_GATEWAY__LISTEN", addr.as_str())];
        env.extend_from_slice(gateway_env);
        let mut gateway = ServiceProcess::start("gateway", &[], &env).expect("gateway starts");
        gateway.wait_healthy(&addr).expect("gateway healthy");
        Self { nats, _redis: redis, _matchmaker: matchmaker, gateway, addr }
    }
}

/// Asserts a JSON error answer with this status.
fn assert_error(answer: &Answer, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    let message =
        answer.body["error"].as_str().unwrap_or_else(|| panic!("{what}: no error message: {}", answer.body));
    assert!(!message.is_empty(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contract_route_answers_as_documented() {
    let backend = Backend::start(true, &[]);
    let http = Http::new(&backend.addr);

    // POST /login
    let login = http.post("/login", None, json!({"id": "ana", "password": "pw"})).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.body["playerId"], "ana");
    let ana = login.body["token"].as_str().expect("token").to_owned();
    assert_error(
        &http.post("/login", None, json!({"id": "ana", "password": "wrong"})).await,
        401,
        "wrong password",
    );
    assert_error(
        &http.send(Method::POST, "/login", None, &[], b"{\"id\": ".to_vec()).await,
        400,
        "malformed JSON",
    );
    assert_error(&http.post("/login", None, json!({"id": "ana"})).await, 400, "missing field");
    assert_error(&http.send(Method::POST, "/login", None, &[], Vec::new()).await, 400, "empty body");
    assert_error(&http.send(Method::POST, "/login", None, &[], vec![0xff, 0x00, 0xfe]).await, 400, "binary");
    assert_error(
        &http.post("/login", None, json!({"id": "x".repeat(65), "password": "pw"})).await,
        400,
        "long id",
    );
    assert_error(&http.post("/login", None, json!({"id": "a b", "password": "pw"})).await, 400, "bad id");
    let huge = json!({"id": "ana", "password": "p".repeat(20 * 1024)});
    assert_error(&http.post("/login", None, huge).await, 413, "oversized body");

    // POST /matchmaking/join
    let anonymous = http.post("/matchmaking/join", None, Value::Null).await;
    assert_error(&anonymous, 401, "no token");
    assert_eq!(anonymous.headers.get("www-authenticate").map(|v| v.to_str().unwrap_or("")), Some("Bearer"));
    assert_error(&http.post("/matchmaking/join", Some("not-a-token"), Value::Null).await, 401, "bad token");
    assert_error(
        &http.post("/matchmaking/join", Some(&"a".repeat(64)), Value::Null).await,
        401,
        "unknown token",
    );
    let joined = http.post("/matchmaking/join", Some(&ana), Value::Null).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(joined.body["status"], "searching");
    let ticket = joined.body["ticketId"].as_str().expect("ticketId").to_owned();
    assert_eq!(http.join(&ana).await, ticket, "one live ticket per player");

    // GET /matchmaking/status
    let status = http.get(&format!("/matchmaking/status?ticketId={ticket}"), Some(&ana)).await;
    assert_eq!(status.status, 200);
    // The seed's fields, and the queue and the rating it joined with.
    assert_eq!(
        status.body,
        json!({"ticketId": ticket, "status": "searching", "queue": "default", "rating": 1500.0})
    );
    assert_error(
        &http.get(&format!("/matchmaking/status?ticketId={ticket}"), None).await,
        401,
        "status without token",
    );
    assert_error(&http.get("/matchmaking/status", Some(&ana)).await, 400, "missing ticketId");
    assert_error(&http.get("/matchmaking/status?ticketId=a.%3E", Some(&ana)).await, 400, "wildcard ticketId");
    assert_error(
        &http.get(&format!("/matchmaking/status?ticketId={}", "t".repeat(65)), Some(&ana)).await,
        400,
        "long ticketId",
    );
    assert_error(
        &http.get(&format!("/matchmaking/status?ticketId={ticket}&waitMs=soon"), Some(&ana)).await,
        400,
        "bad waitMs",
    );
    assert_error(
        &http.get("/matchmaking/status?ticketId=unknown-ticket", Some(&ana)).await,
        404,
        "unknown ticket",
    );
    let bo = http.login("bo").await;
    assert_error(
        &http.get(&format!("/matchmaking/status?ticketId={ticket}"), Some(&bo)).await,
        404,
        "another player's ticket",
    );
    assert_error(
        &http.delete(&format!("/matchmaking/cancel?ticketId={ticket}"), Some(&bo)).await,
        404,
        "cancel another's",
    );

    // DELETE /matchmaking/cancel
    let cancelled = http.delete(&format!("/matchmaking/cancel?ticketId={ticket}"), Some(&ana)).await;
    assert_eq!((cancelled.status, cancelled.body.clone()), (200, json!({"status": "cancelled"})));
    assert_error(&http.delete("/matchmaking/cancel", Some(&ana)).await, 400, "cancel without ticketId");
    let status = http.get(&format!("/matchmaking/status?ticketId={ticket}"), Some(&ana)).await;
    assert_eq!(status.body["status"], "cancelled");

    // Ten players and an orchestrator: matched, with a server; too late to cancel.
    let _allocator = support::allocator(&backend.nats.url()).await;
    let mut players = vec![(ana.clone(), http.join(&ana).await)];
    for index in 0..9 {
        let token = http.login(&format!("p{index}")).await;
        let ticket = http.join(&token).await;
        players.push((token, ticket));
    }
    let (token, ticket) = &players[0];
    let matched = http.get(&format!("/matchmaking/status?ticketId={ticket}&waitMs=10000"), Some(token)).await;
    assert_eq!(matched.status, 200);
    assert_eq!(matched.body["status"], "matched", "{}", matched.body);
    assert!(matched.body["matchId"].is_string());
    let game_id = matched.body["server"]["gameId"].as_str().expect("gameId");
    assert_eq!(matched.body["server"]["url"], format!("ws://127.0.0.1:8080/game/{game_id}/connect"));
    assert_error(
        &http.delete(&format!("/matchmaking/cancel?ticketId={ticket}"), Some(token)).await,
        409,
        "cancel after match",
    );

    // GET /store/offers (no token needed)
    let offers = http.get("/store/offers", None).await;
    assert_eq!(offers.status, 200);
    let offers = offers.body.as_array().expect("a list").clone();
    assert!(
        offers
            .iter()
            .all(|offer| offer["id"].is_string() && offer["name"].is_string() && offer["price"].is_u64())
    );
    let cheapest = offers.iter().min_by_key(|offer| offer["price"].as_u64()).expect("an offer");
    let dearest = offers.iter().max_by_key(|offer| offer["price"].as_u64()).expect("an offer");

    // POST /store/purchase
    let buy = |offer: &Value| json!({"offer_id": offer["id"]});
    let bought = http.post("/store/purchase", Some(&bo), buy(cheapest)).await;
    assert_eq!(bought.status, 200, "{}", bought.body);
    assert!(bought.body["purchaseId"].is_string());
    assert_eq!(bought.body["offer_id"], cheapest["id"]);
    assert_eq!(bought.body["balance"].as_u64(), Some(2000 - cheapest["price"].as_u64().expect("price")));
    let body = buy(cheapest).to_string().into_bytes();
    let key = [("idempotency-key", "retry-1")];
    let first = http.send(Method::POST, "/store/purchase", Some(&bo), &key, body.clone()).await;
    let retried = http.send(Method::POST, "/store/purchase", Some(&bo), &key, body).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, retried.body, "a retry with the same key is the same purchase");
    assert_error(
        &http.post("/store/purchase", Some(&bo), json!({"offer_id": "no-such-offer"})).await,
        404,
        "unknown offer",
    );
    assert_error(&http.post("/store/purchase", Some(&bo), buy(dearest)).await, 409, "not enough balance");
    assert_error(&http.post("/store/purchase", None, buy(cheapest)).await, 401, "purchase without token");
    assert_error(
        &http.post("/store/purchase", Some(&bo), json!({"offer": "x"})).await,
        400,
        "purchase missing offer_id",
    );

    // Logout ends the token.
    let logout = http.post("/logout", Some(&bo), Value::Null).await;
    assert_eq!(logout.status, 204);
    assert_error(&http.post("/matchmaking/join", Some(&bo), Value::Null).await, 401, "logged out");

    // Unknown routes and methods answer JSON too.
    assert_error(&http.get("/nowhere", None).await, 404, "unknown route");
    assert_error(&http.get("/login", None).await, 405, "wrong method");

    // Metrics name route templates, never raw paths with ids.
    let metrics =
        mm_shared::probe::http_get(&backend.addr, "/metrics", Duration::from_secs(5)).expect("/metrics");
    for needle in [
        r#"route="/matchmaking/status""#,
        r#"status="404""#,
        r#"route="unmatched""#,
        "mm_gateway_http_request_duration_seconds_bucket",
        "mm_gateway_http_requests_in_flight",
    ] {
        assert!(metrics.body.contains(needle), "/metrics lacks {needle}");
    }
    assert!(!metrics.body.contains(ticket.as_str()), "a ticket id leaked into a label");
}

/// A status long-poll of `wait_ms` on its own connection and task.
fn spawn_poll(addr: &str, ticket: &str, token: &str, wait_ms: u64) -> tokio::task::JoinHandle<Answer> {
    let (http, token) = (Http::new(addr), token.to_owned());
    let path = format!("/matchmaking/status?ticketId={ticket}&waitMs={wait_ms}");
    tokio::spawn(async move { http.get(&path, Some(&token)).await })
}

/// Waits until the gateway reports `count` long-polls waiting.
fn polls_waiting(addr: &str, count: u32) -> bool {
    let needle = format!("mm_gateway_long_polls_waiting{{service=\"gateway\"}} {count}");
    mm_shared::probe::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        mm_shared::probe::http_get(addr, "/metrics", Duration::from_secs(1))
            .is_ok_and(|answer| answer.body.contains(&needle))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_long_polls_until_the_ticket_changes_and_ends_on_shutdown() {
    let mut backend = Backend::start(true, &[]);
    let http = Http::new(&backend.addr);
    let token = http.login("waiter").await;
    let ticket = http.join(&token).await;

    // Nothing happens: the wait runs out and the ticket is still searching.
    let idle = http.get(&format!("/matchmaking/status?ticketId={ticket}&waitMs=200"), Some(&token)).await;
    assert_eq!(idle.body["status"], "searching");

    // A change while waiting answers the poll.
    let poll = spawn_poll(&backend.addr, &ticket, &token, 20000);
    assert!(polls_waiting(&backend.addr, 1), "the poll is waiting");
    let cancelled = http.delete(&format!("/matchmaking/cancel?ticketId={ticket}"), Some(&token)).await;
    assert_eq!(cancelled.status, 200);
    // Well before its 20 s: the event answered it, not the timeout.
    let answer =
        tokio::time::timeout(Duration::from_secs(5), poll).await.expect("answered early").expect("task");
    assert_eq!(answer.body["status"], "cancelled");

    // Shutdown answers waiting polls at once instead of holding the exit up.
    let ticket = http.join(&token).await;
    let poll = spawn_poll(&backend.addr, &ticket, &token, 30000);
    assert!(polls_waiting(&backend.addr, 1), "the poll is waiting");
    let status = backend.gateway.terminate(Duration::from_secs(5)).expect("stops promptly");
    assert!(status.success());
    let answer = poll.await.expect("poll task");
    assert_eq!((answer.status, answer.body["status"].clone()), (200, json!("searching")), "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_silent_services_are_503_and_504_never_a_hang() {
    let backend = Backend::start(false, &[("MM_NATS__REQUEST_TIMEOUT", "300ms")]);
    let http = Http::new(&backend.addr);

    let absent = http.post("/login", None, json!({"id": "ana", "password": "pw"})).await;
    assert_error(&absent, 503, "no session service");
    assert!(absent.body["error"].as_str().unwrap_or("").contains("session"), "{}", absent.body);
    assert_error(&http.get("/store/offers", None).await, 503, "no store service");

    // Something subscribed that never answers: a timeout.
    let client = async_nats::connect(backend.nats.url()).await.expect("nats");
    let _silent = client.subscribe(subjects::SESSION_LOGIN).await.expect("subscribe");
    support::synced(&client).await;
    let silent = http.post("/login", None, json!({"id": "ana", "password": "pw"})).await;
    assert_error(&silent, 504, "silent service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_connect_that_is_no_websocket_handshake_is_checked_and_refused_in_json() {
    let backend = Backend::start(true, &[]);
    let http = Http::new(&backend.addr);
    let ana = http.login("ana").await;

    // A live game of ana's, as an orchestrator would have written it; nothing listens at
    // its address, but a plain GET must be refused before the gateway dials it.
    let client = async_nats::connect(backend.nats.url()).await.expect("nats");
    let servers = async_nats::jetstream::new(client)
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: buckets::SERVERS.to_owned(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    let entry = ServerEntry {
        game_id: "g-plain".into(),
        match_id: "m-plain".into(),
        state: ServerState::Ready,
        address: format!("127.0.0.1:{}", free_port()),
        player_ids: vec!["ana".into()],
        secret: "s".into(),
        ..ServerEntry::default()
    };
    servers.put("g-plain", serde_json::to_vec(&entry).expect("json").into()).await.expect("put");

    let bad_token = http.get(&format!("/game/g-plain/connect?token={}", "f".repeat(64)), None).await;
    assert_error(&bad_token, 401, "plain GET, a token nobody issued");
    assert_error(&http.get("/game/g-plain/connect", None).await, 401, "plain GET, no token");
    let plain = http.get(&format!("/game/g-plain/connect?token={ana}"), None).await;
    assert!((400..500).contains(&plain.status), "a player of the game, no handshake: {}", plain.status);
    assert_error(&plain, plain.status, "plain GET by a player of the game");
    let plain_bearer = http.get("/game/g-plain/connect", Some(&ana)).await;
    assert_eq!(plain_bearer.status, plain.status, "the bearer header works too: {}", plain_bearer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_body_picks_a_queue_and_bad_bodies_are_400() {
    let backend = Backend::start(true, &[]);
    let http = Http::new(&backend.addr);
    let queues = http.get("/matchmaking/queues", None).await;
    assert_eq!(queues.status, 200, "{}", queues.body);
    let names: Vec<&str> =
        queues.body.as_array().expect("a list").iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, ["default", "skill"]);
    assert_eq!(
        queues.body[1],
        json!({"name": "skill", "function": "skill", "teams": 2, "teamSize": 5, "matchSize": 10})
    );

    let token = http.login("bo").await;
    for (body, what) in [
        (json!({"queue": "ranked"}), "an unknown queue"),
        (json!({"queue": "skill", "latencies": {"eu": -5}}), "a negative latency"),
        (json!({"queue": "skill", "latencies": {"eu": 1e12}}), "an absurd latency"),
        (json!({"queue": "skill", "latencies": {"eu": "fast"}}), "a latency that is no number"),
        (
            json!({"queue": "skill", "latencies": (0..33).map(|r| (format!("r{r}"), json!(20))).collect::<serde_json::Map<_, _>>()}),
            "33 regions",
        ),
        (json!({"queue": "no.dots"}), "a queue name with a dot"),
        (json!({"queue": "skill", "teams": 3}), "an unknown field"),
        (json!([1, 2]), "not an object"),
        (json!({"partyId": "party-none"}), "an unknown party"),
    ] {
        let answer = http.post("/matchmaking/join", Some(&token), body).await;
        let expected = if what == "an unknown party" { 404 } else { 400 };
        assert_error(&answer, expected, what);
    }
    let malformed =
        http.send(Method::POST, "/matchmaking/join", Some(&token), &[], b"{\"queue\":".to_vec()).await;
    assert_error(&malformed, 400, "malformed JSON");

    // Empty, `{}` and a full body all work.
    let ticket = http.join(&token).await;
    let view = http.get(&format!("/matchmaking/status?ticketId={ticket}"), Some(&token)).await;
    assert_eq!(view.body["queue"], "default", "{}", view.body);
    let again = http.post("/matchmaking/join", Some(&token), json!({})).await;
    assert_eq!(again.body["ticketId"], ticket.as_str(), "the live ticket is answered again");
    let other = http.login("cy").await;
    let skill = http
        .post(
            "/matchmaking/join",
            Some(&other),
            json!({"queue": "skill", "latencies": {"eu": 25.5, "us": 110}}),
        )
        .await;
    assert_eq!(skill.status, 200, "{}", skill.body);
    let id = skill.body["ticketId"].as_str().expect("ticket");
    let view = http.get(&format!("/matchmaking/status?ticketId={id}"), Some(&other)).await;
    assert_eq!(view.body["queue"], "skill");
    assert_eq!(view.body["rating"], 1500.0, "a new player's rating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_party_api_queues_a_party_as_one_ticket() {
    let backend = Backend::start(true, &[]);
    let http = Http::new(&backend.addr);
    let lead = http.login("lead").await;
    let mate = http.login("mate").await;
    let stranger = http.login("stranger").await;

    assert_error(&http.post("/party", None, Value::Null).await, 401, "no token");
    let created = http.post("/party", Some(&lead), Value::Null).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let party = created.body["partyId"].as_str().expect("partyId").to_owned();
    assert_error(&http.post("/party", Some(&lead), Value::Null).await, 409, "a second party");
    assert_error(
        &http.post("/party/join", Some(&mate), json!({"partyId": "party-none"})).await,
        404,
        "unknown",
    );
    assert_error(&http.post("/party/join", Some(&mate), json!({})).await, 400, "no partyId");
    let joined = http.post("/party/join", Some(&mate), json!({"partyId": party})).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(joined.body["members"], json!(["lead", "mate"]));
    assert_error(
        &http.post("/party/join", Some(&mate), json!({"partyId": party})).await,
        409,
        "joining twice",
    );
    assert_error(&http.get("/party", Some(&stranger)).await, 404, "in no party");

    assert_error(
        &http.post("/matchmaking/join", Some(&mate), json!({"queue": "skill", "partyId": party})).await,
        403,
        "a member queueing the party",
    );
    let queued =
        http.post("/matchmaking/join", Some(&lead), json!({"queue": "skill", "partyId": party})).await;
    assert_eq!(queued.status, 200, "{}", queued.body);
    let ticket = queued.body["ticketId"].as_str().expect("ticket").to_owned();
    let seen = http.get("/party", Some(&mate)).await;
    assert_eq!((seen.status, seen.body["ticketId"].as_str()), (200, Some(ticket.as_str())), "{}", seen.body);
    let view = http.get(&format!("/matchmaking/status?ticketId={ticket}"), Some(&mate)).await;
    assert_eq!(view.body["status"], "searching", "a member may follow the party's ticket");
    assert_error(
        &http.get(&format!("/matchmaking/status?ticketId={ticket}"), Some(&stranger)).await,
        404,
        "another player's ticket",
    );

    // The member leaves: the party's search is cancelled, the leader stays.
    let left = http.delete("/party", Some(&mate)).await;
    assert_eq!(left.status, 204, "{}", left.body);
    let view = http.get(&format!("/matchmaking/status?ticketId={ticket}"), Some(&lead)).await;
    assert_eq!(view.body["status"], "cancelled");
    assert_error(&http.delete("/party", Some(&mate)).await, 404, "leaving twice");
    let rest = http.get("/party", Some(&lead)).await;
    assert_eq!(rest.body["members"], json!(["lead"]));
}
