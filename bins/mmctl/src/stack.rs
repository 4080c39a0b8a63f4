//! The local stack `mmctl dev` runs: which programs, in which order, with which settings.
//!
//! Tiers start front to back and stop back to front:
//! 0. a rootless `podman system service`, when game servers run on Podman and nothing
//!    answers on its socket yet (`games.rs` decides);
//! 1. nats-server (JetStream, data under `<data_dir>/nats`), or with `dev.nats_cluster`
//!    (`mmctl dev --cluster`) that many as one cluster (routes on loopback, data under
//!    `<data_dir>/nats-<n>`, every service given every server's URL), and redis-server
//!    (no persistence);
//! 2. matchmaker and orchestrator;
//! 3. gateway.
//!
//! After the last tier stopped, the containers the orchestrator left (it removes its own
//! on SIGTERM; one killed with -9 cannot) are removed and counted.
//!
//! Each tier must be ready (its health check answers) before the next one starts, so the
//! logs read in order and the banner at the end means the whole stack answers.
//!
//! nats-server runs with `nats/nats-server.conf` (built into mmctl) under the same
//! accounts, users and permissions as compose: each run makes fresh random passwords,
//! hands them to nats-server as `MM_NATS_<USER>_PASSWORD` and to each service as
//! `MM_NATS__USER`/`MM_NATS__PASSWORD`, and writes the operator's and the harness's to
//! `<data_dir>/operator.env` and `harness.env` (mode 0600, removed at the stop). Clients
//! without credentials are the read-only viewer.
//!
//! `dev.bind` (`--bind`, `MM_BIND` in `just dev`) moves NATS's client and monitor ports and
//! the gateway to that address, for load machines on other hosts; Redis, the routes and
//! the admin ports stay on loopback.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use std::time::SystemTime;

use anyhow::{Context, bail};
use mm_shared::nats::{USERS as NATS_USERS, password_env};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::games::{ContainerCount, Games};
use crate::supervisor::{Program, Ready, Supervised, Supervisor};

/// Flags passed through to every service mmctl starts.
#[derive(Debug, Clone, Default)]
pub struct PassThrough {
    pub config: Option<PathBuf>,
    pub log_json: bool,
}

impl PassThrough {
    /// The flags, as arguments for a child.
    pub fn args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(path) = &self.config {
            args.push("--config".into());
            args.push(path.clone().into_os_string());
        }
        if self.log_json {
            args.push("--log-json".into());
        }
        args
    }
}

/// The running stack, tier by tier.
pub struct Stack {
    tiers: Vec<Vec<Supervised>>,
    supervisor: Supervisor,
    /// This run's NATS passwords, for programs started beside the stack (the demo's harness).
    pub credentials: NatsCredentials,
    /// Where its game servers run.
    pub games: Games,
    /// The orchestrator's node id (its containers' `mm.node` label).
    pub node: String,
    started: SystemTime,
    /// Where the credentials files are (removed at the stop).
    data_dir: PathBuf,
}

/// `nats/nats-server.conf`, which `mmctl dev` runs unless `[dev] nats_config` names another.
const NATS_CONFIG: &str = include_str!("../../../nats/nats-server.conf");

/// One run's NATS passwords: random, never written to disk, gone when mmctl stops.
#[derive(Clone)]
pub struct NatsCredentials {
    passwords: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCredentials").field("users", &NATS_USERS).finish_non_exhaustive()
    }
}

impl NatsCredentials {
    /// Fresh passwords from the kernel's random source.
    pub fn generate() -> anyhow::Result<Self> {
        let passwords =
            NATS_USERS.iter().map(|user| Ok((*user, random_password()?))).collect::<anyhow::Result<_>>()?;
        Ok(Self { passwords })
    }

    /// `MM_NATS_<USER>_PASSWORD` for every user: what the config file reads.
    pub fn server_env(&self) -> Vec<(String, String)> {
        self.passwords.iter().map(|(user, password)| (password_env(user), password.clone())).collect()
    }

    /// This run's password of `user` (empty for an unknown user).
    pub fn password(&self, user: &str) -> String {
        self.passwords.iter().find(|(name, _)| *name == user).map(|(_, pw)| pw.clone()).unwrap_or_default()
    }

