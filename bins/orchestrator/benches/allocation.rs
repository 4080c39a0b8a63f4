//! Allocation benchmark (`just bench`; `harness = false`). Real NATS, a test-owned
//! rootful Podman service, and the orchestrator binary.
//!
//! 1. **Latency**: `orchestrator.allocate` request → reply (the reply is sent once the
//!    server's `/healthz` answers), against a plain `podman run` of the same image with
//!    the same settings + its first `/healthz`, interleaved in the same run. Ratio of
//!    p50s (goal ≤ 1.25×). In the same rounds, a node with a warm pool (on a NATS of its
//!    own, so the ranking's warm-first rule cannot send the cold case to it): warm p50
//!    over `podman run` p50 (goal ≤ 0.02).
//! 2. **Warm throughput**: allocations paced at rising rates (`MM_BENCH_WARM_RATES`,
//!    `MM_BENCH_WARM_PODMAN_RATES`) against a node with an `auto` pool, per driver: how
//!    many were warm, and the highest rate the pool kept up with (≥ 95% warm; goal ≥
//!    200/s with processes).
//! 3. **Burst**: 50 allocations at once against `min = 10`, `auto`: none may fail; how
//!    many were warm.
//! 4. **Capacity**: how many game servers one node keeps live at once, per driver
//!    (goal ≥ 1,000 processes, ≥ 200 containers), bounded by `MM_BENCH_PROCESSES` /
//!    `MM_BENCH_CONTAINERS`; it stops at the first failure and says what it was.
//!
//! Everything it starts is stopped and removed at the end (the orchestrator's SIGTERM
//! stops its servers; leftovers are removed by label).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mm_shared::protocol::{AllocateReply, AllocateRequest, StartKind, subjects};
use mm_testkit::{NatsServer, PodmanService, ServiceProcess, free_port};

const IMAGE: &str = "localhost/mm/game-server:latest";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// A comma-separated list of numbers from the environment.
fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|value| value.split(',').filter_map(|item| item.trim().parse().ok()).collect::<Vec<usize>>())
        .filter(|list| !list.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// The static release game server `just image` builds (the one the image holds), or the
/// debug one.
fn game_server_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let static_build = target.join("x86_64-unknown-linux-gnu/release/game-server");
    if static_build.is_file() { static_build } else { target.join("debug/game-server") }
}

struct Orchestrator {
    process: ServiceProcess,
}

impl Orchestrator {
    fn start(nats: &NatsServer, node: &str, env: &[(&str, String)]) -> Orchestrator {
        let admin = format!("127.0.0.1:{}", free_port());
        let url = nats.url();
        let mut all: Vec<(&str, String)> = vec![
            ("MM_NATS__URL", url),
            ("MM_ORCHESTRATOR__ADMIN_LISTEN", admin.clone()),
            ("MM_ORCHESTRATOR__NODE", node.to_owned()),
            ("MM_ORCHESTRATOR__GAME__DURATION", "10m".to_owned()),
            ("MM_ORCHESTRATOR__CAPACITY__MAX_SERVERS", "5000".to_owned()),
            ("MM_ORCHESTRATOR__CAPACITY__CPU_MILLICORES", "100000000".to_owned()),
            ("MM_ORCHESTRATOR__CAPACITY__MEMORY_MB", "100000000".to_owned()),
            ("MM_ORCHESTRATOR__ALLOCATE_TIMEOUT", "30s".to_owned()),
            ("MM_ORCHESTRATOR__PLACE_TIMEOUT", "30s".to_owned()),
            ("MM_ORCHESTRATOR__GAME__START_TIMEOUT", "25s".to_owned()),
            ("MM_ORCHESTRATOR__GAME__STOP_TIMEOUT", "2s".to_owned()),
            ("MM_ORCHESTRATOR__SHUTDOWN_TIMEOUT", "5m".to_owned()),
            ("MM_LOG__FILTER", "warn".to_owned()),
        ];
        all.extend(env.iter().cloned());
        let env: Vec<(&str, &str)> = all.iter().map(|(key, value)| (*key, value.as_str())).collect();
        let mut process = ServiceProcess::start("orchestrator", &[], &env).expect("orchestrator starts");
        process.wait_healthy(&admin).expect("orchestrator healthy");
        Orchestrator { process }
    }

