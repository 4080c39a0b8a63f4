//! The process driver: each game server is a child process (like Nomad's `raw_exec`).
//!
//! For machines without Podman (`just dev` needs no container engine). The children get
//! a clean environment (only their `MM_GAME__*` settings), listen on `host_ip:port`
//! themselves, and get SIGTERM from the kernel if the orchestrator dies: a process
//! driver's games never outlive their node, so after a crash there is nothing to adopt.
//! Their output goes to this process's log at debug level; the last lines are kept for
//! error messages and for the game's result (its server's last line). An exit is reported
//! only once the child's output has been read to its end (or a moment after its exit),
//! so the lines kept are really its last.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

use super::{Driver, DriverError, DriverResult, Exit, Instance, LaunchSpec, env};
use crate::config::OrchestratorSection;

/// Lines of a child's output kept for error messages.
const TAIL_LINES: usize = 5;

/// How long after a child's exit its output may still be read before the exit is
/// reported anyway (a grandchild could hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Starts admitted at once before the start rate is learnt: spawning is quick, and the
/// children come up in parallel.
const PARALLEL: usize = 64;

/// What the driver keeps per child.
struct Child {
    game_id: String,
    /// `None` while running, then `Some(exit code)` (negative: killed by that signal).
    exited: watch::Receiver<Option<i64>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

pub struct ProcessDriver {
    binary: PathBuf,
    children: Mutex<HashMap<String, Child>>,
    exits: mpsc::UnboundedSender<Exit>,
}

impl ProcessDriver {
    pub fn new(config: &OrchestratorSection, exits: mpsc::UnboundedSender<Exit>) -> anyhow::Result<Self> {
        Ok(Self { binary: config.process.binary_path(), children: Mutex::new(HashMap::new()), exits })
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.children.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spawn(&self, spec: &LaunchSpec) -> DriverResult<String> {
        let listen = std::net::SocketAddr::new(spec.host_ip, spec.port).to_string();
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .env_clear()
            .envs(env::game_env(spec, &listen))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        // Spawned from a runtime worker thread, which lives as long as the orchestrator:
        // the kernel ties the death signal to the spawning thread.
        mm_shared::process::die_with_parent(command.as_std_mut());
        let mut child = command.spawn().map_err(|err| {
            DriverError::Unavailable(format!("cannot run the game server {}: {err}", self.binary.display()))
        })?;
        let pid =
            child.id().ok_or_else(|| DriverError::Failed("the game server exited at once".to_owned()))?;
        let handle = pid.to_string();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(forward(stdout, spec.game_id.clone(), tail.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(forward(stderr, spec.game_id.clone(), tail.clone()));
        }
        let (exited_tx, exited) = watch::channel(None);
        let exits = self.exits.clone();
        let (game_id, task_handle) = (spec.game_id.clone(), handle.clone());
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status
                    .code()
                    .map(i64::from)
                    .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| -i64::from(s)))
                    .unwrap_or(-1),
                Err(err) => {
                    tracing::warn!(%game_id, "waiting for the game server failed: {err}");
                    -1
                }
            };
            // Its last lines (its result among them) are in the tail before anyone hears
            // of the exit.
            let _ = tokio::time::timeout(OUTPUT_DRAIN, futures_util::future::join_all(readers)).await;
            let _ = exited_tx.send(Some(code));
            let _ = exits.send(Exit { game_id, handle: task_handle, code: Some(code) });
        });
        self.children().insert(handle.clone(), Child { game_id: spec.game_id.clone(), exited, tail });
        Ok(handle)
    }

    fn exited(&self, handle: &str) -> Option<watch::Receiver<Option<i64>>> {
        self.children().get(handle).map(|child| child.exited.clone())
    }
}

/// Reads a child's output line by line: kept in its tail, logged at debug level. The
/// task ends at the end of the stream.
fn forward(
    stream: impl AsyncRead + Unpin + Send + 'static,
    game_id: String,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "game_server", %game_id, "{line}");
            let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    })
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn check(&self) -> BoxFuture<'_, DriverResult<String>> {
        async move {
            match std::fs::metadata(&self.binary) {
                Ok(meta) if meta.is_file() => Ok(format!("processes of {}", self.binary.display())),
                _ => Err(DriverError::Unavailable(format!(
                    "the game-server binary {} does not exist: build it with `cargo build --workspace --bins` \
                     or set orchestrator.process.binary",
                    self.binary.display()
                ))),
            }
        }
        .boxed()
    }

    fn parallel(&self) -> usize {
        PARALLEL
    }

    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, DriverResult<String>> {
        // Bound before spawning: a port someone else holds fails here, not in the child.
        let probe = std::net::TcpListener::bind((spec.host_ip, spec.port));
        let result = match probe {
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(DriverError::PortTaken(spec.port)),
            _ => {
                drop(probe);
                self.spawn(spec)
            }
        };
        std::future::ready(result).boxed()
    }

    fn stop<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let Some(mut exited) = self.exited(handle) else { return Ok(()) };
            let Ok(pid) = handle.parse::<u32>() else { return Ok(()) };
            if exited.borrow().is_some() {
                return Ok(());
            }
            let _ = mm_shared::process::send_signal(pid, libc::SIGTERM);
            let wait = exited.wait_for(Option::is_some);
            if tokio::time::timeout(timeout, wait).await.is_err() {
                tracing::warn!(pid, "game server ignored SIGTERM for {timeout:?}; killing it");
                let _ = mm_shared::process::send_signal(pid, libc::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(2), exited.wait_for(Option::is_some)).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, DriverResult<()>> {
        let running = self.exited(handle).is_some_and(|exited| exited.borrow().is_none());
        if !running {
            self.children().remove(handle);
        }
        std::future::ready(Ok(())).boxed()
    }

    fn exit_code<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, DriverResult<Option<i64>>> {
        let code = self.exited(handle).and_then(|exited| *exited.borrow());
        std::future::ready(Ok(code)).boxed()
    }

    fn logs_tail<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, String> {
        let tail = self
            .children()
            .get(handle)
            .map(|child| {
                let lines = child.tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                lines.iter().cloned().collect::<Vec<_>>().join("\n")
            })
            .unwrap_or_default();
        std::future::ready(tail).boxed()
    }

    fn list<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, DriverResult<Vec<Instance>>> {
        let instances = self
            .children()
            .iter()
            .map(|(handle, child)| Instance {
                handle: handle.clone(),
                game_id: child.game_id.clone(),
                running: child.exited.borrow().is_none(),
            })
            .collect();
        std::future::ready(Ok(instances)).boxed()
    }
}
