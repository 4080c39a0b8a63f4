//! A rootless Podman service for tests, as `mmctl dev` runs one: the project's unprivileged
//! user (`just setup` makes it), the game-server image in its storage, and
//! `podman system service` as that user on a socket of the test's own.
//!
//! Needs root (to switch to the user), as CI and `just test` run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mm_rootless::PodmanUser;
use mm_testkit::Spawned;

use super::IMAGE;

pub struct RootlessPodman {
    process: Option<Spawned>,
    user: PodmanUser,
    socket: PathBuf,
    log: PathBuf,
}

impl RootlessPodman {
    pub fn start() -> Result<Self, String> {
        let user =
            PodmanUser::detect().map_err(|problems| format!("{problems} (run `just setup` as root)"))?;
        user.ensure_image(IMAGE)?;
        let run_id = format!("{}-{}", std::process::id(), mm_testkit::free_port());
        let socket = user.runtime_dir().join("podman").join(format!("test-{run_id}.sock"));
        user.prepare(&socket).map_err(|err| format!("preparing {}: {err}", socket.display()))?;
        let log = std::env::temp_dir().join(format!("mm-rootless-podman-{run_id}.log"));
        let command = user.service_command(&socket, true);
        let mut process =
            Spawned::start("rootless podman service", command, &log).map_err(|err| err.to_string())?;
        let probe = socket.clone();
        process
            .wait_ready(Duration::from_secs(30), || mm_rootless::ping(&probe, Duration::from_secs(2)))
            .map_err(|err| err.to_string())?;
        Ok(Self { process: Some(process), user, socket, log })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for RootlessPodman {
    fn drop(&mut self) {
        // Containers are the tests' to remove (`ContainerGuard`); the service is ours, and
        // so is the pause process once nothing else of the user runs.
        drop(self.process.take());
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.log);
        self.user.end_pause_process();
    }
}
