//! `[orchestrator]` and its subsections: the node, its game servers, its driver.
//!
//! ```toml
//! [orchestrator]
//! node = "node-a"                 # stable across restarts: containers are adopted by it
//! driver = "auto"                 # auto | podman | process
//! port_range = "20000-32000"
//! public_url = "ws://127.0.0.1:8080"
//! allocate_timeout = "8s"         # the most an allocation takes (a smaller request budget wins)
//! place_timeout = "6s"            # the most one node takes for one placement
//! reconcile_interval = "2s"       # KV `servers` made to agree with what runs
//! reap_after = "5s"               # a node silent this long loses its `servers` entries
//! [orchestrator.capacity]
//! cpu_millicores = 2000           # 0: 1000 per CPU of this machine
//! memory_mb = 0                   # 0: this machine's memory
//! max_servers = 1000
//! [orchestrator.game]
//! duration = "30s"
//! start_timeout = "5s"            # at most place_timeout
//! join_timeout = "15s"            # no player by then: the server ends itself ("0s": never)
//! [orchestrator.pool]                 # warm servers (off unless min > 0, or auto with max > 0)
//! min = 4                         # never fewer warm servers than this (when there is room)
//! max = 32                        # auto never more than this (0: min)
//! policy = "auto"                 # fixed: min; auto: recent allocation rate x cold-start time
//! recycle_after = "10m"           # a warm server unclaimed this long is replaced ("0s": never)
//! rate_window = "30s"             # auto: the allocations counted for the rate
//! [orchestrator.podman]
//! socket = "/run/user/1000/podman/podman.sock"
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mm_shared::config::{LogConfig, NatsConfig};
use mm_shared::protocol::{Resources, addresses};
use mm_shared::service::ServiceConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::scheduler::{Algorithm, Ask};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub orchestrator: OrchestratorSection,
    pub nats: NatsConfig,
    pub log: LogConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// Which driver runs game servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// Podman when its socket answers and has the image; child processes otherwise.
    #[default]
    Auto,
    Podman,
    Process,
}

/// What happens to this node's game servers when the orchestrator stops (SIGTERM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Stop them and delete their entries: nothing is left behind (`mmctl dev` Ctrl-C).
    #[default]
    Stop,
    /// Leave containers running; the next start adopts them (rolling restarts). The
    /// process driver's servers die with the orchestrator regardless.
    Keep,
}

/// `[orchestrator]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorSection {
    /// Where `/metrics` and `/healthz` are served.
    pub admin_listen: SocketAddr,
    /// This node's id: its key in KV `nodes` and its containers' `mm.node` label. Keep it
    /// stable across restarts (the default is the host name). Letters, digits, `-`, `_`.
    pub node: String,
    /// The region this node serves (a name like `eu-west`; empty: none). Matches that a
    /// latency queue placed in a region go to nodes of that region when any is live.
    pub region: String,
    pub driver: DriverChoice,
    /// Host ports game servers get, inclusive: `"20000-32000"`.
    pub port_range: PortRange,
    /// The host address game servers are published on (ports) and bound to (processes).
    pub host_ip: IpAddr,
    /// The address written to KV and handed out, when it differs from `host_ip` (for
    /// example `host_ip = 0.0.0.0` behind a routable address).
    pub advertise_ip: Option<IpAddr>,
    /// The gateway as players reach it; a match's URL is `<public_url>/game/<gameId>/connect`.
    pub public_url: String,
    /// `binpack` (fullest node first) or `spread` (emptiest first).
    pub scheduler: Algorithm,
    /// How often this node rewrites its KV entry.
    #[serde(with = "mm_shared::duration")]
    pub heartbeat_interval: Duration,
    /// A node whose heartbeat is older than this is down and gets no new servers. At
    /// least twice `heartbeat_interval`.
    #[serde(with = "mm_shared::duration")]
    pub node_timeout: Duration,
    /// The longest an allocation may take, request to ready, over every node tried. A
    /// request whose own budget (`Mm-Budget-Ms`) is smaller gets that instead.
    #[serde(with = "mm_shared::duration")]
    pub allocate_timeout: Duration,
    /// The longest one node may take for one placement, so an allocation has time left to
    /// ask another node after a slow one. At most `allocate_timeout`.
    #[serde(with = "mm_shared::duration")]
    pub place_timeout: Duration,
    /// How often this node makes KV `servers` agree with what its driver runs (and after
    /// every NATS reconnect): stale entries deleted, missing ones rewritten, leftover
    /// servers removed, a dead node's entries reaped.
    #[serde(with = "mm_shared::duration")]
    pub reconcile_interval: Duration,
    /// How long a node must have been silent (no new heartbeat seen, or no node entry at
    /// all) before a live node deletes its `servers` entries. At least `node_timeout`.
    #[serde(with = "mm_shared::duration")]
    pub reap_after: Duration,
    /// `orchestrator.allocate` requests handled at once by this node.
    pub concurrency: usize,
    pub on_shutdown: OnShutdown,
    /// How long stopping this node's servers may take at shutdown; what is left then is
    /// adopted or removed by the next start.
    #[serde(with = "mm_shared::duration")]
    pub shutdown_timeout: Duration,
    /// Timeout of each call to the Podman API, and of each periodic driver health check.
    #[serde(with = "mm_shared::duration")]
    pub driver_timeout: Duration,
    pub capacity: CapacitySection,
    pub game: GameSection,
    pub restart: RestartSection,
    pub pool: PoolSection,
    pub podman: PodmanSection,
    pub process: ProcessSection,
}

