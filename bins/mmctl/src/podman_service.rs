//! `mmctl podman-service start|stop|status`: the rootless Podman API service that
//! `just up` runs for the compose stack's orchestrator, outliving mmctl itself.
//!
//! `start` makes sure the project user's Podman can run (`mm_rootless`), puts the
//! game-server image into its storage, and, unless a service already answers on the
//! socket, starts `podman system service` as that user in a session of its own, recording
//! its pid in a state file. It prints the environment `just up` needs
//! (`MM_PODMAN_SOCKET`, `MM_PODMAN_USER`), one `KEY=value` per line, on stdout.
//!
//! `stop` (`just down`) removes the game-server containers the compose node left, stops
//! the service if (and only if) `start` started it, checked by pid *and* command line so
//! a recycled pid is never signalled, and ends Podman's pause process.

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use mm_rootless::{GAME_IMAGE, ImageState, PodmanUser};
use serde::{Deserialize, Serialize};

/// How long a new service may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `start` records about the service it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
    pub socket: PathBuf,
    pub uid: u32,
}

/// The state file beside the data dir's other files.
pub fn state_file(data_dir: &Path) -> PathBuf {
    data_dir.join("podman-service.json")
}

/// `mmctl podman-service start`.
pub fn start(data_dir: &Path, socket: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let user = PodmanUser::detect()
        .map_err(|problems| anyhow::anyhow!("rootless Podman cannot run here: {problems}"))?;
    let socket = socket.unwrap_or_else(|| user.default_socket());
    user.prepare(&socket)
        .with_context(|| format!("preparing {} for {}", socket.display(), user.describe()))?;
    match user.ensure_image(GAME_IMAGE).map_err(anyhow::Error::msg)? {
        ImageState::Copied => eprintln!("mmctl: copied {GAME_IMAGE} into the storage of {}", user.describe()),
        ImageState::Present => {}
    }
    if mm_rootless::ping(&socket, Duration::from_secs(2)) {
        eprintln!("mmctl: a Podman service already answers on {}: using it", socket.display());
    } else {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let log = data_dir.join("podman-service.log");
        let pid = spawn_detached(&user, &socket, &log)?;
        let ready = mm_shared::probe::wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
            mm_rootless::ping(&socket, Duration::from_secs(1)) || !mm_shared::process::is_alive(pid)
        }) && mm_shared::process::is_alive(pid);
        if !ready {
            let _ = mm_shared::process::send_signal(pid, libc::SIGKILL);
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            bail!(
                "the Podman service on {} did not answer within {READY_TIMEOUT:?}; its log ({}) ends:\n{}",
                socket.display(),
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let started = Started { pid, socket: socket.clone(), uid: user.account.uid };
        let file = state_file(data_dir);
        std::fs::write(&file, serde_json::to_string_pretty(&started)?)
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!(
            "mmctl: started a rootless Podman service (pid {pid}) for {} on {}; `just down` stops it",
            user.describe(),
            socket.display()
        );
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "MM_PODMAN_SOCKET={}", socket.display())?;
    writeln!(stdout, "MM_PODMAN_USER={}", container_user(&socket)?)?;
    Ok(ExitCode::SUCCESS)
}

/// Who the compose stack's orchestrator runs as inside its container, to be allowed on
/// the socket: under rootful compose (we are root) the socket's owner, the project user
/// for its rootless socket; under rootless compose, the container's root, which *is* the
/// calling user.
fn container_user(socket: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    if !mm_rootless::running_as_root() {
        return Ok("0:0".to_owned());
    }
    let meta = std::fs::metadata(socket).with_context(|| format!("reading {}", socket.display()))?;
    Ok(format!("{}:{}", meta.uid(), meta.gid()))
}

/// `podman system service` as the user, in its own session (Ctrl-C in the terminal that
/// ran `just up` does not reach it), its output in `log`.
fn spawn_detached(user: &PodmanUser, socket: &Path, log: &Path) -> anyhow::Result<u32> {
    let output = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let errors = output.try_clone()?;
    let mut command = user.service_command(socket, false);
    command.stdin(Stdio::null()).stdout(output).stderr(errors).process_group(0);
    #[allow(unsafe_code)]
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command.spawn().context("starting `podman system service`")?;
    Ok(child.id())
}

