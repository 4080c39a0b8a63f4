//! Gateway join+status requests per second, beside a bare axum handler answering the same
//! two routes with fixed JSON, driven by the same load loop from the same process. The
//! ratio says what the real path costs (the token check, which the gateway makes itself,
//! one NATS request to the matchmaking service, Redis) against HTTP alone.
//!
//! The gateway is the release binary; the matchmaker runs in-process on its own runtime,
//! with a trivial allocator so that tickets keep being matched. `cargo bench -p gateway`
//! (or `just bench`). Every loop is bounded in count and time; all traffic stays on
//! 127.0.0.1. `MM_BENCH_PAIRS` changes the number of join+status pairs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mm_shared::config::RedisConfig;
use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port};
use tokio_util::sync::CancellationToken;

/// Simulated players, each with its own sequence of requests.
const PLAYERS: usize = 64;
/// No run may take longer than this.
const TIME_LIMIT: Duration = Duration::from_secs(30);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let pairs: u64 = std::env::var("MM_BENCH_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let nats = NatsServer::start().expect("nats-server (run `just setup`)");
    let redis = RedisServer::start().expect("redis-server (run `just setup`)");
    let stop = CancellationToken::new();
    let stop_matchmaker = CancellationToken::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let backend = std::thread::spawn({
        let (nats_url, redis_url, stop) = (nats.url(), redis.url(), stop_matchmaker.clone());
        move || run_matchmaker(&nats_url, &redis_url, stop, started_tx)
    });
    // The gateway starts once the matchmaker's services (and token buckets) are there, as
    // a deployment's would after its first start.
    started_rx.recv_timeout(Duration::from_secs(30)).expect("the matchmaker started");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut gateway = ServiceProcess::start(
        "gateway",
        &[],
        &[("MM_NATS__URL", &nats.url()), ("MM_GATEWAY__LISTEN", &listen), ("MM_LOG__FILTER", "warn")],
    )
    .expect("the release gateway binary (cargo bench builds it)");
    gateway.wait_healthy(&listen).expect("gateway healthy");

    let bare = format!("127.0.0.1:{}", free_port());
    std::thread::spawn({
        let (bare, stop) = (bare.clone(), stop.clone());
        move || run_bare(&bare, stop)
    });

    let load =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (through_gateway, bare_axum, stand_in) = load.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        wait_for(&client, &bare).await;
        let tokens = login_all(&client, &listen).await;
        let through_gateway = drive(&client, &listen, &tokens, pairs).await;
        let bare_axum = drive(&client, &bare, &tokens, pairs).await;
        // The gateway's own share: the same requests answered by a stand-in that replies
        // at once with fixed JSON, instead of the matchmaker and Redis.
        stop_matchmaker.cancel();
        let responder = fixed_responder(&nats.url()).await;
        let stand_in = drive(&client, &listen, &tokens, pairs).await;
        responder.abort();
        (through_gateway, bare_axum, stand_in)
    });
    stop.cancel();
    gateway.terminate(Duration::from_secs(10));
    let _ = backend.join();

    println!(
        "gateway: {PLAYERS} players, each POST /matchmaking/join then GET /matchmaking/status, keep-alive"
    );
    println!(
        "  bare axum handler (ceiling): {:>9.0} requests/s  ({} pairs in {:?})",
        bare_axum.rate(),
        bare_axum.pairs,
        bare_axum.elapsed
    );
    println!(
        "  gateway → NATS → matchmaker: {:>9.0} requests/s  ({} pairs in {:?})",
        through_gateway.rate(),
        through_gateway.pairs,
        through_gateway.elapsed
    );
    println!("  ratio gateway / bare:        {:>9.3}", through_gateway.rate() / bare_axum.rate());
    println!(
        "  gateway → NATS → fixed reply: {:>9.0} requests/s  ({} pairs in {:?}; no matchmaker, no Redis)",
        stand_in.rate(),
        stand_in.pairs,
        stand_in.elapsed
    );
    println!("  ratio gateway alone / bare:  {:>9.3}", stand_in.rate() / bare_axum.rate());
}

