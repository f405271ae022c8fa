//! Owning each vassal's process tree, so that stopping a vassal leaves nothing behind.
//!
//! Where the emperor may create cgroups (cgroup v2, a subtree it can write: root, or a systemd
//! unit with `Delegate=yes`), every vassal runs in a cgroup of its own:
//!
//! ```text
//! <base>/emperor/         the emperor itself (a leaf: no process lives in an inner node)
//! <base>/vassals/NAME/    one vassal and everything it forks
//! ```
//!
//! `<base>` is the emperor's own cgroup when the emperor is alone in it (a delegated service
//! cgroup), else a fresh `<own cgroup>/emperor.PID`. The spawn child joins its cgroup before
//! exec (it writes `0` to the cgroup's `cgroup.procs`), so nothing it forks can escape; once the
//! vassal's process is reaped, what is left in the cgroup is killed (`cgroup.kill`, or SIGKILL to
//! every member of `cgroup.procs` on kernels without it) and the cgroup removed.
//!
//! Elsewhere each vassal leads its own session and process group, the emperor is a child
//! subreaper (orphans are re-parented to it and reaped), and once the vassal's process is
//! reaped its process group is killed. A descendant that leaves the group (`setsid`) escapes
//! that fallback; it cannot escape a cgroup.
//!
//! This module does the file-system and signal work; *when* to sweep is the core's decision:
//! an incarnation is swept when the core releases it ([`crate::core::Action::Release`]).

mod hierarchy;
mod paths;

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::core::Inc;

pub use paths::{cgroup2_mount, dir_name, populated, v2_path};

use hierarchy::{write_file, Cgroups};

/// `--emperor-process-tree`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A cgroup per vassal where usable, else process groups.
    Auto,
    /// A cgroup per vassal; startup fails when that is not possible.
    Cgroup,
    /// Process groups (and the emperor as child subreaper).
    Pgroup,
}

/// An `--emperor-process-tree` value that is none of the modes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--emperor-process-tree {0:?}: expected auto, cgroup or pgroup")]
pub struct ParseModeError(pub String);

impl std::str::FromStr for Mode {
    type Err = ParseModeError;
    fn from_str(s: &str) -> Result<Mode, ParseModeError> {
        match s {
            "auto" => Ok(Mode::Auto),
            "cgroup" | "cgroup2" => Ok(Mode::Cgroup),
            "pgroup" => Ok(Mode::Pgroup),
            _ => Err(ParseModeError(s.to_string())),
        }
    }
}

const WHAT_TO_DO: &str = "run the emperor as root with a writable cgroup v2 hierarchy, or under systemd with `Delegate=yes`, or pass --emperor-process-tree=pgroup";

/// Why cgroups cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup v2 file system in `/proc/self/mountinfo`.
    #[error("no cgroup v2 file system is mounted; {WHAT_TO_DO}")]
    NoMount,
    /// `/proc/self/cgroup` has no `0::` line (the process is not in the v2 hierarchy).
    #[error("/proc/self/cgroup names no cgroup v2 path for the emperor; {WHAT_TO_DO}")]
    NotInHierarchy,
    /// A file of the cgroup file system could not be read or written.
    #[error("cannot {what} {}: {err}; {WHAT_TO_DO}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
}

/// Where one incarnation was put: its cgroup (a path in the hierarchy, as `/proc/PID/cgroup`
/// shows it) and an open `cgroup.procs` for the spawn child to join it.
#[derive(Debug)]
pub struct Placement {
    /// The path in the hierarchy, e.g. `/emperor.42/vassals/app.ini`.
    pub path: String,
    dir: PathBuf,
    procs: std::fs::File,
}

