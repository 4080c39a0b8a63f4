//! A child process with its output in a log file, killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A running child whose stdout and stderr go to a log file.
///
/// Dropping it stops the child (SIGTERM, then SIGKILL after [`DROP_GRACE`]) and reaps it:
/// a supervisor like `mmctl dev` gets to stop what it started (containers included), as
/// it would not after a SIGKILL. If the test is panicking, the end of the log is printed
/// first, so a failing test shows what its servers said.
pub struct Spawned {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Spawned {
    /// Starts `command`, sending its output to `log`. `what` names it in messages.
    pub fn start(what: &str, mut command: Command, log: &Path) -> Result<Self> {
        let file = File::create(log)?;
        command.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        mm_shared::process::die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| Error::Spawn { what: what.to_owned(), source })?;
        Ok(Self { what: what.to_owned(), child, log: log.to_owned() })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Some(status)` if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `ready` until it is true, failing early if the child exits.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(Error::Exited {
                    what: self.what.clone(),
                    status: status.to_string(),
                    log: self.log_tail(40),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: self.what.clone(),
                    waited: timeout,
                    log: self.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends `signal` and waits up to `timeout` for the child to exit.
    ///
    /// Returns the exit status, or `None` if it had to be killed after the timeout.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = mm_shared::process::send_signal(self.pid(), signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

/// How long a child has to stop after SIGTERM when its test drops it.
pub const DROP_GRACE: Duration = Duration::from_secs(10);

impl Drop for Spawned {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log (last 60 lines) -----\n{}\n-----", self.what, self.log_tail(60));
        }
        if self.exited().is_none() {
            // A child the test stopped (SIGSTOP) handles the SIGTERM once continued.
            let _ = mm_shared::process::send_signal(self.pid(), libc::SIGTERM);
            let _ = mm_shared::process::send_signal(self.pid(), libc::SIGCONT);
            self.stop_with(libc::SIGTERM, DROP_GRACE);
        }
    }
}
