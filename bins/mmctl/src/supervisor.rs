//! Supervising child processes: start, forward their output, restart with backoff, stop.
//!
//! Each child runs in its own process group, so the terminal's Ctrl-C reaches only
//! mmctl, which then stops the children in order (front to back: gateway, services,
//! then nats/redis). Each child also gets SIGTERM from the kernel if mmctl itself is
//! killed, so no child outlives it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::output::Output;

/// Restart delays: doubling from the first to the last, reset after a long healthy run.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How to tell a child is ready to serve.
#[derive(Debug, Clone)]
pub enum Ready {
    /// `GET http://{addr}{path}` answers 200.
    Http { addr: String, path: &'static str },
    /// Something accepts TCP connections on `addr`.
    Tcp { addr: String },
    /// A Podman API service answers `GET /_ping` on this unix socket.
    Podman { socket: PathBuf },
}

/// How long one readiness probe may take, and the pause between two.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

impl Ready {
    /// Waits until ready or `timeout` passes. Dropping the future stops the wait at once:
    /// each probe runs on its own blocking thread for at most [`PROBE_TIMEOUT`], so an
    /// abandoned wait (Ctrl-C during start-up) leaves nothing running for long.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = self.clone();
            if tokio::task::spawn_blocking(move || ready.probe()).await.unwrap_or(false) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// One bounded, blocking check.
    fn probe(&self) -> bool {
        match self {
            Ready::Http { addr, path } => {
                mm_shared::probe::http_get(addr, path, PROBE_TIMEOUT).is_ok_and(|answer| answer.status == 200)
            }
            Ready::Tcp { addr } => mm_shared::probe::tcp_open(addr, PROBE_TIMEOUT),
            Ready::Podman { socket } => mm_rootless::ping(socket, PROBE_TIMEOUT),
        }
    }

    /// What a person would open to check it.
    pub fn describe(&self) -> String {
        match self {
            Ready::Http { addr, path } => format!("http://{addr}{path}"),
            Ready::Tcp { addr } => addr.clone(),
            Ready::Podman { socket } => format!("unix://{}", socket.display()),
        }
    }
}

/// A program to run under supervision.
#[derive(Debug, Clone)]
pub struct Program {
    /// Prefix of its log lines.
    pub name: &'static str,
    pub path: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub ready: Ready,
    /// Restart it when it exits on its own.
    pub restart: bool,
    /// Working directory (default: mmctl's).
    pub current_dir: Option<PathBuf>,
}

impl Program {
    /// A program made from a prepared command (its program, arguments, added environment
    /// and working directory).
    pub fn from_command(
        name: &'static str,
        command: &std::process::Command,
        ready: Ready,
        restart: bool,
    ) -> Self {
        Program {
            name,
            path: PathBuf::from(command.get_program()),
            args: command.get_args().map(ToOwned::to_owned).collect(),
            env: command
                .get_envs()
                .filter_map(|(key, value)| Some((key.to_str()?.to_owned(), value?.to_str()?.to_owned())))
                .collect(),
            ready,
            restart,
            current_dir: command.get_current_dir().map(PathBuf::from),
        }
    }
}

/// A supervised child: its task ends after the child has stopped for good.
pub struct Supervised {
    pub name: &'static str,
    pub ready: Ready,
    /// Cancel to stop the child (SIGTERM, then SIGKILL after the stop timeout).
    pub stop: CancellationToken,
    /// The child's last exit status, once it stopped for good.
    pub task: JoinHandle<Option<ExitStatus>>,
    /// Signals for the child that runs now (see [`Supervised::signal`]).
    signals: mpsc::UnboundedSender<SignalRequest>,
}

/// A signal for the current child, and where to say which pid got it.
type SignalRequest = (i32, oneshot::Sender<Option<u32>>);

/// How long [`Supervised::signal`] waits for the supervising task to answer (it answers
/// at once unless the runtime is blocked).
const SIGNAL_ANSWER: Duration = Duration::from_secs(2);

impl Supervised {
    /// Sends `signal` to the child running now (0: none, only asks for its pid) and
    /// returns its pid; `None` while no child runs (between a death and its restart, or
    /// after the stop).
    ///
    /// The supervising task sends it, while it still holds the child unreaped: the pid is
    /// certainly mmctl's own child, never a process that took over a reused pid.
    pub async fn signal(&self, signal: i32) -> Option<u32> {
        let (answer, answered) = oneshot::channel();
        self.signals.send((signal, answer)).ok()?;
        tokio::time::timeout(SIGNAL_ANSWER, answered).await.ok()?.ok().flatten()
    }

