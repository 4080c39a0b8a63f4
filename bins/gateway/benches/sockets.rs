//! Gateway memory per proxied game socket: thousands of live players' WebSockets through
//! the release gateway to real game servers, and what they add to the gateway's resident
//! memory. The goal is ≤ 32 KB per socket (each is two WebSockets: player ⇄ gateway ⇄
//! game server).
//!
//! nats-server, redis-server, the matchmaker (sessions only), game servers (one per
//! [`PLAYERS_PER_GAME`] players, their `servers` entries and secrets written as an
//! orchestrator would) and the gateway are separate processes. Every player logs in,
//! then a few sockets are opened and closed (allocator arenas, runtime and metrics
//! warmed), the gateway's RSS is read from `/proc/<pid>/smaps_rollup`, all sockets are
//! opened and each echoes one message (both directions live), and the RSS is read again;
//! then once more after they close, and over a second round of the same sockets (a
//! leak grows it again; memory the allocator kept after the first round is reused).
//!
//! `cargo bench -p gateway --bench sockets` (or `just bench`); `MM_BENCH_SOCKETS` changes
//! the number of sockets (default 3,000). Every loop is bounded in count and time; all
//! traffic stays on 127.0.0.1.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mm_shared::protocol::{ServerEntry, ServerState, buckets};
use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port};
use tokio_tungstenite::tungstenite::Message;

/// Players (and so sockets) per game server.
const PLAYERS_PER_GAME: usize = 1_000;
/// Sockets opened and closed before the baseline is read.
const WARM_UP_SOCKETS: usize = 100;
/// Logins and socket opens in flight at once.
const CONCURRENCY: usize = 32;
/// No phase (logins, opens, closes) may take longer than this.
const PHASE_LIMIT: Duration = Duration::from_secs(180);
/// The goal: gateway memory per proxied socket.
const GOAL_BYTES: u64 = 32 * 1024;
/// How long the gateway is left to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

