//! Harness benchmarks (`cargo bench -p harness`, part of `just bench`).
//!
//! 1. **Memory and population.** For growing populations, a fresh process holds N idle
//!    players and reports the RSS growth per player; then it runs the seed's scenario
//!    rates over them for a while and reports the compositor's tick lag. The largest
//!    population with tick lag p99 < 50 ms is the figure.
//!
//!    Players are *pre-seeded* (they start with a made-up token instead of calling
//!    `/login`) and the scenarios run against a minimal in-process stand-in gateway on its
//!    own thread. That isolates the harness: an idle player's memory is the same either
//!    way (the made-up token is as long as a real one, ~280 characters), while logging in a few hundred
//!    thousand players through the real backend on this 2-core machine would measure
//!    the backend instead.
//!
//! 2. **CPU per request, beside Locust and wrk.** Against one real stack (nats-server,
//!    redis-server, matchmaker, gateway), the harness binary and then Locust (FastHttpUser)
//!    run the same login/fetch_store/store_purchase mix at the same request rate (one
//!    scenario execution is one request in this mix). Each tool's CPU time (from
//!    `/proc/<pid>/stat`) over a steady window is divided by the requests the gateway
//!    counted in that window; the goal is the harness ≥ 10x cheaper than Locust. The floor
//!    is `wrk` (one thread, a few keep-alive connections) on `GET /store/offers`, the
//!    route the mix hits most: plain wrk cannot hold a fixed rate, so it runs at its own
//!    saturating rate, and its CPU per request is what a minimal C client pays per
//!    request on this machine (the kernel's loopback TCP work included), batched as
//!    tightly as it gets. Beside it, `hey` (Go, `apt-get install hey`) holds each rate on
//!    the same route: a compiled client at a fixed rate, which pays the wake-ups a
//!    saturating one batches away. The gateway's login rate limit is lifted for the stack: one
//!    address logs in for every simulated player. Needs release binaries (`cargo build
//!    --release --workspace --bins`, which `just bench` does), `locust` on the `PATH`
//!    (`pip install locust`) and `wrk` (`apt-get install wrk`); without them those lines
//!    say skipped.
//!
//! Environment: `MM_BENCH_POPULATIONS=10000,100000` (the sweep; empty skips it),
//! `MM_BENCH_SECONDS=15` (load time per population), `MM_BENCH_SKIP_LOCUST=1` (skips
//! the whole CPU comparison), `MM_BENCH_RATES=400,1500` (requests/s of the CPU
//! comparisons), `MM_BENCH_WINDOW=20` (its measured seconds), `MM_BENCH_BASELINE_HARNESS`
//! (another harness binary, measured the same way on the same stack: before/after figures
//! from one run).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use harness::config::{HarnessSection, Progress, Rate, Rates};
use harness::run::{Identity, Options, Run};
use mm_shared::protocol::HistogramData;
use serde_json::json;

const LAG_LIMIT_MS: f64 = 50.0;

fn main() {
    if let Ok(players) = std::env::var("MM_BENCH_POPULATION") {
        let players: u64 = players.parse().expect("MM_BENCH_POPULATION is a number");
        population_child(players);
        return;
    }
    println!("harness benchmarks");
    println!();
    population_sweep();
    println!();
    if std::env::var_os("MM_BENCH_SKIP_LOCUST").is_some() {
        println!("CPU versus Locust: skipped (MM_BENCH_SKIP_LOCUST)");
    } else {
        cpu_versus_locust();
    }
}

// ---------------------------------------------------------------------------------------
// 1. Memory per idle player and the largest population

