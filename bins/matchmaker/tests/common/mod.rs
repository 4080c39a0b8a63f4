//! What the matchmaker's integration tests share: real servers, a stand-in orchestrator
//! (tests only: the product never answers `orchestrator.allocate` or
//! `orchestrator.release` itself) that records what it was asked, and readers of the
//! Redis state the tests check.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use futures_util::StreamExt;
use mm_shared::config::RedisConfig;
use mm_shared::protocol::{
    AllocateReply, AllocateRequest, MatchRecord, ReleaseReply, ReleaseRequest, Ticket, keys, subjects,
};
use mm_testkit::{NatsServer, RedisServer};
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// A fresh nats-server and redis-server, and a connection to the Redis.
pub struct Servers {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub connection: ConnectionManager,
}

pub async fn servers() -> Servers {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let connection = self::redis(&redis.url()).await;
    Servers { nats, redis, connection }
}

pub async fn redis(url: &str) -> ConnectionManager {
    let config = RedisConfig { url: url.to_owned(), ..RedisConfig::default() };
    mm_shared::redis::connect(&config, &CancellationToken::new()).await.expect("redis connects")
}

pub async fn nats(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.expect("nats connects")
}

/// Returns once the server has processed everything this client sent before, its
/// subscriptions included (`flush` only empties the client's buffer): a message to a
/// fresh inbox of its own comes back only after them.
pub async fn synced(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.expect("subscribe");
    client.publish(inbox, "".into()).await.expect("publish");
    tokio::time::timeout(Duration::from_secs(5), echo.next()).await.expect("echo within 5 s").expect("echo");
}

/// What the stand-in orchestrator does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A server (placed at once, as far as the test is concerned), answered after the
    /// given delay: a delay past the matcher's deadline is a server it never hears of.
    Server(Duration),
    /// A micro error with this code.
    Fail(u16),
    /// No reply at all (the matcher times out).
    Silent,
}

/// A responder on `orchestrator.allocate` that decides per request (numbered from 0) and
/// records the match id of every request, and of every server it placed.
pub struct Allocator {
    requests: Arc<AtomicU64>,
    asked: Arc<Mutex<Vec<String>>>,
    placed: Arc<Mutex<HashSet<String>>>,
    stop: CancellationToken,
}

impl Allocator {
    pub async fn start(nats_url: &str, decide: impl Fn(u64) -> Answer + Send + Sync + 'static) -> Self {
        let client = nats(nats_url).await;
        let mut requests_sub = client.subscribe(subjects::ORCHESTRATOR_ALLOCATE).await.expect("subscribe");
        synced(&client).await;
        let requests = Arc::new(AtomicU64::new(0));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let placed = Arc::new(Mutex::new(HashSet::new()));
        let stop = CancellationToken::new();
        let (counter, stopped) = (requests.clone(), stop.clone());
        let (asked_by, placed_by) = (asked.clone(), placed.clone());
        let decide = Arc::new(decide);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = requests_sub.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    () = stopped.cancelled() => break,
                };
                let request: AllocateRequest =
                    serde_json::from_slice(&message.payload).expect("allocate request");
                // Recorded before the request counts, so a reader that saw the count sees it.
                lock(&asked_by).push(request.match_id.clone());
                let number = counter.fetch_add(1, Ordering::SeqCst);
                let answer = decide(number);
                if let Answer::Server(_) = answer {
                    lock(&placed_by).insert(request.match_id.clone());
                }
                let client = client.clone();
                tokio::spawn(async move {
                    let Some(reply) = message.reply else { return };
                    match answer {
                        Answer::Server(delay) => {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let game_id = format!("game-{}", request.match_id);
                            let server = AllocateReply {
                                url: format!("ws://127.0.0.1:8080/game/{game_id}/connect"),
                                game_id,
                                node: "test-node".into(),
                                address: "127.0.0.1:20000".into(),
                                start: Default::default(),
                            };
                            let payload = serde_json::to_vec(&server).expect("json");
                            let _ = client.publish(reply, payload.into()).await;
                        }
                        Answer::Fail(code) => {
                            let mut headers = HeaderMap::new();
                            headers.insert(NATS_SERVICE_ERROR, "no capacity (test)");
                            headers.insert(NATS_SERVICE_ERROR_CODE, code.to_string().as_str());
                            let _ = client.publish_with_headers(reply, headers, "".into()).await;
                        }
                        Answer::Silent => {}
                    }
                });
            }
        });
        Self { requests, asked, placed, stop }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The match id of every request so far, in arrival order.
    pub fn asked(&self) -> Vec<String> {
        lock(&self.asked).clone()
    }

    /// Match ids a server was placed for (answered or not).
    pub fn placed(&self) -> HashSet<String> {
        lock(&self.placed).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A responder on `orchestrator.release` (the orchestrator's side, idempotent) that
/// records every match id it is asked to release, in arrival order.
pub struct Releases {
    released: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl Releases {
    pub async fn start(nats_url: &str) -> Self {
        let client = nats(nats_url).await;
        let mut requests = client.subscribe(subjects::ORCHESTRATOR_RELEASE).await.expect("subscribe");
        synced(&client).await;
        let released = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (recorded, stopped) = (released.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = requests.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    () = stopped.cancelled() => break,
                };
                let request: ReleaseRequest =
                    serde_json::from_slice(&message.payload).expect("release request");
                lock(&recorded).push(request.match_id.clone());
                if let Some(reply) = message.reply {
                    let answer =
                        ReleaseReply { game_id: format!("game-{}", request.match_id), released: true };
                    let payload = serde_json::to_vec(&answer).expect("json");
                    let _ = client.publish(reply, payload.into()).await;
                }
            }
        });
        Self { released, stop }
    }

    /// Every match id released so far, in arrival order (repeats included).
    pub fn ids(&self) -> Vec<String> {
        lock(&self.released).clone()
    }
}