impl Default for OrchestratorSection {
    fn default() -> Self {
        Self {
            admin_listen: addresses::ORCHESTRATOR_ADMIN,
            node: String::new(),
            region: String::new(),
            driver: DriverChoice::Auto,
            port_range: PortRange(20000, 32000),
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise_ip: None,
            public_url: format!("ws://{}", addresses::GATEWAY),
            scheduler: Algorithm::Binpack,
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            // Under the matchmaker's 10 s: it gets this clear answer rather than a timeout.
            allocate_timeout: Duration::from_secs(8),
            place_timeout: Duration::from_secs(6),
            reconcile_interval: Duration::from_secs(2),
            // With reconcile_interval, a dead node's entries go within 10 s of its end.
            reap_after: Duration::from_secs(5),
            concurrency: 64,
            on_shutdown: OnShutdown::Stop,
            shutdown_timeout: Duration::from_secs(8),
            driver_timeout: Duration::from_secs(10),
            capacity: CapacitySection::default(),
            game: GameSection::default(),
            restart: RestartSection::default(),
            pool: PoolSection::default(),
            podman: PodmanSection::default(),
            process: ProcessSection::default(),
        }
    }
}

impl OrchestratorSection {
    /// Checks the relations between timings that serde cannot: a zero interval would
    /// panic the heartbeat task, a node timeout no longer than two heartbeats would have
    /// healthy nodes counted down between beats, and time limits must nest (a start fits
    /// in a placement, a placement in an allocation) or the outer one always runs out
    /// first. The error names the config key.
    pub fn validate(&self) -> Result<(), String> {
        let format = mm_shared::duration::format;
        if !self.region.is_empty() {
            mm_shared::protocol::limits::check_token("region", &self.region)
                .map_err(|err| format!("config key `orchestrator.region`: {err}"))?;
        }
        for (key, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("node_timeout", self.node_timeout),
            ("allocate_timeout", self.allocate_timeout),
            ("place_timeout", self.place_timeout),
            ("reconcile_interval", self.reconcile_interval),
            ("driver_timeout", self.driver_timeout),
            ("game.start_timeout", self.game.start_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("config key `orchestrator.{key}` must be above zero"));
            }
        }
        if self.node_timeout < self.heartbeat_interval * 2 {
            return Err(format!(
                "config key `orchestrator.node_timeout` ({}) must be at least twice \
                 `orchestrator.heartbeat_interval` ({}), or live nodes would be taken for down \
                 between two heartbeats",
                format(self.node_timeout),
                format(self.heartbeat_interval)
            ));
        }
        let nested = [
            ("game.start_timeout", self.game.start_timeout, "place_timeout", self.place_timeout),
            ("place_timeout", self.place_timeout, "allocate_timeout", self.allocate_timeout),
        ];
        for (inner_key, inner, outer_key, outer) in nested {
            if inner > outer {
                return Err(format!(
                    "config key `orchestrator.{inner_key}` ({}) must be at most `orchestrator.{outer_key}` \
                     ({}): it is part of it",
                    format(inner),
                    format(outer)
                ));
            }
        }
        self.pool.validate()?;
        if self.reap_after < self.node_timeout {
            return Err(format!(
                "config key `orchestrator.reap_after` ({}) must be at least `orchestrator.node_timeout` \
                 ({}): a node's entries may be reaped only once it is counted down",
                format(self.reap_after),
                format(self.node_timeout)
            ));
        }
        Ok(())
    }
}

