//! `compose.yaml` under podman-compose, as a test runs it: a project of its own, every
//! command bounded in time, and `down` (volumes and all) when the project is dropped,
//! even when the test fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Ran, run_bounded};

/// How long `down` may take: podman-compose stops containers one by one (10 s each at
/// worst, when one ignores SIGTERM).
const DOWN_TIMEOUT: Duration = Duration::from_secs(180);

/// One compose project (`podman-compose -p <name> -f compose.yaml`).
pub struct ComposeProject {
    pub name: String,
    env: Vec<(String, String)>,
    file: PathBuf,
    /// `up` was run: dropping the project takes it down.
    started: bool,
    /// Started with `just up` (mmctl's data dir for its Podman service state): dropping it
    /// runs `just down`, as a user would.
    just: Option<tempfile::TempDir>,
}

impl ComposeProject {
    /// A project named `name`, whose commands see only `env` among `MM_*` variables.
    pub fn new(name: &str, env: Vec<(String, String)>) -> Self {
        Self {
            name: name.to_owned(),
            env,
            file: crate::repo().join("compose.yaml"),
            started: false,
            just: None,
        }
    }

    /// `just <recipe> <args>` in the repository, for this project (`MM_COMPOSE_PROJECT`)
    /// with its environment and its own mmctl data dir.
    fn just_command(&self, recipe: &str, args: &[&str], data_dir: &std::path::Path) -> Command {
        let mut command = Command::new("just");
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            // The test runner's own variables (CARGO_*, NEXTEST_*, RUST*) would reach the
            // cargo build `just up` runs, change its fingerprints and make it rebuild the
            // static binaries the run already built: `just up` runs as a user's shell does.
            let runner =
                ["MM_", "CARGO_", "NEXTEST", "RUST", "__CARGO"].iter().any(|prefix| name.starts_with(prefix));
            if runner && !name.starts_with("RUSTUP_") && name != "CARGO_HOME" {
                command.env_remove(key);
            }
        }
        command
            .current_dir(crate::repo())
            .arg(recipe)
            .args(args)
            .env("MM_COMPOSE_PROJECT", &self.name)
            .env("MM_DEV__DATA_DIR", data_dir)
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    /// `just up`, as a user runs it (images, the Podman service, the stack): from now on,
    /// dropping the project runs `just down`.
    pub fn just_up(&mut self, timeout: Duration) -> Ran {
        let data_dir = tempfile::Builder::new().prefix("mm-just-up-").tempdir().expect("temp dir");
        let mut command = self.just_command("up", &[], data_dir.path());
        self.started = true;
        self.just = Some(data_dir);
        run_bounded(&mut command, timeout)
    }

    /// `just down` now (the project is not taken down again when dropped).
    pub fn just_down(&mut self, timeout: Duration) -> Ran {
        let Some(data_dir) = self.just.take() else { panic!("just_down without just_up") };
        self.started = false;
        run_bounded(&mut self.just_command("down", &["-v"], data_dir.path()), timeout)
    }

    /// `podman-compose -p <name> -f compose.yaml <args>`, with the project's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman-compose");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MM_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(crate::repo())
            .args(["-p", &self.name, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    /// `up -d`: from now on, dropping the project takes it down.
    pub fn up(&mut self, timeout: Duration) -> Ran {
        self.started = true;
        self.run(&["up", "-d"], timeout)
    }

    /// Runs a compose command to completion, or kills it at `timeout`.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Ran {
        run_bounded(&mut self.command(args), timeout)
    }

    /// Takes down what earlier runs left: projects named `<prefix><pid>` whose test
    /// process is gone (killed at a timeout, its `Drop` never ran), and the game servers
    /// of their node `<node_prefix><pid>`.
    pub fn reap_stale(prefix: &str, node_prefix: &str) {
        let format = "{{index .Labels \"io.podman.compose.project\"}}";
        let projects =
            podman(&["ps", "-a", "--filter", "label=io.podman.compose.project", "--format", format]);
        let mut stale: Vec<(String, u32)> = projects
            .stdout
            .lines()
            .filter_map(|name| Some((name.to_owned(), name.strip_prefix(prefix)?.parse::<u32>().ok()?)))
            .filter(|(_, pid)| !mm_shared::process::is_alive(*pid))
            .collect();
        stale.sort();
        stale.dedup();
        for (name, pid) in stale {
            eprintln!("taking down {name}, left by an earlier run");
            let mut project = Self::new(&name, Vec::new());
            project.started = true;
            drop(project);
            let node = format!("label=mm.node={node_prefix}{pid}");
            for id in podman(&["ps", "-aq", "--filter", &node]).stdout.split_whitespace() {
                podman(&["rm", "-f", "-t", "1", id]);
            }
        }
    }

    /// The names of the project's containers, running or not.
    pub fn containers(&self) -> Vec<String> {
        let label = format!("label=io.podman.compose.project={}", self.name);
        podman(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"])
            .stdout
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The last lines each of the project's containers logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in self.containers() {
            let logs = podman(&["logs", "--tail", "15", &name]);
            out.push_str(&format!("----- {name}\n{}{}\n", logs.stdout, logs.stderr));
        }
        out
    }
}

/// `podman <args>`, bounded in time.
pub fn podman(args: &[&str]) -> Ran {
    run_bounded(Command::new("podman").args(args), Duration::from_secs(30))
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        if std::thread::panicking() {
            eprintln!("compose project {} logs:\n{}", self.name, self.logs());
        }
        if let Some(data_dir) = self.just.take() {
            let down = run_bounded(&mut self.just_command("down", &["-v"], data_dir.path()), DOWN_TIMEOUT);
            if !down.success() {
                eprintln!("just down of {} failed:\n{}", self.name, down.output());
            }
        }
        let down = self.run(&["down", "-v", "-t", "5"], DOWN_TIMEOUT);
        if !down.success() {
            eprintln!("podman-compose down of {} failed:\n{}", self.name, down.output());
        }
        // Whatever `down` left (it was killed, or a container would not stop).
        for name in self.containers() {
            podman(&["rm", "-f", "-t", "2", &name]);
        }
    }
}
