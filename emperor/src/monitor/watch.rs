//! inotify plumbing for the monitors: one watch per directory (shared by the monitors that
//! look at it), which monitors a watch belongs to, and what each event asks for.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tracing::{debug, warn};

use super::settle::{Names, Settle};
use super::Scanner;

/// What one event asks of one monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Nothing yet: a new regular file is being written, its `IN_CLOSE_WRITE` follows (so a
    /// half-written config is never started).
    Wait,
    /// The named file is there and complete: examine it at the end of this read.
    Now,
    /// The named file went away: examine it after the settle.
    Later,
    /// The directory changed as a whole (or the monitor is a glob): rescan after the settle.
    Whole,
}

/// Classifies an event of a watch of a monitor (`dir_monitor`: a `dir://` monitor, whose
/// single files can be examined alone; `regular_file` tells whether a name is a plain file).
pub fn classify(
    mask: EventMask,
    name: Option<&OsStr>,
    dir_monitor: bool,
    regular_file: impl FnOnce(&OsStr) -> bool,
) -> Class {
    let whole = mask.intersects(
        EventMask::IGNORED | EventMask::MOVE_SELF | EventMask::DELETE_SELF | EventMask::Q_OVERFLOW,
    );
    match name {
        Some(name) if !whole && dir_monitor => {
            if mask == EventMask::CREATE && regular_file(name) {
                Class::Wait
            } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
                Class::Later
            } else {
                Class::Now
            }
        }
        _ => Class::Whole,
    }
}

/// The inotify instance and its watches.
#[derive(Debug)]
pub struct Watcher {
    inotify: Inotify,
    monitors_of: HashMap<WatchDescriptor, Vec<usize>>,
    dirs: HashMap<PathBuf, WatchDescriptor>,
    failed: HashSet<PathBuf>,
}

impl Watcher {
    /// A new inotify instance (non-blocking, CLOEXEC) without watches.
    pub fn new() -> io::Result<Watcher> {
        Ok(Watcher {
            inotify: Inotify::init()?,
            monitors_of: HashMap::new(),
            dirs: HashMap::new(),
            failed: HashSet::new(),
        })
    }

    /// The inotify descriptor, for the poll.
    pub fn fd(&self) -> RawFd {
        self.inotify.as_raw_fd()
    }

    /// Whether `dir` has a live watch.
    pub fn is_watched(&self, dir: &Path) -> bool {
        self.dirs.contains_key(dir)
    }

    /// Watches `dir` for monitor `m` (once per directory). A directory that does not exist
    /// yet is tried again at the next scan; another failure is logged once per directory
    /// (the rescan every `freq_secs` still sees its changes).
    pub fn watch(&mut self, m: usize, dir: PathBuf, freq_secs: u64) {
        if let Some(wd) = self.dirs.get(&dir) {
            let ms = self.monitors_of.entry(wd.clone()).or_default();
            if !ms.contains(&m) {
                ms.push(m);
            }
            return;
        }
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        match self.inotify.watches().add(&dir, mask) {
            Ok(wd) => {
                debug!("watching {}", dir.display());
                self.failed.remove(&dir);
                let ms = self.monitors_of.entry(wd.clone()).or_default();
                if !ms.contains(&m) {
                    ms.push(m);
                }
                self.dirs.insert(dir, wd);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!("cannot watch {} yet: {e}", dir.display())
            }
            Err(e) => {
                if self.failed.insert(dir.clone()) {
                    warn!(
                        "cannot watch {} with inotify ({e}): changes there are seen by the rescan every {freq_secs} s (raise fs.inotify.max_user_watches if it says \"No space left on device\")",
                        dir.display(),
                    );
                }
            }
        }
    }