    /// `MM_NATS__USER` and `MM_NATS__PASSWORD` for a service connecting as `user`.
    pub fn client_env(&self, user: &str) -> Vec<(String, String)> {
        let password = self.passwords.iter().find(|(name, _)| *name == user).map(|(_, pw)| pw.clone());
        vec![
            ("MM_NATS__USER".to_owned(), user.to_owned()),
            ("MM_NATS__PASSWORD".to_owned(), password.unwrap_or_default()),
        ]
    }
}

/// 24 letters and digits, starting with a letter: nats-server's config parser reads an
/// environment value as a token, and one like `1e5` or `12k` would become a number.
fn random_password() -> anyhow::Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for the NATS passwords")?;
    Ok(bytes
        .iter()
        .enumerate()
        // 52 letters first: the first character is always one of them. The modulo bias
        // (256 is not a multiple of 62) costs a fraction of a bit per character.
        .map(|(i, byte)| char::from(ALPHABET[usize::from(*byte) % if i == 0 { 52 } else { ALPHABET.len() }]))
        .collect())
}

/// The nats-server config file for this run: `[dev] nats_config`, or the built-in one
/// written under the data directory.
fn nats_config_file(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(path) = &config.dev.nats_config {
        if !path.is_file() {
            bail!("{} (config key `dev.nats_config`) is not a file", path.display());
        }
        return Ok(path.clone());
    }
    let path = config.dev.data_dir.join("nats").join("nats-server.conf");
    std::fs::write(&path, NATS_CONFIG).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Names of the nats-servers (the supervisor's child names): `nats` first, so a single
/// server keeps its name and `mmctl chaos` finds it.
const NATS_NAMES: [&str; 5] = ["nats", "nats-2", "nats-3", "nats-4", "nats-5"];

/// One nats-server of the stack: its name, its ports and its store.
#[derive(Debug, Clone)]
pub struct NatsServer {
    pub name: &'static str,
    pub port: u16,
    pub monitor_port: u16,
    /// Route port, when the stack runs a cluster.
    pub route_port: Option<u16>,
    pub store: PathBuf,
}

/// The nats-servers `[dev]` asks for (`nats_cluster`, 1 to 5).
pub fn nats_servers(config: &Config) -> anyhow::Result<Vec<NatsServer>> {
    let dev = &config.dev;
    let count = usize::from(dev.nats_cluster);
    if !(1..=NATS_NAMES.len()).contains(&count) {
        bail!("config key `dev.nats_cluster` is {count}: run 1 to {} nats-servers", NATS_NAMES.len());
    }
    let offset = |base: u16, i: usize, key: &str| {
        u16::try_from(i)
            .ok()
            .and_then(|i| base.checked_add(i))
            .with_context(|| format!("`dev.{key}` too high"))
    };
    (0..count)
        .map(|i| {
            Ok(NatsServer {
                name: NATS_NAMES[i],
                port: offset(dev.nats_port, i, "nats_port")?,
                monitor_port: offset(dev.nats_monitor_port, i, "nats_monitor_port")?,
                route_port: (count > 1)
                    .then(|| offset(dev.nats_route_port, i, "nats_route_port"))
                    .transpose()?,
                store: if count > 1 {
                    dev.data_dir.join(format!("nats-{}", i + 1))
                } else {
                    dev.data_dir.join("nats")
                },
            })
        })
        .collect()
}

/// The host clients name: the bind address, or loopback when it binds every address.
fn client_host(config: &Config) -> std::net::IpAddr {
    if config.dev.bind.is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { config.dev.bind }
}

/// What the stack's children connect to: every server of the cluster, comma separated.
pub fn nats_url(config: &Config) -> String {
    let host = client_host(config);
    let ports: Vec<u16> = match nats_servers(config) {
        Ok(servers) => servers.iter().map(|server| server.port).collect(),
        Err(_) => vec![config.dev.nats_port],
    };
    ports.iter().map(|port| format!("nats://{host}:{port}")).collect::<Vec<_>>().join(",")
}

/// `nats://<user>:<password>@<host>:<port>` for every server, comma separated (the form
/// of the credentials files).
pub fn nats_url_for(config: &Config, user: &str, password: &str) -> String {
    nats_url(config)
        .split(',')
        .map(|server| {
            let host = server.trim_start_matches("nats://");
            crate::credentials::url(user, password, host)
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn redis_url(config: &Config) -> String {
    format!("redis://127.0.0.1:{}/", config.dev.redis_port)
}

/// Where the project's binaries are: `[dev] bin_dir`, or beside mmctl.
pub fn bin_dir(config: &Config) -> PathBuf {
    config.dev.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)).unwrap_or_default()
    })
}

/// Finds `binary` on PATH, or says to run `just setup`.
fn on_path(binary: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("`{binary}` is not on PATH: run `just setup`"))
}

