//! The matchmaker binary's NATS services, end to end: real nats-server and redis-server,
//! the real binary, requests over NATS like the gateway (or `nats req`) sends them.

mod common;

use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use common::{Allocator, Answer};
use futures_util::StreamExt;
use mm_shared::nats::{RequestError, request_json};
use mm_shared::protocol::{
    CancelReply, JoinReply, JoinRequest, LoginReply, LoginRequest, MatchCreated, Offer, PurchaseReply,
    PurchaseRequest, SessionInfo, TicketRequest, TicketStatus, TicketView, TokenRequest, subjects,
};
use mm_testkit::{NatsServer, RedisServer, ServiceProcess};
use redis::aio::ConnectionManager;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A matchmaker process with fast test timings and `extra` env on top.
fn start_matchmaker(
    nats: &NatsServer,
    redis: &RedisServer,
    extra: &[(&str, &str)],
) -> (ServiceProcess, String) {
    let mut env = vec![
        ("MM_MATCHER__ALLOCATE_TIMEOUT", "1s"),
        ("MM_MATCHER__LEASE", "2s"),
        ("MM_MATCHER__REAP_INTERVAL", "100ms"),
        ("MM_MATCHER__IDLE_POLL", "50ms"),
        ("MM_MATCHER__RETRY_BACKOFF_MIN", "20ms"),
        ("MM_MATCHER__RETRY_BACKOFF_MAX", "200ms"),
    ];
    env.extend_from_slice(extra);
    common::start_matchmaker(nats, redis, &env)
}

async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    request: &Req,
) -> Result<Resp, RequestError> {
    request_json(client, subject, request, TIMEOUT).await
}

/// Joins players `p<index>` one after another; their ticket ids in join order.
async fn join_players(client: &async_nats::Client, indices: std::ops::Range<usize>) -> Vec<String> {
    let mut tickets = Vec::new();
    for index in indices {
        let request = JoinRequest { player_id: format!("p{index}"), ..JoinRequest::default() };
        let joined: JoinReply = call(client, subjects::MATCHMAKING_JOIN, &request).await.expect("join");
        tickets.push(joined.ticket_id);
    }
    tickets
}