    /// SIGTERM: it stops its servers. Returns how long that took.
    fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.process.terminate(Duration::from_secs(120));
        started.elapsed()
    }
}

async fn allocate(client: &async_nats::Client, match_id: String) -> Result<AllocateReply, String> {
    let request =
        AllocateRequest { player_ids: (0..10).map(|i| format!("{match_id}-p{i}")).collect(), match_id };
    mm_shared::nats::request_json(client, subjects::ORCHESTRATOR_ALLOCATE, &request, Duration::from_secs(40))
        .await
        .map_err(|err| err.to_string())
}

fn podman(socket: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("podman")
        .arg("--url")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .map_err(|err| err.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

fn remove_labelled(socket: &Path, label: &str) {
    if let Ok(ids) = podman(socket, &["ps", "-a", "-q", "--filter", &format!("label={label}")]) {
        for id in ids.lines() {
            let _ = podman(socket, &["rm", "-f", "-t", "0", id]);
        }
    }
}

/// `podman run` of the image with the settings the orchestrator gives its containers,
/// then polls `/healthz` as the orchestrator does: the baseline.
fn plain_run(socket: &Path, index: usize) -> Result<Duration, String> {
    let port = free_port();
    let started = Instant::now();
    podman(
        socket,
        &[
            "run",
            "-d",
            "--name",
            &format!("mm-bench-plain-{index}"),
            "--label",
            "mm.bench=plain",
            "-p",
            &format!("127.0.0.1:{port}:7777"),
            "-e",
            "MM_GAME__LISTEN=0.0.0.0:7777",
            "-e",
            "MM_GAME__DURATION=10m",
            "-e",
            "TOKIO_WORKER_THREADS=1",
            "--read-only",
            "--security-opt",
            "no-new-privileges",
            "--cap-drop",
            "ALL",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=32768:32768",
            IMAGE,
        ],
    )?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = started + Duration::from_secs(20);
    while Instant::now() < deadline {
        if mm_shared::probe::http_get(&addr, "/healthz", Duration::from_millis(500))
            .is_ok_and(|a| a.status == 200)
        {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("no /healthz within 20 s".to_owned())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn latency(nats: &NatsServer, podman_service: &PodmanService, rounds: usize) {
    let socket = podman_service.socket();
    let podman_env = || {
        vec![
            ("MM_ORCHESTRATOR__DRIVER", "podman".to_owned()),
            ("MM_ORCHESTRATOR__PODMAN__SOCKET", socket.display().to_string()),
        ]
    };
    let node = Orchestrator::start(nats, "bench-latency", &podman_env());
    // The warm node on a NATS of its own: nodes with warm servers rank first, so on one
    // NATS it would take the cold case's allocations too.
    let warm_nats = NatsServer::start().expect("nats-server for the warm node");
    let mut warm_env = podman_env();
    warm_env.push(("MM_ORCHESTRATOR__POOL__MIN", "4".to_owned()));
    let warm_node = Orchestrator::start(&warm_nats, "bench-warm", &warm_env);
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let warm_client = async_nats::connect(warm_nats.url()).await.expect("NATS");
    // One of each first, so image and network set-up costs are not in the figures.
    let _ = allocate(&client, "warm-up".to_owned()).await;
    let _ = plain_run(socket, 0);
    let _ = allocate(&warm_client, "warm-up".to_owned()).await;
    let (mut ours, mut plain, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let mut warm_starts = 0;
    for round in 1..=rounds {
        let started = Instant::now();
        match allocate(&client, format!("latency-{round}")).await {
            Ok(_) => ours.push(started.elapsed()),
            Err(err) => println!("  allocation {round} failed: {err}"),
        }
        match tokio::task::block_in_place(|| plain_run(socket, round)) {
            Ok(elapsed) => plain.push(elapsed),
            Err(err) => println!("  plain run {round} failed: {err}"),
        }
        let started = Instant::now();
        match allocate(&warm_client, format!("warm-{round}")).await {
            Ok(reply) => {
                warm.push(started.elapsed());
                warm_starts += usize::from(reply.start == StartKind::Warm);
            }
            Err(err) => println!("  warm allocation {round} failed: {err}"),
        }
    }
    ours.sort();
    plain.sort();
    warm.sort();
    let (ours50, ours99, plain50, plain99) =
        (percentile(&ours, 0.5), percentile(&ours, 0.99), percentile(&plain, 0.5), percentile(&plain, 0.99));
    let (warm50, warm99) = (percentile(&warm, 0.5), percentile(&warm, 0.99));
    println!("allocation latency, request -> ready (podman, rootful, {} rounds, interleaved):", rounds);
    println!("  orchestrator.allocate          p50 {:7.1} ms   p99 {:7.1} ms", ms(ours50), ms(ours99));
    println!("  podman run + first /healthz    p50 {:7.1} ms   p99 {:7.1} ms", ms(plain50), ms(plain99));
    println!(
        "  orchestrator.allocate, warm    p50 {:7.2} ms   p99 {:7.2} ms   ({warm_starts} of {} from the pool, min 4)",
        ms(warm50),
        ms(warm99),
        warm.len()
    );
    let ratio = ours50.as_secs_f64() / plain50.as_secs_f64().max(1e-9);
    let verdict = if ratio <= 1.25 { "meets" } else { "misses" };
    println!(
        "  ratio (p50): {ratio:.2}x ({verdict} the goal of <= 1.25x); p99 ratio {:.2}x",
        ours99.as_secs_f64() / plain99.as_secs_f64().max(1e-9)
    );
    let warm_ratio = warm50.as_secs_f64() / plain50.as_secs_f64().max(1e-9);
    let verdict = if warm_ratio <= 0.02 { "meets" } else { "misses" };
    println!(
        "warm allocation ratio (p50): {warm_ratio:.4} ({verdict} the goal of <= 0.02; warm p50 / podman run p50)"
    );
    let stopped = node.stop();
    let warm_stopped = warm_node.stop();
    remove_labelled(socket, "mm.bench=plain");
    remove_labelled(socket, "mm.node=bench-latency");
    remove_labelled(socket, "mm.node=bench-warm");
    println!(
        "  (the nodes stopped their {} and {} containers in {:.1} s and {:.1} s)",
        rounds + 1,
        warm.len() + 5,
        stopped.as_secs_f64(),
        warm_stopped.as_secs_f64()
    );
}

/// One paced step of the warm throughput: allocations asked at `rate` per second for
/// `seconds`; how many succeeded, how many were warm, their p50 and p99.
async fn paced(
    client: &async_nats::Client,
    prefix: &str,
    rate: usize,
    seconds: u64,
) -> (usize, usize, usize, Duration, Duration, Duration) {
    let total = rate * seconds as usize;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        ticks.tick().await;
        let client = client.clone();
        let match_id = format!("{prefix}-{i}");
        tasks.spawn(async move {
            let asked = Instant::now();
            allocate(&client, match_id).await.map(|reply| (reply.start, asked.elapsed()))
        });
    }
    let (mut ok, mut warm, mut failed, mut latencies) = (0, 0, 0, Vec::new());
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok((start, took))) => {
                ok += 1;
                warm += usize::from(start == StartKind::Warm);
                latencies.push(took);
            }
            _ => failed += 1,
        }
    }
    let asked_for = started.elapsed();
    latencies.sort();
    (ok, warm, failed, percentile(&latencies, 0.5), percentile(&latencies, 0.99), asked_for)
}

/// Warm allocations at rising rates against one node with an `auto` pool: the highest
/// rate at which the pool kept up (at least 95% of the allocations warm).
async fn warm_throughput(
    nats: &NatsServer,
    driver: &str,
    env: Vec<(&str, String)>,
    rates: &[usize],
    goal: usize,
) {
    let node_id = format!("bench-throughput-{driver}");
    let node = Orchestrator::start(nats, &node_id, &env);
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let pool =
        env.iter().find(|(key, _)| *key == "MM_ORCHESTRATOR__POOL__MIN").map_or("?", |(_, v)| v.as_str());
    // Let the pool fill first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("sustained warm allocations, {driver} driver (pool auto, min {pool}; paced, 4 s per rate):");
    let mut kept_up = 0;
    for &rate in rates {
        let (ok, warm, failed, p50, p99, took) = paced(&client, &format!("{driver}-{rate}"), rate, 4).await;
        let achieved = ok as f64 / took.as_secs_f64().max(1e-9);
        let share = warm as f64 / (ok + failed).max(1) as f64;
        println!(
            "  asked {rate:4}/s: {ok} allocated ({achieved:.0}/s), {warm} warm ({:.0}%), {failed} failed; p50 {:.1} ms, p99 {:.1} ms",
            share * 100.0,
            ms(p50),
            ms(p99)
        );
        if share >= 0.95 && failed == 0 {
            kept_up = kept_up.max(rate);
        }
        // The pool refills before the next, faster step.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let verdict = if kept_up >= goal { "meets" } else { "misses" };
    println!(
        "  sustained warm allocation rate, {driver} driver: {kept_up}/s ({verdict} the goal of >= {goal}/s)"
    );
    let stopped = node.stop();
    println!("  (SIGTERM stopped the node's servers in {:.1} s)", stopped.as_secs_f64());
}

/// 50 allocations at once against a pool of `min = 10`, `auto`.
async fn burst(nats: &NatsServer, driver: &str, env: Vec<(&str, String)>) {
    let node_id = format!("bench-burst-{driver}");
    let node = Orchestrator::start(nats, &node_id, &env);
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    // Until its 10 warm servers are up.
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let warm = match js.get_key_value("nodes").await {
            Ok(nodes) => match nodes.get(&node_id).await {
                Ok(Some(bytes)) => serde_json::from_slice::<mm_shared::protocol::NodeEntry>(&bytes)
                    .map(|entry| entry.warm)
                    .unwrap_or(0),
                _ => 0,
            },
            Err(_) => 0,
        };
        if warm >= 10 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let results = futures_util::future::join_all((0..50).map(|i| {
        let client = client.clone();
        async move {
            let asked = Instant::now();
            allocate(&client, format!("burst-{driver}-{i}")).await.map(|reply| (reply.start, asked.elapsed()))
        }
    }))
    .await;
    let took = started.elapsed();
    let mut latencies = Vec::new();
    let (mut warm, mut failures) = (0, Vec::new());
    for result in results {
        match result {
            Ok((start, latency)) => {
                warm += usize::from(start == StartKind::Warm);
                latencies.push(latency);
            }
            Err(err) => failures.push(err),
        }
    }
    latencies.sort();
    let verdict = if failures.is_empty() { "meets" } else { "misses" };
    println!(
        "burst of 50 allocations at once, {driver} driver (pool min 10, auto): {} allocated, {warm} warm, {} cold, \
         {} failed ({verdict} the goal of none failing) in {:.2} s; p50 {:.1} ms, max {:.1} ms",
        latencies.len(),
        latencies.len() - warm,
        failures.len(),
        took.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 1.0))
    );
    if let Some(first) = failures.first() {
        println!("  first failure: {first}");
    }
    node.stop();
}

/// Allocates up to `target` servers, `parallel` at a time, stopping at the first failure.
async fn fill(
    client: &async_nats::Client,
    prefix: &str,
    target: usize,
    parallel: usize,
) -> (usize, Option<String>, Duration) {
    let started = Instant::now();
    let client = Arc::new(client.clone());
    let mut results = futures_util::stream::iter(0..target)
        .map(|i| {
            let client = client.clone();
            let match_id = format!("{prefix}-{i}");
            async move { allocate(&client, match_id).await }
        })
        .buffer_unordered(parallel);
    let (mut live, mut first_error) = (0, None);
    while let Some(result) = results.next().await {
        match result {
            Ok(_) => live += 1,
            Err(err) => {
                if first_error.is_none() {
                    first_error = Some(err);
                }
                // Let what is in flight finish, then stop asking.
                if started.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
        }
    }
    (live, first_error, started.elapsed())
}

/// Proportional set size of a process in KiB (shared pages split among their users).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("Pss:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// The parent pid of a process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn memory_available_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemAvailable:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Prints one driver's capacity figures: `counts` is (live, asked, goal).
fn report_capacity(
    driver: &str,
    (live, target, goal): (usize, usize, usize),
    took: Duration,
    footprint: &str,
    error: Option<String>,
    bound: &str,
) {
    println!(
        "concurrent live game servers, {driver} driver: {live} of {target} asked in {:.1} s ({:.1}/s; goal >= {goal})",
        took.as_secs_f64(),
        live as f64 / took.as_secs_f64().max(1e-9)
    );
    println!("  memory: {footprint}");
    match error {
        Some(err) => println!("  first failure: {err}"),
        None => println!("  no failure up to the bound ({bound}={target}); the limit is beyond it"),
    }
}

async fn capacity_processes(nats: &NatsServer, target: usize) {
    let node = Orchestrator::start(
        nats,
        "bench-processes",
        &[
            ("MM_ORCHESTRATOR__DRIVER", "process".to_owned()),
            ("MM_ORCHESTRATOR__PROCESS__BINARY", game_server_binary().display().to_string()),
        ],
    );
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let (live, error, took) = fill(&client, "proc", target, 32).await;
    let children = mm_shared::process::descendants(node.process.pid());
    let pss: u64 = children.iter().map(|pid| pss_kib(*pid)).sum();
    let per_server = pss as f64 / children.len().max(1) as f64;
    let footprint = format!("{per_server:.0} KiB PSS per game server ({} processes)", children.len());
    report_capacity("process", (live, target, 1000), took, &footprint, error, "MM_BENCH_PROCESSES");
    let stopped = node.stop();
    println!("  SIGTERM stopped them all in {:.1} s", stopped.as_secs_f64());
}

async fn capacity_containers(nats: &NatsServer, podman_service: &PodmanService, target: usize) {
    let socket = podman_service.socket();
    let node = Orchestrator::start(
        nats,
        "bench-containers",
        &[
            ("MM_ORCHESTRATOR__DRIVER", "podman".to_owned()),
            ("MM_ORCHESTRATOR__PODMAN__SOCKET", socket.display().to_string()),
            ("MM_ORCHESTRATOR__DRIVER_TIMEOUT", "60s".to_owned()),
        ],
    );
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let (live, error, took) = fill(&client, "pod", target, 8).await;
    let pids =
        podman(socket, &["ps", "-q", "--filter", "label=mm.node=bench-containers", "--format", "{{.Pid}}"])
            .unwrap_or_default();
    let pids: Vec<u32> = pids.lines().filter_map(|pid| pid.trim().parse().ok()).collect();
    let pss: u64 = pids.iter().map(|pid| pss_kib(*pid) + parent_of(*pid).map_or(0, pss_kib)).sum();
    let per_container = pss as f64 / pids.len().max(1) as f64;
    let footprint =
        format!("{per_container:.0} KiB PSS per container (game server + conmon, {} running)", pids.len());
    report_capacity("podman", (live, target, 200), took, &footprint, error, "MM_BENCH_CONTAINERS");
    let stopped = node.stop();
    let left =
        podman(socket, &["ps", "-a", "-q", "--filter", "label=mm.node=bench-containers"]).unwrap_or_default();
    let left = left.lines().count();
    remove_labelled(socket, "mm.node=bench-containers");
    println!(
        "  SIGTERM stopped and removed them in {:.1} s ({:.0} ms each; {left} left over)",
        stopped.as_secs_f64(),
        stopped.as_secs_f64() * 1000.0 / live.max(1) as f64
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo test --benches` lists targets; nothing to list here.
    }
    let rounds = env_usize("MM_BENCH_ROUNDS", 30);
    let processes = env_usize("MM_BENCH_PROCESSES", 1000);
    let containers = env_usize("MM_BENCH_CONTAINERS", 200);
    let nats = NatsServer::start().expect("nats-server");
    let podman_service = PodmanService::start().expect("podman service (run `just setup`)");
    if podman(podman_service.socket(), &["image", "exists", IMAGE]).is_err() {
        eprintln!("the image {IMAGE} is missing: run `just image` (`just bench` does)");
        std::process::exit(1);
    }
    println!(
        "orchestrator benchmark: {} CPUs, {} MB available",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_available_mb()
    );
    latency(&nats, &podman_service, rounds).await;

    let socket = podman_service.socket().display().to_string();
    let process_env = |pool: &[(&'static str, &str)]| {
        let mut env = vec![
            ("MM_ORCHESTRATOR__DRIVER", "process".to_owned()),
            ("MM_ORCHESTRATOR__PROCESS__BINARY", game_server_binary().display().to_string()),
        ];
        env.extend(pool.iter().map(|(key, value)| (*key, (*value).to_owned())));
        env
    };
    let podman_env = |pool: &[(&'static str, &str)]| {
        let mut env = vec![
            ("MM_ORCHESTRATOR__DRIVER", "podman".to_owned()),
            ("MM_ORCHESTRATOR__PODMAN__SOCKET", socket.clone()),
            ("MM_ORCHESTRATOR__DRIVER_TIMEOUT", "60s".to_owned()),
        ];
        env.extend(pool.iter().map(|(key, value)| (*key, (*value).to_owned())));
        env
    };
    let rates = env_list("MM_BENCH_WARM_RATES", &[100, 200, 300, 400]);
    let podman_rates = env_list("MM_BENCH_WARM_PODMAN_RATES", &[4, 8, 16]);
    // Short games, so the servers of a step end while the next runs.
    let throughput = [
        ("MM_ORCHESTRATOR__POOL__MIN", "32"),
        ("MM_ORCHESTRATOR__POOL__MAX", "256"),
        ("MM_ORCHESTRATOR__POOL__POLICY", "auto"),
        ("MM_ORCHESTRATOR__POOL__RATE_WINDOW", "5s"),
        ("MM_ORCHESTRATOR__GAME__DURATION", "5s"),
        ("MM_ORCHESTRATOR__GAME__JOIN_TIMEOUT", "0s"),
    ];
    warm_throughput(&nats, "process", process_env(&throughput), &rates, 200).await;
    let podman_throughput = [
        ("MM_ORCHESTRATOR__POOL__MIN", "16"),
        ("MM_ORCHESTRATOR__POOL__MAX", "64"),
        ("MM_ORCHESTRATOR__POOL__POLICY", "auto"),
        ("MM_ORCHESTRATOR__POOL__RATE_WINDOW", "5s"),
        ("MM_ORCHESTRATOR__GAME__DURATION", "10s"),
        ("MM_ORCHESTRATOR__GAME__JOIN_TIMEOUT", "0s"),
    ];
    warm_throughput(&nats, "podman", podman_env(&podman_throughput), &podman_rates, 0).await;
    remove_labelled(podman_service.socket(), "mm.node=bench-throughput-podman");
    let burst_pool = [
        ("MM_ORCHESTRATOR__POOL__MIN", "10"),
        ("MM_ORCHESTRATOR__POOL__MAX", "50"),
        ("MM_ORCHESTRATOR__POOL__POLICY", "auto"),
    ];
    burst(&nats, "process", process_env(&burst_pool)).await;
    burst(&nats, "podman", podman_env(&burst_pool)).await;
    remove_labelled(podman_service.socket(), "mm.node=bench-burst-podman");

    capacity_processes(&nats, processes).await;
    capacity_containers(&nats, &podman_service, containers).await;
}
