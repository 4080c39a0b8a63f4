//! Several hosts on one machine, for tests of what crosses a network: each host is a
//! network namespace with its own loopback and one address on a private LAN, and the LAN
//! is a bridge inside a namespace of its own (the "switch"). Nothing is added to the
//! machine's own network namespace, so a test's traffic never leaves its namespaces.
//!
//! ```text
//!   ns <id>-backend ─veth─┐
//!   ns <id>-load1   ─veth─┼─ br0 in ns <id>-sw
//!   ns <id>-node-a  ─veth─┘
//! ```
//!
//! - [`Lan::command`] runs a program inside a host (`ip netns exec`);
//! - [`Lan::run_in`] runs a closure on a thread of its own inside a host: every socket
//!   it opens (an async runtime's included) is that host's, so a test can watch the hosts
//!   from one of them with ordinary clients;
//! - [`Lan::cut`] and [`Lan::restore`] take a host's link down and up at the switch: the
//!   host keeps running but reaches nobody and nobody reaches it;
//! - dropping the [`Lan`] kills whatever still runs in its namespaces (only the test's own
//!   processes can be there) and deletes them, even when the test failed. Namespaces an
//!   earlier, killed test left (named after its pid) are deleted when a new LAN is made.
//!
//! Needs root (CI and `just test` run as root) and iproute2's `ip`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mm_shared::process::run_bounded;

use crate::{Error, Result, require};

/// Prefix of every namespace a LAN makes: `mmt<pid>x<n>-<host>`.
const PREFIX: &str = "mmt";

/// LANs made by this process, for unique names.
static MADE: AtomicU32 = AtomicU32::new(0);

/// One host of a [`Lan`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name in the test (`backend`, `load1`, ...).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the LAN.
    pub addr: Ipv4Addr,
    /// Its veth end in the switch namespace (taken down to cut it off).
    switch_port: String,
}

/// Hosts joined by a switch, all in namespaces of their own.
#[derive(Debug)]
pub struct Lan {
    id: String,
    switch: String,
    hosts: Vec<Host>,
}

/// `ip <args>`, bounded; an error naming the command when it fails.
fn ip(args: &[&str]) -> Result<()> {
    let ran = run_bounded(Command::new("ip").args(args), Duration::from_secs(10));
    if ran.success() {
        Ok(())
    } else {
        Err(Error::Io(std::io::Error::other(format!("ip {}: {}", args.join(" "), ran.why()))))
    }
}

/// `ip netns exec <netns> ip <args>`.
fn ip_in(netns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", netns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// The namespaces that exist now.
fn namespaces() -> Vec<String> {
    let ran = run_bounded(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10));
    ran.stdout.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

/// Kills every process in `netns` (`ip netns pids`), then deletes it.
fn delete_namespace(netns: &str) {
    let pids = run_bounded(Command::new("ip").args(["netns", "pids", netns]), Duration::from_secs(10));
    for pid in pids.stdout.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()) {
        let _ = mm_shared::process::send_signal(pid, libc::SIGKILL);
    }
    let _ = ip(&["netns", "del", netns]);
}

/// Deletes the namespaces of LANs whose test process is gone (killed at a timeout, so
/// its `Drop` never ran).
fn reap_stale() {
    for netns in namespaces() {
        let Some(rest) = netns.strip_prefix(PREFIX) else { continue };
        let pid = rest.split(['x', '-']).next().and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !mm_shared::process::is_alive(pid)
        {
            delete_namespace(&netns);
        }
    }
}

impl Lan {
    /// Makes one namespace per name in `hosts`, on the LAN 10.199.0.0/24 (each LAN is
    /// alone in its switch, so LANs of tests running at once do not meet), at
    /// 10.199.0.11, .12, ... in order.
    pub fn new(hosts: &[&str]) -> Result<Lan> {
        require("ip", "Debian package iproute2")?;
        reap_stale();
        let id = format!("{PREFIX}{}x{}", std::process::id(), MADE.fetch_add(1, Ordering::Relaxed));
        let switch = format!("{id}-sw");
        let mut lan = Lan { id, switch, hosts: Vec::new() };
        ip(&["netns", "add", &lan.switch])?;
        ip_in(&lan.switch, &["link", "set", "lo", "up"])?;
        ip_in(&lan.switch, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&lan.switch, &["link", "set", "br0", "up"])?;
        for (index, name) in hosts.iter().enumerate() {
            lan.add_host(index, name)?;
        }
        Ok(lan)
    }

    fn add_host(&mut self, index: usize, name: &str) -> Result<()> {
        let netns = format!("{}-{name}", self.id);
        let addr = Ipv4Addr::new(10, 199, 0, 11 + u8::try_from(index).unwrap_or(200));
        // Interface names are at most 15 bytes and must not clash in the machine's own
        // namespace while the pair is made there: a counter of this process, and the pid.
        let tag = format!("{:x}{}", std::process::id() % 0xffff, MADE.fetch_add(1, Ordering::Relaxed));
        let (host_end, switch_end) = (format!("mh{tag}"), format!("ms{tag}"));
        ip(&["netns", "add", &netns])?;
        // Recorded now: Drop deletes it even if the rest fails.
        self.hosts.push(Host {
            name: name.to_owned(),
            netns: netns.clone(),
            addr,
            switch_port: switch_end.clone(),
        });
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &switch_end])?;
        ip(&["link", "set", &host_end, "netns", &netns])?;
        ip(&["link", "set", &switch_end, "netns", &self.switch])?;
        ip_in(&netns, &["link", "set", "lo", "up"])?;
        ip_in(&netns, &["addr", "add", &format!("{addr}/24"), "dev", &host_end])?;
        ip_in(&netns, &["link", "set", &host_end, "up"])?;
        ip_in(&self.switch, &["link", "set", &switch_end, "master", "br0"])?;
        ip_in(&self.switch, &["link", "set", &switch_end, "up"])
    }

    /// The host named `name`; panics if the test never made it (a test bug).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("no host {name} on this LAN"))
    }

    /// `program` to run inside `host` (`ip netns exec <netns> <program>`).
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.host(host).netns]).arg(program);
        command
    }

    /// Runs `work` on a new thread that has joined `host`'s network namespace (the rest of
    /// the process stays where it is) and returns its result; a panic in `work` is
    /// passed on. Programs it starts run in `host` too, unless told otherwise.
    pub fn run_in<T: Send>(&self, host: &str, work: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.host(host).netns);
        let namespace = std::fs::File::open(&path)?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                join_namespace(&namespace)?;
                Ok(work())
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Takes `host`'s link down at the switch: it reaches nobody, nobody reaches it.
    pub fn cut(&self, host: &str) -> Result<()> {
        ip_in(&self.switch, &["link", "set", &self.host(host).switch_port, "down"])
    }

    /// Puts `host`'s link back up.
    pub fn restore(&self, host: &str) -> Result<()> {
        ip_in(&self.switch, &["link", "set", &self.host(host).switch_port, "up"])
    }
}

/// Moves the calling thread (only it: network namespaces are per thread) into the
/// network namespace `namespace` refers to.
#[allow(unsafe_code)]
fn join_namespace(namespace: &std::fs::File) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) with a valid, open descriptor and CLONE_NEWNET changes only this
    // thread's network namespace; no memory is shared with the call.
    let joined = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    if joined == 0 { Ok(()) } else { Err(Error::Io(std::io::Error::last_os_error())) }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            delete_namespace(&host.netns);
        }
        delete_namespace(&self.switch);
    }
}
