//! A real `podman system service` on a temporary unix socket.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::{READY_TIMEOUT, Result, Spawned, require};

/// `podman system service --time=0` listening on a socket in a temp dir.
///
/// It uses the invoking user's containers and storage (rootful when the tests run as
/// root). Containers the test starts are the test's to remove.
pub struct PodmanService {
    process: Spawned,
    socket: PathBuf,
    _dir: TempDir,
}

impl PodmanService {
    /// Is `podman` installed here?
    pub fn available() -> bool {
        require("podman", "").is_ok()
    }

    /// Starts the service and waits until `GET /_ping` answers `OK`.
    pub fn start() -> Result<Self> {
        let binary = require("podman", "Debian packages podman, runc, uidmap, slirp4netns, fuse-overlayfs")?;
        let dir = tempfile::Builder::new().prefix("mm-podman-").tempdir()?;
        let socket = dir.path().join("podman.sock");
        let mut command = Command::new(binary);
        command.args(["system", "service", "--time=0"]).arg(format!("unix://{}", socket.display()));
        let mut process = Spawned::start("podman system service", command, &dir.path().join("podman.log"))?;
        let probe = socket.clone();
        process.wait_ready(READY_TIMEOUT, || mm_rootless::ping(&probe, Duration::from_secs(2)))?;
        Ok(Self { process, socket, _dir: dir })
    }

    /// The socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// `unix:///.../podman.sock`, as podman-api and `CONTAINER_HOST` take it.
    pub fn uri(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The service process, e.g. to stop it mid-test (Podman "going down").
    pub fn process(&mut self) -> &mut Spawned {
        &mut self.process
    }
}
