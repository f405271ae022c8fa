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

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::core::Inc;

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

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "cgroup" | "cgroup2" => Ok(Mode::Cgroup),
            "pgroup" => Ok(Mode::Pgroup),
            _ => Err(format!(
                "--emperor-process-tree {s:?}: expected auto, cgroup or pgroup"
            )),
        }
    }
}

/// Why cgroups cannot be used.
#[derive(Debug)]
pub enum CgroupError {
    /// No cgroup v2 file system in `/proc/self/mountinfo`.
    NoMount,
    /// `/proc/self/cgroup` has no `0::` line (the process is not in the v2 hierarchy).
    NotInHierarchy,
    /// A file of the cgroup file system could not be read or written.
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
}

const WHAT_TO_DO: &str = "run the emperor as root with a writable cgroup v2 hierarchy, or under systemd with `Delegate=yes`, or pass --emperor-process-tree=pgroup";

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupError::NoMount => {
                write!(f, "no cgroup v2 file system is mounted; {WHAT_TO_DO}")
            }
            CgroupError::NotInHierarchy => write!(
                f,
                "/proc/self/cgroup names no cgroup v2 path for the emperor; {WHAT_TO_DO}"
            ),
            CgroupError::Io { what, path, err } => {
                write!(f, "cannot {what} {}: {err}; {WHAT_TO_DO}", path.display())
            }
        }
    }
}

impl std::error::Error for CgroupError {}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |err| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// The mount point of the cgroup v2 file system in a `/proc/self/mountinfo` text, when its
/// root is the hierarchy's root (a bind mount of a sub-tree would make paths ambiguous).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mut f = pre.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape_mount(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (`0::PATH`) in a `/proc/PID/cgroup` text.
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end())
        .filter(|p| p.starts_with('/'))
}

/// `populated` of a `cgroup.events` text (`None` when absent).
pub fn populated(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .map(|v| v.trim() == "1")
}

/// A directory name for vassal `name`: bytes outside `[A-Za-z0-9._:@+=,-]` become `_`, a
/// leading dot or a name of the cgroup interface's own (`cgroup.*`) gets a `_` prefix, and it
/// is cut to 200 bytes.
pub fn dir_name(name: &str) -> String {
    let mut s: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._:@+=,-".contains(&b) {
                b as char
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    if s.is_empty() || s.starts_with('.') || s.starts_with("cgroup.") {
        s.insert(0, '_');
    }
    s
}

/// Reads at most 64 KiB of a small cgroup interface file.
fn read_small(path: &Path) -> io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut s = String::new();
    f.take(64 * 1024).read_to_string(&mut s)?;
    Ok(s)
}

fn write_file(path: &Path, data: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(data.as_bytes())
}

