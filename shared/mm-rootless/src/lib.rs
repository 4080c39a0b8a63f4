//! The project's rootless Podman on this host.
//!
//! Game servers run as containers of a *rootless* Podman: an unprivileged user's own
//! storage, user namespace and network (slirp4netns), so nothing the orchestrator asks of
//! Podman runs as root. When `mmctl` (or a test) runs as root, that user is the project's
//! own, [`PROJECT_USER`], which `just setup` creates; run by an ordinary user, it is that
//! user.
//!
//! - [`PodmanUser::detect`]: whose Podman, and *everything* missing for it to run, each
//!   problem with what to do about it;
//! - the runtime directory and default socket, where rootless Podman and systemd put them
//!   (`/run/user/<uid>/podman/podman.sock`);
//! - [`PodmanUser::service_command`]: `podman system service` as that user;
//! - [`PodmanUser::ensure_image`]: the game-server image in that user's storage, copied
//!   from root's when `just image` built it there;
//! - [`PodmanUser::remove_containers`] and [`PodmanUser::end_pause_process`]: what a stop
//!   must not leave behind.
//!
//! Every command here is bounded in time; none of them needs the API service.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mm_shared::process::run_bounded;

/// The unprivileged user whose Podman runs the game servers when the caller is root.
pub const PROJECT_USER: &str = "mmpodman";

/// The image the orchestrator's Podman driver runs (`just image` builds it).
pub const GAME_IMAGE: &str = "localhost/mm/game-server:latest";

/// How long one short Podman command (inspect, ps, rm) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Something this host lacks for rootless Podman, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("`{tool}` is not installed (Debian package {package}; `just setup` installs it)")]
    MissingTool { tool: &'static str, package: &'static str },
    #[error("user `{0}` does not exist (`just setup` creates it)")]
    NoUser(String),
    #[error(
        "user `{user}` has no subordinate {kind} range in /etc/sub{kind} (`just setup` adds one, \
         or: usermod --add-sub{kind}s 100000-165535 {user})"
    )]
    NoSubordinateIds { user: String, kind: &'static str },
    #[error("/dev/net/tun is missing: rootless networking (slirp4netns) needs the tun device")]
    NoTun,
    #[error("/dev/net/tun is not readable and writable by `{0}` (`just setup` runs: chmod 666 /dev/net/tun)")]
    TunDenied(String),
    #[error("no runtime directory for user `{0}`: set XDG_RUNTIME_DIR")]
    NoRuntimeDir(String),
}

/// Several problems, said in one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&text.join("; "))
    }
}

impl std::error::Error for Problems {}

/// A user account, as `getent passwd` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The game-server image in the Podman user's storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    /// It was there already (the same image as root's, when root has one).
    Present,
    /// Copied from root's storage (`podman save` | `podman load` as the user).
    Copied,
}

/// The user whose rootless Podman runs game servers, and how to run things as them.
#[derive(Debug, Clone)]
pub struct PodmanUser {
    pub account: Account,
    /// We are root and run Podman as another user (through `setpriv`).
    switch: bool,
    runtime_dir: PathBuf,
}

/// Is the calling process root?
#[allow(unsafe_code)]
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first `program` on PATH.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

