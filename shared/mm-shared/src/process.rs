//! Child processes that cannot outlive their parent, and signals to them.
//!
//! The supervisor (`mmctl dev`) and the test servers start long-running children. If
//! the parent is killed with SIGKILL it cannot clean up, so each child asks the kernel
//! (Linux `PR_SET_PDEATHSIG`) to send it SIGTERM when its parent dies.
//!
//! Caveat: the kernel ties this to the *thread* that spawned the child. Spawn from a
//! thread that lives as long as the child should (a runtime worker or the main thread,
//! never a short-lived blocking-pool thread).

use std::io;
use std::process::Command;

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
    fn die_with_parent_leaves_the_child_working() {
        // That the child really dies with its parent is tested end to end in
        // bins/mmctl/tests (SIGKILL the supervisor, then look for its children).
        let mut command = Command::new("true");
        die_with_parent(&mut command);
        assert!(command.status().expect("runs").success());
    }
}