fn service_code<T: std::fmt::Debug>(result: Result<T, RequestError>) -> u16 {
    match result {
        Err(RequestError::Service { code, .. }) => code,
        other => panic!("expected a micro error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_payloads_with_a_4xx_and_keeps_serving() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (matchmaker, _admin) = start_matchmaker(&nats, &redis, &[]);
    let client = common::nats(&nats.url()).await;

    let huge = format!("{{\"playerId\": \"{}\"}}", "x".repeat(100 * 1024));
    let long_id = "p".repeat(65);
    let wildcard_ticket = serde_json::json!({"playerId": "p1", "ticketId": "a.>"}).to_string();
    let long_player = serde_json::json!({"playerId": long_id, "ticketId": "t"}).to_string();
    let bad_payloads: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"playerId\": ".to_vec()),
        ("binary", vec![0xff, 0xfe, 0x00, 0x9c, 0x80]),
        ("huge", huge.into_bytes()),
        ("wrong shape", b"[1, 2, 3]".to_vec()),
    ];
    // Every endpoint but store.offers needs a body; offers takes anything that is JSON.
    let endpoints = [
        subjects::MATCHMAKING_JOIN,
        subjects::MATCHMAKING_STATUS,
        subjects::MATCHMAKING_CANCEL,
        subjects::STORE_PURCHASE,
        subjects::SESSION_LOGIN,
        subjects::SESSION_VERIFY,
        subjects::SESSION_LOGOUT,
        subjects::STORE_OFFERS,
    ];
    for subject in endpoints {
        let mut payloads = bad_payloads.clone();
        if subject != subjects::STORE_OFFERS {
            payloads.push(("empty", Vec::new()));
            payloads.push(("empty object", b"{}".to_vec()));
        }
        if subject.starts_with("matchmaking.") && subject != subjects::MATCHMAKING_JOIN {
            payloads.push(("wildcard ticket id", wildcard_ticket.clone().into_bytes()));
            payloads.push(("over-long player id", long_player.clone().into_bytes()));
        }
        for (what, payload) in payloads {
            let reply = client.request(subject, payload.into()).await.expect("a reply, not a timeout");
            let headers = reply.headers.unwrap_or_else(|| panic!("{subject} {what}: no error headers"));
            let code: u16 =
                headers.get(NATS_SERVICE_ERROR_CODE).expect("code").as_str().parse().expect("number");
            assert!((400..500).contains(&code), "{subject} {what}: code {code}");
            assert!(!headers.get(NATS_SERVICE_ERROR).expect("message").as_str().is_empty());
            if what == "huge" {
                assert_eq!(code, 413, "{subject}");
            }
        }
    }
    // Still serving, every one of them.
    let joined: JoinReply = call(
        &client,
        subjects::MATCHMAKING_JOIN,
        &JoinRequest { player_id: "p1".into(), ..JoinRequest::default() },
    )
    .await
    .expect("join");
    let status: TicketView = call(
        &client,
        subjects::MATCHMAKING_STATUS,
        &TicketRequest { player_id: "p1".into(), ticket_id: joined.ticket_id.clone() },
    )
    .await
    .expect("status");
    assert_eq!(status.status, TicketStatus::Searching);
    let offers: Vec<Offer> = call(&client, subjects::STORE_OFFERS, &()).await.expect("offers");
    assert!(!offers.is_empty());
    let login: LoginReply =
        call(&client, subjects::SESSION_LOGIN, &LoginRequest { id: "p1".into(), password: "pw".into() })
            .await
            .expect("login");
    let _: SessionInfo =
        call(&client, subjects::SESSION_VERIFY, &TokenRequest { token: login.token }).await.expect("verify");
    assert!(!matchmaker.log().contains("panicked"), "{}", matchmaker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_join_once_cancel_match_and_announce_it() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (_matchmaker, _admin) = start_matchmaker(&nats, &redis, &[]);
    let client = common::nats(&nats.url()).await;
    let connection = common::redis(&redis.url()).await;
    let ask =
        |player: &str, ticket: &str| TicketRequest { player_id: player.into(), ticket_id: ticket.into() };

    // One live ticket per player: joining again returns it.
    let first: JoinReply = call(
        &client,
        subjects::MATCHMAKING_JOIN,
        &JoinRequest { player_id: "solo".into(), ..JoinRequest::default() },
    )
    .await
    .expect("join");
    let again: JoinReply = call(
        &client,
        subjects::MATCHMAKING_JOIN,
        &JoinRequest { player_id: "solo".into(), ..JoinRequest::default() },
    )
    .await
    .expect("join");
    assert_eq!(first, again);
    assert_eq!(first.status, TicketStatus::Searching);

    // Another player's ticket reads as unknown, for status and cancel alike.
    assert_eq!(
        service_code(
            call::<_, TicketView>(&client, subjects::MATCHMAKING_STATUS, &ask("other", &first.ticket_id))
                .await
        ),
        404
    );
    assert_eq!(
        service_code(
            call::<_, CancelReply>(&client, subjects::MATCHMAKING_CANCEL, &ask("other", &first.ticket_id))
                .await
        ),
        404
    );
    assert_eq!(
        service_code(
            call::<_, TicketView>(&client, subjects::MATCHMAKING_STATUS, &ask("solo", "no-such-ticket"))
                .await
        ),
        404
    );

    // Cancel leaves the queue; cancelling twice is fine; a new join is a new ticket.
    let cancelled: CancelReply =
        call(&client, subjects::MATCHMAKING_CANCEL, &ask("solo", &first.ticket_id)).await.expect("cancel");
    assert_eq!(cancelled.status, TicketStatus::Cancelled);
    let twice: CancelReply = call(&client, subjects::MATCHMAKING_CANCEL, &ask("solo", &first.ticket_id))
        .await
        .expect("cancel again");
    assert_eq!(twice.status, TicketStatus::Cancelled);
    assert!(common::queue(&connection).await.is_empty());
    let view: TicketView =
        call(&client, subjects::MATCHMAKING_STATUS, &ask("solo", &first.ticket_id)).await.expect("status");
    assert_eq!(view.status, TicketStatus::Cancelled);
    let fresh: JoinReply = call(
        &client,
        subjects::MATCHMAKING_JOIN,
        &JoinRequest { player_id: "solo".into(), ..JoinRequest::default() },
    )
    .await
    .expect("join");
    assert_ne!(fresh.ticket_id, first.ticket_id);

    // Ten in the queue and an orchestrator: a match, announced on events.
    let mut created = client.subscribe(subjects::EVENTS_MATCH_CREATED).await.expect("sub");
    let mut ticket_events = client.subscribe(subjects::ticket_events(&fresh.ticket_id)).await.expect("sub");
    common::synced(&client).await;
    let _allocator = Allocator::start(&nats.url(), |_| Answer::Server(Duration::ZERO)).await;
    let mut tickets = vec![fresh.ticket_id.clone()];
    tickets.extend(join_players(&client, 1..10).await);
    let event = tokio::time::timeout(TIMEOUT, created.next()).await.expect("match announced").expect("event");
    let event: MatchCreated = serde_json::from_slice(&event.payload).expect("MatchCreated");
    assert_eq!(event.ticket_ids, tickets, "FIFO: the ten in join order");
    let change =
        tokio::time::timeout(TIMEOUT, ticket_events.next()).await.expect("ticket event").expect("event");
    let change: TicketView = serde_json::from_slice(&change.payload).expect("TicketView");
    assert_eq!(change.status, TicketStatus::Matched);

    let view: TicketView =
        call(&client, subjects::MATCHMAKING_STATUS, &ask("solo", &fresh.ticket_id)).await.expect("status");
    assert_eq!(view.status, TicketStatus::Matched);
    assert_eq!(view.match_id.as_deref(), Some(event.match_id.as_str()));
    let server = view.server.expect("a matched ticket says where to play");
    assert_eq!(server.game_id, event.game_id);
    assert!(server.url.starts_with("ws://"));
    // Too late to cancel now.
    assert_eq!(
        service_code(
            call::<_, CancelReply>(&client, subjects::MATCHMAKING_CANCEL, &ask("solo", &fresh.ticket_id))
                .await
        ),
        409
    );
    let record = common::matches(&connection).await;
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].ticket_ids, tickets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_orchestrator_tickets_keep_searching_then_match_when_one_appears() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (_matchmaker, admin) = start_matchmaker(&nats, &redis, &[("MM_MATCHER__MAX_ATTEMPTS", "2")]);
    let client = common::nats(&nats.url()).await;
    let connection = common::redis(&redis.url()).await;
    let tickets = join_players(&client, 0..10).await;
    // More tries than max_attempts: an absent orchestrator must not use them up.
    let tried = common::eventually(Duration::from_secs(10), || async {
        common::metric(&admin, "mm_matchmaker_allocations_total", &[("result", "no_responders")]) >= 4.0
    })
    .await;
    assert!(tried, "the matcher kept trying");
    for (index, id) in tickets.iter().enumerate() {
        let view: TicketView = call(
            &client,
            subjects::MATCHMAKING_STATUS,
            &TicketRequest { player_id: format!("p{index}"), ticket_id: id.clone() },
        )
        .await
        .expect("status");
        assert_eq!(view.status, TicketStatus::Searching);
        assert_eq!(common::ticket(&connection, id).await.expect("kept").attempts, 0);
    }

    let _allocator = Allocator::start(&nats.url(), |_| Answer::Server(Duration::ZERO)).await;
    let matched = common::all_matched(&connection, &tickets, Duration::from_secs(10)).await;
    assert!(matched, "matched once an orchestrator answers");
    assert!(common::queue(&connection).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_killed_mid_allocation_leaves_its_tickets_to_another_after_the_lease() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let client = common::nats(&nats.url()).await;
    let connection = common::redis(&redis.url()).await;
    // The first allocation request never gets an answer: its matcher dies waiting.
    let allocator =
        Allocator::start(
            &nats.url(),
            |n| if n == 0 { Answer::Silent } else { Answer::Server(Duration::ZERO) },
        )
        .await;
    let (mut doomed, _) = start_matchmaker(&nats, &redis, &[]);
    let tickets = join_players(&client, 0..10).await;
    assert!(common::eventually(TIMEOUT, || async { allocator.requests() == 1 }).await, "popped and asked");
    doomed.process().stop_with(libc::SIGKILL, TIMEOUT);
    assert_eq!(common::lease_count(&connection).await, 1, "its lease is still held");
    assert!(common::queue(&connection).await.is_empty());

    let (_survivor, admin) = start_matchmaker(&nats, &redis, &[]);
    let matched = common::all_matched(&connection, &tickets, Duration::from_secs(15)).await;
    assert!(matched, "the survivor matched them after the lease");
    assert_eq!(common::metric(&admin, "mm_matchmaker_lease_expirations_total", &[]), 1.0);
    assert_eq!(common::lease_count(&connection).await, 0);
    let record = common::matches(&connection).await;
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].ticket_ids, tickets, "still in join order");
    // The survivor asked for the match the dead matcher had asked for, so the
    // orchestrator's one server per match hands it whatever the first request started.
    let asked = allocator.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0], asked[1], "the same ten, the same match id");
    assert_eq!(record[0].id, asked[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_register_check_refresh_and_end() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (_matchmaker, _admin) = start_matchmaker(&nats, &redis, &[("MM_SESSION__TTL", "1s")]);
    let client = common::nats(&nats.url()).await;
    let login = |password: &str| LoginRequest { id: "ana".into(), password: password.into() };

    let first: LoginReply =
        call(&client, subjects::SESSION_LOGIN, &login("s3cret")).await.expect("registers");
    assert_eq!(first.player_id, "ana");
    let claims = mm_shared::token::unverified_claims(&first.token).expect("a JWT");
    assert_eq!(claims.sub, "ana");
    assert!(claims.exp <= claims.iat + 2, "valid session.ttl (1s, rounded up to the second): {claims:?}");
    let second: LoginReply = call(&client, subjects::SESSION_LOGIN, &login("s3cret")).await.expect("logs in");
    assert_ne!(first.token, second.token);
    assert_eq!(
        service_code(call::<_, LoginReply>(&client, subjects::SESSION_LOGIN, &login("guess")).await),
        401
    );
    assert_eq!(service_code(call::<_, LoginReply>(&client, subjects::SESSION_LOGIN, &login("")).await), 400);

    let verify = |token: &str| TokenRequest { token: token.to_owned() };
    let session: SessionInfo =
        call(&client, subjects::SESSION_VERIFY, &verify(&first.token)).await.expect("valid");
    assert_eq!(session.player_id, "ana");
    assert_eq!(
        service_code(call::<_, SessionInfo>(&client, subjects::SESSION_VERIFY, &verify("nope")).await),
        401
    );
    assert_eq!(
        service_code(
            call::<_, SessionInfo>(&client, subjects::SESSION_VERIFY, &verify(&"0".repeat(64))).await
        ),
        401
    );

    let () = call(&client, subjects::SESSION_LOGOUT, &verify(&first.token)).await.expect("logout");
    // Gateways can see the revocation by the time the logout answers.
    let revoked = async_nats::jetstream::new(client.clone())
        .get_key_value(mm_shared::protocol::buckets::REVOKED_TOKENS)
        .await
        .expect("the bucket exists");
    let entry = revoked.get(&claims.jti).await.expect("KV get").expect("the revocation is there");
    let revocation: mm_shared::protocol::Revocation = serde_json::from_slice(&entry).expect("JSON");
    assert_eq!(revocation.player_id, "ana");
    assert_eq!(revocation.expires_at, claims.exp * 1000);
    assert_eq!(
        service_code(call::<_, SessionInfo>(&client, subjects::SESSION_VERIFY, &verify(&first.token)).await),
        401
    );

    // A token lives session.ttl from its login, however it is used; so does its session.
    let connection = common::redis(&redis.url()).await;
    let jti = mm_shared::token::unverified_claims(&second.token).expect("a JWT").jti;
    let key = mm_shared::protocol::keys::session(&jti);
    let pttl = |key: String| {
        let mut connection = connection.clone();
        async move { redis::cmd("PTTL").arg(key).query_async::<i64>(&mut connection).await.expect("PTTL") }
    };
    let before = pttl(key.clone()).await;
    assert!((1..=1000).contains(&before), "the session ends with the token: {before} ms");
    let _: SessionInfo =
        call(&client, subjects::SESSION_VERIFY, &verify(&second.token)).await.expect("valid");
    assert!(pttl(key.clone()).await <= before, "a use does not lengthen it");
    let ended = common::eventually(Duration::from_secs(5), || async {
        let answer = call::<_, SessionInfo>(&client, subjects::SESSION_VERIFY, &verify(&second.token)).await;
        matches!(answer, Err(RequestError::Service { code: 401, .. }))
    })
    .await;
    assert!(ended, "the token ends");
    assert_eq!(pttl(key).await, -2, "and its session with it");

    // A token signed with another key, or with its claims changed, is refused.
    let (header, rest) = second.token.split_once('.').expect("three parts");
    let (_, signature) = rest.split_once('.').expect("three parts");
    let forged = mm_shared::token::Claims { sub: "eve".into(), ..claims };
    let forged = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"))
    };
    assert_eq!(
        service_code(
            call::<_, SessionInfo>(
                &client,
                subjects::SESSION_VERIFY,
                &verify(&format!("{header}.{forged}.{signature}"))
            )
            .await
        ),
        401
    );
}

