//! Where `mmctl dev` runs game servers: rootless Podman containers when this host can,
//! child processes of the orchestrator otherwise, and why.
//!
//! With `[dev] driver = "auto"` (the default) mmctl checks everything rootless Podman
//! needs (`mm_rootless::PodmanUser::detect`: the tools, the project user and its
//! subordinate ids, `/dev/net/tun`), puts the game-server image into that user's storage,
//! and starts a `podman system service` as that user unless one already answers on the
//! socket. Anything missing is said in full, and the orchestrator runs processes instead.
//! `driver = "podman"` makes the same problems an error; `driver = "process"` skips it all.
//!
//! When the stack stops, the containers of this node that the orchestrator did not
//! remove (a node killed with -9 cannot) are removed, the service mmctl started is
//! stopped (it is a tier of the stack), and so is Podman's pause process once nothing
//! else of the project user runs.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use mm_rootless::{GAME_IMAGE, ImageState, PodmanUser};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// `[dev] driver`: how the orchestrator of `mmctl dev` runs game servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// Rootless Podman when this host can run it, processes otherwise (and why).
    #[default]
    Auto,
    /// Rootless Podman, or an error saying what is missing.
    Podman,
    /// Child processes of the orchestrator (no container engine).
    Process,
}

/// What the stack's orchestrator will use.
#[derive(Debug, Clone)]
pub enum Games {
    Podman(PodmanGames),
    Processes { why: String },
}

/// Rootless Podman for the stack.
#[derive(Debug, Clone)]
pub struct PodmanGames {
    pub user: PodmanUser,
    pub socket: PathBuf,
    /// Nothing answered on the socket: mmctl runs the service (and stops it).
    pub start_service: bool,
    pub image: ImageState,
}

impl Games {
    /// The orchestrator's environment for this choice.
    pub fn orchestrator_env(&self) -> Vec<(String, String)> {
        match self {
            Games::Podman(podman) => vec![
                ("MM_ORCHESTRATOR__DRIVER".to_owned(), "podman".to_owned()),
                ("MM_ORCHESTRATOR__PODMAN__SOCKET".to_owned(), podman.socket.display().to_string()),
            ],
            Games::Processes { .. } => vec![("MM_ORCHESTRATOR__DRIVER".to_owned(), "process".to_owned())],
        }
    }

    /// One line for the banner: which driver and why.
    pub fn describe(&self) -> String {
        match self {
            Games::Podman(podman) => format!(
                "game servers are rootless Podman containers of user {} ({}{}{}); \
                 watch them: podman --url unix://{} ps --filter label=mm.game-id",
                podman.user.describe(),
                if podman.start_service { "a service mmctl starts on " } else { "the service already on " },
                podman.socket.display(),
                if podman.image == ImageState::Copied {
                    ", the game-server image copied into its storage"
                } else {
                    ""
                },
                podman.socket.display(),
            ),
            Games::Processes { why } => {
                format!("game servers are child processes of the orchestrator: {why}")
            }
        }
    }
}

/// Decides where game servers run, doing the slow checks (a few `podman` commands) once.
pub fn decide(config: &Config, choice: DriverChoice) -> anyhow::Result<Games> {
    if choice == DriverChoice::Process {
        return Ok(Games::Processes {
            why: "asked for (`--driver process`, or config `dev.driver` / `orchestrator.driver`)".to_owned(),
        });
    }
    let fall_back = |why: String| -> anyhow::Result<Games> {
        if choice == DriverChoice::Podman {
            anyhow::bail!("rootless Podman cannot run game servers here: {why}");
        }
        Ok(Games::Processes { why: format!("rootless Podman cannot run here: {why}") })
    };
    let user = match PodmanUser::detect() {
        Ok(user) => user,
        Err(problems) => return fall_back(problems.to_string()),
    };
    let socket = config.dev.podman_socket.clone().unwrap_or_else(|| user.default_socket());
    if let Err(err) = user.prepare(&socket) {
        return fall_back(format!("cannot prepare {} for {}: {err}", socket.display(), user.describe()));
    }
    let image = match user.ensure_image(GAME_IMAGE) {
        Ok(image) => image,
        Err(err) => return fall_back(err),
    };
    let start_service = !mm_rootless::ping(&socket, Duration::from_secs(2));
    if !start_service && std::fs::metadata(&socket).is_ok() {
        tracing::debug!(socket = %socket.display(), "a Podman service already answers there; using it");
    }
    Ok(Games::Podman(PodmanGames { user, socket, start_service, image }))
}