impl Drop for Releases {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The queue's ticket ids, oldest first.
pub async fn queue(redis: &ConnectionManager) -> Vec<String> {
    queue_head(redis, usize::MAX).await
}

/// The `count` oldest ticket ids in the queue.
pub async fn queue_head(redis: &ConnectionManager, count: usize) -> Vec<String> {
    let last = i64::try_from(count).map_or(-1, |count| count - 1);
    redis::cmd("ZRANGE")
        .arg(keys::QUEUE_DEFAULT)
        .arg(0)
        .arg(last)
        .query_async(&mut redis.clone())
        .await
        .expect("ZRANGE")
}

pub async fn lease_count(redis: &ConnectionManager) -> u64 {
    redis::cmd("ZCARD").arg(keys::LEASES_DEFAULT).query_async(&mut redis.clone()).await.expect("ZCARD")
}

pub async fn ticket(redis: &ConnectionManager, id: &str) -> Option<Ticket> {
    let raw: Option<String> =
        redis::cmd("GET").arg(keys::ticket(id)).query_async(&mut redis.clone()).await.expect("GET");
    raw.map(|raw| serde_json::from_str(&raw).expect("ticket JSON"))
}

pub async fn tickets(redis: &ConnectionManager, ids: &[String]) -> HashMap<String, Ticket> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|id| keys::ticket(id)).collect();
        let raws: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut redis.clone()).await.expect("MGET");
        for (id, raw) in chunk.iter().zip(raws) {
            if let Some(raw) = raw {
                found.insert(id.clone(), serde_json::from_str(&raw).expect("ticket JSON"));
            }
        }
    }
    found
}

/// Every match record in Redis.
pub async fn matches(redis: &ConnectionManager) -> Vec<MatchRecord> {
    let mut connection = redis.clone();
    let mut keys_found: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys::match_record("*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .expect("SCAN");
        keys_found.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut records = Vec::new();
    for chunk in keys_found.chunks(500) {
        let raws: Vec<Option<String>> =
            redis::cmd("MGET").arg(chunk).query_async(&mut connection).await.expect("MGET");
        records.extend(raws.into_iter().flatten().map(|raw| serde_json::from_str(&raw).expect("match JSON")));
    }
    records
}

/// A matchmaker process on these servers, `env` on top; returns it and its admin address.
pub fn start_matchmaker(
    nats: &NatsServer,
    redis: &RedisServer,
    env: &[(&str, &str)],
) -> (mm_testkit::ServiceProcess, String) {
    mm_testkit::ServiceProcess::matchmaker(nats, redis, env).expect("a healthy matchmaker")
}

/// Waits until every one of `ids` is `matched`.
pub async fn all_matched(redis: &ConnectionManager, ids: &[String], timeout: Duration) -> bool {
    eventually(timeout, || async {
        tickets(redis, ids)
            .await
            .values()
            .all(|ticket| ticket.status == mm_shared::protocol::TicketStatus::Matched)
    })
    .await
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of a metric's samples whose labels contain every `labels` pair, from `/metrics`.
pub fn metric(admin: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Ok(answer) = mm_shared::probe::http_get(admin, "/metrics", Duration::from_secs(2)) else {
        return 0.0;
    };
    answer
        .body
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|(key, value)| line.contains(&format!("{key}=\"{value}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