impl Placement {
    /// The descriptor of the cgroup's `cgroup.procs` (CLOEXEC), for the spawn child.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

#[derive(Debug)]
struct Owned {
    /// The process group to kill (pgroup mode).
    pgid: Option<i32>,
    /// The cgroup directory (cgroup mode).
    dir: Option<PathBuf>,
    /// The path in the hierarchy, for the stats.
    path: Option<String>,
}

/// The process-tree owner of the runtime (see the module documentation).
#[derive(Debug)]
pub struct Tree {
    cg: Option<Cgroups>,
    owned: HashMap<Inc, Owned>,
    /// The emperor's own process group (never killed).
    own_pgid: i32,
    /// Process groups killed whose last members may still be exiting (waited for at exit).
    killed: Vec<i32>,
    /// Already told that a vassal could not get a cgroup.
    warned: bool,
    done: bool,
}

/// How long removal of a swept cgroup is retried before it is left (with a warning).
const GIVE_UP: Duration = Duration::from_secs(30);

impl Tree {
    /// Sets up `mode` and logs which mechanism is in use. `Err` only for `Mode::Cgroup` when
    /// cgroups cannot be used.
    pub fn setup(mode: Mode) -> Result<Tree, CgroupError> {
        let own_pgid = nix::unistd::getpgrp().as_raw();
        let mut t = Tree {
            cg: None,
            owned: HashMap::new(),
            own_pgid,
            killed: Vec::new(),
            warned: false,
            done: false,
        };
        let why = match mode {
            Mode::Pgroup => "--emperor-process-tree=pgroup".to_string(),
            _ => match Cgroups::setup() {
                Ok(cg) => {
                    info!(
                        "process tree: cgroup2:{} (each vassal in {}/vassals/NAME, the emperor in {}/emperor{})",
                        cg.base_path,
                        cg.base.display(),
                        cg.base.display(),
                        if cg.has_kill { "" } else { "; no cgroup.kill: leftovers are killed one by one" }
                    );
                    t.cg = Some(cg);
                    return Ok(t);
                }
                Err(e) if mode == Mode::Cgroup => return Err(e),
                Err(e) => e.to_string(),
            },
        };
        // Orphans of a vassal are re-parented to the emperor (and reaped by it).
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!("cannot become a child subreaper: {e}; orphans of vassals go to init");
        }
        info!("process tree: pgroup (each vassal in its own process group, the emperor a child subreaper; cgroups not used: {why})");
        Ok(t)
    }

    /// Before the emperor drops privileges to `uid`:`gid` (`--uid`/`--gid`): gives it the
    /// cgroup files it needs to go on creating, joining, killing and removing vassal cgroups
    /// (what systemd's `Delegate=yes` gives a `User=` unit). Failures are logged; the vassals
    /// then fall back to their process groups.
    pub fn hand_over(&self, uid: u32, gid: u32) {
        let Some(cg) = &self.cg else { return };
        let v = cg.base.join("vassals");
        let files = [
            cg.base.clone(),
            cg.base.join("cgroup.procs"),
            cg.base.join("emperor").join("cgroup.procs"),
            v.clone(),
            v.join("cgroup.procs"),
            v.join("cgroup.threads"),
            v.join("cgroup.subtree_control"),
            v.join("cgroup.kill"),
        ];
        for f in files.iter().filter(|f| f.exists()) {
            if let Err(e) = std::os::unix::fs::chown(f, Some(uid), Some(gid)) {
                warn!("cannot hand {} to uid {uid}: {e}; vassal cgroups may fail after privileges are dropped", f.display());
            }
        }
    }

    /// `cgroup2:/PATH` or `pgroup`, for the stats.
    pub fn label(&self) -> String {
        match &self.cg {
            Some(cg) => format!("cgroup2:{}", cg.base_path),
            None => "pgroup".to_string(),
        }
    }

    /// The cgroup to start incarnation `inc` of vassal `name` in (`None` without cgroups, or
    /// when it cannot be made: the vassal then runs with its process group as the fallback).
    pub fn place(&mut self, inc: Inc, name: &str) -> Option<Placement> {
        let cg = self.cg.as_mut()?;
        match cg.make(inc, name) {
            Ok(p) => Some(p),
            Err(e) => {
                if !std::mem::replace(&mut self.warned, true) {
                    warn!(vassal = %name, "cannot create a cgroup for vassal {name}: {e}; it runs in its process group only (later failures are logged at debug level)");
                } else {
                    debug!(vassal = %name, "cannot create a cgroup for vassal {name}: {e}");
                }
                None
            }
        }
    }

    /// A placement whose spawn failed: its cgroup is removed.
    pub fn discard(&mut self, p: Placement) {
        let _ = std::fs::remove_dir(&p.dir);
    }

    /// Incarnation `inc` runs as `pid` (in `placement` when there is one). Every spawned
    /// vassal leads its own process group.
    pub fn started(&mut self, inc: Inc, pid: i32, placement: Option<Placement>) {
        if let Some(p) = &placement {
            // Already there when the spawn child joined it (a no-op then); a launcher that
            // does not apply `cgroup_procs` gets its process moved now.
            if let Err(e) = (&p.procs).write_all(pid.to_string().as_bytes()) {
                debug!(pid, "cannot move pid {pid} into {}: {e}", p.path);
            }
        }
        let (dir, path) = match placement {
            Some(p) => (Some(p.dir), Some(p.path)),
            None => (None, None),
        };
        self.owned.insert(
            inc,
            Owned {
                pgid: Some(pid),
                dir,
                path,
            },
        );
    }