fn population_sweep() {
    let populations: Vec<u64> = std::env::var("MM_BENCH_POPULATIONS")
        .unwrap_or_else(|_| "10000,100000,200000,400000,800000".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!("memory and population (pre-seeded idle players; seed rates against a stand-in gateway)");
    if populations.is_empty() {
        println!("  skipped (MM_BENCH_POPULATIONS lists none)");
        return;
    }
    println!(
        "{:>9} {:>12} {:>14} {:>10} {:>10} {:>10} {:>11} {:>8}",
        "players", "idle RSS MiB", "bytes/player", "lag p50", "lag p99", "lag max", "scenarios/s", "errors"
    );
    let mut largest = None;
    for players in populations {
        let exe = std::env::current_exe().expect("own path");
        let output = Command::new(exe)
            .env("MM_BENCH_POPULATION", players.to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("child runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let Some(line) = text.lines().rev().find(|line| line.starts_with('{')) else {
            println!("{players:>9} failed: {}", text.trim());
            break;
        };
        let result: serde_json::Value = serde_json::from_str(line).expect("child JSON");
        let p99 = result["lag_p99_ms"].as_f64().unwrap_or(f64::MAX);
        println!(
            "{:>9} {:>12.1} {:>14.0} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>11.1} {:>8}",
            players,
            result["idle_rss_mib"].as_f64().unwrap_or(0.0),
            result["bytes_per_player"].as_f64().unwrap_or(0.0),
            result["lag_p50_ms"].as_f64().unwrap_or(0.0),
            p99,
            result["lag_max_ms"].as_f64().unwrap_or(0.0),
            result["scenarios_per_second"].as_f64().unwrap_or(0.0),
            result["errors"].as_u64().unwrap_or(0),
        );
        if result["errors"].as_u64().unwrap_or(0) > 0 {
            println!("{:>9} errors by kind: {}", "", result["error_kinds"]);
        }
        if p99 < LAG_LIMIT_MS {
            largest = Some(players);
        } else {
            break;
        }
    }
    match largest {
        Some(players) => {
            println!("largest population with tick lag p99 < {LAG_LIMIT_MS} ms: {players} players")
        }
        None => println!("no population held tick lag p99 < {LAG_LIMIT_MS} ms"),
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Counts in `after` that were not yet in `before`.
fn since(before: &HistogramData, after: &HistogramData) -> HistogramData {
    let earlier: std::collections::BTreeMap<u64, u64> = before.0.iter().copied().collect();
    HistogramData(
        after
            .0
            .iter()
            .map(|&(value, count)| (value, count - earlier.get(&value).copied().unwrap_or(0)))
            .filter(|&(_, count)| count > 0)
            .collect(),
    )
}

fn population_child(players: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let gateway = StandIn::start();
    runtime.block_on(async move {
        let config = HarnessSection {
            players: 0,
            gateway: format!("http://{}", gateway.addr),
            spawn_interval: Duration::from_micros(1),
            rates: Rates {
                login: Rate::ZERO,
                matchmaking: Rate::ZERO,
                in_game: Rate::ZERO,
                fetch_store: Rate::ZERO,
                store_purchase: Rate::ZERO,
                logout: Rate::ZERO,
            },
            drain: Duration::ZERO,
            ..HarnessSection::default()
        };
        let identity = Identity { instance: "bench".into(), host: "bench".into() };
        let options = Options { nats: None, preseeded: true, progress: Progress::Never };
        let run = Run::start(config, identity, options).await.expect("run starts");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let base = rss_bytes();
        run.set_target(players);
        let deadline = Instant::now() + Duration::from_secs(180);
        while run.context.pool.idle_count() < players && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = rss_bytes();
        let before = run.latest();

        run.set_rates(Rates::default().to_array());
        let seconds: u64 = std::env::var("MM_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = run.latest();
        let lag = since(&before.tick_lag_us, &after.tick_lag_us);
        let attempted = |stats: &mm_shared::protocol::HarnessStats| -> u64 {
            stats.scenarios.values().map(|s| s.attempted).sum()
        };
        let errors: u64 = after.scenarios.values().map(|s| s.failed).sum();
        let executed = attempted(&after).saturating_sub(attempted(&before));
        let ms = |micros: u64| micros as f64 / 1000.0;
        let result = json!({
            "players": players,
            "idle_rss_mib": idle as f64 / 1048576.0,
            "bytes_per_player": idle.saturating_sub(base) as f64 / players.max(1) as f64,
            "lag_p50_ms": ms(lag.value_at_quantile(0.5)),
            "lag_p99_ms": ms(lag.value_at_quantile(0.99)),
            "lag_max_ms": ms(lag.max()),
            "scenarios_per_second": executed as f64 / seconds as f64,
            "errors": errors,
            "error_kinds": after.errors,
        });
        let _ = run.finish().await;
        println!("{result}");
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// A minimal stand-in for the gateway on its own thread and runtime: answers every
/// route the scenarios use at once (matchmaking is matched on the first poll) and serves
/// a WebSocket echo that ends the game after two seconds.
struct StandIn {
    addr: SocketAddr,
}

#[derive(Clone, Default)]
struct StandInState {
    addr: Arc<std::sync::OnceLock<SocketAddr>>,
    counter: Arc<AtomicU64>,
}

impl StandIn {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = StandInState::default();
        let _ = state.addr.set(addr);
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let router = Router::new()
                    .route(
                        "/login",
                        post(|| async { axum::Json(json!({"token": "0".repeat(280), "playerId": "p"})) }),
                    )
                    .route("/logout", post(|| async { StatusCode::NO_CONTENT }))
                    .route(
                        "/store/offers",
                        get(|| async { axum::Json(json!([{"id": "o1", "name": "Skin", "price": 10}])) }),
                    )
                    .route("/store/purchase", post(purchase))
                    .route(
                        "/matchmaking/join",
                        post(|| async { axum::Json(json!({"ticketId": "t1", "status": "searching"})) }),
                    )
                    .route("/matchmaking/status", get(status))
                    .route(
                        "/matchmaking/cancel",
                        delete(|| async { axum::Json(json!({"status": "cancelled"})) }),
                    )
                    .route("/game/{id}/connect", get(game))
                    .with_state(state);
                let _ = axum::serve(listener, router).await;
            });
        });
        Self { addr }
    }
}

async fn purchase(State(state): State<StandInState>) -> Response {
    // Every fourth purchase is refused for balance, like a real store once balances run low.
    if state.counter.fetch_add(1, Ordering::Relaxed) % 4 == 3 {
        (StatusCode::CONFLICT, axum::Json(json!({"error": "not enough balance"}))).into_response()
    } else {
        axum::Json(json!({"purchaseId": "u", "offer_id": "o1", "balance": 100})).into_response()
    }
}

async fn status(State(state): State<StandInState>) -> axum::Json<serde_json::Value> {
    let addr = state.addr.get().copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    axum::Json(json!({
        "ticketId": "t1", "status": "matched", "matchId": "m1",
        "server": {"url": format!("ws://{addr}/game/g1/connect"), "gameId": "g1"}
    }))
}

async fn game(Path(_id): Path<String>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        let end = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(end);
        loop {
            tokio::select! {
                () = &mut end => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                message = socket.recv() => match message {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// 2. CPU per 1,000 scenario executions, harness versus Locust

/// User CPU + system CPU of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux x86-64 and arm64.
    Some((utime + stime) / 100.0)
}

/// Requests the gateway answered on the three routes of the mix, from its `/metrics`.
fn gateway_requests(gateway: &str) -> u64 {
    let Ok(answer) = mm_shared::probe::http_get(gateway, "/metrics", Duration::from_secs(5)) else {
        return 0;
    };
    answer
        .body
        .lines()
        .filter(|line| line.starts_with("mm_gateway_http_requests_total{"))
        .filter(|line| {
            line.contains("route=\"/login\"")
                || line.contains("route=\"/store/offers\"")
                || line.contains("route=\"/store/purchase\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Measures one tool: waits `warmup`, then CPU and gateway requests over `window`.
fn measure(
    name: &str,
    child: &mut Child,
    gateway: &str,
    warmup: Duration,
    window: Duration,
) -> Option<(f64, u64)> {
    std::thread::sleep(warmup);
    if child.try_wait().ok().flatten().is_some() {
        println!("  {name} exited early");
        return None;
    }
    let (cpu0, requests0) = (cpu_seconds(child.id())?, gateway_requests(gateway));
    std::thread::sleep(window);
    let (cpu1, requests1) = (cpu_seconds(child.id())?, gateway_requests(gateway));
    Some((cpu1 - cpu0, requests1.saturating_sub(requests0)))
}

/// Microseconds of CPU per request.
fn micros_per_request((cpu, requests): (f64, u64)) -> f64 {
    cpu / requests.max(1) as f64 * 1e6
}

const LOCUSTFILE: &str = r#"
import random, uuid
from locust import task, constant_throughput
from locust.contrib.fasthttp import FastHttpUser

class Player(FastHttpUser):
    wait_time = constant_throughput(1.0)

    def on_start(self):
        self.id = "locust-" + uuid.uuid4().hex[:12]
        self.login()
        self.offers = [o["id"] for o in self.client.get("/store/offers").json()]

    @task(1)
    def login(self):
        answer = self.client.post("/login", json={"id": self.id, "password": "locust"})
        self.token = answer.json()["token"]

    @task(5)
    def fetch_store(self):
        self.offers = [o["id"] for o in self.client.get("/store/offers").json()]

    @task(4)
    def store_purchase(self):
        key = self.id + "-" + uuid.uuid4().hex[:16]
        with self.client.post("/store/purchase",
                              json={"offer_id": random.choice(self.offers), "idempotencyKey": key},
                              headers={"Authorization": "Bearer " + self.token},
                              catch_response=True) as answer:
            if answer.status_code in (200, 409):
                answer.success()
"#;

/// Whether `program --version` runs and names itself (`wrk --version` exits 1).
fn installed(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|output| {
        let text = [output.stdout, output.stderr].concat();
        String::from_utf8_lossy(&text).to_lowercase().contains(program)
    })
}

fn cpu_versus_locust() {
    println!(
        "CPU per request: harness versus Locust (FastHttpUser), same gateway, same mix; wrk as the floor"
    );
    let locust = installed("locust");
    if !locust {
        println!("  locust: skipped: `locust` is not installed (pip install locust)");
    }
    let wrk = installed("wrk");
    if !wrk {
        println!("  wrk floor: skipped: wrk is not installed (apt-get install wrk)");
    }
    let stack = match BenchStack::start() {
        Ok(stack) => stack,
        Err(err) => {
            println!("  skipped: {err}");
            return;
        }
    };
    let baseline = std::env::var_os("MM_BENCH_BASELINE_HARNESS").map(std::path::PathBuf::from);
    let rates: Vec<u64> = std::env::var("MM_BENCH_RATES")
        .unwrap_or_else(|_| "400,1500".to_owned())
        .split(',')
        .filter_map(|rate| rate.trim().parse().ok())
        .collect();
    let window =
        Duration::from_secs(std::env::var("MM_BENCH_WINDOW").ok().and_then(|s| s.parse().ok()).unwrap_or(20));
    println!(
        "  {window}s windows after 5s of warm-up; µs of CPU (user + system) per request the gateway counted",
        window = window.as_secs()
    );
    // The floor first: it does not depend on the rate.
    let floor = if wrk { wrk_floor(&stack, window) } else { None };
    println!(
        "  {:>6} {:<9} {:>10} {:>12} {:>16}",
        "req/s", "tool", "requests", "CPU seconds", "µs CPU/request"
    );
    for rate in rates {
        compare_at(&stack, rate, window, locust, baseline.as_deref(), floor);
    }
    let _ = std::io::stdout().flush();
}

/// Connections wrk keeps open (one thread): enough to saturate, few enough to batch.
const WRK_CONNECTIONS: u32 = 8;

/// wrk on `GET /store/offers` at its own saturating rate: its CPU per request.
fn wrk_floor(stack: &BenchStack, window: Duration) -> Option<f64> {
    let warmup = Duration::from_secs(3);
    let total = warmup + window + Duration::from_secs(5);
    let mut wrk = Command::new("wrk")
        .args(["-t1", &format!("-c{WRK_CONNECTIONS}"), &format!("-d{}s", total.as_secs())])
        .arg(format!("http://{}/store/offers", stack.gateway))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let figures = measure("wrk", &mut wrk, &stack.gateway, warmup, window);
    let _ = wrk.kill();
    let _ = wrk.wait();
    match figures {
        Some((cpu, requests)) => {
            println!(
                "  wrk floor: GET /store/offers, 1 thread, {WRK_CONNECTIONS} connections, saturating: {} requests \
                 ({:.0}/s), {cpu:.2} CPU s, {:.1} µs CPU/request",
                requests,
                requests as f64 / window.as_secs_f64(),
                micros_per_request((cpu, requests))
            );
            Some(micros_per_request((cpu, requests)))
        }
        None => {
            println!("  wrk floor: no figures");
            None
        }
    }
}

/// Workers (each a keep-alive connection) `hey` spreads a fixed rate over.
const HEY_WORKERS: u64 = 8;

/// `hey` prints no version; its usage names it.
fn installed_hey() -> bool {
    Command::new("hey")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).contains("hey"))
}

/// `hey` holding `rate` requests/s on `GET /store/offers`: a compiled client at a fixed
/// rate, the reference wrk (saturating) cannot be at low rates, where every request
/// pays its own wake-ups.
fn hey_at(stack: &BenchStack, rate: u64, warmup: Duration, window: Duration) -> Option<(f64, u64)> {
    let total = warmup + window + Duration::from_secs(5);
    let per_worker = (rate as f64 / HEY_WORKERS as f64).max(1.0);
    let mut hey = Command::new("hey")
        .args(["-z", &format!("{}s", total.as_secs()), "-c", &HEY_WORKERS.to_string()])
        .args(["-q", &format!("{per_worker}")])
        .arg(format!("http://{}/store/offers", stack.gateway))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let figures = measure("hey", &mut hey, &stack.gateway, warmup, window);
    let _ = hey.kill();
    let _ = hey.wait();
    figures
}

/// The harness binary `bin` at `rate` players (one execution per idle second each).
fn run_harness(
    name: &str,
    bin: &std::path::Path,
    stack: &BenchStack,
    rate: u64,
    warmup: Duration,
    window: Duration,
) -> Option<(f64, u64)> {
    let dir = tempfile::tempdir().expect("temp dir");
    // Every player does one execution per idle second: 10% login, 50% fetch_store,
    // 40% store_purchase; no think time, so players are idle nearly all the time.
    let config = dir.path().join("harness.toml");
    std::fs::write(
        &config,
        r#"
[harness]
progress = "never"
spawn_interval = "1ms"
drain = "0s"
[harness.rates]
login = 0.1
matchmaking = 0
fetch_store = 0.5
store_purchase = 0.4
logout = 0
[harness.follow_ups.fetch_store]
store_purchase = 0
[harness.think]
min = "0s"
max = "0s"
"#,
    )
    .expect("config");
    let total = warmup + window + Duration::from_secs(5);
    let mut harness = Command::new(bin)
        .args(["--config", config.to_str().expect("utf-8"), "--standalone"])
        .args(["--players", &rate.to_string(), "--duration", &format!("{}s", total.as_secs())])
        .args(["--gateway", &format!("http://{}", stack.gateway)])
        .env("MM_HARNESS__ADMIN_LISTEN", format!("127.0.0.1:{}", mm_testkit::free_port()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("harness.log")).expect("log file"))
        .spawn()
        .expect("harness starts");
    let figures = measure(name, &mut harness, &stack.gateway, warmup, window);
    if figures.is_none() {
        let log = std::fs::read_to_string(dir.path().join("harness.log")).unwrap_or_default();
        println!("  the {name}'s log:\n{log}");
    }
    let _ = harness.kill();
    let _ = harness.wait();
    figures
}

/// One comparison at `rate` requests per second offered by each tool in turn.
fn compare_at(
    stack: &BenchStack,
    rate: u64,
    window: Duration,
    locust: bool,
    baseline: Option<&std::path::Path>,
    floor: Option<f64>,
) {
    let warmup = Duration::from_secs(5);
    let harness_figures = run_harness("harness", &stack.bin("harness"), stack, rate, warmup, window);
    let baseline_figures = baseline.and_then(|bin| run_harness("baseline", bin, stack, rate, warmup, window));

    let locust_figures = if locust {
        let dir = tempfile::tempdir().expect("temp dir");
        let locustfile = dir.path().join("locustfile.py");
        std::fs::write(&locustfile, LOCUSTFILE).expect("locustfile");
        let total = warmup + window + Duration::from_secs(5);
        let mut locust = Command::new("locust")
            .args(["-f", locustfile.to_str().expect("utf-8"), "--headless", "--only-summary"])
            .args(["-u", &rate.to_string(), "-r", &rate.to_string(), "-t", &format!("{}s", total.as_secs())])
            .args(["--host", &format!("http://{}", stack.gateway)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("locust starts");
        let figures = measure("locust", &mut locust, &stack.gateway, warmup, window);
        let _ = locust.kill();
        let _ = locust.wait();
        figures
    } else {
        None
    };

    let hey_figures = if installed_hey() { hey_at(stack, rate, warmup, window) } else { None };

    let mut lines = vec![("harness", harness_figures)];
    if baseline.is_some() {
        lines.push(("baseline", baseline_figures));
    }
    if locust {
        lines.push(("locust", locust_figures));
    }
    lines.push(("hey", hey_figures));
    for (name, figures) in lines {
        match figures {
            Some((cpu, requests)) => println!(
                "  {rate:>6} {name:<9} {requests:>10} {cpu:>12.2} {:>16.1}",
                micros_per_request((cpu, requests))
            ),
            None => println!("  {rate:>6} {name:<9} (no figures)"),
        }
    }
    let harness = harness_figures.map(micros_per_request);
    if let (Some(h), Some(l)) = (harness, locust_figures.map(micros_per_request)) {
        let ratio = l / h.max(1e-9);
        println!(
            "  {rate:>6} ratio locust/harness: {ratio:.1}x cheaper per request (goal ≥ 10x: {})",
            if ratio >= 10.0 { "met" } else { "not met" }
        );
    }
    if let (Some(h), Some(b)) = (harness, baseline_figures.map(micros_per_request)) {
        println!("  {rate:>6} ratio baseline/harness: {:.2}x", b / h.max(1e-9));
    }
    if let (Some(h), Some(y)) = (harness, hey_figures.map(micros_per_request)) {
        println!(
            "  {rate:>6} hey at the same rate (Go, {HEY_WORKERS} keep-alive workers, GET /store/offers only): \
             {y:.1} µs CPU/request; ratio hey/harness: {:.1}x",
            y / h.max(1e-9)
        );
    }
    match (harness, floor) {
        (Some(h), Some(w)) => println!(
            "  {rate:>6} wrk floor: {w:.1} µs CPU/request (saturating GET /store/offers); ratio harness/wrk: {:.1}x",
            h / w.max(1e-9)
        ),
        (_, None) => println!("  {rate:>6} wrk floor: skipped"),
        (None, Some(_)) => {}
    }
}

/// nats-server, redis-server, matchmaker and gateway (release builds) for the comparison.
struct BenchStack {
    _nats: mm_testkit::NatsServer,
    _redis: mm_testkit::RedisServer,
    _matchmaker: mm_testkit::ServiceProcess,
    _gateway: mm_testkit::ServiceProcess,
    gateway: String,
}

impl BenchStack {
    fn start() -> Result<Self, String> {
        for name in ["gateway", "matchmaker", "harness"] {
            mm_testkit::project_bin(name).map_err(|_| {
                format!("no release `{name}` binary: run `cargo build --release --workspace --bins`")
            })?;
        }
        let nats = mm_testkit::NatsServer::start().map_err(|err| err.to_string())?;
        let redis = mm_testkit::RedisServer::start().map_err(|err| err.to_string())?;
        let gateway = format!("127.0.0.1:{}", mm_testkit::free_port());
        let admin = format!("127.0.0.1:{}", mm_testkit::free_port());
        let (nats_url, redis_url) = (nats.url(), redis.url());
        let env = [
            ("MM_NATS__URL", nats_url.as_str()),
            ("MM_REDIS__URL", redis_url.as_str()),
            ("MM_MATCHMAKER__ADMIN_LISTEN", admin.as_str()),
            ("MM_GATEWAY__LISTEN", gateway.as_str()),
            ("MM_LOG__FILTER", "warn"),
            // Every simulated player logs in from the same address.
            ("MM_GATEWAY__LOGIN_RATE__PER_SECOND", "1000000"),
            ("MM_GATEWAY__LOGIN_RATE__BURST", "1000000"),
        ];
        let mut matchmaker =
            mm_testkit::ServiceProcess::start("matchmaker", &[], &env).map_err(|err| err.to_string())?;
        matchmaker.wait_healthy(&admin).map_err(|err| err.to_string())?;
        let mut gateway_process =
            mm_testkit::ServiceProcess::start("gateway", &[], &env).map_err(|err| err.to_string())?;
        gateway_process.wait_healthy(&gateway).map_err(|err| err.to_string())?;
        Ok(Self { _nats: nats, _redis: redis, _matchmaker: matchmaker, _gateway: gateway_process, gateway })
    }

    fn bin(&self, name: &str) -> std::path::PathBuf {
        mm_testkit::project_bin(name).expect("checked at start")
    }
}
