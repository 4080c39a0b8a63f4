//! The local stack `mmctl dev` runs: which programs, in which order, with which settings.
//!
//! Tiers start front to back and stop back to front:
//! 0. a rootless `podman system service`, when game servers run on Podman and nothing
//!    answers on its socket yet (`games.rs` decides);
//! 1. nats-server (JetStream, data under `<data_dir>/nats`) and redis-server (no persistence);
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

/// What the stack's children connect to.
pub fn nats_url(config: &Config) -> String {
    format!("nats://127.0.0.1:{}", config.dev.nats_port)
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

/// Fails if something already listens where the stack wants to; better than a child
/// failing to bind while the readiness check talks to the stranger.
fn check_ports_free(config: &Config) -> anyhow::Result<()> {
    let wanted = [
        ("nats-server", format!("127.0.0.1:{}", config.dev.nats_port), "dev.nats_port"),
        (
            "nats-server monitor",
            format!("127.0.0.1:{}", config.dev.nats_monitor_port),
            "dev.nats_monitor_port",
        ),
        ("redis-server", format!("127.0.0.1:{}", config.dev.redis_port), "dev.redis_port"),
        ("matchmaker", config.matchmaker.admin_listen.to_string(), "matchmaker.admin_listen"),
        ("orchestrator", config.orchestrator.admin_listen.to_string(), "orchestrator.admin_listen"),
        ("gateway", config.gateway.listen.to_string(), "gateway.listen"),
    ];
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
    let nats = Program {
        name: "nats",
        path: on_path("nats-server")?,
        // Flags after the file win over its values: loopback, these ports, this store.
        args: vec![
            "-c".into(),
            nats_config.as_os_str().to_owned(),
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            config.dev.nats_port.to_string().into(),
            "-m".into(),
            config.dev.nats_monitor_port.to_string().into(),
            "-sd".into(),
            data.join("nats").into_os_string(),
            "-n".into(),
            "mm-dev".into(),
        ],
        env: credentials.server_env(),
        ready: Ready::Http { addr: format!("127.0.0.1:{}", config.dev.nats_monitor_port), path: "/healthz" },
        restart,
        current_dir: None,
    };
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
        let mut gateway = config.gateway.listen;
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
    tiers.push(vec![nats, redis]);
    tiers.push(vec![
        service("matchmaker", config.matchmaker.admin_listen.to_string(), Vec::new())?,
        service("orchestrator", config.orchestrator.admin_listen.to_string(), orchestrator_env)?,
    ]);
    tiers.push(vec![service("gateway", config.gateway.listen.to_string(), Vec::new())?]);
    Ok(tiers)
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
        for dir in ["nats", "redis"] {
            let path = config.dev.data_dir.join(dir);
            std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let node = mm_shared::config::node_id(&config.orchestrator.node).map_err(anyhow::Error::msg)?;
        let credentials = NatsCredentials::generate()?;
        let host = format!("127.0.0.1:{}", config.dev.nats_port);
        for (file, user) in
            [(crate::credentials::OPERATOR, "operator"), (crate::credentials::HARNESS, "harness")]
        {
            let url = crate::credentials::url(user, &credentials.password(user), &host);
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
    fn the_built_in_nats_config_defines_every_user() {
        for user in NATS_USERS {
            assert!(NATS_CONFIG.contains(&format!("user: {user},")), "{user}");
            assert!(NATS_CONFIG.contains(&format!("${}", password_env(user))));
        }
        assert!(NATS_CONFIG.contains("no_auth_user: viewer"));
    }
}
