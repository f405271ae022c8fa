//! The scanner of one monitor: dir and glob listings, single-file checks after an inotify
//! event, the periodic safety pass, and one log line per skipped file.

mod links;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{debug, info, trace, warn};

use super::config::{kind_of, open_config, ConfigError, MAX_CONFIG};
use super::{config_flag, stamp_of, MonitorKind, MonitorSpec, EXTENSIONS};
use crate::core::{Entry, FileStamp};
use crate::sanitize::{esc, esc_path, has_control};

use links::Link;
pub use links::MAX_TARGET_DIRS;

#[derive(Debug)]
struct Known {
    stamp: FileStamp,
    /// Why it cannot be read (`None`: it can), as of `stamp`.
    unreadable: Option<String>,
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Every valid config, or `None` when the listing itself failed for a reason other than
    /// the directory missing (then nothing should be stopped).
    pub entries: Option<Vec<Entry>>,
}

/// Scans one monitor, remembering what it already reported.
#[derive(Debug)]
pub struct Scanner {
    spec: MonitorSpec,
    extra: Vec<String>,
    /// Why a file with another suffix is skipped (built once: it is logged once per file).
    bad_name: String,
    nofollow: bool,
    known: HashMap<String, Known>,
    reported: HashMap<String, String>,
    listing_error: Option<String>,
    watch: Vec<PathBuf>,
    owner_nofollow: bool,
    dir_stamp: Option<DirStamp>,
    inotify_complete: Option<bool>,
    full_scans: u64,
    file_stats: u64,
    /// Symlinked configs (not with `--emperor-nofollow`): what each one points to.
    links: HashMap<String, Link>,
    /// A link was found outside a full scan: its target's directory is not in `watch` yet.
    watch_stale: bool,
    /// The cap of target directories was hit and logged (reset once back under it).
    targets_capped: bool,
}

/// What changes in a directory's own inode when an entry is added, removed or renamed (and
/// when the directory is replaced): the periodic safety pass compares it with the last full scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirStamp {
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

fn dir_stamp(dir: &Path) -> io::Result<(DirStamp, std::fs::Metadata)> {
    let m = std::fs::metadata(dir)?;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    Ok((
        DirStamp {
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        },
        m,
    ))
}

/// Filesystems whose changes made elsewhere (another client, another node, a FUSE daemon's
/// backing store) produce no inotify event here: network, cluster and FUSE filesystems.
/// `f_type` values from `statfs(2)` / linux/magic.h.
const INOTIFY_BLIND_FS: [(i64, &str); 18] = [
    (0x6969, "nfs"),
    (0x517b, "smb"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x6573_5546, "fuse"),
    (0x0102_1997, "9p"),
    (0x00c3_6400, "ceph"),
    (0x5346_414f, "afs"),
    (0x6b41_4653, "kafs"),
    (0x7375_7245, "coda"),
    (0x564c, "ncp"),
    (0x7461_636f, "ocfs2"),
    (0x0116_1970, "gfs2"),
    (0x0052_636d, "orangefs"),
    (0x0bd0_0bd0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0x1373, "devfs"),
    (0x2468_4c59, "beegfs"),
];

/// Whether inotify on a directory of a filesystem with this `statfs` `f_type` sees every
/// change (local filesystems), and the filesystem's name when it does not.
pub fn inotify_sees_all(f_type: i64) -> Result<(), &'static str> {
    match INOTIFY_BLIND_FS.iter().find(|(t, _)| *t == f_type) {
        Some((_, name)) => Err(name),
        None => Ok(()),
    }
}

impl Scanner {
    /// A scanner for `spec`.
    pub fn new(spec: MonitorSpec, extra: Vec<String>, nofollow: bool) -> Scanner {
        let mut exts: Vec<&str> = EXTENSIONS.iter().map(|(e, _)| *e).collect();
        exts.extend(extra.iter().map(String::as_str));
        let bad_name = format!(
            "not a vassal config name (it must end in {})",
            exts.join(" ")
        );
        Scanner {
            spec,
            extra,
            bad_name,
            nofollow,
            known: HashMap::new(),
            reported: HashMap::new(),
            listing_error: None,
            watch: Vec::new(),
            owner_nofollow: false,
            dir_stamp: None,
            inotify_complete: None,
            full_scans: 0,
            file_stats: 0,
            links: HashMap::new(),
            watch_stale: false,
            targets_capped: false,
        }
    }

    /// Full scans done so far (tests and diagnostics).
    pub fn full_scans(&self) -> u64 {
        self.full_scans
    }

    /// Per-file `stat`s done so far, by scans and single-file checks (tests and diagnostics).
    pub fn file_stats(&self) -> u64 {
        self.file_stats
    }