/// `[orchestrator.capacity]`: what this node offers. 0 means "detect from this machine".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacitySection {
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    /// 0 means 1000.
    pub max_servers: u64,
}

impl CapacitySection {
    /// The declared capacity, with 0s replaced by what this machine has.
    pub fn resolve(&self) -> Resources {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Resources {
            cpu_millicores: if self.cpu_millicores == 0 { cpus * 1000 } else { self.cpu_millicores },
            memory_mb: if self.memory_mb == 0 { machine_memory_mb().unwrap_or(1024) } else { self.memory_mb },
            servers: if self.max_servers == 0 { 1000 } else { self.max_servers },
        }
    }
}

fn machine_memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// `[orchestrator.game]`: what each game server is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GameSection {
    /// How long a game lasts, from its allocation.
    #[serde(with = "mm_shared::duration")]
    pub duration: Duration,
    /// CPU a server is counted for (a Podman CPU weight, not a hard cap).
    pub cpu_millicores: u64,
    /// Memory a server is counted for (and its container's memory limit).
    pub memory_mb: u64,
    /// How long a server may take from start until its `/healthz` answers. At most
    /// `orchestrator.place_timeout`.
    #[serde(with = "mm_shared::duration")]
    pub start_timeout: Duration,
    /// A server that no player joins within this ends itself (its match was probably
    /// never committed); 0: it waits for the whole game.
    #[serde(with = "mm_shared::duration")]
    pub join_timeout: Duration,
    /// How long after its game's end a server may take to exit before it is stopped.
    #[serde(with = "mm_shared::duration")]
    pub end_grace: Duration,
    /// How long a server may take to stop after SIGTERM before it is killed.
    #[serde(with = "mm_shared::duration")]
    pub stop_timeout: Duration,
    /// tokio worker threads per game server (a game server needs few).
    pub worker_threads: u32,
}

impl Default for GameSection {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            cpu_millicores: 10,
            memory_mb: 32,
            start_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(15),
            end_grace: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(3),
            worker_threads: 1,
        }
    }
}

impl GameSection {
    pub fn ask(&self) -> Ask {
        Ask { cpu_millicores: self.cpu_millicores, memory_mb: self.memory_mb }
    }
}

/// `[orchestrator.restart]`: a server that dies before its game ends is restarted up to
/// `attempts` times within `interval`, `delay` apart; after that it has failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartSection {
    pub attempts: u32,
    #[serde(with = "mm_shared::duration")]
    pub interval: Duration,
    #[serde(with = "mm_shared::duration")]
    pub delay: Duration,
}

impl Default for RestartSection {
    fn default() -> Self {
        Self { attempts: 2, interval: Duration::from_secs(60), delay: Duration::from_millis(250) }
    }
}

/// How a node sizes its pool of warm servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolPolicy {
    /// Always `min` warm servers.
    #[default]
    Fixed,
    /// The recent allocation rate times the cold-start time (what a burst at that rate
    /// takes while replacements start), between `min` and `max`.
    Auto,
}

