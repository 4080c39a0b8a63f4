//! Queues, ratings and parties, end to end: the matchmaker binary (or its matcher
//! in-process) on real nats-server and redis-server, asked over NATS as the gateway and
//! the operator ask it.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Allocator, Answer, Releases, Servers};
use matchmaker::config::{MatcherConfig, RatingsConfig, TicketSettings};
use matchmaker::matcher::{Matcher, Rules, Widening};
use matchmaker::ratings::{Stored, update};
use matchmaker::release::Releaser;
use matchmaker::tickets::{Joined, NewTicket, TicketStore};
use mm_shared::nats::{RequestError, request_json};
use mm_shared::protocol::{
    GameEnded, JoinReply, JoinRequest, LoginReply, LoginRequest, MatchRecord, PartyCreated, PartyJoinRequest,
    PartyRequest, PartyView, QueueInfo, RatingReply, RatingRequest, RatingSet, TicketRequest, TicketStatus,
    TicketView, TokenRequest, keys, subjects,
};
use mm_testkit::{NatsServer, RedisServer, ServiceProcess};
use tokio::sync::Notify;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A config with a third queue that places by latency, on top of the defaults.
const CONFIG: &str = r#"
[[matchmaker.queues]]
name = "default"

[[matchmaker.queues]]
name = "skill"
function = "skill"
teams = 2
team_size = 5
rating_window = { start = 100.0, per_second = 1.0, max = 300.0 }

[[matchmaker.queues]]
name = "near"
function = "latency"
max_ping = { start = 50.0, per_second = 1.0, max = 100.0 }
"#;

struct Stack {
    nats: NatsServer,
    redis: RedisServer,
    _matchmaker: ServiceProcess,
    _config: tempfile::TempDir,
    client: async_nats::Client,
}

fn start(
    nats: NatsServer,
    redis: RedisServer,
) -> (NatsServer, RedisServer, ServiceProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("matchmaker.toml");
    std::fs::write(&path, CONFIG).expect("config");
    let admin = format!("127.0.0.1:{}", mm_testkit::free_port());
    let (nats_url, redis_url) = (nats.url(), redis.url());
    let env = [
        ("MM_NATS__URL", nats_url.as_str()),
        ("MM_REDIS__URL", redis_url.as_str()),
        ("MM_MATCHMAKER__ADMIN_LISTEN", admin.as_str()),
        ("MM_MATCHER__ALLOCATE_TIMEOUT", "1s"),
        ("MM_MATCHER__LEASE", "2s"),
        ("MM_MATCHER__REAP_INTERVAL", "100ms"),
        ("MM_MATCHER__IDLE_POLL", "50ms"),
    ];
    let path = path.display().to_string();
    let mut process =
        ServiceProcess::start("matchmaker", &["--config", &path], &env).expect("matchmaker starts");
    process.wait_healthy(&admin).expect("matchmaker healthy");
    (nats, redis, process, dir)
}

async fn stack() -> Stack {
    let (nats, redis, matchmaker, config) =
        start(NatsServer::start().expect("nats-server"), RedisServer::start().expect("redis-server"));
    let client = common::nats(&nats.url()).await;
    Stack { nats, redis, _matchmaker: matchmaker, _config: config, client }
}

async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    request: &Req,
) -> Result<Resp, RequestError> {
    request_json(client, subject, request, TIMEOUT).await
}

fn code(result: Result<impl std::fmt::Debug, RequestError>) -> u16 {
    match result {
        Err(RequestError::Service { code, .. }) => code,
        other => panic!("expected a service error, got {other:?}"),
    }
}

fn join(player: &str, queue: &str) -> JoinRequest {
    JoinRequest { player_id: player.into(), queue: Some(queue.into()), ..JoinRequest::default() }
}

async fn status(client: &async_nats::Client, player: &str, ticket: &str) -> TicketView {
    let request = TicketRequest { player_id: player.into(), ticket_id: ticket.into() };
    call(client, subjects::MATCHMAKING_STATUS, &request).await.expect("status")
}