impl PodmanUser {
    /// Whose Podman runs the game servers here, or every reason why none can.
    ///
    /// As root: [`PROJECT_USER`]. Otherwise: the calling user.
    pub fn detect() -> Result<Self, Problems> {
        let mut problems = Vec::new();
        for (tool, package) in [
            ("podman", "podman"),
            ("runc", "runc"),
            ("newuidmap", "uidmap"),
            ("newgidmap", "uidmap"),
            ("slirp4netns", "slirp4netns"),
            ("setpriv", "util-linux"),
        ] {
            if on_path(tool).is_none() {
                problems.push(Problem::MissingTool { tool, package });
            }
        }
        let switch = running_as_root();
        let account = if switch { lookup(PROJECT_USER) } else { lookup(&current_uid().to_string()) };
        let Some(account) = account else {
            let name = if switch { PROJECT_USER.to_owned() } else { format!("uid {}", current_uid()) };
            problems.push(Problem::NoUser(name));
            return Err(Problems(problems));
        };
        for kind in ["uid", "gid"] {
            let file = std::fs::read_to_string(format!("/etc/sub{kind}")).unwrap_or_default();
            if !has_subordinate_range(&file, &account) {
                problems.push(Problem::NoSubordinateIds { user: account.name.clone(), kind });
            }
        }
        match std::fs::metadata("/dev/net/tun") {
            Err(_) => problems.push(Problem::NoTun),
            Ok(meta) if !usable_by(meta.mode(), meta.uid(), meta.gid(), &account) => {
                problems.push(Problem::TunDenied(account.name.clone()));
            }
            Ok(_) => {}
        }
        let runtime_dir = if switch {
            Some(PathBuf::from(format!("/run/user/{}", account.uid)))
        } else {
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).or_else(|| {
                Some(PathBuf::from(format!("/run/user/{}", account.uid))).filter(|dir| dir.is_dir())
            })
        };
        let Some(runtime_dir) = runtime_dir else {
            problems.push(Problem::NoRuntimeDir(account.name.clone()));
            return Err(Problems(problems));
        };
        if problems.is_empty() { Ok(Self { account, switch, runtime_dir }) } else { Err(Problems(problems)) }
    }

    /// `mmpodman (uid 1001)`.
    pub fn describe(&self) -> String {
        format!("{} (uid {})", self.account.name, self.account.uid)
    }

    /// Whether Podman runs as another user than the caller (we are root).
    pub fn is_switched(&self) -> bool {
        self.switch
    }

    /// The user's runtime directory (`XDG_RUNTIME_DIR`): Podman keeps its run state here.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// Where rootless Podman's API socket lives by convention.
    pub fn default_socket(&self) -> PathBuf {
        self.runtime_dir.join("podman").join("podman.sock")
    }

    /// Makes the runtime directory (mode 0700, the user's) and the directory of `socket`,
    /// as systemd-logind would for a logged-in user. Root only creates what is missing.
    pub fn prepare(&self, socket: &Path) -> io::Result<()> {
        if self.switch {
            std::fs::create_dir_all("/run/user")?;
            self.make_own_dir(&self.runtime_dir, 0o700)?;
        }
        if let Some(parent) = socket.parent() {
            if self.switch && !parent.exists() {
                self.make_own_dir(parent, 0o700)?;
            } else {
                std::fs::create_dir_all(parent)?;
            }
        }
        Ok(())
    }

    fn make_own_dir(&self, dir: &Path, mode: u32) -> io::Result<()> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::os::unix::fs::chown(dir, Some(self.account.uid), Some(self.account.gid))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// `program` run as the Podman user, with that user's home, runtime dir and a clean
    /// environment. With `dies_with_parent` the kernel sends it SIGTERM when the calling
    /// thread's process dies (switching users clears that setting, so `setpriv` sets it
    /// again after the switch).
    pub fn command(&self, program: &str, dies_with_parent: bool) -> Command {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
        let mut command;
        if self.switch {
            command = Command::new("setpriv");
            command
                .arg(format!("--reuid={}", self.account.uid))
                .arg(format!("--regid={}", self.account.gid))
                .arg("--init-groups");
            if dies_with_parent {
                command.args(["--pdeathsig", "TERM"]);
            }
            command
                .args(["env", "-i"])
                .arg(format!("HOME={}", self.account.home.display()))
                .arg(format!("USER={}", self.account.name))
                .arg(format!("XDG_RUNTIME_DIR={}", self.runtime_dir.display()))
                .arg(format!("PATH={path}"))
                .arg(program)
                .current_dir(&self.account.home);
        } else {
            command = Command::new(program);
            command.env("XDG_RUNTIME_DIR", &self.runtime_dir);
            if dies_with_parent {
                mm_shared::process::die_with_parent(&mut command);
            }
        }
        command
    }

    /// `podman system service --time=0 unix://<socket>` as the user: the API the
    /// orchestrator drives. It never idles out; stop it with SIGTERM.
    pub fn service_command(&self, socket: &Path, dies_with_parent: bool) -> Command {
        let mut command = self.command("podman", dies_with_parent);
        command.args(["system", "service", "--time=0"]).arg(format!("unix://{}", socket.display()));
        command
    }

    /// `podman <args>` as the user, bounded in time; its stdout, or why it failed.
    pub fn podman(&self, args: &[&str]) -> Result<String, String> {
        let mut command = self.command("podman", false);
        command.args(args);
        let ran = run_bounded(&mut command, COMMAND_TIMEOUT);
        if ran.success() {
            Ok(ran.stdout.trim().to_owned())
        } else {
            Err(format!("podman {}: {}", args.join(" "), ran.why()))
        }
    }

    /// The id of `image` in the user's storage.
    pub fn image_id(&self, image: &str) -> Option<String> {
        self.podman(&["image", "inspect", "--format", "{{.Id}}", image]).ok().filter(|id| !id.is_empty())
    }

    /// Makes sure `image` is in the user's storage. Root's copy (where `just image` builds
    /// as root) wins over an older one of the user's.
    pub fn ensure_image(&self, image: &str) -> Result<ImageState, String> {
        let mine = self.image_id(image);
        if !self.switch {
            return mine.map(|_| ImageState::Present).ok_or_else(|| missing_image(image));
        }
        let root = root_image_id(image);
        match (root, mine) {
            (None, Some(_)) => Ok(ImageState::Present),
            (None, None) => Err(missing_image(image)),
            (Some(root), Some(mine)) if root == mine => Ok(ImageState::Present),
            (Some(_), previous) => {
                self.copy_from_root(image)?;
                if let Some(previous) = previous {
                    // The old copy, now untagged; kept if a container still uses it.
                    let _ = self.podman(&["rmi", &previous]);
                }
                Ok(ImageState::Copied)
            }
        }
    }

    /// `podman save` as root into a file the user can read, `podman load` as the user.
    fn copy_from_root(&self, image: &str) -> Result<(), String> {
        let archive =
            std::env::temp_dir().join(format!("mm-image-{}-{}.tar", self.account.uid, std::process::id()));
        let _ = std::fs::remove_file(&archive);
        let saved = run_bounded(
            Command::new("podman").args(["save", "--quiet", "-o"]).arg(&archive).arg(image),
            COMMAND_TIMEOUT,
        );
        if !saved.success() {
            let _ = std::fs::remove_file(&archive);
            return Err(format!("podman save {image}: {}", saved.why()));
        }
        let loaded = std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644))
            .map_err(|err| format!("chmod {}: {err}", archive.display()))
            .and_then(|()| self.podman(&["load", "--quiet", "-i", &archive.display().to_string()]));
        let _ = std::fs::remove_file(&archive);
        loaded.map(|_| ())
    }

    /// Force-removes every game-server container of `node` (labels `mm.game-id` and
    /// `mm.node=<node>`) from the user's storage: what a node killed without its clean-up
    /// left. Returns how many there were.
    pub fn remove_containers(&self, node: &str) -> Result<usize, String> {
        use mm_shared::protocol::game_server::labels;
        let listed = self.podman(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}", labels::GAME_ID),
            "--filter",
            &format!("label={}={node}", labels::NODE),
        ])?;
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut args = vec!["rm", "--force", "--time", "2"];
        args.extend(&ids);
        self.podman(&args)?;
        Ok(ids.len())
    }

    /// The game-server containers of `node` in the user's storage, running or not.
    pub fn containers(&self, node: &str) -> Result<Vec<String>, String> {
        use mm_shared::protocol::game_server::labels;
        let listed = self.podman(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={}={node}", labels::NODE),
            "--format",
            "{{.Names}}",
        ])?;
        Ok(listed.lines().map(str::to_owned).filter(|name| !name.is_empty()).collect())
    }

    /// Deletes the project user's *ghost* containers: ones the OCI runtime (runc) still
    /// holds but Podman's database does not know, older than `grace`. A Podman service
    /// killed between creating a container and recording it leaves one (its `runc init`
    /// and `conmon` wait forever, and nothing in Podman can list or remove it). Only for
    /// the project user (as root), whose containers are all the project's; `grace` spares
    /// a container another live service is creating right now. Returns how many went.
    pub fn remove_ghost_containers(&self, grace: Duration) -> Result<usize, String> {
        if !self.switch {
            return Ok(0);
        }
        let root = self.runtime_dir.join("runc");
        if !root.is_dir() {
            return Ok(0);
        }
        let runc = |args: &[&str]| {
            let mut command = self.command("runc", false);
            command.arg("--root").arg(&root).args(args);
            run_bounded(&mut command, COMMAND_TIMEOUT)
        };
        let listed = runc(&["list", "--quiet"]);
        if !listed.success() {
            return Err(format!("runc list: {}", listed.why()));
        }
        let held: Vec<String> = listed.stdout.split_whitespace().map(str::to_owned).collect();
        if held.is_empty() {
            return Ok(0);
        }
        let known = self.podman(&["ps", "--all", "--no-trunc", "--format", "{{.ID}}"])?;
        let known: std::collections::HashSet<&str> = known.split_whitespace().collect();
        let mut removed = 0;
        for id in ghosts(&held, &known) {
            // The state directory's age is the container's (runc writes it at create).
            let age = std::fs::metadata(root.join(id))
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|at| at.elapsed().ok());
            if age.is_none_or(|age| age < grace) {
                continue;
            }
            let deleted = runc(&["delete", "--force", id]);
            if !deleted.success() {
                return Err(format!("runc delete --force {id}: {}", deleted.why()));
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Ends rootless Podman's pause process (it holds the user namespace open between
    /// Podman commands) once nothing else of the project user runs: it is the last thing
    /// a stopped stack would leave. Only for the project user (as root); an ordinary
    /// user's own Podman is theirs to manage. Returns whether it ended one.
    pub fn end_pause_process(&self) -> bool {
        if !self.switch {
            return false;
        }
        let pid_file = self.runtime_dir.join("libpod").join("tmp").join("pause.pid");
        let Some(pause) =
            std::fs::read_to_string(pid_file).ok().and_then(|text| text.trim().parse::<u32>().ok())
        else {
            return false;
        };
        let others = processes_of(self.account.uid).into_iter().any(|pid| pid != pause);
        if others || process_uid(pause) != Some(self.account.uid) {
            return false;
        }
        mm_shared::process::send_signal(pause, libc::SIGTERM).is_ok()
            && mm_shared::probe::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                !mm_shared::process::is_alive(pause)
            })
    }
}