    /// Reads every queued event: what waits for the settle goes into `settle`, the names to
    /// examine at once are returned.
    pub fn read(&mut self, scanners: &[Scanner], settle: &mut Settle) -> Names {
        let mut buf = [0u8; 8192];
        let mut now_names = Names::new();
        loop {
            let events = match self.inotify.read_events(&mut buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("inotify read failed: {e}");
                    break;
                }
            };
            let mut any = false;
            let mut gone: Vec<(WatchDescriptor, bool)> = Vec::new();
            for ev in events {
                any = true;
                if let Some(ms) = self.monitors_of.get(&ev.wd) {
                    for &m in ms {
                        let s = &scanners[m];
                        match classify(ev.mask, ev.name, s.is_dir(), |n| s.is_regular_file(n)) {
                            Class::Wait => {}
                            Class::Now => {
                                if let Some(n) = ev.name {
                                    now_names.entry(m).or_default().insert(n.to_os_string());
                                }
                            }
                            Class::Later => {
                                if let Some(n) = ev.name {
                                    settle.gone(m, n.to_os_string());
                                }
                            }
                            Class::Whole => settle.rescan(m),
                        }
                    }
                } else {
                    // Queue overflow or an unknown watch: rescan everything.
                    (0..scanners.len()).for_each(|m| settle.rescan(m));
                }
                if ev.mask.contains(EventMask::IGNORED) {
                    gone.push((ev.wd.clone(), false));
                } else if ev
                    .mask
                    .intersects(EventMask::MOVE_SELF | EventMask::DELETE_SELF)
                {
                    gone.push((ev.wd.clone(), true));
                }
            }
            for (wd, remove) in gone {
                if remove {
                    let _ = self.inotify.watches().remove(wd.clone());
                }
                self.monitors_of.remove(&wd);
                self.dirs.retain(|_, w| *w != wd);
            }
            if !any {
                break;
            }
        }
        now_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::parse_monitor;

    #[test]
    fn events_are_classified_like_the_settle_wants() {
        let n = Some(OsStr::new("a.ini"));
        assert_eq!(classify(EventMask::CREATE, n, true, |_| true), Class::Wait);
        assert_eq!(classify(EventMask::CREATE, n, true, |_| false), Class::Now);
        assert_eq!(
            classify(EventMask::CLOSE_WRITE, n, true, |_| true),
            Class::Now
        );
        assert_eq!(classify(EventMask::MOVED_TO, n, true, |_| true), Class::Now);
        assert_eq!(classify(EventMask::DELETE, n, true, |_| true), Class::Later);
        assert_eq!(
            classify(EventMask::MOVED_FROM, n, true, |_| true),
            Class::Later
        );
        assert_eq!(
            classify(EventMask::CLOSE_WRITE, n, false, |_| true),
            Class::Whole
        );
        assert_eq!(
            classify(EventMask::DELETE_SELF, None, true, |_| true),
            Class::Whole
        );
        assert_eq!(
            classify(EventMask::Q_OVERFLOW, None, true, |_| true),
            Class::Whole
        );
        assert_eq!(
            classify(EventMask::IGNORED, n, true, |_| true),
            Class::Whole
        );
    }

    #[test]
    fn a_real_directory_reports_writes_now_and_deletions_later() {
        let d = tempfile::tempdir().unwrap();
        let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
        let scanners = vec![Scanner::new(spec, vec![], false)];
        let mut w = Watcher::new().unwrap();
        w.watch(0, d.path().to_path_buf(), 3);
        assert!(w.is_watched(d.path()));
        std::fs::write(d.path().join("a.ini"), "[uwsgi]\n").unwrap();
        let mut settle = Settle::new();
        let now = w.read(&scanners, &mut settle);
        assert!(now[&0].contains(OsStr::new("a.ini")), "{now:?}");
        assert!(settle.is_empty());
        std::fs::remove_file(d.path().join("a.ini")).unwrap();
        let now = w.read(&scanners, &mut settle);
        assert!(now.is_empty(), "{now:?}");
        assert!(!settle.is_empty());
        // The directory itself goes: its watch is dropped and the monitor rescanned.
        drop(d);
        let _ = w.read(&scanners, &mut settle);
        assert!(w.dirs.is_empty());
    }

    #[test]
    fn a_missing_directory_is_not_watched() {
        let mut w = Watcher::new().unwrap();
        w.watch(0, PathBuf::from("/nonexistent/emperor/dir"), 3);
        assert!(!w.is_watched(Path::new("/nonexistent/emperor/dir")));
    }
}