/// `[orchestrator.pool]`: the node's buffer of warm servers — started, healthy and
/// unallocated — that an allocation claims in milliseconds. They count against the
/// node's capacity. Off by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSection {
    /// Warm servers kept at least (while the node has room).
    pub min: usize,
    /// The most warm servers `auto` keeps; 0: `min`.
    pub max: usize,
    pub policy: PoolPolicy,
    /// A warm server no allocation claimed within this is stopped and replaced; 0: never.
    #[serde(with = "mm_shared::duration")]
    pub recycle_after: Duration,
    /// `auto`: the window the allocation rate is measured over.
    #[serde(with = "mm_shared::duration")]
    pub rate_window: Duration,
}

impl Default for PoolSection {
    fn default() -> Self {
        Self {
            min: 0,
            max: 0,
            policy: PoolPolicy::Fixed,
            recycle_after: Duration::from_secs(600),
            rate_window: Duration::from_secs(30),
        }
    }
}

impl PoolSection {
    /// The most warm servers the pool may want.
    pub fn ceiling(&self) -> usize {
        match self.policy {
            PoolPolicy::Fixed => self.min,
            PoolPolicy::Auto => self.min.max(self.max),
        }
    }

    /// Does this node keep warm servers at all?
    pub fn is_on(&self) -> bool {
        self.ceiling() > 0
    }

    fn validate(&self) -> Result<(), String> {
        if self.max != 0 && self.max < self.min {
            return Err(format!(
                "config key `orchestrator.pool.max` ({}) must be at least `orchestrator.pool.min` ({}), or 0",
                self.max, self.min
            ));
        }
        if self.rate_window.is_zero() {
            return Err("config key `orchestrator.pool.rate_window` must be above zero".to_owned());
        }
        Ok(())
    }
}

/// `[orchestrator.podman]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodmanSection {
    /// The Podman API socket; default: rootless `$XDG_RUNTIME_DIR/podman/podman.sock`.
    pub socket: Option<PathBuf>,
    /// The game-server image (`just image` builds it).
    pub image: String,
    /// OCI runtime (`runc`, `crun`); empty: Podman's configured default.
    pub runtime: String,
    /// Open files per container; 0: 4096 or this process's hard limit if lower.
    pub nofile: u64,
    /// Processes/threads of the container user; 0: 32768 or this process's hard limit if lower.
    pub nproc: u64,
    /// Processes/threads per container (where the cgroup allows a limit).
    pub pids_limit: i64,
    /// Container changes (create, start, stop, remove) sent to Podman at once.
    pub parallel: usize,
}

impl Default for PodmanSection {
    fn default() -> Self {
        Self {
            socket: None,
            image: "localhost/mm/game-server:latest".to_owned(),
            runtime: String::new(),
            nofile: 0,
            nproc: 0,
            pids_limit: 128,
            parallel: 8,
        }
    }
}

impl PodmanSection {
    /// The configured socket, or the rootless default.
    pub fn socket_path(&self) -> PathBuf {
        if let Some(path) = &self.socket {
            return path.clone();
        }
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", current_uid())));
        runtime_dir.join("podman/podman.sock")
    }
}

#[allow(unsafe_code)]
fn current_uid() -> u32 {
    // SAFETY: getuid(2) cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

/// `[orchestrator.process]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessSection {
    /// The game-server binary; default: `game-server` beside this orchestrator.
    pub binary: Option<PathBuf>,
}

impl ProcessSection {
    pub fn binary_path(&self) -> PathBuf {
        self.binary.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("game-server")))
                .unwrap_or_else(|| PathBuf::from("game-server"))
        })
    }
}

/// An inclusive port range, written `"20000-32000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid port range `{text}`: expected LOW-HIGH, like 20000-32000");
        let (low, high) = text.trim().split_once('-').ok_or_else(bad)?;
        let low: u16 = low.trim().parse().map_err(|_| bad())?;
        let high: u16 = high.trim().parse().map_err(|_| bad())?;
        if low == 0 || high < low {
            return Err(bad());
        }
        Ok(Self(low, high))
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}-{}", self.0, self.1))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