/// The micro error of a failed call: (code, message).
fn service_error<T: std::fmt::Debug>(result: Result<T, RequestError>) -> (u16, String) {
    match result {
        Err(RequestError::Service { code, message, .. }) => (code, message),
        other => panic!("expected a micro error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_expire_unless_they_log_in_and_the_table_is_capped() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (_matchmaker, admin) = start_matchmaker(
        &nats,
        &redis,
        &[
            ("MM_SESSION__TTL", "2s"),
            ("MM_SESSION__ACCOUNT_TTL", "4s"),
            ("MM_SESSION__MAX_ACCOUNTS", "3"),
            ("MM_STORE__STARTING_BALANCE", "2000"),
        ],
    );
    let client = common::nats(&nats.url()).await;
    let connection = common::redis(&redis.url()).await;
    let login = |id: &str, password: &str| {
        let (client, request) = (client.clone(), LoginRequest { id: id.into(), password: password.into() });
        async move { call::<_, LoginReply>(&client, subjects::SESSION_LOGIN, &request).await }
    };
    let verify = |token: &str| {
        let (client, request) = (client.clone(), TokenRequest { token: token.to_owned() });
        async move { call::<_, SessionInfo>(&client, subjects::SESSION_VERIFY, &request).await }
    };
    let redis_int = |command: &'static str, key: String| {
        let mut connection = connection.clone();
        async move { redis::cmd(command).arg(key).query_async::<i64>(&mut connection).await.expect("redis") }
    };
    use mm_shared::protocol::keys;

    let first = login("ana", "pw").await.expect("registers").token;
    for id in ["bo", "cy"] {
        login(id, "pw").await.expect("registers");
    }
    let pttl = redis_int("PTTL", keys::player("ana")).await;
    assert!((1..=4000).contains(&pttl), "an account expires after session.account_ttl: {pttl} ms");
    assert_eq!(redis_int("ZCARD", keys::ACCOUNTS.to_owned()).await, 3);
    // bo has something in the store, which must not outlive his account.
    let buy = PurchaseRequest { player_id: "bo".into(), offer_id: "spray-gg".into(), idempotency_key: None };
    let _: PurchaseReply = call(&client, subjects::STORE_PURCHASE, &buy).await.expect("bo buys");
    assert_eq!(redis_int("EXISTS", keys::player_balance("bo")).await, 1);

    // Full: a first login is refused, clearly; nothing is written; players still log in.
    let (code, message) = service_error(login("dee", "pw").await);
    assert_eq!(code, 503, "{message}");
    assert!(message.contains("session.max_accounts"), "{message}");
    assert_eq!(redis_int("EXISTS", keys::player("dee")).await, 0);
    assert_eq!(common::metric(&admin, "mm_session_logins_total", &[("result", "accounts_full")]), 1.0);

    // A player holds two tokens at most: a third login ends the oldest.
    let second = login("ana", "pw").await.expect("ana logs in").token;
    let third = login("ana", "pw").await.expect("ana logs in").token;
    assert_eq!(service_error(verify(&first).await).0, 401, "the oldest token ended");
    let revoked = async_nats::jetstream::new(client.clone())
        .get_key_value(mm_shared::protocol::buckets::REVOKED_TOKENS)
        .await
        .expect("the bucket exists");
    let first_jti = mm_shared::token::unverified_claims(&first).expect("a JWT").jti;
    assert!(revoked.get(&first_jti).await.expect("KV get").is_some(), "and was revoked for the gateways");
    verify(&second).await.expect("still valid");
    verify(&third).await.expect("still valid");

    // An account whose player keeps logging in is kept (each login gives it its full
    // lifetime again); the others run out.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    login("ana", "pw").await.expect("ana logs in");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let third = login("ana", "pw").await.expect("ana logs in").token;
    let refreshed = redis_int("PTTL", keys::player("ana")).await;
    assert!(refreshed > 3000, "refreshed by the login: {refreshed} ms");
    let gone = common::eventually(Duration::from_secs(6), || async {
        redis_int("EXISTS", keys::player("bo")).await == 0
            && redis_int("EXISTS", keys::player("cy")).await == 0
    })
    .await;
    assert!(gone, "accounts nobody uses expire");
    assert_eq!(redis_int("EXISTS", keys::player("ana")).await, 1, "ana is in use: still there");

    // Expired accounts free their places: a new player registers and the index forgets
    // them, with the store's leftovers.
    login("dee", "pw").await.expect("room again");
    assert_eq!(redis_int("ZCARD", keys::ACCOUNTS.to_owned()).await, 2, "ana and dee");
    assert_eq!(redis_int("EXISTS", keys::player_balance("bo")).await, 0, "bo's balance went with him");
    assert_eq!(redis_int("EXISTS", keys::player_purchases("bo")).await, 0);

    // The id is free again: a newcomer takes it with a new password and starts afresh.
    login("bo", "new-pw").await.expect("a new bo registers");
    assert_eq!(service_error(login("bo", "pw").await).0, 401, "the old password is worthless");
    let bought: PurchaseReply = call(&client, subjects::STORE_PURCHASE, &buy).await.expect("the new bo buys");
    let offers: Vec<Offer> = call(&client, subjects::STORE_OFFERS, &()).await.expect("offers");
    let price = offers.iter().find(|offer| offer.id == "spray-gg").expect("offer").price;
    assert_eq!(bought.balance, 2000 - price, "the new bo did not inherit the old one's balance");

    // A token never outlives its account: the login that issued it gave the account
    // session.account_ttl, longer than the token's session.ttl.
    let jti = mm_shared::token::unverified_claims(&third).expect("a JWT").jti;
    let token_left = redis_int("PTTL", keys::session(&jti)).await;
    let account_left = redis_int("PTTL", keys::player("ana")).await;
    assert!(0 < token_left && token_left < account_left, "token {token_left} ms, account {account_left} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_account_table_fits_its_memory_budget() {
    const ACCOUNTS: usize = 1000;
    const PARALLEL: usize = 8;
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (_matchmaker, _admin) = start_matchmaker(&nats, &redis, &[]);
    let client = common::nats(&nats.url()).await;
    let connection = common::redis(&redis.url()).await;
    // The longest ids allowed (64 characters): the worst case per account.
    let id = |n: usize| format!("{n:0>64}");
    let used_memory = |connection: &ConnectionManager| {
        let mut connection = connection.clone();
        async move {
            let info: String =
                redis::cmd("INFO").arg("memory").query_async(&mut connection).await.expect("INFO");
            info.lines()
                .find_map(|line| line.strip_prefix("used_memory:"))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .expect("used_memory")
        }
    };
    // Warm up (scripts loaded, connections made) before the baseline.
    let warm = LoginRequest { id: "warm".into(), password: "pw".into() };
    call::<_, LoginReply>(&client, subjects::SESSION_LOGIN, &warm).await.expect("registers");
    let before = used_memory(&connection).await;
    // Every account registered and logged into until it holds the most tokens it may:
    // the worst case of a table an attacker filled and keeps alive.
    let tokens_each = matchmaker::config::SessionConfig::default().tokens_per_player as usize;
    let mut tokens = Vec::new();
    for _ in 0..tokens_each {
        for chunk in (0..ACCOUNTS).collect::<Vec<_>>().chunks(PARALLEL) {
            let logins = chunk.iter().map(|n| {
                let request = LoginRequest { id: id(*n), password: "a-password-of-some-length".into() };
                let client = client.clone();
                async move { call::<_, LoginReply>(&client, subjects::SESSION_LOGIN, &request).await }
            });
            for reply in futures_util::future::join_all(logins).await {
                tokens.push(reply.expect("logs in").token);
            }
        }
    }
    use mm_shared::protocol::keys;
    let usage = |key: String| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .query_async::<u64>(&mut connection)
                .await
                .expect("MEMORY USAGE")
        }
    };
    let mut account_keys = 0;
    for n in (0..ACCOUNTS).step_by(50) {
        account_keys += usage(keys::player(&id(n))).await;
    }
    let per_key = account_keys as f64 / (ACCOUNTS / 50) as f64;
    let per_index_entry = usage(keys::ACCOUNTS.to_owned()).await as f64 / ACCOUNTS as f64;
    let jti = mm_shared::token::unverified_claims(&tokens[0]).expect("a JWT").jti;
    let per_token = usage(keys::session(&jti)).await as f64;
    let per_account = per_key + per_index_entry;
    let with_tokens = per_account + tokens_each as f64 * per_token;
    let grown = (used_memory(&connection).await - before) / ACCOUNTS as f64;
    let max = matchmaker::config::DEFAULT_MAX_ACCOUNTS as f64;
    println!(
        "MEMORY USAGE per account (64-character id, {tokens_each} live tokens): {with_tokens:.0} bytes = \
         key {per_key:.0} + index entry {per_index_entry:.0} + {tokens_each} × token {per_token:.0}; \
         used_memory grew {grown:.0} per account; default session.max_accounts {max} → {:.1} MB \
         (used_memory {:.1} MB) when full",
        with_tokens * max / 1e6,
        grown * max / 1e6,
    );
    assert!(
        per_key > 100.0 && per_index_entry > 50.0 && per_token > 50.0,
        "the measure sees the data: {per_key}, {per_index_entry}, {per_token}"
    );
    assert!(with_tokens <= 1100.0, "an account costs {with_tokens:.0} bytes, more than the default assumes");
    assert!(
        grown * max <= 100e6,
        "a full default table takes {:.1} MB: keep it within half of a 200 MB maxmemory",
        grown * max / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_charge_once_per_key_and_refuse_what_cannot_be_bought() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (_matchmaker, _admin) = start_matchmaker(&nats, &redis, &[("MM_STORE__STARTING_BALANCE", "2000")]);
    let client = common::nats(&nats.url()).await;
    let offers: Vec<Offer> = call(&client, subjects::STORE_OFFERS, &()).await.expect("offers");
    let price_of = |id: &str| offers.iter().find(|offer| offer.id == id).expect("offer").price;
    let buy = |offer: &str, key: Option<&str>| PurchaseRequest {
        player_id: "bo".into(),
        offer_id: offer.into(),
        idempotency_key: key.map(str::to_owned),
    };

    let first: PurchaseReply =
        call(&client, subjects::STORE_PURCHASE, &buy("spray-gg", Some("k-1"))).await.expect("buys");
    assert_eq!(first.balance, 2000 - price_of("spray-gg"));
    let retried: PurchaseReply =
        call(&client, subjects::STORE_PURCHASE, &buy("spray-gg", Some("k-1"))).await.expect("replays");
    assert_eq!(retried, first, "same key: same purchase, charged once");
    assert_eq!(
        service_code(
            call::<_, PurchaseReply>(&client, subjects::STORE_PURCHASE, &buy("battle-pass", Some("k-1")))
                .await
        ),
        422
    );

    let again: PurchaseReply =
        call(&client, subjects::STORE_PURCHASE, &buy("spray-gg", None)).await.expect("buys");
    assert_ne!(again.purchase_id, first.purchase_id, "no key: a new purchase");
    assert_eq!(again.balance, first.balance - price_of("spray-gg"));

    assert_eq!(
        service_code(
            call::<_, PurchaseReply>(&client, subjects::STORE_PURCHASE, &buy("no-such-offer", None)).await
        ),
        404
    );
    assert_eq!(
        service_code(
            call::<_, PurchaseReply>(&client, subjects::STORE_PURCHASE, &buy("skin-vandal-prime", None))
                .await
        ),
        409
    );
    assert_eq!(
        service_code(
            call::<_, PurchaseReply>(&client, subjects::STORE_PURCHASE, &buy("spray-gg", Some("bad key!")))
                .await
        ),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_allowed_balance_survives_the_purchase_record() {
    // The purchase script writes its record with Redis's cjson (14 significant digits):
    // a larger balance would come back as `1.2345e+15` text and fail to decode.
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let max = matchmaker::config::MAX_AMOUNT.to_string();
    let (_matchmaker, _admin) = start_matchmaker(&nats, &redis, &[("MM_STORE__STARTING_BALANCE", &max)]);
    let client = common::nats(&nats.url()).await;
    let offers: Vec<Offer> = call(&client, subjects::STORE_OFFERS, &()).await.expect("offers");
    let offer = offers.iter().find(|offer| offer.id == "spray-gg").expect("offer");
    let request = PurchaseRequest {
        player_id: "rich".into(),
        offer_id: offer.id.clone(),
        idempotency_key: Some("k-rich".into()),
    };

    let bought: PurchaseReply = call(&client, subjects::STORE_PURCHASE, &request).await.expect("buys");
    assert_eq!(bought.balance, matchmaker::config::MAX_AMOUNT - offer.price);
    let replayed: PurchaseReply = call(&client, subjects::STORE_PURCHASE, &request).await.expect("replays");
    assert_eq!(replayed, bought, "the stored record decodes too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_a_503_and_the_services_recover_after_it() {
    let nats = NatsServer::start().expect("nats-server");
    let mut redis = RedisServer::start().expect("redis-server");
    let (matchmaker, admin) = start_matchmaker(&nats, &redis, &[("MM_REDIS__RESPONSE_TIMEOUT", "500ms")]);
    let client = common::nats(&nats.url()).await;
    let join = |player: &str| JoinRequest { player_id: player.into(), ..JoinRequest::default() };
    let _: JoinReply = call(&client, subjects::MATCHMAKING_JOIN, &join("before")).await.expect("join");

    let port = redis.port();
    redis.process().stop_with(libc::SIGKILL, TIMEOUT);
    assert_eq!(
        service_code(call::<_, JoinReply>(&client, subjects::MATCHMAKING_JOIN, &join("during")).await),
        503
    );
    assert_eq!(
        service_code(
            call::<_, LoginReply>(
                &client,
                subjects::SESSION_LOGIN,
                &LoginRequest { id: "x".into(), password: "y".into() }
            )
            .await
        ),
        503
    );
    let unhealthy = common::eventually(TIMEOUT, || async {
        mm_shared::probe::http_get(&admin, "/healthz", Duration::from_secs(2))
            .is_ok_and(|answer| answer.status == 503)
    })
    .await;
    assert!(unhealthy, "/healthz says Redis is gone");

    let _redis = RedisServer::start_on(port).expect("redis-server again");
    let recovered = common::eventually(Duration::from_secs(15), || async {
        call::<_, JoinReply>(&client, subjects::MATCHMAKING_JOIN, &join("after")).await.is_ok()
    })
    .await;
    assert!(recovered, "joins work again once Redis is back");
    assert!(!matchmaker.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_are_discoverable_as_nats_micro_ls_shows_them() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let (_matchmaker, _admin) = start_matchmaker(&nats, &redis, &[]);
    let client = common::nats(&nats.url()).await;
    for (service, endpoints) in [
        (
            subjects::MATCHMAKING_SERVICE,
            vec![
                subjects::MATCHMAKING_JOIN,
                subjects::MATCHMAKING_STATUS,
                subjects::MATCHMAKING_CANCEL,
                subjects::MATCHMAKING_QUEUES,
            ],
        ),
        (subjects::STORE_SERVICE, vec![subjects::STORE_OFFERS, subjects::STORE_PURCHASE]),
        (
            subjects::SESSION_SERVICE,
            vec![
                subjects::SESSION_LOGIN,
                subjects::SESSION_VERIFY,
                subjects::SESSION_LOGOUT,
                subjects::SESSION_RATING_GET,
                subjects::SESSION_RATING_SET,
            ],
        ),
        (
            subjects::PARTY_SERVICE,
            vec![subjects::PARTY_CREATE, subjects::PARTY_JOIN, subjects::PARTY_GET, subjects::PARTY_LEAVE],
        ),
    ] {
        let reply = client.request(format!("$SRV.INFO.{service}"), "".into()).await.expect("INFO answered");
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).expect("INFO JSON");
        assert_eq!(info["name"], service);
        let subjects: Vec<&str> = info["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .filter_map(|e| e["subject"].as_str())
            .collect();
        assert_eq!(subjects.len(), endpoints.len(), "{info}");
        for endpoint in endpoints {
            assert!(subjects.contains(&endpoint), "{service} lacks {endpoint}: {info}");
        }
        // A queue group, so that many matchmakers share each subject's requests.
        assert!(info["endpoints"][0]["queue_group"].is_string(), "{info}");
    }
}