fn main() {
    let sockets: usize = std::env::var("MM_BENCH_SOCKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000);
    let sockets = sockets.max(1);
    let open_files = raise_open_files_limit();
    // The bench holds one descriptor per socket, the gateway two, the game servers one.
    if open_files < (2 * sockets + 256) as u64 {
        eprintln!(
            "warning: the open-files limit is {open_files}; {sockets} sockets need about {} in the gateway",
            2 * sockets + 256
        );
    }

    let nats = NatsServer::start().expect("nats-server (run `just setup`)");
    let redis = RedisServer::start().expect("redis-server (run `just setup`)");
    let nats_url = nats.url();
    // Sessions only: nothing is queued here.
    let mut matchmaker = support::start_matchmaker(
        &nats,
        &redis,
        &[("MM_MATCHER__ENABLED", "false"), ("MM_LOG__FILTER", "warn")],
    );

    let players: Vec<String> = (0..sockets).map(|index| format!("p{index}")).collect();
    let games: Vec<Game> = players
        .chunks(PLAYERS_PER_GAME)
        .enumerate()
        .map(|(index, players)| Game::start(index, players.to_vec()))
        .collect();

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(publish_games(&nats_url, &games));

    let listen = format!("127.0.0.1:{}", free_port());
    let max = (sockets + WARM_UP_SOCKETS + 16).max(10_000).to_string();
    let mut gateway = ServiceProcess::start(
        "gateway",
        &[],
        &[
            ("MM_NATS__URL", &nats_url),
            ("MM_GATEWAY__LISTEN", &listen),
            ("MM_LOG__FILTER", "warn"),
            ("MM_GATEWAY__GAME_SOCKETS_MAX", &max),
            ("MM_GATEWAY__GAME_IDLE_TIMEOUT", "10m"),
            // Every player logs in from 127.0.0.1.
            ("MM_GATEWAY__LOGIN_RATE__PER_SECOND", "1000000"),
            ("MM_GATEWAY__LOGIN_RATE__BURST", "1000000"),
        ],
    )
    .expect("the release gateway binary (cargo bench builds it)");
    gateway.wait_healthy(&listen).expect("gateway healthy");
    let pid = gateway.pid();

    let report = runtime.block_on(async {
        let seats: Vec<(String, String)> = games
            .iter()
            .flat_map(|game| game.players.iter().map(|player| (game.id.clone(), player.clone())))
            .collect();
        let tokens = login_all(&listen, &seats).await;

        // Warm-up: some sockets opened, used and closed, so that the allocator's arenas,
        // the runtime's and the metrics' structures exist before the baseline.
        let warm = open_all(&listen, &tokens[..WARM_UP_SOCKETS.min(tokens.len())]).await;
        close_all(warm).await;
        wait_connections(&listen, 0).await;
        tokio::time::sleep(SETTLE).await;
        let baseline = Memory::read(pid);

        let started = Instant::now();
        let open = open_all(&listen, &tokens).await;
        let opening = started.elapsed();
        wait_connections(&listen, open.len()).await;
        tokio::time::sleep(SETTLE).await;
        let loaded = Memory::read(pid);
        let count = open.len();

        close_all(open).await;
        wait_connections(&listen, 0).await;
        tokio::time::sleep(SETTLE).await;
        let closed = Memory::read(pid);

        // A second round with the same players: memory the first round left behind is
        // reused if the allocator merely kept it, and grows again if it leaked.
        let again = open_all(&listen, &tokens).await;
        wait_connections(&listen, again.len()).await;
        tokio::time::sleep(SETTLE).await;
        let reloaded = Memory::read(pid);
        close_all(again).await;
        wait_connections(&listen, 0).await;
        tokio::time::sleep(SETTLE).await;
        let reclosed = Memory::read(pid);
        Report { sockets: count, opening, baseline, loaded, closed, reloaded, reclosed }
    });
    gateway.terminate(Duration::from_secs(10));
    drop(games);
    matchmaker.terminate(Duration::from_secs(10));
    report.print();
}

/// One game server process and its match's players.
struct Game {
    id: String,
    address: String,
    secret: String,
    players: Vec<String>,
    _process: ServiceProcess,
}

impl Game {
    fn start(index: usize, players: Vec<String>) -> Self {
        let id = format!("g-bench-{index}");
        let address = format!("127.0.0.1:{}", free_port());
        let secret = format!("bench-secret-{index}");
        let list = serde_json::to_string(&players).expect("json");
        let env = [
            ("MM_GAME__LISTEN", address.as_str()),
            ("MM_GAME__GAME_ID", id.as_str()),
            ("MM_GAME__DURATION", "30m"),
            ("MM_GAME__SECRET", secret.as_str()),
            ("MM_GAME__PLAYERS", list.as_str()),
            ("MM_LOG__FILTER", "warn"),
        ];
        let mut process = ServiceProcess::start("game-server", &[], &env)
            .expect("the release game-server binary (`cargo build --release -p game-server`, or MM_BIN_DIR)");
        process.wait_healthy(&address).expect("game-server healthy");
        Self { id, address, secret, players, _process: process }
    }
}

/// Each game's `servers` entry and secret, as an orchestrator writes them.
async fn publish_games(nats_url: &str, games: &[Game]) {
    let client = async_nats::connect(nats_url).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    let bucket =
        |name: &str| async_nats::jetstream::kv::Config { bucket: name.to_owned(), ..Default::default() };
    let servers = jetstream.create_key_value(bucket(buckets::SERVERS)).await.expect("servers bucket");
    let secrets = jetstream.create_key_value(bucket(buckets::SECRETS)).await.expect("secrets bucket");
    for game in games {
        let entry = ServerEntry {
            game_id: game.id.clone(),
            match_id: format!("m-{}", game.id),
            state: ServerState::Running,
            address: game.address.clone(),
            player_ids: game.players.clone(),
            ..ServerEntry::default()
        };
        servers.put(&game.id, serde_json::to_vec(&entry).expect("json").into()).await.expect("put entry");
        secrets.put(&game.id, game.secret.clone().into()).await.expect("put secret");
    }
}

/// A player's way in: its game and session token.
struct Ticket {
    game: String,
    token: String,
}

async fn login_all(gateway: &str, seats: &[(String, String)]) -> Vec<Ticket> {
    let http = support::http::Http::new(gateway);
    let deadline = Instant::now() + PHASE_LIMIT;
    let tickets: Vec<Ticket> = futures_util::stream::iter(seats)
        .map(|(game, player)| {
            let http = &http;
            async move {
                assert!(Instant::now() < deadline, "logins took over {PHASE_LIMIT:?}");
                Ticket { game: game.clone(), token: http.login(player).await }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    tickets
}

/// Opens every ticket's game socket through the gateway and has it echo one message.
async fn open_all(gateway: &str, tickets: &[Ticket]) -> Vec<support::Socket> {
    let deadline = Instant::now() + PHASE_LIMIT;
    futures_util::stream::iter(tickets.iter().enumerate())
        .map(|(index, ticket)| async move {
            assert!(Instant::now() < deadline, "opening sockets took over {PHASE_LIMIT:?}");
            let url = format!("ws://{gateway}/game/{}/connect?token={}", ticket.game, ticket.token);
            let limit = Duration::from_secs(10);
            let (mut socket, _) = tokio::time::timeout(limit, tokio_tungstenite::connect_async(url))
                .await
                .unwrap_or_else(|_| panic!("socket {index}: no handshake within {limit:?}"))
                .unwrap_or_else(|err| panic!("socket {index}: {err}"));
            let text = format!("move {index}");
            socket.send(Message::text(text.clone())).await.expect("send");
            let echo = tokio::time::timeout(limit, socket.next())
                .await
                .unwrap_or_else(|_| panic!("socket {index}: no echo within {limit:?}"));
            match echo {
                Some(Ok(Message::Text(echoed))) if echoed.as_str() == text => {}
                other => panic!("socket {index}: expected the echo of {text:?}, got {other:?}"),
            }
            socket
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Closes every socket (close handshake), a bounded wait each.
async fn close_all(sockets: Vec<support::Socket>) {
    futures_util::stream::iter(sockets)
        .for_each_concurrent(CONCURRENCY * 4, |mut socket| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = socket.close(None).await;
                while let Some(Ok(_)) = socket.next().await {}
            })
            .await;
        })
        .await;
}

/// Waits (bounded) until the gateway reports `count` game connections open.
async fn wait_connections(gateway: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = open_connections(gateway);
        if seen == Some(count as f64) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway reports {seen:?} game connections, expected {count}");
}

/// `mm_gateway_game_connections` from the gateway's /metrics.
fn open_connections(gateway: &str) -> Option<f64> {
    let answer = mm_shared::probe::http_get(gateway, "/metrics", Duration::from_secs(5)).ok()?;
    answer
        .body
        .lines()
        .find(|line| {
            line.strip_prefix("mm_gateway_game_connections").is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|line| line.rsplit_once(' ').and_then(|(_, value)| value.parse().ok()))
}

/// The gateway's memory, from `/proc/<pid>/smaps_rollup`, in bytes.
#[derive(Clone, Copy)]
struct Memory {
    rss: u64,
    private_dirty: u64,
}

impl Memory {
    fn read(pid: u32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .unwrap_or_else(|err| panic!("/proc/{pid}/smaps_rollup: {err}"));
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/smaps_rollup"))
        };
        Self { rss: field("Rss"), private_dirty: field("Private_Dirty") }
    }
}

struct Report {
    sockets: usize,
    opening: Duration,
    baseline: Memory,
    loaded: Memory,
    closed: Memory,
    reloaded: Memory,
    reclosed: Memory,
}

impl Report {
    fn per_socket(&self, value: impl Fn(&Memory) -> u64) -> u64 {
        value(&self.loaded).saturating_sub(value(&self.baseline)) / self.sockets.max(1) as u64
    }

    fn print(&self) {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let per_socket = self.per_socket(|memory| memory.rss);
        println!(
            "gateway memory per proxied game socket: {} live sockets (player ⇄ gateway ⇄ game server, one echo each)",
            self.sockets
        );
        println!("  opened in {:.1?}", self.opening);
        for (label, memory) in [
            ("baseline (warmed up)", self.baseline),
            ("sockets open", self.loaded),
            ("all closed again", self.closed),
            ("second round open", self.reloaded),
            ("second round closed", self.reclosed),
        ] {
            println!(
                "  RSS {label:<21} {:>8.1} MiB  (private dirty {:>8.1} MiB)",
                mib(memory.rss),
                mib(memory.private_dirty)
            );
        }
        println!(
            "  per socket: {:>6.1} KiB RSS  ({:.1} KiB private dirty)",
            per_socket as f64 / 1024.0,
            self.per_socket(|memory| memory.private_dirty) as f64 / 1024.0
        );
        // What the first round kept after its sockets closed, and what the second round
        // added on top of the first's peak: about 0 when the kept memory is reused.
        let kept = self.closed.rss.saturating_sub(self.baseline.rss);
        let grown = self.reloaded.rss as i64 - self.loaded.rss as i64;
        println!(
            "  kept after closing: {:.1} MiB; second round's peak over the first's: {:+.1} MiB \
             (a leak would add about {:.1} MiB)",
            mib(kept),
            grown as f64 / (1024.0 * 1024.0),
            mib(self.loaded.rss.saturating_sub(self.baseline.rss))
        );
        let met = if per_socket <= GOAL_BYTES { "met" } else { "not met" };
        println!("  goal ≤ 32 KB: {met}");
    }
}

/// Raises the soft open-files limit to the hard one (the child processes inherit it);
/// returns the limit now in force.
#[allow(unsafe_code)]
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}