async fn wait_matched(client: &async_nats::Client, tickets: &[(String, String)]) -> Vec<TicketView> {
    let mut views = Vec::new();
    for (player, ticket) in tickets {
        let mut view = status(client, player, ticket).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while view.status == TicketStatus::Searching && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            view = status(client, player, ticket).await;
        }
        views.push(view);
    }
    views
}

async fn set_rating(client: &async_nats::Client, player: &str, rating: f64) {
    let _: RatingReply =
        call(client, subjects::SESSION_RATING_SET, &RatingSet { player_id: player.into(), rating })
            .await
            .expect("rating set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_body_is_checked_and_queues_are_listed() {
    let stack = stack().await;
    let client = &stack.client;
    let queues: Vec<QueueInfo> = call(client, subjects::MATCHMAKING_QUEUES, &()).await.expect("queues");
    let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["default", "near", "skill"]);
    let skill = queues.iter().find(|q| q.name == "skill").expect("skill");
    assert_eq!((skill.teams, skill.team_size, skill.match_size), (Some(2), Some(5), 10));

    assert_eq!(
        code(call::<_, JoinReply>(client, subjects::MATCHMAKING_JOIN, &join("a", "ranked")).await),
        400
    );
    let with = |latencies: Vec<(String, f64)>| JoinRequest {
        latencies: latencies.into_iter().collect(),
        ..join("a", "near")
    };
    for bad in [
        with(vec![("eu".into(), -1.0)]),
        with(vec![("eu".into(), 1e9)]),
        with((0..33).map(|r| (format!("r{r}"), 10.0)).collect()),
        with(vec![("e.u".into(), 10.0)]),
        with(vec![]),
    ] {
        assert_eq!(
            code(call::<_, JoinReply>(client, subjects::MATCHMAKING_JOIN, &bad).await),
            400,
            "{bad:?}"
        );
    }
    let good: JoinReply =
        call(client, subjects::MATCHMAKING_JOIN, &with(vec![("eu".into(), 20.0)])).await.expect("join near");
    let view = status(client, "a", &good.ticket_id).await;
    assert_eq!((view.queue.as_str(), view.status), ("near", TicketStatus::Searching));
    // Without a body: the seed's queue, as before.
    let seed: JoinReply = call(
        client,
        subjects::MATCHMAKING_JOIN,
        &JoinRequest { player_id: "b".into(), ..JoinRequest::default() },
    )
    .await
    .expect("join");
    assert_eq!(status(client, "b", &seed.ticket_id).await.queue, "default");
    let mut redis = common::redis(&stack.redis.url()).await;
    let queued: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys::queue("near"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("ZRANGE");
    assert_eq!(queued, vec![good.ticket_id]);
    let _ = &stack.nats;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn party_journeys_and_their_errors() {
    let stack = stack().await;
    let client = &stack.client;
    let me = |player: &str| PartyRequest { player_id: player.into() };
    let enter =
        |player: &str, party: &str| PartyJoinRequest { player_id: player.into(), party_id: party.into() };

    let created: PartyCreated = call(client, subjects::PARTY_CREATE, &me("lead")).await.expect("create");
    let party = created.party_id;
    assert_eq!(code(call::<_, PartyCreated>(client, subjects::PARTY_CREATE, &me("lead")).await), 409);
    let view: PartyView = call(client, subjects::PARTY_JOIN, &enter("m1", &party)).await.expect("join");
    assert_eq!(
        (view.leader.as_str(), view.members.clone()),
        ("lead", vec!["lead".to_owned(), "m1".to_owned()])
    );
    assert_eq!(
        code(call::<_, PartyView>(client, subjects::PARTY_JOIN, &enter("m1", &party)).await),
        409,
        "twice"
    );
    assert_eq!(
        code(call::<_, PartyView>(client, subjects::PARTY_JOIN, &enter("x", "party-none")).await),
        404
    );
    assert_eq!(code(call::<_, PartyView>(client, subjects::PARTY_JOIN, &enter("x", "bad.id")).await), 400);
    for member in ["m2", "m3", "m4"] {
        let _: PartyView = call(client, subjects::PARTY_JOIN, &enter(member, &party)).await.expect("join");
    }
    assert_eq!(
        code(call::<_, PartyView>(client, subjects::PARTY_JOIN, &enter("m5", &party)).await),
        409,
        "full"
    );
    assert_eq!(code(call::<_, PartyView>(client, subjects::PARTY_GET, &me("nobody")).await), 404);

    // Only the leader queues the party.
    let queue_party = |player: &str| JoinRequest { party_id: Some(party.clone()), ..join(player, "skill") };
    assert_eq!(code(call::<_, JoinReply>(client, subjects::MATCHMAKING_JOIN, &queue_party("m1")).await), 403);
    assert_eq!(code(call::<_, JoinReply>(client, subjects::MATCHMAKING_JOIN, &queue_party("m5")).await), 403);
    let ticket: JoinReply =
        call(client, subjects::MATCHMAKING_JOIN, &queue_party("lead")).await.expect("leader queues");
    // Every member reads the ticket from the party and may follow it.
    let seen: PartyView = call(client, subjects::PARTY_GET, &me("m3")).await.expect("get");
    assert_eq!(seen.ticket_id.as_deref(), Some(ticket.ticket_id.as_str()));
    assert_eq!(status(client, "m3", &ticket.ticket_id).await.status, TicketStatus::Searching);
    // A member's own join answers the party's live ticket: one searching ticket each.
    let again: JoinReply =
        call(client, subjects::MATCHMAKING_JOIN, &join("m2", "default")).await.expect("join");
    assert_eq!(again.ticket_id, ticket.ticket_id);
    // Nobody joins a party while it searches.
    let _: PartyCreated = call(client, subjects::PARTY_CREATE, &me("solo")).await.expect("solo party");
    let _: () = call(client, subjects::PARTY_LEAVE, &me("solo")).await.expect("leaves its own party");
    assert_eq!(code(call::<_, PartyView>(client, subjects::PARTY_JOIN, &enter("solo", &party)).await), 409);
    // A member leaving cancels the party's search.
    let _: () = call(client, subjects::PARTY_LEAVE, &me("m4")).await.expect("leave");
    assert_eq!(status(client, "lead", &ticket.ticket_id).await.status, TicketStatus::Cancelled);
    assert_eq!(code(call::<_, ()>(client, subjects::PARTY_LEAVE, &me("m4")).await), 404);

    // A member leaves before the leader queues: the rest queue without them.
    let other: PartyCreated = call(client, subjects::PARTY_CREATE, &me("l2")).await.expect("create");
    let _: PartyView = call(client, subjects::PARTY_JOIN, &enter("n1", &other.party_id)).await.expect("join");
    let _: PartyView = call(client, subjects::PARTY_JOIN, &enter("n2", &other.party_id)).await.expect("join");
    let _: () = call(client, subjects::PARTY_LEAVE, &me("n1")).await.expect("leave");
    let queued: JoinReply = call(
        client,
        subjects::MATCHMAKING_JOIN,
        &JoinRequest { party_id: Some(other.party_id.clone()), ..join("l2", "skill") },
    )
    .await
    .expect("queue");
    let mut redis = common::redis(&stack.redis.url()).await;
    let stored = common::ticket(&redis, &queued.ticket_id).await.expect("ticket");
    assert_eq!(stored.players, vec!["l2".to_owned(), "n2".to_owned()]);
    assert_eq!(stored.party_id.as_deref(), Some(other.party_id.as_str()));

    // A member who logs out cancels the party's ticket.
    let login: LoginReply =
        call(client, subjects::SESSION_LOGIN, &LoginRequest { id: "n2".into(), password: "pw".into() })
            .await
            .expect("login");
    let () =
        call(client, subjects::SESSION_LOGOUT, &TokenRequest { token: login.token }).await.expect("logout");
    assert_eq!(status(client, "l2", &queued.ticket_id).await.status, TicketStatus::Cancelled);
    let left: PartyView = call(client, subjects::PARTY_GET, &me("l2")).await.expect("get");
    assert_eq!(left.members, vec!["l2".to_owned()]);
    // The leader leaving the last: the party is gone.
    let _: () = call(client, subjects::PARTY_LEAVE, &me("l2")).await.expect("leave");
    let gone: Option<String> =
        redis::cmd("GET").arg(keys::party(&other.party_id)).query_async(&mut redis).await.expect("GET");
    assert!(gone.is_none());
    // A party too big for a queue's side is refused; an unknown one is a 404.
    let big: PartyCreated = call(client, subjects::PARTY_CREATE, &me("b0")).await.expect("create");
    for member in ["b1", "b2", "b3", "b4"] {
        let _: PartyView =
            call(client, subjects::PARTY_JOIN, &enter(member, &big.party_id)).await.expect("join");
    }
    let unknown = JoinRequest { party_id: Some("party-none".into()), ..join("b0", "skill") };
    assert_eq!(code(call::<_, JoinReply>(client, subjects::MATCHMAKING_JOIN, &unknown).await), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_result_moves_ratings_once_and_only_for_its_match() {
    let stack = stack().await;
    let client = &stack.client;
    let _allocator = Allocator::start(&stack.nats.url(), |_| Answer::Server(Duration::ZERO)).await;
    let players: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let mut tickets = Vec::new();
    for player in &players {
        let joined: JoinReply =
            call(client, subjects::MATCHMAKING_JOIN, &join(player, "skill")).await.expect("join");
        tickets.push((player.clone(), joined.ticket_id));
    }
    let views = wait_matched(client, &tickets).await;
    assert!(views.iter().all(|v| v.status == TicketStatus::Matched), "{views:?}");
    let teams = views[0].teams.clone().expect("a team queue's view carries the teams");
    assert_eq!((teams.len(), teams[0].len(), teams[1].len()), (2, 5, 5));
    let match_id = views[0].match_id.clone().expect("match id");
    let redis = common::redis(&stack.redis.url()).await;
    let record: MatchRecord = common::matches(&redis).await.into_iter().next().expect("the match");
    assert_eq!((record.queue.as_str(), record.teams.as_ref()), ("skill", Some(&teams)));
    assert_eq!(record.player_ids, teams.concat(), "players side by side");

    let result = GameEnded {
        game_id: record.server.game_id.clone(),
        match_id: match_id.clone(),
        teams: teams.clone(),
        winner: 1,
    };
    // Forged or wrong results first: another match's teams, an unknown match.
    let mut swapped = result.clone();
    swapped.teams = vec![teams[1].clone(), teams[0].clone()];
    let unknown = GameEnded { match_id: "m-none".into(), ..result.clone() };
    let publisher = common::nats(&stack.nats.url()).await;
    for wrong in [&swapped, &unknown] {
        publisher
            .publish(subjects::EVENTS_GAME_ENDED, serde_json::to_vec(wrong).expect("json").into())
            .await
            .expect("publish");
    }
    // The real one, three times over, from two connections at once.
    let other = common::nats(&stack.nats.url()).await;
    for client in [&publisher, &other, &publisher] {
        client
            .publish(subjects::EVENTS_GAME_ENDED, serde_json::to_vec(&result).expect("json").into())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    other.flush().await.expect("flush");

    let config = RatingsConfig::default();
    let fresh = Stored { rating: config.initial, uncertainty: config.uncertainty, games: 0 };
    let expected = update([&[fresh; 5][..], &[fresh; 5][..]], 1, &config);
    let rating_of = |player: String| async move {
        let reply: RatingReply =
            call(client, subjects::SESSION_RATING_GET, &RatingRequest { player_id: player })
                .await
                .expect("get");
        reply
    };
    let moved = common::eventually(Duration::from_secs(5), || async {
        rating_of(teams[1][0].clone()).await.games == 1
    })
    .await;
    assert!(moved, "the result was applied");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (index, player) in teams.concat().into_iter().enumerate() {
        let reply = rating_of(player.clone()).await;
        assert_eq!(reply.games, 1, "{player}: applied once");
        assert!((reply.rating - expected[index].rating).abs() < 1e-6, "{player}: {reply:?}");
        if index >= 5 {
            assert!(reply.rating > config.initial, "winner {player} went up");
        } else {
            assert!(reply.rating < config.initial, "loser {player} went down");
        }
    }
    // The operator sets a rating; the uncertainty and games stay.
    let set: RatingReply = call(
        client,
        subjects::SESSION_RATING_SET,
        &RatingSet { player_id: teams[0][0].clone(), rating: 2100.0 },
    )
    .await
    .expect("set");
    assert_eq!((set.rating, set.games), (2100.0, 1));
    assert_eq!(rating_of(teams[0][0].clone()).await.rating, 2100.0);
    let absurd = RatingSet { player_id: "r0".into(), rating: f64::MAX };
    assert_eq!(code(call::<_, RatingReply>(client, subjects::SESSION_RATING_SET, &absurd).await), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skill_queue_keeps_rating_clusters_apart_where_fifo_mixes_them() {
    let stack = stack().await;
    let client = &stack.client;
    let _allocator = Allocator::start(&stack.nats.url(), |_| Answer::Server(Duration::ZERO)).await;
    let cluster = |index: usize| if index.is_multiple_of(2) { 1000.0 } else { 2000.0 };
    let mut rating_of = HashMap::new();
    for queue in ["skill", "default"] {
        let mut tickets = Vec::new();
        for index in 0..20 {
            let player = format!("{queue}-{index}");
            let rating = cluster(index) + index as f64;
            set_rating(client, &player, rating).await;
            rating_of.insert(player.clone(), rating);
            let joined: JoinReply =
                call(client, subjects::MATCHMAKING_JOIN, &join(&player, queue)).await.expect("join");
            tickets.push((player, joined.ticket_id));
        }
        let views = wait_matched(client, &tickets).await;
        assert!(views.iter().all(|v| v.status == TicketStatus::Matched), "{queue}: {views:?}");
    }
    let redis = common::redis(&stack.redis.url()).await;
    let records = common::matches(&redis).await;
    assert_eq!(records.len(), 4);
    for record in &records {
        let clusters: HashSet<bool> = record.player_ids.iter().map(|p| rating_of[p] >= 1500.0).collect();
        let quality = record.quality.clone().expect("quality");
        if record.queue == "skill" {
            assert_eq!(clusters.len(), 1, "a skill match within one cluster: {record:?}");
            assert!(quality.rating_spread < 100.0, "{quality:?}");
            assert!(quality.team_rating_diff < 10.0, "balanced sides: {quality:?}");
            assert!(record.teams.is_some());
        } else {
            assert_eq!(clusters.len(), 2, "join order mixes the clusters: {record:?}");
            assert!(quality.rating_spread > 900.0);
            assert!(record.teams.is_none(), "the seed's queue records no teams");
        }
    }
}

fn matcher_config() -> MatcherConfig {
    MatcherConfig {
        allocate_timeout: Duration::from_millis(500),
        lease: Duration::from_secs(1),
        reap_interval: Duration::from_millis(100),
        idle_poll: Duration::from_millis(20),
        retry_backoff_min: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        max_attempts: 50,
        ..MatcherConfig::default()
    }
}

/// Three matchers on one skill queue of solos and parties, with failing allocations and
/// random cancels: no ticket lost, none in two matches, every party whole on one side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_skill_matchers_lose_nothing_duplicate_nothing_and_split_no_party() {
    let Servers { nats, redis, connection } = common::servers().await;
    let settings = TicketSettings { ttl: Duration::from_secs(120), retention: Duration::from_secs(600) };
    let store = TicketStore::new(connection.clone(), settings).for_queue("skill");
    let _allocator = Allocator::start(&nats.url(), |n| {
        if n % 7 == 3 { Answer::Fail(500) } else { Answer::Server(Duration::from_millis(n % 5)) }
    })
    .await;
    let _releases = Releases::start(&nats.url()).await;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut joined = Vec::new();
    let mut parties: HashMap<String, Vec<String>> = HashMap::new();
    for index in 0..300 {
        let size = if rng.f64() < 0.7 { 1 } else { rng.usize(2..=5) };
        let players: Vec<String> = (0..size).map(|m| format!("p{index}-{m}")).collect();
        let new = NewTicket {
            player_id: players[0].clone(),
            players: if size > 1 { players.clone() } else { Vec::new() },
            rating: Some(1000.0 + rng.f64() * 1000.0),
            ..NewTicket::default()
        };
        match store.join_ticket(new).await.expect("join") {
            Joined::Created { ticket, .. } => {
                if size > 1 {
                    parties.insert(ticket.id.clone(), players);
                }
                joined.push(ticket);
            }
            other => panic!("{other:?}"),
        }
    }
    let window = Widening { start: 50.0, per_second: 200.0, max: 1000.0 };
    let mut handles = Vec::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    for _ in 0..3 {
        let client = common::nats(&nats.url()).await;
        let releaser = Releaser::new(client.clone(), matcher_config().release());
        let matcher = Matcher::new(
            store.clone(),
            client,
            Arc::new(Rules::skill(10, 120, window)),
            matcher_config(),
            Arc::new(Notify::new()),
            releaser,
        )
        .with_teams(true);
        handles.push(tokio::spawn(Arc::new(matcher).run(shutdown.clone())));
    }
    // Cancel a few as it runs.
    for ticket in joined.iter().step_by(23) {
        let _ = store.cancel(&ticket.player_id, &ticket.id).await.expect("cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids: Vec<String> = joined.iter().map(|t| t.id.clone()).collect();
    let skill_queue = || async {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::queue("skill"))
            .arg(0)
            .arg(-1)
            .query_async(&mut connection.clone())
            .await
            .expect("ZRANGE");
        ids
    };
    let leases = || async {
        let count: u64 = redis::cmd("ZCARD")
            .arg(keys::leases("skill"))
            .query_async(&mut connection.clone())
            .await
            .expect("ZCARD");
        count
    };
    let settled = common::eventually(Duration::from_secs(30), || async {
        let queued = skill_queue().await.len();
        let live = common::tickets(&connection, &ids)
            .await
            .values()
            .filter(|t| t.status == TicketStatus::Searching)
            .count();
        leases().await == 0 && live == queued && queued < 40
    })
    .await;
    shutdown.cancel();
    for handle in handles {
        handle.await.expect("matcher");
    }
    assert!(settled, "the matchers settled");
    let tickets = common::tickets(&connection, &ids).await;
    assert_eq!(tickets.len(), ids.len(), "no ticket lost");
    let records = common::matches(&connection).await;
    let mut in_match = HashMap::new();
    let mut players_seen = HashSet::new();
    for record in &records {
        let teams = record.teams.clone().expect("teams");
        for ticket_id in &record.ticket_ids {
            assert!(
                in_match.insert(ticket_id.clone(), record.id.clone()).is_none(),
                "{ticket_id} in two matches"
            );
            let ticket = &tickets[ticket_id];
            assert_eq!(ticket.status, TicketStatus::Matched);
            assert_eq!(ticket.match_id.as_deref(), Some(record.id.as_str()));
            if let Some(members) = parties.get(ticket_id) {
                let side = teams.iter().position(|team| team.contains(&members[0])).expect("on a side");
                assert!(
                    members.iter().all(|m| teams[side].contains(m)),
                    "party {ticket_id} split: {teams:?}"
                );
            }
        }
        for player in &record.player_ids {
            assert!(players_seen.insert(player.clone()), "{player} in two matches");
        }
        assert_eq!(record.player_ids.len(), 10);
    }
    let queued: HashSet<String> = skill_queue().await.into_iter().collect();
    for (id, ticket) in &tickets {
        match ticket.status {
            TicketStatus::Matched => assert!(in_match.contains_key(id), "{id} matched outside a record"),
            TicketStatus::Searching => assert!(queued.contains(id), "{id} searching but not queued"),
            _ => assert!(!queued.contains(id)),
        }
    }
    assert!(records.len() >= 15, "most tickets matched: {} matches", records.len());
    let _ = redis;
}

/// A ticket's rating is read by the join script itself (no round trip before it): it must
/// read stored ratings exactly as the rating service does, bad ones included, and give a
/// party its members' mean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_carries_the_rating_the_rating_service_reads() {
    let stack = stack().await;
    let client = &stack.client;
    let mut redis = common::redis(&stack.redis.url()).await;
    let stored = [
        ("valid", Some(r#"{"rating":1712.5,"uncertainty":120.0,"games":3}"#)),
        ("no-games", Some(r#"{"rating":1320.25,"uncertainty":90.0}"#)),
        ("none", None),
        ("zero-uncertainty", Some(r#"{"rating":1900,"uncertainty":0,"games":1}"#)),
        ("no-uncertainty", Some(r#"{"rating":1900}"#)),
        ("negative-games", Some(r#"{"rating":1900,"uncertainty":50,"games":-1}"#)),
        ("fractional-games", Some(r#"{"rating":1900,"uncertainty":50,"games":1.5}"#)),
        ("text-rating", Some(r#"{"rating":"1900","uncertainty":50}"#)),
        ("huge", Some(r#"{"rating":1e400,"uncertainty":50}"#)),
        ("not-json", Some("rating=1900")),
    ];
    for (player, raw) in stored {
        if let Some(raw) = raw {
            let _: () = redis::cmd("SET")
                .arg(keys::player_rating(player))
                .arg(raw)
                .query_async(&mut redis)
                .await
                .expect("SET");
        }
    }
    let ticket_rating = |ticket: String| {
        let redis = redis.clone();
        async move {
            let ticket = common::ticket(&redis, &ticket).await.expect("the ticket");
            ticket.rating.expect("the ticket has a rating")
        }
    };
    let mut read = HashMap::new();
    for (player, _) in stored {
        let service: RatingReply =
            call(client, subjects::SESSION_RATING_GET, &RatingRequest { player_id: player.into() })
                .await
                .expect("rating get");
        let joined: JoinReply =
            call(client, subjects::MATCHMAKING_JOIN, &join(player, "skill")).await.expect("join");
        let on_ticket = ticket_rating(joined.ticket_id).await;
        assert!(
            (on_ticket - service.rating).abs() < 1e-9,
            "{player}: ticket {on_ticket}, service {}",
            service.rating
        );
        read.insert(player, service.rating);
    }
    assert_eq!(read["valid"], 1712.5, "a valid rating is used");
    assert_eq!(read["no-games"], 1320.25);
    assert_eq!(read["none"], read["zero-uncertainty"], "a bad rating counts as the initial one");

    // A party's ticket: the mean of its members'.
    let created: PartyCreated =
        call(client, subjects::PARTY_CREATE, &PartyRequest { player_id: "lead".into() })
            .await
            .expect("create");
    let _: PartyView = call(
        client,
        subjects::PARTY_JOIN,
        &PartyJoinRequest { player_id: "member".into(), party_id: created.party_id.clone() },
    )
    .await
    .expect("join the party");
    set_rating(client, "lead", 1000.0).await;
    set_rating(client, "member", 2000.0).await;
    let party_join = JoinRequest { party_id: Some(created.party_id), ..join("lead", "skill") };
    let joined: JoinReply = call(client, subjects::MATCHMAKING_JOIN, &party_join).await.expect("party join");
    assert_eq!(ticket_rating(joined.ticket_id).await, 1500.0);
}