pub use mm_shared::config::node_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_print() {
        assert_eq!("20000-32000".parse::<PortRange>(), Ok(PortRange(20000, 32000)));
        assert_eq!(" 5 - 5 ".parse::<PortRange>(), Ok(PortRange(5, 5)));
        for bad in ["", "20000", "9-1", "0-10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        let toml = toml::to_string(&OrchestratorSection::default()).expect("serializes");
        assert!(toml.contains("port_range = \"20000-32000\""), "{toml}");
    }

    #[test]
    fn timings_are_checked() {
        OrchestratorSection::default().validate().expect("the defaults are valid");
        let with = |heartbeat: u64, timeout: u64| OrchestratorSection {
            heartbeat_interval: Duration::from_millis(heartbeat),
            node_timeout: Duration::from_millis(timeout),
            ..OrchestratorSection::default()
        };
        with(200, 2000).validate().expect("the tests' timings are valid");
        let zero = with(0, 5000).validate().expect_err("a zero heartbeat interval");
        assert!(zero.contains("`orchestrator.heartbeat_interval`"), "{zero}");
        for (heartbeat, timeout) in [(1000, 1000), (1000, 500), (1000, 1999)] {
            let err = with(heartbeat, timeout).validate().expect_err("a node timeout too short");
            assert!(err.contains("`orchestrator.node_timeout`"), "{err}");
        }
        let zero = OrchestratorSection { driver_timeout: Duration::ZERO, ..OrchestratorSection::default() };
        assert!(zero.validate().expect_err("zero").contains("`orchestrator.driver_timeout`"));
    }

    #[test]
    fn the_pool_is_off_by_default_and_checked() {
        let pool = PoolSection::default();
        assert!(!pool.is_on(), "no warm servers unless configured");
        let fixed = PoolSection { min: 4, max: 10, ..PoolSection::default() };
        assert_eq!((fixed.is_on(), fixed.ceiling()), (true, 4), "fixed keeps min");
        let auto = PoolSection { policy: PoolPolicy::Auto, ..fixed.clone() };
        assert_eq!(auto.ceiling(), 10);
        let auto_from_zero =
            PoolSection { min: 0, max: 8, policy: PoolPolicy::Auto, ..PoolSection::default() };
        assert!(auto_from_zero.is_on());
        let mut config = OrchestratorSection {
            pool: PoolSection { min: 5, max: 3, ..PoolSection::default() },
            ..OrchestratorSection::default()
        };
        let err = config.validate().expect_err("max below min");
        assert!(err.contains("`orchestrator.pool.max`") && err.contains("`orchestrator.pool.min`"), "{err}");
        config.pool = PoolSection { min: 5, max: 0, ..PoolSection::default() };
        config.validate().expect("max 0 means min");
        config.pool.rate_window = Duration::ZERO;
        assert!(config.validate().expect_err("zero").contains("`orchestrator.pool.rate_window`"));
        let parsed: PoolSection =
            toml::from_str("min = 2\nmax = 6\npolicy = \"auto\"\nrecycle_after = \"5m\"").expect("parses");
        assert_eq!((parsed.min, parsed.max, parsed.policy), (2, 6, PoolPolicy::Auto));
        assert_eq!(parsed.recycle_after, Duration::from_secs(300));
    }

    #[test]
    fn time_limits_must_nest() {
        let place =
            OrchestratorSection { place_timeout: Duration::from_secs(9), ..OrchestratorSection::default() };
        let err = place.validate().expect_err("a placement longer than its allocation");
        assert!(
            err.contains("`orchestrator.place_timeout` (9s)")
                && err.contains("`orchestrator.allocate_timeout` (8s)"),
            "{err}"
        );
        let mut start = OrchestratorSection::default();
        start.game.start_timeout = Duration::from_secs(7);
        let err = start.validate().expect_err("a start longer than its placement");
        assert!(err.contains("`orchestrator.game.start_timeout`"), "{err}");
        let reap =
            OrchestratorSection { reap_after: Duration::from_secs(1), ..OrchestratorSection::default() };
        assert!(reap.validate().expect_err("reaping live nodes").contains("`orchestrator.reap_after`"));
        let zero =
            OrchestratorSection { reconcile_interval: Duration::ZERO, ..OrchestratorSection::default() };
        assert!(zero.validate().expect_err("zero").contains("`orchestrator.reconcile_interval`"));
    }
}
