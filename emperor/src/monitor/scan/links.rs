//! Symlinked configs, tracked through their targets: the directories the links point into
//! join the watched directories (capped), and an inotify event there is mapped back to the
//! links.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::Scanner;
use crate::core::{Entry, FileStamp};
use crate::monitor::MonitorKind;
use crate::sanitize::esc;

/// Most directories of symlink targets a monitor adds to its inotify watches; links into
/// further directories are seen by the safety pass, which stats through every link.
pub const MAX_TARGET_DIRS: usize = 256;
/// Most links followed from a config to its final target.
const MAX_HOPS: usize = 8;

/// A symlinked config: every (directory, file name) along its chain of links, and the stamp
/// through the link at its last check (`None` when it dangled).
#[derive(Debug)]
pub(super) struct Link {
    hops: Vec<(PathBuf, std::ffi::OsString)>,
    pub(super) stamp: Option<FileStamp>,
}

/// The (directory, file name) of each hop from the symlink `path` to its final target (which
/// may not exist), at most [`MAX_HOPS`].
fn link_hops(path: &Path) -> Vec<(PathBuf, std::ffi::OsString)> {
    let mut hops = Vec::new();
    let mut cur = path.to_path_buf();
    for _ in 0..MAX_HOPS {
        let Ok(to) = std::fs::read_link(&cur) else {
            break;
        };
        let base = cur.parent().map(Path::to_path_buf).unwrap_or_default();
        let next = base.join(to);
        let (Some(dir), Some(file)) = (next.parent(), next.file_name()) else {
            break;
        };
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        hops.push((dir.clone(), file.to_os_string()));
        cur = dir.join(file);
        if !std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            break;
        }
    }
    hops
}

impl Scanner {
    /// Adds the directories symlinked configs point into to `watch` (at most
    /// [`MAX_TARGET_DIRS`] of them), so editing, touching or deleting a target is seen at once.
    pub(super) fn add_target_watches(&mut self) {
        self.watch_stale = false;
        let mut extra: Vec<&PathBuf> = Vec::new();
        let mut over = 0usize;
        for link in self.links.values() {
            for (dir, _) in &link.hops {
                if self.watch.contains(dir) || extra.contains(&dir) {
                    continue;
                }
                if extra.len() < MAX_TARGET_DIRS {
                    extra.push(dir);
                } else {
                    over += 1;
                }
            }
        }
        let extra: Vec<PathBuf> = extra.into_iter().cloned().collect();
        self.watch.extend(extra);
        if over > 0 && !self.targets_capped {
            warn!(
                monitor = %esc(&self.spec.arg),
                "symlinked configs point into more than {MAX_TARGET_DIRS} directories: only {MAX_TARGET_DIRS} are watched with inotify, changes in the other {over} are seen by the safety pass every --emperor-freq"
            );
        }
        self.targets_capped = over > 0;
    }

    /// The names of the symlinked configs one of whose hops is a file named `file` (what an
    /// inotify event in a target's directory names).
    fn links_to(&self, file: &str) -> Vec<String> {
        self.links
            .iter()
            .filter(|(_, l)| l.hops.iter().any(|(_, f)| f == file))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// [`Scanner::check_name`] for an inotify event naming `name` in one of
    /// [`Scanner::watch_dirs`]: the file of that name in the monitor directory, and every
    /// symlinked config that points to a file of that name (the event may come from a target's
    /// directory; checking an unchanged one is harmless). Empty for glob monitors.
    pub fn check_event(&mut self, name: &str) -> Vec<(String, Option<Entry>)> {
        let mut out: Vec<(String, Option<Entry>)> = self.check_name(name).into_iter().collect();
        let MonitorKind::Dir(dir) = &self.spec.kind else {
            return out;
        };
        let dir = dir.clone();
        for link in self.links_to(name) {
            if link == name {
                continue;
            }
            let path = dir.join(&link);
            let key = std::path::absolute(&path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
            if std::fs::symlink_metadata(&path).is_err() {
                self.known.remove(&link);
                self.reported.remove(&link);
                self.links.remove(&link);
                out.push((key, None));
                continue;
            }
            let entry = self.check(&link, &path);
            out.push((key, entry));
        }
        out
    }

    pub(super) fn note_link(&mut self, name: &str, path: &Path) {
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            self.links.remove(name);
            return;
        }
        let hops = link_hops(path);
        let new_dir = hops.iter().any(|(d, _)| !self.watch.contains(d));
        match self.links.get_mut(name) {
            Some(l) if l.hops == hops => {}
            Some(l) => {
                l.hops = hops;
                self.watch_stale |= new_dir && !self.targets_capped;
            }
            None => {
                self.links
                    .insert(name.to_string(), Link { hops, stamp: None });
                self.watch_stale |= new_dir && !self.targets_capped;
            }
        }
    }
}
