//! The emperor's part of the cgroup v2 hierarchy: `<base>/emperor` (the emperor) and
//! `<base>/vassals/NAME` (one per vassal), made, killed and removed here.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::paths::{cgroup2_mount, dir_name, populated, v2_path};
use super::{backoff, CgroupError, Placement, GIVE_UP};
use crate::core::Inc;

/// The hierarchy the emperor made (see the parent module).
#[derive(Debug)]
pub(super) struct Cgroups {
    /// The hierarchy's mount point.
    pub(super) mount: PathBuf,
    /// The emperor's cgroup at startup (directory).
    pub(super) original: PathBuf,
    /// `<base>` (directory) and its path in the hierarchy.
    pub(super) base: PathBuf,
    pub(super) base_path: String,
    /// `<base>` was made by this emperor (and is removed at exit).
    pub(super) created_base: bool,
    /// The kernel has `cgroup.kill` (Linux 5.14).
    pub(super) has_kill: bool,
    /// Vassal cgroups killed but not yet empty: retried until removed.
    pub(super) pending: HashMap<PathBuf, (Instant, u32)>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |err| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// Reads at most 64 KiB of a small cgroup interface file.
fn read_small(path: &Path) -> io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut s = String::new();
    f.take(64 * 1024).read_to_string(&mut s)?;
    Ok(s)
}

/// Writes `data` to an existing cgroup interface file.
pub(super) fn write_file(path: &Path, data: &str) -> io::Result<()> {
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

/// `/proc/self/mountinfo` can be long (many mounts): read up to 4 MiB.
fn read_small_large(path: &Path) -> io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut s = String::new();
    f.take(4 * 1024 * 1024).read_to_string(&mut s)?;
    Ok(s)
}

impl Cgroups {
    pub(super) fn setup() -> Result<Cgroups, CgroupError> {
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

    pub(super) fn make(&mut self, inc: Inc, name: &str) -> io::Result<Placement> {
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
    pub(super) fn kill(&self, dir: &Path) {
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

    pub(super) fn retry(&mut self, now: Instant) {
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

    pub(super) fn shutdown(&mut self) {
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