fn missing_image(image: &str) -> String {
    format!("the image {image} is missing: build it with `just image`")
}

/// The id of `image` in root's (the caller's) storage.
fn root_image_id(image: &str) -> Option<String> {
    let ran = run_bounded(
        Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", image]),
        COMMAND_TIMEOUT,
    );
    ran.success().then(|| ran.stdout.trim().to_owned()).filter(|id| !id.is_empty())
}

#[allow(unsafe_code)]
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `getent passwd <name-or-uid>`: local files, LDAP, whatever NSS the host uses.
fn lookup(user: &str) -> Option<Account> {
    let ran = run_bounded(Command::new("getent").args(["passwd", user]), Duration::from_secs(10));
    if !ran.success() {
        return None;
    }
    parse_passwd(ran.stdout.lines().next()?)
}

/// `name:x:uid:gid:gecos:home:shell`.
fn parse_passwd(line: &str) -> Option<Account> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 {
        return None;
    }
    Some(Account {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: PathBuf::from(fields[5]),
    })
}

/// Does `/etc/subuid` (or subgid) give the account at least one range of 65536 ids
/// (what one container's user namespace maps)? Lines are `name-or-uid:start:count`.
fn has_subordinate_range(file: &str, account: &Account) -> bool {
    file.lines().any(|line| {
        let mut fields = line.trim().split(':');
        let owner = fields.next().unwrap_or_default();
        let count = fields.nth(1).and_then(|count| count.parse::<u64>().ok()).unwrap_or(0);
        (owner == account.name || owner == account.uid.to_string()) && count >= 65536
    })
}