/// Is `pid` still the service `start` recorded (its command line names the socket)?
fn is_our_service(started: &Started) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", started.pid)) else { return false };
    let args: Vec<String> =
        cmdline.split(|byte| *byte == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
    let socket = format!("unix://{}", started.socket.display());
    mm_shared::process::is_alive(started.pid)
        && args.iter().any(|arg| arg == "service")
        && args.contains(&socket)
}

/// `mmctl podman-service stop`: containers of `node` first, then the service.
pub fn stop(data_dir: &Path, node: &str) -> anyhow::Result<ExitCode> {
    let user = PodmanUser::detect().ok();
    if let Some(user) = &user {
        match user.remove_containers(node) {
            Ok(0) => {}
            Ok(removed) => eprintln!("mmctl: removed {removed} game-server containers node {node} left"),
            Err(err) => eprintln!("mmctl: removing the containers of node {node}: {err}"),
        }
        match user.remove_ghost_containers(crate::games::GHOST_GRACE) {
            Ok(0) => {}
            Ok(removed) => eprintln!("mmctl: removed {removed} containers Podman had lost track of"),
            Err(err) => eprintln!("mmctl: looking for containers Podman lost: {err}"),
        }
    }
    let file = state_file(data_dir);
    let Ok(text) = std::fs::read_to_string(&file) else {
        eprintln!("mmctl: no Podman service was started by `just up` ({} is absent)", file.display());
        if let Some(user) = &user {
            user.end_pause_process();
        }
        return Ok(ExitCode::SUCCESS);
    };
    let started: Started =
        serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
    if is_our_service(&started) {
        let _ = mm_shared::process::send_signal(started.pid, libc::SIGTERM);
        let stopped = mm_shared::probe::wait_until(STOP_TIMEOUT, Duration::from_millis(50), || {
            !mm_shared::process::is_alive(started.pid)
        });
        if !stopped {
            let _ = mm_shared::process::send_signal(started.pid, libc::SIGKILL);
        }
        eprintln!("mmctl: stopped the Podman service on {} (pid {})", started.socket.display(), started.pid);
    } else {
        eprintln!("mmctl: the Podman service `just up` started (pid {}) is gone already", started.pid);
    }
    std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    let _ = std::fs::remove_file(&started.socket);
    if let Some(user) = &user {
        user.end_pause_process();
    }
    Ok(ExitCode::SUCCESS)
}

/// `mmctl podman-service status`: exit 0 when the recorded service runs and answers.
pub fn status(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let file = state_file(data_dir);
    let Ok(text) = std::fs::read_to_string(&file) else {
        println!("no Podman service started by `just up`");
        return Ok(ExitCode::from(1));
    };
    let started: Started =
        serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
    let answers = is_our_service(&started) && mm_rootless::ping(&started.socket, Duration::from_secs(2));
    println!(
        "Podman service pid {} on {}: {}",
        started.pid,
        started.socket.display(),
        if answers { "answers" } else { "not answering" }
    );
    Ok(if answers { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_pid_is_not_our_service() {
        // Our own pid is alive but is no `podman system service` on that socket.
        let started = Started {
            pid: std::process::id(),
            socket: PathBuf::from("/run/user/1/podman/podman.sock"),
            uid: 1,
        };
        assert!(!is_our_service(&started));
        let gone = Started { pid: u32::MAX - 1, ..started };
        assert!(!is_our_service(&gone));
    }

    #[test]
    fn stop_without_a_state_file_is_fine() {
        let dir = std::env::temp_dir().join(format!("mmctl-podman-service-{}", std::process::id()));
        assert_eq!(stop(&dir, "no-such-node").expect("nothing to stop"), ExitCode::SUCCESS);
        assert_eq!(status(&dir).expect("answers"), ExitCode::from(1));
    }
}