    /// The pid of the child running now, if one runs.
    pub async fn pid(&self) -> Option<u32> {
        self.signal(0).await
    }

    /// Like [`Supervised::signal`], without waiting for it to be sent (for a `Drop`).
    pub fn signal_detached(&self, signal: i32) {
        let (answer, _) = oneshot::channel();
        let _ = self.signals.send((signal, answer));
    }
}

/// Starts and stops children.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub output: Output,
    /// Grace period between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Cancelled on the second Ctrl-C: kill without waiting.
    pub force: CancellationToken,
}

impl Supervisor {
    /// Starts `program` and keeps it running until its `stop` token is cancelled.
    pub fn start(&self, program: Program) -> Supervised {
        let stop = CancellationToken::new();
        let ready = program.ready.clone();
        let name = program.name;
        let (signals, requests) = mpsc::unbounded_channel();
        let task = tokio::spawn(self.clone().supervise(program, stop.clone(), requests));
        Supervised { name, ready, stop, task, signals }
    }

    async fn supervise(
        self,
        program: Program,
        stop: CancellationToken,
        mut signals: mpsc::UnboundedReceiver<SignalRequest>,
    ) -> Option<ExitStatus> {
        let mut backoff = FIRST_BACKOFF;
        let mut restarts = 0u32;
        loop {
            let started = Instant::now();
            let status = match spawn(&program, self.output) {
                Ok(mut child) => loop {
                    tokio::select! {
                        status = child.wait() => break status.ok(),
                        () = stop.cancelled() => return self.terminate(program.name, &mut child).await,
                        Some((signal, answer)) = signals.recv() => {
                            // `id()` is `None` once the child has been reaped: a pid we
                            // hold is still our child's.
                            let pid = child
                                .id()
                                .filter(|pid| mm_shared::process::send_signal(*pid, signal).is_ok());
                            let _ = answer.send(pid);
                        }
                    }
                },
                Err(err) => {
                    self.output.say(&format!(
                        "cannot start {} ({}): {err}",
                        program.name,
                        program.path.display()
                    ));
                    None
                }
            };
            let ran = started.elapsed();
            let how = status.map_or_else(|| "could not start".to_owned(), describe_exit);
            if !program.restart || stop.is_cancelled() {
                if !program.restart {
                    self.output.say(&format!("{} exited: {how}", program.name));
                }
                return status;
            }
            if ran >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            restarts += 1;
            self.output.say(&format!(
                "{} died after {:.1}s ({how}); restart {restarts} in {}",
                program.name,
                ran.as_secs_f64(),
                mm_shared::duration::format(backoff)
            ));
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    () = stop.cancelled() => return status,
                    // No child runs while it waits to restart one.
                    Some((_, answer)) = signals.recv() => {
                        let _ = answer.send(None);
                    }
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// SIGTERM, wait up to the stop timeout (or until forced), then SIGKILL.
    async fn terminate(&self, name: &str, child: &mut Child) -> Option<ExitStatus> {
        if let Some(pid) = child.id() {
            let _ = mm_shared::process::send_signal(pid, libc::SIGTERM);
        }
        tokio::select! {
            status = child.wait() => return status.ok(),
            () = tokio::time::sleep(self.stop_timeout) => {
                self.output.say(&format!("{name} did not stop within {}; killing it",
                    mm_shared::duration::format(self.stop_timeout)));
            }
            () = self.force.cancelled() => self.output.say(&format!("killing {name}")),
        }
        let _ = child.start_kill();
        child.wait().await.ok()
    }
}

fn spawn(program: &Program, output: Output) -> std::io::Result<Child> {
    let mut command = std::process::Command::new(&program.path);
    command.args(&program.args).envs(program.env.iter().map(|(key, value)| (key, value)));
    if let Some(dir) = &program.current_dir {
        command.current_dir(dir);
    }
    mm_shared::process::die_with_parent(&mut command);
    let mut command = Command::from(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(stdout, program.name, output));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(stderr, program.name, output));
    }
    Ok(child)
}

/// Copies a child's output to ours, one prefixed line at a time.
async fn forward(stream: impl AsyncRead + Unpin, name: &'static str, output: Output) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                output.line(name, text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// "exit code 1", "killed by signal 9".
fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}