    /// Incarnation `inc` of `name` was adopted from a fork server as `pid`: moved into a cgroup
    /// of its own (its children forked before the move stay where they are), and its process
    /// group noted.
    pub fn adopted(&mut self, inc: Inc, name: &str, pid: i32) {
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .ok()
            .map(|p| p.as_raw());
        let placement = self.place(inc, name).and_then(|p| {
            match write_file(&p.dir.join("cgroup.procs"), &pid.to_string()) {
                Ok(()) => Some(p),
                Err(e) => {
                    warn!(vassal = %name, pid, "cannot move adopted vassal {name} into {}: {e}", p.path);
                    let _ = std::fs::remove_dir(&p.dir);
                    None
                }
            }
        });
        let (dir, path) = match placement {
            Some(p) => (Some(p.dir), Some(p.path)),
            None => (None, None),
        };
        self.owned.insert(inc, Owned { pgid, dir, path });
    }

    /// The cgroup directory of incarnation `inc` (cgroup mode).
    pub fn dir_of(&self, inc: Inc) -> Option<&Path> {
        self.owned.get(&inc).and_then(|o| o.dir.as_deref())
    }

    /// The cgroup (path in the hierarchy) of incarnation `inc`.
    pub fn cgroup_of(&self, inc: Inc) -> Option<&str> {
        self.owned.get(&inc).and_then(|o| o.path.as_deref())
    }

    /// Incarnation `inc` is over (its process was reaped): kills what is left of its tree and
    /// removes its cgroup (retried by [`Tree::poll`] while its last processes exit).
    pub fn sweep(&mut self, inc: Inc) {
        let Some(o) = self.owned.remove(&inc) else {
            return;
        };
        if let (Some(dir), Some(cg)) = (&o.dir, self.cg.as_mut()) {
            cg.kill(dir);
            cg.pending.insert(dir.clone(), (Instant::now(), 0));
            cg.retry(Instant::now());
            return;
        }
        // The group of another live incarnation (e.g. a fork server and what it adopted) or
        // the emperor's own is never killed.
        if let Some(g) = o.pgid.filter(|&g| {
            g > 1 && g != self.own_pgid && !self.owned.values().any(|x| x.pgid == Some(g))
        }) {
            match nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(g),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                Ok(()) => {
                    debug!(pgid = g, "killed what was left of process group {g}");
                    self.killed.retain(|&k| group_alive(k));
                    self.killed.push(g);
                }
                Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => debug!(pgid = g, "cannot kill process group {g}: {e}"),
            }
        }
    }

    /// Retries removing swept cgroups that were still busy.
    pub fn poll(&mut self, now: Instant) {
        if let Some(cg) = self.cg.as_mut() {
            cg.retry(now);
        }
    }

    /// When [`Tree::poll`] wants to run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let cg = self.cg.as_ref()?;
        cg.pending
            .values()
            .map(|(since, n)| *since + backoff(*n))
            .min()
    }

    /// At exit: kills everything left in the vassal cgroups, waits (bounded) for it to go and
    /// removes the cgroups the emperor made. Idempotent.
    pub fn shutdown(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let incs: Vec<Inc> = self.owned.keys().copied().collect();
        for inc in incs {
            self.sweep(inc);
        }
        if let Some(cg) = self.cg.as_mut() {
            cg.shutdown();
        }
        // Killed groups: their members are children of the emperor (a subreaper) once their
        // vassal is gone; reap them until every group is empty (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            while let Ok(st) = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(-1),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                if st == nix::sys::wait::WaitStatus::StillAlive {
                    break;
                }
            }
            self.killed.retain(|&g| group_alive(g));
            if self.killed.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    "process groups {:?} still have members after 5 s of SIGKILL",
                    self.killed
                );
                break;
            }
            // Bounded wait at exit for killed processes to finish exiting.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True while process group `g` has a member (a zombie counts until it is reaped).
fn group_alive(g: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), None) != Err(nix::errno::Errno::ESRCH)
}

fn backoff(n: u32) -> Duration {
    Duration::from_millis((5u64 << n.min(8)).min(1000))
}

#[cfg(test)]
mod tests;