/// A project binary in `bin_dir`, or a message saying how to build it.
pub fn project_binary(config: &Config, name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir(config).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{} not found: build it with `cargo build --workspace --bins` (or use `just dev`)",
            path.display()
        )
    }
}

/// Where the gateway listens: `gateway.listen`, moved to `dev.bind` when that is set and
/// the gateway was left on loopback.
pub fn gateway_listen(config: &Config) -> std::net::SocketAddr {
    let mut listen = config.gateway.listen;
    let localhost = std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
    if listen.ip() == localhost && config.dev.bind != localhost {
        listen.set_ip(config.dev.bind);
    }
    listen
}

/// The ports other machines need open, when the stack listens beyond loopback.
pub fn open_ports(config: &Config) -> Option<String> {
    if config.dev.bind == std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST) {
        return None;
    }
    let servers = nats_servers(config).ok()?;
    let nats: Vec<String> = servers.iter().map(|server| server.port.to_string()).collect();
    Some(format!(
        "other hosts reach this stack on {}: open TCP {} (NATS, for load machines) and {} (gateway, for players); \
         routes, Redis and the admin ports stay on loopback",
        config.dev.bind,
        nats.join(", "),
        gateway_listen(config).port()
    ))
}

/// Fails if something already listens where the stack wants to; better than a child
/// failing to bind while the readiness check talks to the stranger.
fn check_ports_free(config: &Config) -> anyhow::Result<()> {
    let host = client_host(config);
    let mut wanted = Vec::new();
    for server in nats_servers(config)? {
        wanted.push(("nats-server", format!("{host}:{}", server.port), "dev.nats_port"));
        wanted.push((
            "nats-server monitor",
            format!("{host}:{}", server.monitor_port),
            "dev.nats_monitor_port",
        ));
        if let Some(route) = server.route_port {
            wanted.push(("nats-server routes", format!("127.0.0.1:{route}"), "dev.nats_route_port"));
        }
    }
    wanted.extend([
        ("redis-server", format!("127.0.0.1:{}", config.dev.redis_port), "dev.redis_port"),
        ("matchmaker", config.matchmaker.admin_listen.to_string(), "matchmaker.admin_listen"),
        ("orchestrator", config.orchestrator.admin_listen.to_string(), "orchestrator.admin_listen"),
        ("gateway", gateway_listen(config).to_string(), "gateway.listen"),
    ]);
    for (what, addr, key) in wanted {
        if mm_shared::probe::tcp_open(&addr, std::time::Duration::from_millis(200)) {
            bail!(
                "{addr} (for {what}) is already in use: is another `just dev` running? \
                 Stop it, or choose another port with config key `{key}` \
                 (env MM_{})",
                key.to_uppercase().replace('.', "__")
            );
        }
    }
    Ok(())
}