/// What became of the game-server containers of one run (from Podman's own event log,
/// not the orchestrator's word).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCount {
    pub started: usize,
    pub removed: usize,
    /// Still in the user's storage after the stack stopped and its clean-up.
    pub left: usize,
    /// Removed by mmctl's clean-up after the orchestrator stopped.
    pub cleaned_up: usize,
}

/// A container Podman does not know is a ghost once this old (not one a live service is
/// creating right now).
pub const GHOST_GRACE: Duration = Duration::from_secs(30);

impl PodmanGames {
    /// After the stack stopped: removes the containers `node` left, counts what happened
    /// to its containers since `since`, and ends Podman's pause process.
    pub fn finish(&self, node: &str, since: SystemTime) -> Result<ContainerCount, String> {
        let cleaned_up = self.user.remove_containers(node);
        // A Podman service killed mid-create (mmctl chaos does it) can leave a container
        // that only runc knows; nothing else would ever end it.
        let ghosts = self.user.remove_ghost_containers(GHOST_GRACE).unwrap_or_else(|err| {
            tracing::warn!("looking for containers Podman lost: {err}");
            0
        });
        let count = self.count(node, since);
        if self.start_service {
            // The service mmctl ran is gone; so is any reason for its socket file.
            let _ = std::fs::remove_file(&self.socket);
        }
        // Last: every command above restarts the pause process.
        self.user.end_pause_process();
        Ok(ContainerCount { cleaned_up: cleaned_up? + ghosts, ..count? })
    }

    /// Counts the containers of `node` started and removed since `since`, by Podman's
    /// event log, and those still there.
    fn count(&self, node: &str, since: SystemTime) -> Result<ContainerCount, String> {
        use mm_shared::protocol::game_server::labels;
        let since = since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let events = self.user.podman(&[
            "events",
            "--stream=false",
            "--since",
            &since.to_string(),
            "--filter",
            "type=container",
            "--filter",
            &format!("label={}={node}", labels::NODE),
            "--format",
            "{{.Status}} {{.ID}}",
        ])?;
        let (started, removed) = count_events(&events);
        let left = self.user.containers(node)?.len();
        Ok(ContainerCount { started, removed, left, cleaned_up: 0 })
    }
}

/// Distinct containers started and removed, from `<status> <id>` lines.
fn count_events(events: &str) -> (usize, usize) {
    let mut started = std::collections::BTreeSet::new();
    let mut removed = std::collections::BTreeSet::new();
    for line in events.lines() {
        match line.split_once(' ') {
            Some(("start", id)) => {
                started.insert(id.trim());
            }
            Some(("remove", id)) => {
                removed.insert(id.trim());
            }
            _ => {}
        }
    }
    (started.len(), removed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_distinct_containers() {
        let log = "create a1\ninit a1\nstart a1\ndied a1\nstart a1\nremove a1\nstart b2\ncleanup b2\n\n";
        assert_eq!(count_events(log), (2, 1), "a restart is one container");
    }

    #[test]
    fn process_driver_needs_no_checks() {
        let games = decide(&Config::default(), DriverChoice::Process).expect("always possible");
        assert!(matches!(games, Games::Processes { .. }));
        assert_eq!(games.orchestrator_env(), [("MM_ORCHESTRATOR__DRIVER".to_owned(), "process".to_owned())]);
        assert!(games.describe().contains("--driver process"), "{}", games.describe());
    }
}
