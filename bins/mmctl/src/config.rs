//! mmctl's configuration: its own `[dev]` section, plus the addresses of the services it
//! supervises, read from the same file and environment the services read, so both agree.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mm_shared::config::LogConfig;
use mm_shared::protocol::addresses;
use serde::{Deserialize, Serialize};

use crate::games::DriverChoice;

/// `[dev]`: how `mmctl dev` and `mmctl demo` run the local stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevSection {
    /// Client port of the nats-server it starts.
    pub nats_port: u16,
    /// HTTP monitoring port of that nats-server (`/varz`, `/jsz`).
    pub nats_monitor_port: u16,
    /// Port of the redis-server it starts.
    pub redis_port: u16,
    /// nats-servers to run as one cluster: 1 (a single server, the default) or up to 5
    /// (`mmctl dev --cluster`: 3). Server `i` (from 0) listens for clients on
    /// `nats_port + i`, monitors on `nats_monitor_port + i` and routes on
    /// `nats_route_port + i` (loopback only), each with its own store under
    /// `<data_dir>/nats-<i+1>`; the services get every server's URL, and the KV buckets
    /// get 3 replicas when there are 3 or more servers.
    pub nats_cluster: u8,
    /// First route (cluster) port of the servers of `nats_cluster`.
    pub nats_route_port: u16,
    /// The address NATS clients and players reach: nats-server and the gateway listen on
    /// it. 127.0.0.1 (the default) serves this machine only; the LAN address (or 0.0.0.0)
    /// lets load machines in (`just dev` reads `MM_BIND`). Redis, the services' admin
    /// ports and the NATS routes stay on loopback.
    pub bind: IpAddr,
    /// Where nats-server keeps JetStream data and the demo writes its report
    /// (project-local and git-ignored).
    pub data_dir: PathBuf,
    /// Where the project's binaries are; default: beside mmctl itself.
    pub bin_dir: Option<PathBuf>,
    /// nats-server config file; default: the copy of `nats/nats-server.conf` built into
    /// mmctl (JetStream, one user per service). Its passwords are read from
    /// `MM_NATS_<USER>_PASSWORD`, which mmctl sets to fresh random ones at each start.
    pub nats_config: Option<PathBuf>,
    /// Restart a child that dies (with backoff).
    pub restart: bool,
    /// How long a child may take to stop after SIGTERM before it is killed.
    #[serde(with = "mm_shared::duration")]
    pub stop_timeout: Duration,
    /// How long a child may take to become ready.
    #[serde(with = "mm_shared::duration")]
    pub ready_timeout: Duration,
    /// How the orchestrator runs game servers: `auto` (rootless Podman when this host
    /// can, processes otherwise, saying why), `podman` or `process`.
    pub driver: DriverChoice,
    /// The rootless Podman API socket; default: the Podman user's
    /// `/run/user/<uid>/podman/podman.sock`. mmctl starts a service there unless one
    /// answers.
    pub podman_socket: Option<PathBuf>,
    /// Environment for the orchestrator on top of the stack's (`mmctl demo`'s game
    /// length); not a config key.
    #[serde(skip)]
    pub orchestrator_env: Vec<(String, String)>,
    /// The same for the gateway (`mmctl demo`'s login burst); not a config key.
    #[serde(skip)]
    pub gateway_env: Vec<(String, String)>,
}

impl Default for DevSection {
    fn default() -> Self {
        Self {
            nats_port: addresses::NATS_PORT,
            nats_monitor_port: addresses::NATS_MONITOR_PORT,
            redis_port: addresses::REDIS_PORT,
            nats_cluster: 1,
            nats_route_port: 6222,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_dir: PathBuf::from(".mm"),
            bin_dir: None,
            nats_config: None,
            restart: true,
            stop_timeout: Duration::from_secs(20),
            ready_timeout: Duration::from_secs(30),
            driver: DriverChoice::Auto,
            podman_socket: None,
            orchestrator_env: Vec::new(),
            gateway_env: Vec::new(),
        }
    }
}

/// The gateway's address, as the gateway reads it (`[gateway] listen`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayView {
    pub listen: SocketAddr,
}

impl Default for GatewayView {
    fn default() -> Self {
        Self { listen: addresses::GATEWAY }
    }
}

/// A service's admin address, as it reads it (`[<service>] admin_listen`). Its default
/// comes from [`Config::default`], the layer figment starts from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminView {
    pub admin_listen: SocketAddr,
}

/// The orchestrator's settings mmctl needs (`[orchestrator]`): where it answers, and its
/// node id (the label of its containers, which mmctl cleans up after).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrchestratorView {
    pub admin_listen: SocketAddr,
    /// Empty: the host name, as the orchestrator itself resolves it.
    #[serde(default)]
    pub node: String,
    /// `orchestrator.driver` when it names one (`podman`, `process`): `mmctl dev` honours
    /// it where `dev.driver` and `--driver` say `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverChoice>,
    /// `orchestrator.public_url` when set; otherwise `mmctl dev` points game URLs at the
    /// gateway it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `[orchestrator.game]`, the part `mmctl chaos` needs.
    #[serde(default)]
    pub game: GameView,
}

/// The game-server settings `mmctl chaos` reads (`[orchestrator.game]`): a server allocated
/// for a match that was never committed ends itself after `join_timeout`, so the audit
/// counts only older ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GameView {
    #[serde(with = "mm_shared::duration")]
    pub join_timeout: Duration,
}

impl Default for GameView {
    /// The orchestrator's own default.
    fn default() -> Self {
        Self { join_timeout: Duration::from_secs(15) }
    }
}

/// Everything mmctl reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub dev: DevSection,
    pub gateway: GatewayView,
    pub matchmaker: AdminView,
    pub orchestrator: OrchestratorView,
    pub harness: AdminView,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dev: DevSection::default(),
            gateway: GatewayView::default(),
            matchmaker: AdminView { admin_listen: addresses::MATCHMAKER_ADMIN },
            orchestrator: OrchestratorView {
                admin_listen: addresses::ORCHESTRATOR_ADMIN,
                node: String::new(),
                driver: None,
                public_url: None,
                game: GameView::default(),
            },
            harness: AdminView { admin_listen: addresses::HARNESS_ADMIN },
            log: LogConfig::default(),
        }
    }
}