    /// The periodic safety pass: does this monitor need a full rescan? `watched` says whether
    /// its directory has a live inotify watch. A dir monitor whose directory is watched, on a
    /// filesystem where inotify sees every change, costs one `stat` of the directory: a full
    /// rescan only when its stamp differs from the one taken at the latest full scan. Glob
    /// monitors, unwatched directories and network/cluster/FUSE filesystems always rescan.
    pub fn needs_rescan(&mut self, watched: bool) -> bool {
        let MonitorKind::Dir(dir) = &self.spec.kind else {
            return true;
        };
        if !watched || self.inotify_complete != Some(true) || self.watch_stale {
            return true;
        }
        // Symlinked configs: one stat through each link (its target may live anywhere, on
        // any filesystem, beyond the cap of watched target directories).
        for (name, link) in &self.links {
            let now = std::fs::metadata(dir.join(name)).ok().map(|m| stamp_of(&m));
            if now != link.stamp {
                debug!(monitor = %esc(&self.spec.arg), "safety pass: full rescan of {} (what {} points to changed)", esc_path(dir), esc(name));
                return true;
            }
        }
        let Some(last) = self.dir_stamp else {
            debug!(monitor = %esc(&self.spec.arg), "safety pass: full rescan of {} (its stamp at the last full scan was too recent to trust)", esc_path(dir));
            return true;
        };
        match dir_stamp(dir) {
            Ok((now, _)) if now == last => {
                trace!(monitor = %esc(&self.spec.arg), "safety pass: {} unchanged, no rescan", esc_path(dir));
                false
            }
            _ => {
                debug!(monitor = %esc(&self.spec.arg), "safety pass: full rescan of {} (it changed since the last full scan)", esc_path(dir));
                true
            }
        }
    }

    /// Records the directory's stamp and filesystem kind at the start of a full scan (so a
    /// change during the listing shows in the next safety pass).
    fn note_dir(&mut self, dir: &Path) {
        let Ok((stamp, _)) = dir_stamp(dir) else {
            self.dir_stamp = None;
            return;
        };
        // Directory timestamps come from a coarse clock (one tick is a few ms): a change in the
        // same tick as this stat would leave the stamp equal. A stamp that recent is not trusted
        // (the next pass rescans once more, and records an older one).
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let recent = |t: i128| now_ns - t < 1_000_000_000;
        self.dir_stamp = (!recent(stamp.mtime_ns) && !recent(stamp.ctime_ns)).then_some(stamp);
        let kind = match nix::sys::statfs::statfs(dir) {
            Ok(fs) => {
                let f_type: i64 = fs.filesystem_type().0 as _;
                inotify_sees_all(f_type)
            }
            Err(_) => Err("unknown"),
        };
        let complete = kind.is_ok();
        if self.inotify_complete != Some(complete) {
            match kind {
                Ok(()) => info!(
                    monitor = %esc(&self.spec.arg),
                    "monitor {}: local filesystem, inotify sees every change: the periodic safety pass only stats the directory",
                    esc_path(dir)
                ),
                Err(fs) => info!(
                    monitor = %esc(&self.spec.arg),
                    "monitor {}: {fs} filesystem, inotify may miss changes made elsewhere: full rescan every --emperor-freq",
                    esc_path(dir)
                ),
            }
            self.inotify_complete = Some(complete);
        }
    }

    /// Take a config's owner (tyrant mode) from a symlink itself, not its target
    /// (`--emperor-tyrant-nofollow`).
    pub fn set_owner_nofollow(&mut self, on: bool) {
        self.owner_nofollow = on;
    }

    /// True for a dir monitor (whose inotify events name single files).
    pub fn is_dir(&self) -> bool {
        matches!(self.spec.kind, MonitorKind::Dir(_))
    }

    /// True when `name` in a dir monitor is a regular file right now (not following links).
    pub fn is_regular_file(&self, name: &std::ffi::OsStr) -> bool {
        match &self.spec.kind {
            MonitorKind::Dir(d) => std::fs::symlink_metadata(d.join(name))
                .map(|m| m.file_type().is_file())
                .unwrap_or(false),
            MonitorKind::Glob(_) => false,
        }
    }

    /// The monitor.
    pub fn spec(&self) -> &MonitorSpec {
        &self.spec
    }

    /// Directories whose changes should trigger a rescan (as of the latest scan).
    pub fn watch_dirs(&self) -> &[PathBuf] {
        &self.watch
    }

    /// The directory a vassal of this monitor runs in: the monitor directory (so relative
    /// paths in vassal configs mean what they mean under uWSGI), or `cwd` for glob monitors.
    pub fn vassal_cwd<'a>(&'a self, cwd: &'a Path) -> &'a Path {
        match &self.spec.kind {
            MonitorKind::Dir(d) => d,
            MonitorKind::Glob(_) => cwd,
        }
    }

