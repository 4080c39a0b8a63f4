//! A rootless Podman service for tests: an unprivileged user (made with `useradd -m` if
//! missing, with subordinate ids), its own runtime dir, the game-server image loaded into
//! its storage, and `podman system service` running as that user.
//!
//! Needs root (to make the user and switch to it), as CI and `just test` run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mm_testkit::Spawned;

use super::IMAGE;

/// The test user.
pub const USER: &str = "mmrootless";

pub struct RootlessPodman {
    process: Option<Spawned>,
    runtime_dir: PathBuf,
    socket: PathBuf,
    home: PathBuf,
    uid: u32,
    gid: u32,
}

fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command.output().map_err(|err| format!("{what}: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!("{what} failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn id_of(flag: &str) -> Result<u32, String> {
    run(Command::new("id").args([flag, USER]), "id")?
        .parse()
        .map_err(|err| format!("id {flag} {USER}: {err}"))
}

/// Makes the user (and its subordinate id ranges) unless it exists.
fn ensure_user() -> Result<(u32, u32), String> {
    if id_of("-u").is_err() {
        run(Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]), "useradd")?;
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let ranges = std::fs::read_to_string(file).unwrap_or_default();
        if !ranges.lines().any(|line| line.split(':').next() == Some(USER)) {
            // The first free 65536-id block past every range already given out.
            let next = ranges
                .lines()
                .filter_map(|line| {
                    let mut parts = line.split(':').skip(1);
                    Some(parts.next()?.parse::<u64>().ok()? + parts.next()?.parse::<u64>().ok()?)
                })
                .max()
                .unwrap_or(100_000)
                .max(100_000);
            let flag = if file.ends_with("subuid") { "--add-subuids" } else { "--add-subgids" };
            run(Command::new("usermod").args([flag, &format!("{next}-{}", next + 65535), USER]), "usermod")?;
        }
    }
    // slirp4netns opens /dev/net/tun as the user.
    let _ = Command::new("chmod").args(["666", "/dev/net/tun"]).status();
    Ok((id_of("-u")?, id_of("-g")?))
}

impl RootlessPodman {
    pub fn start() -> Result<Self, String> {
        let (uid, gid) = ensure_user()?;
        let home = PathBuf::from(run(
            Command::new("sh").args(["-c", &format!("getent passwd {USER} | cut -d: -f6")]),
            "getent",
        )?);
        // One runtime dir per user, kept between runs like /run/user/<uid>: rootless Podman
        // records its first runtime dir in its database and keeps using it.
        let runtime_dir = std::env::temp_dir().join(format!("mm-rootless-{uid}"));
        std::fs::create_dir_all(&runtime_dir).map_err(|err| format!("runtime dir: {err}"))?;
        run(Command::new("chown").arg(format!("{uid}:{gid}")).arg(&runtime_dir), "chown")?;
        run(Command::new("chmod").arg("700").arg(&runtime_dir), "chmod")?;
        let run_id = format!("{}-{}", std::process::id(), mm_testkit::free_port());
        let socket = runtime_dir.join(format!("podman-{run_id}.sock"));
        let mut podman = Self { process: None, runtime_dir, socket, home, uid, gid };
        podman.load_image()?;
        let mut command = podman.as_user(&[
            "system",
            "service",
            "--time=0",
            &format!("unix://{}", podman.socket.display()),
        ]);
        command.stdin(Stdio::null());
        let log = podman.log_path();
        let mut process =
            Spawned::start("rootless podman service", command, &log).map_err(|err| err.to_string())?;
        let socket = podman.socket.clone();
        process
            .wait_ready(Duration::from_secs(30), || {
                Command::new("podman")
                    .arg("--url")
                    .arg(format!("unix://{}", socket.display()))
                    .args(["info", "--format", "{{.Host.Security.Rootless}}"])
                    .output()
                    .is_ok_and(|out| {
                        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
                    })
            })
            .map_err(|err| err.to_string())?;
        podman.process = Some(process);
        Ok(podman)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The service's log (printed when a test fails), outside the user's runtime dir.
    fn log_path(&self) -> PathBuf {
        self.socket.with_extension("log").file_name().map_or_else(
            || std::env::temp_dir().join("mm-rootless-podman.log"),
            |name| std::env::temp_dir().join(name),
        )
    }

    /// `podman <args>` run as the test user.
    fn as_user(&self, args: &[&str]) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            // Changing credentials clears the death signal mm-testkit set: set it again.
            .args(["--pdeathsig", "TERM", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", self.runtime_dir.display()))
            .arg(format!("PATH={}", std::env::var("PATH").unwrap_or_default()))
            .arg("podman")
            .args(args)
            .current_dir(&self.home);
        command
    }

    /// Copies the game-server image from root's storage into the user's, unless the
    /// user already has the same image.
    fn load_image(&self) -> Result<(), String> {
        let root_id = run(
            Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", IMAGE]),
            "image inspect",
        )
        .map_err(|err| format!("{err}: run `just image` first"))?;
        let user_id =
            run(&mut self.as_user(&["image", "inspect", "--format", "{{.Id}}", IMAGE]), "user image inspect");
        if user_id.as_deref() == Ok(root_id.as_str()) {
            return Ok(());
        }
        let archive = self.runtime_dir.join(format!("game-server-{}.tar", std::process::id()));
        run(Command::new("podman").args(["save", "--quiet", "-o"]).arg(&archive).arg(IMAGE), "podman save")?;
        run(Command::new("chmod").arg("644").arg(&archive), "chmod")?;
        let loaded =
            run(&mut self.as_user(&["load", "--quiet", "-i", &archive.display().to_string()]), "podman load");
        let _ = std::fs::remove_file(&archive);
        loaded.map(|_| ())
    }
}

impl Drop for RootlessPodman {
    fn drop(&mut self) {
        // Containers are the tests' to remove; the service is ours. The user's runtime
        // dir and its user-namespace pause process stay for the next run, as they do for
        // a logged-in user.
        drop(self.process.take());
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(self.log_path());
    }
}
