//! The project's own binaries as child processes of a test.

use std::process::{Command, ExitStatus};
use std::time::Duration;

use tempfile::TempDir;

use crate::{READY_TIMEOUT, Result, Spawned, project_bin};

/// One of the workspace's binaries, started with a clean `MM_*` environment.
pub struct ServiceProcess {
    process: Spawned,
    dir: TempDir,
}

impl ServiceProcess {
    /// A matchmaker on these servers (its admin port free), healthy: its services
    /// answer. `env` comes on top. Returns it and its admin address.
    pub fn matchmaker(
        nats: &crate::NatsServer,
        redis: &crate::RedisServer,
        env: &[(&str, &str)],
    ) -> Result<(Self, String)> {
        let admin = format!("127.0.0.1:{}", crate::free_port());
        let (nats_url, redis_url) = (nats.url(), redis.url());
        let mut all = vec![
            ("MM_NATS__URL", nats_url.as_str()),
            ("MM_REDIS__URL", redis_url.as_str()),
            ("MM_MATCHMAKER__ADMIN_LISTEN", admin.as_str()),
        ];
        all.extend_from_slice(env);
        let mut process = Self::start("matchmaker", &[], &all)?;
        process.wait_healthy(&admin)?;
        Ok((process, admin))
    }

    /// Starts `target/<profile>/<name>` with `args` and `env`. Any `MM_*` variables of
    /// the test's own environment are removed first, so only `env` configures it.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("mm-{name}-")).tempdir()?;
        let mut command = Command::new(project_bin(name)?);
        command.args(args).current_dir(dir.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MM_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        let process = Spawned::start(name, command, &dir.path().join(format!("{name}.log")))?;
        Ok(Self { process, dir })
    }

    /// Waits until `GET http://{addr}/healthz` answers 200.
    pub fn wait_healthy(&mut self, addr: &str) -> Result<()> {
        self.process.wait_ready(READY_TIMEOUT, || {
            mm_shared::probe::http_get(addr, "/healthz", Duration::from_millis(500))
                .is_ok_and(|answer| answer.status == 200)
        })
    }

    /// SIGTERM, then wait up to `timeout`. `None` means it had to be killed.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.stop_with(libc::SIGTERM, timeout)
    }

    /// SIGINT (what Ctrl-C sends), then wait up to `timeout`.
    pub fn interrupt(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.stop_with(libc::SIGINT, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The working directory it runs in (a temp dir of its own).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The underlying child.
    pub fn process(&mut self) -> &mut Spawned {
        &mut self.process
    }
}