    /// Lists the monitor.
    pub fn scan(&mut self) -> ScanResult {
        let mut seen: Vec<String> = Vec::new();
        let entries = match self.spec.kind.clone() {
            MonitorKind::Dir(dir) => self.scan_dir(&dir, &mut seen),
            MonitorKind::Glob(pattern) => Some(self.scan_glob(&pattern, &mut seen)),
        };
        if entries.is_some() {
            let seen: std::collections::HashSet<&String> = seen.iter().collect();
            self.known.retain(|k, _| seen.contains(k));
            self.reported.retain(|k, _| seen.contains(k));
            self.links.retain(|k, _| seen.contains(k));
        }
        self.add_target_watches();
        ScanResult { entries }
    }

    /// when it is a valid config, its entry. `None` for glob monitors (they rescan).
    pub fn check_name(&mut self, name: &str) -> Option<(String, Option<Entry>)> {
        let MonitorKind::Dir(dir) = &self.spec.kind else {
            return None;
        };
        let path = dir.join(name);
        let key = std::path::absolute(&path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string();
        if std::fs::symlink_metadata(&path).is_err() {
            // Gone: forget what was reported so a re-created file is judged afresh.
            self.known.remove(name);
            self.reported.remove(name);
            self.links.remove(name);
            return Some((key, None));
        }
        let entry = self.check(name, &path);
        Some((key, entry))
    }

    fn scan_dir(&mut self, dir: &Path, seen: &mut Vec<String>) -> Option<Vec<Entry>> {
        self.watch = vec![dir.to_path_buf()];
        self.full_scans += 1;
        self.note_dir(dir);
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => {
                if self.listing_error.take().is_some() {
                    info!(monitor = %esc(&self.spec.arg), "monitor directory {} is back", esc_path(dir));
                }
                rd
            }
            Err(e) => {
                let msg = e.to_string();
                if self.listing_error.as_deref() != Some(msg.as_str()) {
                    warn!(monitor = %esc(&self.spec.arg), "cannot read monitor directory {}: {msg}", esc_path(dir));
                    self.listing_error = Some(msg);
                }
                // A missing directory holds no configs: its vassals stop, and come back with
                // it. Any other error (permissions, I/O) leaves everything as it is.
                return (e.kind() == io::ErrorKind::NotFound).then(Vec::new);
            }
        };
        let mut out = Vec::new();
        for de in rd.flatten() {
            let fname = de.file_name();
            let Some(name) = fname.to_str() else {
                let lossy = fname.to_string_lossy().into_owned();
                seen.push(lossy.clone());
                self.skip(&lossy, "its name is not valid UTF-8".into());
                continue;
            };
            let name = name.to_string();
            seen.push(name.clone());
            let path = dir.join(&name);
            if let Some(e) = self.check(&name, &path) {
                out.push(e);
            }
        }
        Some(out)
    }