/// Removes `dir` and the cgroups below it (depth first); `EBUSY` while processes remain.
fn remove_tree(dir: &Path, depth: u32) -> io::Result<()> {
    if depth < 16 {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove_tree(&e.path(), depth + 1)?;
                }
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
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

#[derive(Debug)]
struct Cgroups {
    /// The hierarchy's mount point.
    mount: PathBuf,
    /// The emperor's cgroup at startup (directory).
    original: PathBuf,
    /// `<base>` (directory) and its path in the hierarchy.
    base: PathBuf,
    base_path: String,
    /// `<base>` was made by this emperor (and is removed at exit).
    created_base: bool,
    /// The kernel has `cgroup.kill` (Linux 5.14).
    has_kill: bool,
    /// Vassal cgroups killed but not yet empty: retried until removed.
    pending: HashMap<PathBuf, (Instant, u32)>,
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

impl Cgroups {
    fn setup() -> Result<Cgroups, CgroupError> {
        let mi = Path::new("/proc/self/mountinfo");
        let mount = cgroup2_mount(&read_small_large(mi).map_err(io_err("read", mi))?)
            .ok_or(CgroupError::NoMount)?;
        let pc = Path::new("/proc/self/cgroup");
        let text = read_small(pc).map_err(io_err("read", pc))?;
        let own = v2_path(&text)
            .ok_or(CgroupError::NotInHierarchy)?
            .to_string();
        let original = mount.join(own.trim_start_matches('/'));
        let procs = original.join("cgroup.procs");
        let members = read_small(&procs).map_err(io_err("read", &procs))?;
        let me = std::process::id().to_string();
        // Alone in a cgroup that is not the root: a delegated unit's own cgroup; use it.
        let alone = own != "/" && members.split_whitespace().all(|p| p == me);
        let (base, base_path) = if alone {
            (original.clone(), own.clone())
        } else {
            let n = format!("emperor.{me}");
            (
                original.join(&n),
                format!("{}/{n}", own.trim_end_matches('/')),
            )
        };
        let mut cg = Cgroups {
            mount,
            original,
            base,
            base_path,
            created_base: !alone,
            has_kill: false,
            pending: HashMap::new(),
        };
        if let Err(e) = cg.build() {
            cg.undo();
            return Err(e);
        }
        if cg.created_base {
            cg.remove_stale();
        }
        Ok(cg)
    }

    /// `emperor.PID` siblings left by emperors that died without cleaning up (SIGKILL): what is
    /// still in them is killed and they are removed. One whose pid still exists is left alone.
    fn remove_stale(&self) {
        let Ok(rd) = std::fs::read_dir(&self.original) else {
            return;
        };
        for e in rd.flatten().take(4096) {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("emperor."))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = e.path();
            if dir == self.base || !dir.join("emperor").is_dir() {
                continue;
            }
            // A process with that pid may be an emperor still setting up its cgroups: left
            // alone (a reused pid only delays the removal to a later start).
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let vassals = dir.join("vassals");
            if vassals.is_dir() {
                self.kill(&vassals);
            }
            self.kill(&dir.join("emperor"));
            // Bounded: what does not empty at once is left for a later start.
            let mut removed = remove_tree(&dir, 0).is_ok();
            for _ in 0..100 {
                if removed {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                removed = remove_tree(&dir, 0).is_ok();
            }
            if removed {
                info!(
                    "removed cgroup {} left by an emperor that is gone (pid {pid})",
                    dir.display()
                );
            } else {
                warn!(
                    "cannot remove cgroup {} left by an emperor that is gone (pid {pid})",
                    dir.display()
                );
            }
        }
    }

    fn build(&mut self) -> Result<(), CgroupError> {
        let mkdir = |d: &Path| match std::fs::create_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Io {
                what: "create the cgroup",
                path: d.to_path_buf(),
                err: e,
            }),
            _ => Ok(()),
        };
        if self.created_base {
            mkdir(&self.base)?;
        }
        let leaf = self.base.join("emperor");
        mkdir(&leaf)?;
        let procs = leaf.join("cgroup.procs");
        write_file(&procs, &std::process::id().to_string())
            .map_err(io_err("move the emperor into", &procs))?;
        let vassals = self.base.join("vassals");
        mkdir(&vassals)?;
        self.has_kill = vassals.join("cgroup.kill").exists();
        Ok(())
    }

    /// Back to where the emperor started; removes what it made.
    fn undo(&mut self) {
        let _ = write_file(
            &self.original.join("cgroup.procs"),
            &std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(self.base.join("vassals"));
        if self.created_base {
            let _ = std::fs::remove_dir(self.base.join("emperor"));
            let _ = std::fs::remove_dir(&self.base);
        }
    }

    fn make(&mut self, inc: Inc, name: &str) -> io::Result<Placement> {
        let vassals = self.base.join("vassals");
        let base_name = dir_name(name);
        // The same name under another monitor, or a leftover that is not a directory: a name
        // of its own.
        let mut candidates = [base_name.clone(), format!("{base_name}@{}", inc.0)].into_iter();
        loop {
            let Some(n) = candidates.next() else {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "every candidate name is taken",
                ));
            };
            let dir = vassals.join(&n);
            let fresh = match std::fs::create_dir(&dir) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            if !fresh {
                // A swept cgroup of the same vassal still emptying is taken over; one in use by
                // another live incarnation is not.
                if self.pending.remove(&dir).is_none() || !dir.is_dir() {
                    continue;
                }
            }
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(dir.join("cgroup.procs"))?;
            return Ok(Placement {
                path: format!("{}/vassals/{n}", self.base_path.trim_end_matches('/')),
                dir,
                procs,
            });
        }
    }

    /// Kills every process in `dir` and below.
    fn kill(&self, dir: &Path) {
        if self.has_kill {
            if let Err(e) = write_file(&dir.join("cgroup.kill"), "1") {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("cannot kill the processes of cgroup {}: {e}", dir.display());
                }
            }
            return;
        }
        self.kill_each(dir, 0);
    }

    /// Without `cgroup.kill`: SIGKILL to every member, children cgroups first.
    fn kill_each(&self, dir: &Path, depth: u32) {
        if depth < 16 {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        self.kill_each(&e.path(), depth + 1);
                    }
                }
            }
        }
        let me = std::process::id() as i32;
        if let Ok(s) = read_small(&dir.join("cgroup.procs")) {
            for pid in s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                if pid > 1 && pid != me {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    fn retry(&mut self, now: Instant) {
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, (since, n))| *since + backoff(*n) <= now)
            .map(|(d, _)| d.clone())
            .collect();
        for dir in due {
            match remove_tree(&dir, 0) {
                Ok(()) => {
                    self.pending.remove(&dir);
                    debug!("removed cgroup {}", dir.display());
                }
                Err(e) => {
                    let Some((since, n)) = self.pending.get_mut(&dir) else {
                        continue;
                    };
                    if now.duration_since(*since) > GIVE_UP {
                        warn!(
                            "cgroup {} still has processes after {GIVE_UP:?} ({e}); left in place",
                            dir.display()
                        );
                        self.pending.remove(&dir);
                        continue;
                    }
                    *n += 1;
                    // Processes that forked before the kill took them: kill again.
                    if !self.has_kill || *n % 8 == 0 {
                        self.kill(&dir);
                    }
                }
            }
        }
    }

    fn shutdown(&mut self) {
        let vassals = self.base.join("vassals");
        self.kill(&vassals);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let busy = read_small(&vassals.join("cgroup.events"))
                .ok()
                .and_then(|s| populated(&s))
                .unwrap_or(false);
            if !busy || Instant::now() >= deadline {
                if busy {
                    warn!(
                        "processes are left in {} after 5 s of SIGKILL",
                        vassals.display()
                    );
                }
                break;
            }
            if !self.has_kill {
                self.kill(&vassals);
            }
            // Bounded wait at exit for killed processes to finish exiting.
            std::thread::sleep(Duration::from_millis(5));
        }
        self.pending.clear();
        if let Err(e) = remove_tree(&vassals, 0) {
            debug!("cannot remove {}: {e}", vassals.display());
        }
        if self.created_base {
            self.undo();
        }
        debug!(mount = %self.mount.display(), "cgroups removed");
    }
}