/// Answers `matchmaking.join` and `matchmaking.status` at once with a fixed ticket, once
/// the matchmaker's own subscriptions are gone.
async fn fixed_responder(nats_url: &str) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt as _;
    let client = async_nats::connect(nats_url).await.expect("nats");
    // The matchmaker's services unsubscribe as it stops: wait until no one answers.
    for _ in 0..200 {
        let asked = client.request(mm_shared::protocol::subjects::MATCHMAKING_STATUS, "{}".into()).await;
        if matches!(&asked, Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut requests = futures_util::stream::select(
        client.subscribe(mm_shared::protocol::subjects::MATCHMAKING_JOIN).await.expect("subscribe"),
        client.subscribe(mm_shared::protocol::subjects::MATCHMAKING_STATUS).await.expect("subscribe"),
    );
    support::synced(&client).await;
    tokio::spawn(async move {
        let answer = Bytes::from_static(br#"{"ticketId":"t-1","status":"searching"}"#);
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, answer.clone()).await;
            }
        }
    })
}

struct Run {
    pairs: u64,
    elapsed: Duration,
}

impl Run {
    /// HTTP requests per second (two per pair).
    fn rate(&self) -> f64 {
        (2 * self.pairs) as f64 / self.elapsed.as_secs_f64()
    }
}

/// The matchmaker's services and matcher plus a trivial allocator, on their own runtime.
fn run_matchmaker(
    nats_url: &str,
    redis_url: &str,
    stop: CancellationToken,
    started: std::sync::mpsc::Sender<()>,
) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut config = matchmaker::config::Config::default();
        config.nats.url = nats_url.to_owned();
        config.redis.url = redis_url.to_owned();
        let nats = async_nats::connect(nats_url).await.expect("nats");
        let redis_config = RedisConfig { url: redis_url.to_owned(), ..RedisConfig::default() };
        let redis = mm_shared::redis::connect(&redis_config, &stop).await.expect("redis");
        let running = matchmaker::start(&nats, redis, &config, stop.clone()).await.expect("matchmaker");
        let allocator = support::allocator(nats_url).await;
        let _ = started.send(());
        stop.cancelled().await;
        allocator.abort();
        running.finish().await;
    });
}

/// The same two routes, answering fixed JSON: HTTP and axum, nothing else.
fn run_bare(addr: &str, stop: CancellationToken) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let router = Router::new()
            .route(
                "/matchmaking/join",
                post(|| async { axum::Json(serde_json::json!({"ticketId": "t-1", "status": "searching"})) }),
            )
            .route(
                "/matchmaking/status",
                get(|| async { axum::Json(serde_json::json!({"ticketId": "t-1", "status": "searching"})) }),
            );
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .expect("serve");
    });
}

async fn wait_for(client: &HttpClient, addr: &str) {
    for _ in 0..200 {
        if request(client, Method::GET, addr, "/matchmaking/status", None, Vec::new()).await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} did not come up");
}

async fn login_all(client: &HttpClient, addr: &str) -> Vec<String> {
    let mut tokens = Vec::with_capacity(PLAYERS);
    for index in 0..PLAYERS {
        let body = serde_json::json!({"id": format!("bench-{index}"), "password": "pw"}).to_string();
        let (status, reply) = request(client, Method::POST, addr, "/login", None, body.into_bytes())
            .await
            .expect("login answered");
        assert_eq!(status, 200, "login: {reply:?}");
        tokens.push(reply["token"].as_str().expect("token").to_owned());
    }
    tokens
}

/// Every player in a loop of join + status until `pairs` are done or the time limit.
async fn drive(client: &HttpClient, addr: &str, tokens: &[String], pairs: u64) -> Run {
    let remaining = Arc::new(AtomicU64::new(pairs));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + TIME_LIMIT;
    futures_util::future::join_all(tokens.iter().map(|token| {
        let (client, remaining, done) = (client.clone(), remaining.clone(), done.clone());
        async move {
            while Instant::now() < deadline
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
                    .is_ok()
            {
                let joined =
                    match request(&client, Method::POST, addr, "/matchmaking/join", Some(token), Vec::new())
                        .await
                    {
                        Some((200, joined)) => joined,
                        other => panic!("join failed at {addr}: {other:?}"),
                    };
                let ticket = joined["ticketId"].as_str().expect("ticketId");
                let path = format!("/matchmaking/status?ticketId={ticket}");
                match request(&client, Method::GET, addr, &path, Some(token), Vec::new()).await {
                    Some((200, _)) => {}
                    other => panic!("status failed at {addr}: {other:?}"),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
    .await;
    Run { pairs: done.load(Ordering::Relaxed), elapsed: started.elapsed() }
}

async fn request(
    client: &HttpClient,
    method: Method,
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Option<(u16, serde_json::Value)> {
    let mut builder = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let request = builder.body(Full::new(Bytes::from(body))).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await.ok()?.ok()?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}
