//! The local stack `mmctl dev` runs: which programs, in which order, with which settings.
//!
//! Tiers start front to back and stop back to front:
//! 1. nats-server (JetStream, data under `<data_dir>/nats`) and redis-server (no persistence);
//! 2. matchmaker and orchestrator;
//! 3. gateway.
//!
//! Each tier must be ready (its health check answers) before the next one starts, so the
//! logs read in order and the banner at the end means the whole stack answers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
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
pub fn programs(config: &Config, pass: &PassThrough) -> anyhow::Result<Vec<Vec<Program>>> {
    let data = &config.dev.data_dir;
    let restart = config.dev.restart;
    let nats = Program {
        name: "nats",
        path: on_path("nats-server")?,
        args: vec![
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
        env: vec![],
        ready: Ready::Http { addr: format!("127.0.0.1:{}", config.dev.nats_monitor_port), path: "/healthz" },
        restart,
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
            "--dir".into(),
            data.join("redis").into_os_string(),
        ],
        env: vec![],
        ready: Ready::Tcp { addr: format!("127.0.0.1:{}", config.dev.redis_port) },
        restart,
    };
    let env =
        vec![("MM_NATS__URL".to_owned(), nats_url(config)), ("MM_REDIS__URL".to_owned(), redis_url(config))];
    let service = |name: &'static str, ready_addr: String| -> anyhow::Result<Program> {
        Ok(Program {
            name,
            path: project_binary(config, name)?,
            args: pass.args(),
            env: env.clone(),
            ready: Ready::Http { addr: ready_addr, path: "/healthz" },
            restart,
        })
    };
    Ok(vec![
        vec![nats, redis],
        vec![
            service("matchmaker", config.matchmaker.admin_listen.to_string())?,
            service("orchestrator", config.orchestrator.admin_listen.to_string())?,
        ],
        vec![service("gateway", config.gateway.listen.to_string())?],
    ])
}

impl Stack {
    /// Starts every tier in order, waiting for each to be ready. On failure or
    /// `shutdown`, stops what was started and returns the error (or `Ok(None)`).
    pub async fn start(
        config: &Config,
        pass: &PassThrough,
        supervisor: Supervisor,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Stack>> {
        let programs = programs(config, pass)?;
        check_ports_free(config)?;
        for dir in ["nats", "redis"] {
            let path = config.dev.data_dir.join(dir);
            std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mut stack = Stack { tiers: Vec::new(), supervisor };
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

    /// Stops the tiers back to front; each child gets SIGTERM, then SIGKILL after the
    /// stop timeout.
    pub async fn stop(mut self) {
        while let Some(tier) = self.tiers.pop() {
            for child in &tier {
                child.stop.cancel();
            }
            for child in tier {
                let _ = child.task.await;
            }
        }
        self.supervisor.output.say("stopped");
    }

    /// Where each service answers, for the banner.
    pub fn endpoints(&self) -> Vec<(&'static str, String)> {
        self.tiers.iter().flatten().map(|child| (child.name, child.ready.describe())).collect()
    }
}