/// Can `account` read and write a file with this mode and owner?
fn usable_by(mode: u32, owner: u32, group: u32, account: &Account) -> bool {
    let bits = if owner == account.uid {
        mode >> 6
    } else if group == account.gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o6 == 0o6
}

/// The container ids runc `held` that Podman does not know (`known`: full ids).
fn ghosts<'a>(held: &'a [String], known: &std::collections::HashSet<&str>) -> Vec<&'a str> {
    held.iter().map(String::as_str).filter(|id| valid_container_id(id) && !known.contains(id)).collect()
}

/// A container id as Podman makes them: 64 hex digits (nothing else is passed to runc).
fn valid_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The pids of live processes whose real uid is `uid`, from `/proc`.
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_uid(*pid) == Some(uid) && mm_shared::process::is_alive(*pid))
        .collect()
}

/// The real uid of process `pid` (`Uid:` in `/proc/<pid>/status`).
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
}

/// Does an HTTP server on the unix socket answer `GET /_ping` with 200 (Podman's liveness
/// check) within `timeout`?
pub fn ping(socket: &Path, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    reply.starts_with("HTTP/1.") && reply.lines().next().is_some_and(|status| status.contains(" 200 "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account { name: "mmpodman".into(), uid: 1001, gid: 1001, home: "/home/mmpodman".into() }
    }

    #[test]
    fn ghosts_are_the_runtimes_containers_podman_does_not_know() {
        let known_id = "a".repeat(64);
        let ghost_id = format!("{}0", "b".repeat(63));
        let held = vec![known_id.clone(), ghost_id.clone(), "--help".to_owned(), "c".repeat(12)];
        let known: std::collections::HashSet<&str> = [known_id.as_str()].into();
        assert_eq!(ghosts(&held, &known), [ghost_id.as_str()], "only well-formed ids Podman lacks");
    }

    #[test]
    fn passwd_lines_parse() {
        let parsed = parse_passwd("mmpodman:x:1001:1001:matchmaking-sim:/home/mmpodman:/usr/sbin/nologin");
        assert_eq!(parsed, Some(account()));
        assert_eq!(parse_passwd("broken:x:abc:1:g:/h:/s"), None);
        assert_eq!(parse_passwd("short:x:1"), None);
    }

    #[test]
    fn subordinate_ranges_by_name_or_uid_and_big_enough() {
        let me = account();
        assert!(has_subordinate_range("root:1:2\nmmpodman:100000:65536\n", &me));
        assert!(has_subordinate_range("1001:200000:70000", &me));
        assert!(!has_subordinate_range("mmpodman:100000:1000", &me), "too few ids for a container");
        assert!(!has_subordinate_range("mmpodmanx:100000:65536\nother:1:65536", &me));
        assert!(!has_subordinate_range("", &me));
    }

    #[test]
    fn tun_permissions_are_judged_for_the_user() {
        let me = account();
        assert!(usable_by(0o20666, 0, 0, &me), "crw-rw-rw- root");
        assert!(!usable_by(0o20660, 0, 0, &me), "crw-rw---- root:root");
        assert!(usable_by(0o20660, 0, 1001, &me), "crw-rw---- root:mmpodman");
        assert!(usable_by(0o20600, 1001, 0, &me), "crw------- mmpodman");
        assert!(!usable_by(0o20644, 0, 0, &me), "read-only for others");
    }

    #[test]
    fn problems_say_what_to_do() {
        let problems = Problems(vec![
            Problem::MissingTool { tool: "runc", package: "runc" },
            Problem::NoSubordinateIds { user: "mmpodman".into(), kind: "uid" },
        ]);
        let text = problems.to_string();
        assert!(text.contains("`runc` is not installed") && text.contains("just setup"), "{text}");
        assert!(text.contains("/etc/subuid") && text.contains("usermod --add-subuids"), "{text}");
    }

    #[test]
    fn our_own_processes_are_found_by_uid() {
        let mine = processes_of(current_uid());
        assert!(mine.contains(&std::process::id()));
        assert_eq!(process_uid(std::process::id()), Some(current_uid()));
    }

    #[test]
    fn ping_is_false_where_nothing_listens() {
        let dir = std::env::temp_dir().join(format!("mm-rootless-ping-{}", std::process::id()));
        assert!(!ping(&dir.join("none.sock"), Duration::from_millis(100)));
    }
}
