//! Child processes that cannot outlive their parent, and signals to them.
//!
//! The supervisor (`mmctl dev`) and the test servers start long-running children. If
//! the parent is killed with SIGKILL it cannot clean up, so each child asks the kernel
//! (Linux `PR_SET_PDEATHSIG`) to send it SIGTERM when its parent dies.
//!
//! Caveat: the kernel ties this to the *thread* that spawned the child. Spawn from a
//! thread that lives as long as the child should (a runtime worker or the main thread,
//! never a short-lived blocking-pool thread).

use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Asks the kernel to SIGTERM the child when the spawning thread's process dies.
/// On non-Linux systems this does nothing.
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; prctl and getppid are both.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl; then the child was
                // re-parented and must not start. (Compare with the real parent's pid:
                // the parent may itself be PID 1, in a container.)
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited before the child started"));
                }
                Ok(())
            });
        }
    }
    command
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to process `pid`.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid yields ESRCH.
    if unsafe { libc::kill(pid, signal) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Is process `pid` alive (and not a zombie)?
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pids of every descendant of `pid` (children, grandchildren, ...), from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if let Some(parent) = parent {
                parents.push((child, parent));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(current) = frontier.pop() {
        for &(child, parent) in &parents {
            if parent == current && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// What a bounded command did.
#[derive(Debug)]
pub struct Ran {
    /// `None` when it could not start or was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// Both outputs, for assertion messages.
    pub fn output(&self) -> String {
        format!("status {:?}\n--- stdout\n{}\n--- stderr\n{}", self.status, self.stdout, self.stderr)
    }

    /// Why it failed, in one line: the end of stderr, or how it ended.
    pub fn why(&self) -> String {
        let said = self.stderr.trim().lines().last().unwrap_or_default().trim();
        match self.status {
            _ if !said.is_empty() => said.to_owned(),
            Some(status) => format!("exited with {status}"),
            None => "timed out".to_owned(),
        }
    }
}

/// Runs `command` to completion, or kills it at `timeout`: it never hangs its caller.
/// Output is read on threads, so a chatty command cannot block on a full pipe. A command
/// that cannot start is a `Ran` without status, saying why in `stderr`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Ran {
    let spawned = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            let program = command.get_program().to_string_lossy().into_owned();
            return Ran {
                status: None,
                stdout: String::new(),
                stderr: format!("cannot run {program}: {err}"),
            };
        }
    };
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = reader(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Ran { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_liveness() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        assert!(is_alive(pid));
        assert!(descendants(std::process::id()).contains(&pid));
        send_signal(pid, libc::SIGTERM).expect("signal");
        let status = child.wait().expect("wait");
        assert!(!status.success());
        assert!(!is_alive(pid));
    }

    #[test]
    fn bounded_commands_end_and_say_why() {
        let ran = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]),
            Duration::from_secs(5),
        );
        assert_eq!((ran.stdout.as_str(), ran.status.and_then(|s| s.code())), ("out\n", Some(3)));
        assert_eq!(ran.why(), "oops");
        let started = Instant::now();
        let ran = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200));
        assert!(ran.status.is_none() && started.elapsed() < Duration::from_secs(5));
        assert_eq!(ran.why(), "timed out");
        let ran = run_bounded(&mut Command::new("/nonexistent/program"), Duration::from_secs(1));
        assert!(!ran.success() && ran.why().contains("cannot run /nonexistent/program"), "{}", ran.why());
    }

    #[test]
    fn die_with_parent_leaves_the_child_working() {
        // That the child really dies with its parent is tested end to end in
        // bins/mmctl/tests (SIGKILL the supervisor, then look for its children).
        let mut command = Command::new("true");
        die_with_parent(&mut command);
        assert!(command.status().expect("runs").success());
    }
}
