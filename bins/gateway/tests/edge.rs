//! The public edge's trust boundaries over real HTTP: forged ticket events never reach a
//! player, logins are rate-limited per client address (429 + Retry-After), and a full
//! account table is a clear 503. Real nats-server, redis-server, matchmaker and gateway.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mm_shared::protocol::subjects;
use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port};
use serde_json::json;
use support::http::{Answer, Http};

/// nats-server, redis-server, a matchmaker (with `matchmaker_env`) and a gateway.
struct Backend {
    nats: NatsServer,
    _redis: RedisServer,
    _matchmaker: ServiceProcess,
    _gateway: ServiceProcess,
    addr: String,
}

impl Backend {
    fn start(matchmaker_env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().expect("nats-server");
        let redis = RedisServer::start().expect("redis-server");
        let nats_url = nats.url();
        let matchmaker = support::start_matchmaker(&nats, &redis, matchmaker_env);
        let addr = format!("127.0.0.1:{}", free_port());
        let env = [("MM_NATS__URL", nats_url.as_str()), ("MM_GATEWAY__LISTEN", addr.as_str())];
        let mut gateway = ServiceProcess::start("gateway", &[], &env).expect("gateway starts");
        gateway.wait_healthy(&addr).expect("gateway healthy");
        Self { nats, _redis: redis, _matchmaker: matchmaker, _gateway: gateway, addr }
    }

    /// The value of the gateway's metric sample `name{...}` whose labels include `label`.
    fn metric(&self, name: &str, label: &str) -> Option<f64> {
        let answer = mm_shared::probe::http_get(&self.addr, "/metrics", Duration::from_secs(5)).ok()?;
        answer.body.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series.starts_with(&format!("{name}{{")) && series.contains(label))
                .then(|| value.parse().ok())?
        })
    }

    /// Waits until `count` status long-polls are waiting.
    fn polls_waiting(&self, count: u32) -> bool {
        mm_shared::probe::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            self.metric("mm_gateway_long_polls_waiting", "service=\"gateway\"") == Some(f64::from(count))
        })
    }
}

/// A status long-poll of `wait_ms` on its own connection and task; answers with how long
/// it took.
fn spawn_poll(
    addr: &str,
    ticket: &str,
    token: &str,
    wait_ms: u64,
) -> tokio::task::JoinHandle<(Answer, Duration)> {
    let (http, token) = (Http::new(addr), token.to_owned());
    let path = format!("/matchmaking/status?ticketId={ticket}&waitMs={wait_ms}");
    tokio::spawn(async move {
        let started = Instant::now();
        let answer = http.get(&path, Some(&token)).await;
        (answer, started.elapsed())
    })
}