/// The programs of each tier, in start order.
pub fn programs(
    config: &Config,
    pass: &PassThrough,
    nats_config: &Path,
    credentials: &NatsCredentials,
    games: &Games,
    node: &str,
) -> anyhow::Result<Vec<Vec<Program>>> {
    let data = &config.dev.data_dir;
    let restart = config.dev.restart;
    let servers = nats_servers(config)?;
    let nats_path = on_path("nats-server")?;
    let host = client_host(config);
    let routes: Vec<String> = servers
        .iter()
        .filter_map(|server| server.route_port)
        .map(|port| format!("nats://127.0.0.1:{port}"))
        .collect();
    let nats: Vec<Program> = servers
        .iter()
        .enumerate()
        .map(|(i, server)| {
            // Flags after the file win over its values: this address, these ports, this store.
            let mut args: Vec<OsString> = vec![
                "-c".into(),
                nats_config.as_os_str().to_owned(),
                "-js".into(),
                "-a".into(),
                config.dev.bind.to_string().into(),
                "-p".into(),
                server.port.to_string().into(),
                "-m".into(),
                server.monitor_port.to_string().into(),
                "-sd".into(),
                server.store.clone().into_os_string(),
                "-n".into(),
                if servers.len() > 1 { format!("mm-dev-{}", i + 1).into() } else { "mm-dev".into() },
            ];
            if let Some(route) = server.route_port {
                // One cluster: routes on loopback, every server given every route (its own
                // is ignored); JetStream replicates across them.
                args.extend([
                    "--cluster_name".into(),
                    "mm-dev".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}").into(),
                    "--routes".into(),
                    routes.join(",").into(),
                ]);
            }
            Program {
                name: server.name,
                path: nats_path.clone(),
                args,
                env: credentials.server_env(),
                ready: Ready::Http { addr: format!("{host}:{}", server.monitor_port), path: "/healthz" },
                restart,
                current_dir: None,
            }
        })
        .collect();
    let redis = Program {
        name: "redis",
        path: on_path("redis-server")?,
        args: vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--port".into(),
            config.dev.redis_port.to_string().into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            // Bounded, and never evicting: every key of the backend may be needed (a
            // ticket in the queue, a lease, a balance); at the limit writes fail and the
            // services answer 503 until expiries make room (README, "Redis").
            "--maxmemory".into(),
            "200mb".into(),
            "--maxmemory-policy".into(),
            "noeviction".into(),
            "--dir".into(),
            data.join("redis").into_os_string(),
        ],
        env: vec![],
        ready: Ready::Tcp { addr: format!("127.0.0.1:{}", config.dev.redis_port) },
        restart,
        current_dir: None,
    };
    let env =
        [("MM_NATS__URL".to_owned(), nats_url(config)), ("MM_REDIS__URL".to_owned(), redis_url(config))];
    let service =
        |name: &'static str, ready_addr: String, own: Vec<(String, String)>| -> anyhow::Result<Program> {
            Ok(Program {
                name,
                path: project_binary(config, name)?,
                args: pass.args(),
                env: env.iter().cloned().chain(credentials.client_env(name)).chain(own).collect(),
                ready: Ready::Http { addr: ready_addr, path: "/healthz" },
                restart,
                current_dir: None,
            })
        };
    let mut orchestrator_env = games.orchestrator_env();
    orchestrator_env.push(("MM_ORCHESTRATOR__NODE".to_owned(), node.to_owned()));
    if config.orchestrator.public_url.is_none() {
        // Game URLs on the gateway this stack runs, wherever it listens.
        let mut gateway = gateway_listen(config);
        if gateway.ip().is_unspecified() {
            gateway.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        orchestrator_env.push(("MM_ORCHESTRATOR__PUBLIC_URL".to_owned(), format!("ws://{gateway}")));
    }
    orchestrator_env.extend(config.dev.orchestrator_env.iter().cloned());
    let mut tiers = Vec::new();
    if let Games::Podman(podman) = games
        && podman.start_service
    {
        let command = podman.user.service_command(&podman.socket, true);
        let ready = Ready::Podman { socket: podman.socket.clone() };
        tiers.push(vec![Program::from_command("podman", &command, ready, restart)]);
    }
    let mut first = nats;
    first.push(redis);
    tiers.push(first);
    tiers.push(vec![
        service("matchmaker", config.matchmaker.admin_listen.to_string(), Vec::new())?,
        service("orchestrator", config.orchestrator.admin_listen.to_string(), orchestrator_env)?,
    ]);
    let gateway = gateway_listen(config);
    let ready = if gateway.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), gateway.port())
    } else {
        gateway
    };
    let mut gateway_env = vec![("MM_GATEWAY__LISTEN".to_owned(), gateway.to_string())];
    gateway_env.extend(config.dev.gateway_env.iter().cloned());
    tiers.push(vec![service("gateway", ready.to_string(), gateway_env)?]);
    Ok(tiers)
}

/// Removes the JetStream store of NATS's global account (`$G`) that versions before the
/// NATS accounts left in `store`: the config has no such account any more, so nats-server
/// reports those streams unrecoverable and never becomes healthy. What they held (the
/// `servers` and `nodes` live views, the harness fleet) is rebuilt from what runs.
fn drop_pre_account_store(store: &Path) -> anyhow::Result<Option<String>> {
    let global = store.join("jetstream").join("$G");
    if !global.is_dir() {
        return Ok(None);
    }
    std::fs::remove_dir_all(&global).with_context(|| format!("removing {}", global.display()))?;
    Ok(Some(format!(
        "removed {}: JetStream data of an earlier version (before the NATS accounts), which \
         nats-server could not load; the buckets are rebuilt from what runs",
        global.display()
    )))
}