    fn scan_glob(&mut self, pattern: &str, seen: &mut Vec<String>) -> Vec<Entry> {
        self.full_scans += 1;
        if self.inotify_complete.is_none() {
            info!(
                monitor = %esc(&self.spec.arg),
                "monitor {}: glob, inotify sees only the directories of its matches: full rescan every --emperor-freq",
                esc(pattern)
            );
            self.inotify_complete = Some(false);
        }
        let mut watch = vec![literal_prefix_dir(pattern)];
        let mut out = Vec::new();
        let paths = match glob::glob(pattern) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("invalid glob pattern: {e}");
                if self.listing_error.as_deref() != Some(msg.as_str()) {
                    warn!(monitor = %esc(&self.spec.arg), "{}", esc(&msg));
                    self.listing_error = Some(msg);
                }
                return out;
            }
        };
        for p in paths {
            let path = match p {
                Ok(p) => p,
                Err(e) => {
                    let name = e.path().display().to_string();
                    seen.push(name.clone());
                    self.skip(&name, format!("cannot read it: {}", e.error()));
                    continue;
                }
            };
            let Some(name) = path.to_str().map(str::to_string) else {
                continue;
            };
            seen.push(name.clone());
            if let Some(parent) = path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
                if !watch.contains(&parent) {
                    watch.push(parent);
                }
            }
            if let Some(e) = self.check(&name, &path) {
                out.push(e);
            }
        }
        self.watch = watch;
        out
    }

    /// Validates one candidate; logs (once) and returns `None` when it is skipped.
    fn check(&mut self, name: &str, path: &Path) -> Option<Entry> {
        if !self.has_config_name(name) {
            return None;
        }
        let meta = self.stat_config(name, path)?;
        let stamp = stamp_of(&meta);
        if let Some(reason) = self.unreadable(name, path, stamp) {
            self.skip(name, reason);
            return None;
        }
        if self.reported.remove(name).is_some() {
            info!(monitor = %esc(&self.spec.arg), "{} is now a valid vassal config", esc(name));
        }
        let owner = match self.owner_nofollow {
            true => std::fs::symlink_metadata(path)
                .map(|l| (l.uid(), l.gid()))
                .unwrap_or((meta.uid(), meta.gid())),
            false => (meta.uid(), meta.gid()),
        };
        let key = std::path::absolute(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        Some(Entry {
            key,
            name: name.to_string(),
            stamp,
            content: None,
            uid: owner.0,
            gid: owner.1,
        })
    }

    /// The name rules: no control characters, a config extension. Logs (once) and returns
    /// false when `name` is skipped.
    fn has_config_name(&mut self, name: &str) -> bool {
        if has_control(name) {
            // A name with a newline or an escape sequence would forge or garble every log
            // line, status table and argv it appears in: refused (and shown escaped).
            self.skip(
                name,
                "its name contains control characters (shown escaped here): rename it".into(),
            );
            return false;
        }
        if config_flag(name, &self.extra).is_none() {
            if self.reported.get(name) != Some(&self.bad_name) {
                // Other files next to configs (apps, READMEs) are normal: info, not a warning.
                let reason = &self.bad_name;
                info!(monitor = %esc(&self.spec.arg), file = %esc(name), "skipping {}: {reason}", esc(name));
                self.reported.insert(name.to_string(), reason.clone());
            }
            return false;
        }
        true
    }

    /// The metadata of candidate `name` (through its symlinks unless `--emperor-nofollow`,
    /// whose links are noted), when it is a regular file; logs (once) and returns `None` when
    /// it is skipped.
    fn stat_config(&mut self, name: &str, path: &Path) -> Option<std::fs::Metadata> {
        self.file_stats += 1;
        let meta = if self.nofollow {
            std::fs::symlink_metadata(path)
        } else {
            self.note_link(name, path);
            std::fs::metadata(path)
        };
        if let Some(link) = self.links.get_mut(name) {
            link.stamp = meta.as_ref().ok().map(stamp_of);
        }
        let meta = match meta {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.skip(
                    name,
                    "symlink loop (too many levels of symbolic links)".into(),
                );
                return None;
            }
            Err(e) => {
                // NotFound: gone between listing and stat, or a dangling symlink (editor lock
                // files).
                self.skip(name, format!("cannot stat it: {e}"));
                return None;
            }
        };
        let ft = meta.file_type();
        if !(ft.is_file() || (self.nofollow && ft.is_symlink())) {
            self.skip(name, ConfigError::NotRegular(kind_of(ft)).to_string());
            return None;
        }
        Some(meta)
    }

    /// Why candidate `name` with `stamp` cannot be read as a config (`None`: it can), decided
    /// once per stamp. A readable `.ini` over [`MAX_CONFIG`] is warned about.
    fn unreadable(&mut self, name: &str, path: &Path, stamp: FileStamp) -> Option<String> {
        if let Some(k) = self.known.get(name).filter(|k| k.stamp == stamp) {
            return k.unreadable.clone();
        }
        let unreadable = match open_config(path) {
            Ok((_, m)) => {
                let size = m.size();
                if size > MAX_CONFIG as u64 && name.ends_with(".ini") {
                    warn!(
                        monitor = %esc(&self.spec.arg),
                        file = %esc(name),
                        "{}: {size} bytes: only its first {} KiB are searched for a [vassal-shim] \
                         section (the emperor reads no more of a config); keep vassal configs small",
                        esc(name),
                        MAX_CONFIG / 1024
                    );
                }
                None
            }
            Err(e) => Some(e.to_string()),
        };
        self.known.insert(
            name.to_string(),
            Known {
                stamp,
                unreadable: unreadable.clone(),
            },
        );
        unreadable
    }

    fn skip(&mut self, name: &str, reason: String) {
        if self.reported.get(name) != Some(&reason) {
            warn!(monitor = %esc(&self.spec.arg), file = %esc(name), "skipping {}: {}", esc(name), esc(&reason));
            self.reported.insert(name.to_string(), reason);
        }
    }
}

/// The deepest directory of `pattern` without glob metacharacters.
fn literal_prefix_dir(pattern: &str) -> PathBuf {
    let mut out = PathBuf::new();
    let comps: Vec<&str> = pattern.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if i + 1 == comps.len() || c.contains(['*', '?', '[']) {
            break;
        }
        if c.is_empty() && i == 0 {
            out.push("/");
        } else {
            out.push(c);
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
mod tests;