/// What an attacker able to publish on `events.ticket.<id>` would send: a match on their
/// server.
fn forged_match(ticket: &str) -> bytes::Bytes {
    json!({
        "ticketId": ticket,
        "status": "matched",
        "matchId": "m-forged",
        "server": {"url": "ws://attacker.invalid:6666/steal", "gameId": "g-forged"},
    })
    .to_string()
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ticket_events_never_reach_the_player() {
    let backend = Backend::start(&[]);
    let http = Http::new(&backend.addr);
    let token = http.login("ana").await;
    let ticket = http.join(&token).await;
    let nats = async_nats::connect(backend.nats.url()).await.expect("nats");
    // A plain subscriber (no queue group) sees every status request the gateway sends.
    let mut status_requests = nats.subscribe(subjects::MATCHMAKING_STATUS).await.expect("subscribe");
    support::synced(&nats).await;
    let subject = subjects::ticket_events(&ticket);

    // A second of forged "matched" events, one every millisecond, while the player waits.
    let poll = spawn_poll(&backend.addr, &ticket, &token, 3000);
    assert!(backend.polls_waiting(1), "the poll is waiting");
    let flood_started = Instant::now();
    let mut forged = 0;
    while flood_started.elapsed() < Duration::from_secs(1) {
        nats.publish(subject.clone(), forged_match(&ticket)).await.expect("publish");
        forged += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    support::synced(&nats).await;
    let (answer, took) = poll.await.expect("poll task");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"ticketId": ticket, "status": "searching", "queue": "default", "rating": 1500.0}),
        "the true state, nothing forged"
    );
    assert!(
        took >= Duration::from_millis(2500),
        "the poll waited its time out, no event answered it: {took:?}"
    );

    // The events woke the poll, which asked the matchmaker; a flood of them did not turn
    // into a flood of requests: at most one per 100 ms, plus the first read.
    let mut rereads = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), status_requests.next()).await {
        rereads += 1;
    }
    assert!((2..=15).contains(&rereads), "{rereads} status requests for {forged} forged events");

    // A real change still answers at once, with the matchmaker's word, even amid forgeries.
    let poll = spawn_poll(&backend.addr, &ticket, &token, 20000);
    assert!(backend.polls_waiting(1), "the poll is waiting");
    nats.publish(subject.clone(), forged_match(&ticket)).await.expect("publish");
    support::synced(&nats).await;
    let cancelled = http.delete(&format!("/matchmaking/cancel?ticketId={ticket}"), Some(&token)).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let (answer, took) =
        tokio::time::timeout(Duration::from_secs(5), poll).await.expect("answered").expect("task");
    assert_eq!(answer.body["status"], "cancelled", "{}", answer.body);
    assert!(answer.body.get("server").is_none() && answer.body.get("matchId").is_none(), "{}", answer.body);
    assert!(took < Duration::from_secs(5), "answered by the change, not the wait: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_from_one_address_meets_429s_with_retry_after() {
    const LOGINS: usize = 2000;
    let backend = Backend::start(&[]);
    let http = Http::new(&backend.addr);
    let (mut ok, mut throttled, mut first_throttled) = (0, 0, None);
    let started = Instant::now();
    for n in 0..LOGINS {
        let answer = http.post("/login", None, json!({"id": format!("flood-{n}"), "password": "pw"})).await;
        match answer.status {
            200 => ok += 1,
            429 => {
                throttled += 1;
                first_throttled.get_or_insert(answer);
            }
            other => panic!("login {n}: {other} {}", answer.body),
        }
    }
    let took = started.elapsed();
    assert!(throttled > 0, "{LOGINS} new accounts in {took:?} from one address, none refused");
    assert!(ok >= 1000, "the default burst lets the first thousand through: {ok} in {took:?}");
    let refused = first_throttled.expect("a 429");
    let message = refused.body["error"].as_str().unwrap_or_default();
    assert!(message.contains("too many logins"), "a JSON error body: {}", refused.body);
    let retry_after: u64 = refused
        .headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");

    // Claiming another address in a header changes nothing: it is not trusted.
    let headers = [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9")];
    let body = json!({"id": "spoofer", "password": "pw"}).to_string().into_bytes();
    let spoofed = http.send(hyper::Method::POST, "/login", None, &headers, body).await;
    assert_eq!(spoofed.status, 429, "{}", spoofed.body);
    // Another client address has its own allowance.
    let other = Http::from_address(&backend.addr, IpAddr::from([127, 0, 0, 2]));
    assert_eq!(other.post("/login", None, json!({"id": "neighbour", "password": "pw"})).await.status, 200);
    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(http.post("/login", None, json!({"id": "patient", "password": "pw"})).await.status, 200);

    let counted = backend.metric("mm_gateway_refusals_total", "reason=\"login_rate\"").unwrap_or(0.0);
    assert_eq!(counted, f64::from(throttled + 1), "every 429 is counted");
    assert_eq!(
        backend.metric("mm_gateway_refusals_total", "reason=\"game_idle\""),
        Some(0.0),
        "at 0 from start-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_account_table_is_a_503_in_json_and_players_still_log_in() {
    let backend = Backend::start(&[("MM_SESSION__MAX_ACCOUNTS", "2")]);
    let http = Http::new(&backend.addr);
    http.login("ana").await;
    http.login("bo").await;
    let refused = http.post("/login", None, json!({"id": "cy", "password": "pw-cy"})).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let message = refused.body["error"].as_str().unwrap_or_default();
    assert!(message.contains("session.max_accounts"), "{}", refused.body);
    http.login("ana").await;
}