impl Stack {
    /// Starts every tier in order, waiting for each to be ready. On failure or
    /// `shutdown`, stops what was started and returns the error (or `Ok(None)`).
    pub async fn start(
        config: &Config,
        pass: &PassThrough,
        games: Games,
        supervisor: Supervisor,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Stack>> {
        check_ports_free(config)?;
        let stores: Vec<PathBuf> = nats_servers(config)?.into_iter().map(|server| server.store).collect();
        for path in [config.dev.data_dir.join("nats"), config.dev.data_dir.join("redis")]
            .into_iter()
            .chain(stores.iter().cloned())
        {
            std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        for store in &stores {
            if let Some(note) = drop_pre_account_store(store)? {
                crate::output::Output::new().say(&note);
            }
        }
        let node = mm_shared::config::node_id(&config.orchestrator.node).map_err(anyhow::Error::msg)?;
        let credentials = NatsCredentials::generate()?;
        for (file, user) in
            [(crate::credentials::OPERATOR, "operator"), (crate::credentials::HARNESS, "harness")]
        {
            let url = nats_url_for(config, user, &credentials.password(user));
            crate::credentials::write(&config.dev.data_dir, file, &url)
                .with_context(|| format!("writing {}", config.dev.data_dir.join(file).display()))?;
        }
        let programs = programs(config, pass, &nats_config_file(config)?, &credentials, &games, &node)?;
        let mut stack = Stack {
            tiers: Vec::new(),
            supervisor,
            credentials,
            games,
            node,
            started: SystemTime::now(),
            data_dir: config.dev.data_dir.clone(),
        };
        for tier in programs {
            let running: Vec<Supervised> =
                tier.into_iter().map(|program| stack.supervisor.start(program)).collect();
            let readies: Vec<Ready> = running.iter().map(|child| child.ready.clone()).collect();
            let timeout = config.dev.ready_timeout;
            let waits =
                readies.into_iter().map(|ready| async move { (ready.describe(), ready.wait(timeout).await) });
            stack.tiers.push(running);
            let outcome = tokio::select! {
                outcome = futures_util::future::join_all(waits) => Some(outcome),
                () = shutdown.cancelled() => None,
            };
            let Some(outcome) = outcome else {
                stack.stop().await;
                return Ok(None);
            };
            if let Some((what, _)) = outcome.iter().find(|(_, ready)| !ready) {
                let what = what.clone();
                stack.stop().await;
                bail!(
                    "{what} did not answer within {}; see the log lines above",
                    mm_shared::duration::format(config.dev.ready_timeout)
                );
            }
        }
        Ok(Some(stack))
    }

    /// Stops the tiers back to front (each child gets SIGTERM, then SIGKILL after the stop
    /// timeout), then removes and counts the game-server containers of this run. Returns
    /// the count when game servers ran on Podman.
    pub async fn stop(mut self) -> Option<ContainerCount> {
        while let Some(tier) = self.tiers.pop() {
            for child in &tier {
                child.stop.cancel();
            }
            for child in tier {
                let _ = child.task.await;
            }
        }
        let output = self.supervisor.output;
        crate::credentials::remove(&self.data_dir);
        let count = match &self.games {
            Games::Podman(podman) => {
                let (podman, node, since) = (podman.clone(), self.node.clone(), self.started);
                match tokio::task::spawn_blocking(move || podman.finish(&node, since)).await {
                    Ok(Ok(count)) => Some(count),
                    Ok(Err(err)) => {
                        output.say(&format!("cleaning up the game-server containers: {err}"));
                        None
                    }
                    Err(err) => {
                        output.say(&format!("cleaning up the game-server containers: {err}"));
                        None
                    }
                }
            }
            Games::Processes { .. } => None,
        };
        if let Some(count) = &count {
            let cleaned = if count.cleaned_up > 0 {
                format!(" ({} removed by mmctl: the orchestrator had left them)", count.cleaned_up)
            } else {
                String::new()
            };
            output.say(&format!(
                "game-server containers: {} started, {} removed{cleaned}, {} left",
                count.started, count.removed, count.left
            ));
        }
        output.say("stopped");
        count
    }

    /// Where each service answers, for the banner.
    pub fn endpoints(&self) -> Vec<(&'static str, String)> {
        self.tiers.iter().flatten().map(|child| (child.name, child.ready.describe())).collect()
    }

    /// The supervised child called `name` (`nats`, `redis`, `matchmaker`, `orchestrator`,
    /// `gateway`, and `podman` when mmctl runs the Podman service).
    pub fn child(&self, name: &str) -> Option<&Supervised> {
        self.tiers.iter().flatten().find(|child| child.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_fresh_tokens_nats_reads_as_strings() {
        let first = NatsCredentials::generate().expect("random source");
        let second = NatsCredentials::generate().expect("random source");
        for (user, password) in &first.passwords {
            assert_eq!(password.len(), 24);
            assert!(password.starts_with(|c: char| c.is_ascii_alphabetic()), "{user}: {password}");
            assert!(password.chars().all(|c| c.is_ascii_alphanumeric()), "{user}: {password}");
        }
        assert_ne!(first.passwords, second.passwords, "a new run, new passwords");
        let env = first.client_env("gateway");
        assert_eq!(env[0], ("MM_NATS__USER".to_owned(), "gateway".to_owned()));
        assert_eq!(env[1].1, first.passwords[1].1);
        assert!(first.server_env().iter().any(|(key, _)| key == "MM_NATS_ORCHESTRATOR_PASSWORD"));
        assert!(!format!("{first:?}").contains(&first.passwords[0].1), "Debug never shows a password");
    }

    #[test]
    fn a_store_from_before_the_accounts_is_removed_and_a_current_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let current = dir.path().join("jetstream").join("BACKEND").join("streams").join("KV_servers");
        std::fs::create_dir_all(&current).expect("current");
        assert_eq!(drop_pre_account_store(dir.path()).expect("nothing to do"), None);
        let old = dir.path().join("jetstream").join("$G").join("streams").join("KV_nodes");
        std::fs::create_dir_all(&old).expect("old");
        let note = drop_pre_account_store(dir.path()).expect("removed").expect("a note");
        assert!(note.contains("$G") && note.contains("earlier version"), "{note}");
        assert!(!dir.path().join("jetstream").join("$G").exists());
        assert!(current.is_dir(), "the accounts' stores stay");
    }

    #[test]
    fn a_cluster_gets_ports_stores_and_every_url() {
        let mut config = Config::default();
        assert_eq!(nats_url(&config), "nats://127.0.0.1:4222");
        assert_eq!(nats_servers(&config).expect("one")[0].route_port, None);
        config.dev.nats_cluster = 3;
        let servers = nats_servers(&config).expect("three");
        let names: Vec<&str> = servers.iter().map(|server| server.name).collect();
        assert_eq!(names, ["nats", "nats-2", "nats-3"]);
        assert_eq!(servers[2].port, 4224);
        assert_eq!(servers[2].monitor_port, 8224);
        assert_eq!(servers[2].route_port, Some(6224));
        assert_eq!(servers[1].store, config.dev.data_dir.join("nats-2"));
        assert_eq!(nats_url(&config), "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224");
        assert_eq!(
            nats_url_for(&config, "harness", "pw").split(',').nth(1),
            Some("nats://harness:pw@127.0.0.1:4223")
        );
        config.dev.nats_cluster = 6;
        assert!(nats_servers(&config).is_err());

        config.dev.nats_cluster = 1;
        assert_eq!(open_ports(&config), None, "loopback needs no firewall");
        config.dev.bind = "10.0.0.5".parse().expect("address");
        assert_eq!(gateway_listen(&config).to_string(), "10.0.0.5:8080");
        assert_eq!(nats_url(&config), "nats://10.0.0.5:4222");
        assert!(open_ports(&config).is_some_and(|text| text.contains("4222") && text.contains("8080")));
    }

    #[test]
    fn the_built_in_nats_config_defines_every_user() {
        for user in NATS_USERS {
            assert!(NATS_CONFIG.contains(&format!("user: {user},")), "{user}");
            assert!(NATS_CONFIG.contains(&format!("${}", password_env(user))));
        }
        assert!(NATS_CONFIG.contains("no_auth_user: viewer"));
    }
}