/// `/proc/self/mountinfo` can be long (many mounts): read up to 4 MiB.
fn read_small_large(path: &Path) -> io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut s = String::new();
    f.take(4 * 1024 * 1024).read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mi = "\
24 30 0:22 / /sys type sysfs rw,nosuid - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 24 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let bind = "40 24 0:30 /sub /mnt/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(bind), None);
        let esc = "40 24 0:30 / /mnt/c\\040g rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(esc), Some(PathBuf::from("/mnt/c g")));
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn reads_the_v2_path_and_populated() {
        assert_eq!(
            v2_path("4:memory:/x\n0::/system.slice/e.service\n"),
            Some("/system.slice/e.service")
        );
        assert_eq!(v2_path("4:memory:/x\n"), None);
        assert_eq!(v2_path("0::relative\n"), None);
        assert_eq!(populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(populated("populated 0\n"), Some(false));
        assert_eq!(populated(""), None);
    }

    #[test]
    fn dir_names_are_safe() {
        assert_eq!(dir_name("app.ini"), "app.ini");
        assert_eq!(dir_name("app.ini:zerg"), "app.ini:zerg");
        assert_eq!(dir_name("a\nb/c.ini"), "a_b_c.ini");
        assert_eq!(dir_name(".hidden.ini"), "_.hidden.ini");
        assert_eq!(dir_name("cgroup.procs"), "_cgroup.procs");
        assert_eq!(dir_name(""), "_");
        assert_eq!(dir_name(&"x".repeat(300)).len(), 200);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<Mode>(), Ok(Mode::Auto));
        assert_eq!("cgroup".parse::<Mode>(), Ok(Mode::Cgroup));
        assert_eq!("pgroup".parse::<Mode>(), Ok(Mode::Pgroup));
        assert!("x".parse::<Mode>().is_err());
    }

    #[test]
    fn retries_back_off_to_a_second() {
        assert_eq!(backoff(0), Duration::from_millis(5));
        assert_eq!(backoff(3), Duration::from_millis(40));
        assert_eq!(backoff(50), Duration::from_secs(1));
    }
}
