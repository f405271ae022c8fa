//! Config sources: `dir://` and `glob://` monitors.
//!
//! A [`Scanner`] lists one monitor and returns every valid config with its
//! (mtime_ns, size, inode) stamp. Files it skips (bad name, stat error such as a symlink loop,
//! not a regular file, unreadable) are logged once — again only if the reason changes or the file
//! goes away and comes back. The runtime calls [`Scanner::scan`] when inotify reports a change in
//! one of [`Scanner::watch_dirs`] (single files of a dir monitor go through
//! [`Scanner::check_name`]), and every `--emperor-freq` seconds asks [`Scanner::needs_rescan`]
//! whether the safety net needs a full scan: for a watched directory on a local filesystem only
//! when the directory's own stamp changed since the last full scan, or what a symlinked config
//! points to did. Symlinked configs are tracked through their targets: the directories the
//! links point into join [`Scanner::watch_dirs`] (capped), and [`Scanner::check_event`] maps an
//! event there back to the links.

pub mod settle;
pub mod watch;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::{debug, info, trace, warn};

use crate::core::{Entry, FileStamp};
use crate::sanitize::{esc, esc_path, has_control};

/// The config extensions uWSGI recognises, and the flag each one gets.
pub const EXTENSIONS: [(&str, &str); 6] = [
    (".xml", "--xml"),
    (".ini", "--ini"),
    (".yml", "--yaml"),
    (".yaml", "--yaml"),
    (".js", "--json"),
    (".json", "--json"),
];

/// Longest accepted instance name in bytes (uWSGI: 254, file names only; here the whole glob
/// match may be a path, so PATH_MAX applies).
pub const MAX_NAME: usize = 4095;

/// What a monitor argument means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorKind {
    /// A directory (absolute), scanned for config files.
    Dir(PathBuf),
    /// A glob pattern, matched from the emperor's cwd.
    Glob(String),
}

/// One monitor: its argument as given (shown in stats) and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorSpec {
    /// The argument as given.
    pub arg: String,
    /// Its meaning.
    pub kind: MonitorKind,
}

/// Parses a monitor argument: `dir://PATH`, `glob://PATTERN`, or a bare path (a glob when it
/// contains `*`, `?` or `[`, or names an existing non-directory; otherwise a directory).
pub fn parse_monitor(arg: &str, cwd: &Path) -> Result<MonitorSpec, String> {
    let kind = if let Some(p) = arg.strip_prefix("dir://") {
        MonitorKind::Dir(cwd.join(p))
    } else if let Some(p) = arg.strip_prefix("glob://") {
        MonitorKind::Glob(p.to_string())
    } else if let Some((scheme, _)) = arg.split_once("://") {
        return Err(format!(
            "monitor `{arg}`: the `{scheme}://` monitor is not supported (use a directory, a glob, dir:// or glob://)"
        ));
    } else if arg.contains(['*', '?', '[']) {
        MonitorKind::Glob(arg.to_string())
    } else {
        let p = cwd.join(arg);
        match std::fs::metadata(&p) {
            Ok(m) if !m.is_dir() => MonitorKind::Glob(arg.to_string()),
            _ => MonitorKind::Dir(p),
        }
    };
    Ok(MonitorSpec {
        arg: arg.to_string(),
        kind,
    })
}

/// The flag that loads `name` (`--ini`, `--xml`, `--yaml`, `--json`, `--config` for extra
/// extensions), or `None` for an invalid name.
pub fn config_flag(name: &str, extra: &[String]) -> Option<&'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    for (ext, flag) in EXTENSIONS {
        if base.len() > ext.len() && base.ends_with(ext) {
            return Some(flag);
        }
    }
    if extra
        .iter()
        .any(|e| !e.is_empty() && base.len() > e.len() && base.ends_with(e.as_str()))
    {
        return Some("--config");
    }
    None
}

/// The stamp of a file's metadata.
pub fn stamp_of(m: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        size: m.size(),
        ino: m.ino(),
    }
}

#[derive(Debug)]
struct Known {
    stamp: FileStamp,
    verdict: Result<(), String>,
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

/// Most directories of symlink targets a monitor adds to its inotify watches; links into
/// further directories are seen by the safety pass, which stats through every link.
pub const MAX_TARGET_DIRS: usize = 256;
/// Most links followed from a config to its final target.
const MAX_HOPS: usize = 8;

/// A symlinked config: every (directory, file name) along its chain of links, and the stamp
/// through the link at its last check (`None` when it dangled).
#[derive(Debug)]
struct Link {
    hops: Vec<(PathBuf, std::ffi::OsString)>,
    stamp: Option<FileStamp>,
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

    /// Adds the directories symlinked configs point into to `watch` (at most
    /// [`MAX_TARGET_DIRS`] of them), so editing, touching or deleting a target is seen at once.
    fn add_target_watches(&mut self) {
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

    /// Re-examines one file of a dir monitor (after an inotify event naming it): its key and,
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
        if has_control(name) {
            // A name with a newline or an escape sequence would forge or garble every log
            // line, status table and argv it appears in: refused (and shown escaped).
            self.skip(
                name,
                "its name contains control characters (shown escaped here): rename it".into(),
            );
            return None;
        }
        if config_flag(name, &self.extra).is_none() {
            if self.reported.get(name) != Some(&self.bad_name) {
                // Other files next to configs (apps, READMEs) are normal: info, not a warning.
                let reason = &self.bad_name;
                info!(monitor = %esc(&self.spec.arg), file = %esc(name), "skipping {}: {reason}", esc(name));
                self.reported.insert(name.to_string(), reason.clone());
            }
            return None;
        }
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Gone between listing and stat, or a dangling symlink (editor lock files).
                self.skip(name, format!("cannot stat it: {e}"));
                return None;
            }
            Err(e) => {
                self.skip(name, format!("cannot stat it: {e}"));
                return None;
            }
        };
        let ft = meta.file_type();
        if !(ft.is_file() || (self.nofollow && ft.is_symlink())) {
            self.skip(name, ConfigError::NotRegular(kind_of(ft)).to_string());
            return None;
        }
        let stamp = stamp_of(&meta);
        let verdict = match self.known.get(name) {
            Some(k) if k.stamp == stamp => k.verdict.clone(),
            _ => {
                let v = readable(path).map(|size| {
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
                });
                self.known.insert(
                    name.to_string(),
                    Known {
                        stamp,
                        verdict: v.clone(),
                    },
                );
                v
            }
        };
        if let Err(reason) = verdict {
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

    /// Records whether `path` (config `name`) is a symlink, and what it points to.
    fn note_link(&mut self, name: &str, path: &Path) {
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

    fn skip(&mut self, name: &str, reason: String) {
        if self.reported.get(name) != Some(&reason) {
            warn!(monitor = %esc(&self.spec.arg), file = %esc(name), "skipping {}: {}", esc(name), esc(&reason));
            self.reported.insert(name.to_string(), reason);
        }
    }
}

/// Whether `path` can be read as a config; its size when it can.
fn readable(path: &Path) -> Result<u64, String> {
    open_config(path)
        .map(|(_, m)| m.size())
        .map_err(|e| e.to_string())
}

/// Most bytes of a vassal config the emperor reads (a pushed config may not be larger either).
pub const MAX_CONFIG: usize = 64 * 1024;

/// Why a vassal config could not be read.
#[derive(Debug)]
pub enum ConfigError {
    /// `stat` or `open` failed (missing, permissions, symlink loop).
    Open(io::Error),
    /// It (or what its symlink points to) is not a regular file; what it is.
    NotRegular(&'static str),
    /// `fstat` or `read` failed.
    Read(io::Error),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Open(e) | ConfigError::Read(e) => write!(f, "cannot read it: {e}"),
            ConfigError::NotRegular(what) => write!(
                f,
                "it is {what}, not a regular file: the emperor reads vassal configs only from \
                 regular files (replace it, or what its symlink points to, with one)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What a file type is, for messages.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// Opens a vassal config for reading without ever blocking on it: `stat` first (a FIFO or a
/// device is never opened), then `open` with `O_NONBLOCK | O_NOCTTY | O_CLOEXEC`, then `fstat`
/// of the descriptor (the file may have been swapped in between): regular files only.
pub fn open_config(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), ConfigError> {
    let m = std::fs::metadata(path).map_err(ConfigError::Open)?;
    if !m.file_type().is_file() {
        return Err(ConfigError::NotRegular(kind_of(m.file_type())));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(ConfigError::Open)?;
    let m = f.metadata().map_err(ConfigError::Read)?;
    if !m.file_type().is_file() {
        return Err(ConfigError::NotRegular(kind_of(m.file_type())));
    }
    Ok((f, m))
}

/// The first [`MAX_CONFIG`] bytes of a vassal config (opened with [`open_config`]), and
/// whether the file is longer than that.
pub fn read_config_head(path: &Path) -> Result<(Vec<u8>, bool), ConfigError> {
    use std::io::Read;
    let (f, m) = open_config(path)?;
    let mut buf = Vec::with_capacity(m.size().min(MAX_CONFIG as u64 + 1) as usize);
    f.take(MAX_CONFIG as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(ConfigError::Read)?;
    let longer = buf.len() > MAX_CONFIG;
    buf.truncate(MAX_CONFIG);
    Ok((buf, longer))
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
mod tests {
    use super::*;

    fn names(r: &ScanResult) -> Vec<String> {
        let mut v: Vec<String> = r
            .entries
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn flags_by_extension() {
        assert_eq!(config_flag("a.ini", &[]), Some("--ini"));
        assert_eq!(config_flag("a.yaml", &[]), Some("--yaml"));
        assert_eq!(config_flag("a.yml", &[]), Some("--yaml"));
        assert_eq!(config_flag("a.js", &[]), Some("--json"));
        assert_eq!(config_flag("a.json", &[]), Some("--json"));
        assert_eq!(config_flag("a.xml", &[]), Some("--xml"));
        assert_eq!(config_flag("a.txt", &[]), None);
        assert_eq!(config_flag(".ini", &[]), None);
        assert_eq!(config_flag("a.conf", &[".conf".into()]), Some("--config"));
        assert_eq!(config_flag(&"x".repeat(5000), &[]), None);
    }

    #[test]
    fn monitor_arguments() {
        let cwd = Path::new("/base");
        assert_eq!(
            parse_monitor("dir://v", cwd).unwrap().kind,
            MonitorKind::Dir("/base/v".into())
        );
        assert_eq!(
            parse_monitor("glob:///e/*.ini", cwd).unwrap().kind,
            MonitorKind::Glob("/e/*.ini".into())
        );
        assert_eq!(
            parse_monitor("/e/*.ini", cwd).unwrap().kind,
            MonitorKind::Glob("/e/*.ini".into())
        );
        assert_eq!(
            parse_monitor("/nonexistent/dir", cwd).unwrap().kind,
            MonitorKind::Dir("/nonexistent/dir".into())
        );
        assert!(parse_monitor("pg://x", cwd).is_err());
        assert_eq!(literal_prefix_dir("/a/b/*/c.ini"), PathBuf::from("/a/b"));
        assert_eq!(literal_prefix_dir("*.ini"), PathBuf::from("."));
    }

    #[test]
    fn dir_scan_stamps_and_skips() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("a.ini"), "[uwsgi]\n").unwrap();
        std::fs::write(p.join("notes.txt"), "x").unwrap();
        std::fs::create_dir(p.join("sub.ini")).unwrap();
        std::os::unix::fs::symlink("loop2.ini", p.join("loop1.ini")).unwrap();
        std::os::unix::fs::symlink("loop1.ini", p.join("loop2.ini")).unwrap();
        let spec = parse_monitor(p.to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        let r = s.scan();
        assert_eq!(names(&r), vec!["a.ini"]);
        assert_eq!(s.reported.len(), 4, "{:?}", s.reported);
        assert!(s.reported["loop1.ini"].contains("loop"));
        let e = &r.entries.unwrap()[0];
        assert_eq!(e.key, p.join("a.ini").display().to_string());
        // Same-size rewrite: the stamp changes (mtime_ns, and usually the inode via rename).
        let before = e.stamp;
        std::fs::write(p.join("tmp"), "[uwsgi]\n").unwrap();
        std::fs::rename(p.join("tmp"), p.join("a.ini")).unwrap();
        let r = s.scan();
        assert_ne!(r.entries.unwrap()[0].stamp, before);
    }

    #[test]
    fn single_names_are_checked_like_a_scan() {
        let d = tempfile::tempdir().unwrap();
        let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        let (key, e) = s.check_name("a.ini").unwrap();
        assert_eq!(key, d.path().join("a.ini").display().to_string());
        assert!(e.is_none());
        std::fs::write(d.path().join("a.ini"), "[uwsgi]\n").unwrap();
        assert_eq!(s.check_name("a.ini").unwrap().1.unwrap().name, "a.ini");
        std::fs::write(d.path().join("b.txt"), "").unwrap();
        assert!(s.check_name("b.txt").unwrap().1.is_none());
        assert!(s.reported.contains_key("b.txt"));
        std::fs::remove_file(d.path().join("b.txt")).unwrap();
        assert!(s.check_name("b.txt").unwrap().1.is_none());
        assert!(!s.reported.contains_key("b.txt"));
    }

    #[test]
    fn filesystems_inotify_does_not_fully_cover() {
        assert_eq!(inotify_sees_all(0xef53), Ok(())); // ext4
        assert_eq!(inotify_sees_all(0x0102_1994), Ok(())); // tmpfs
        assert_eq!(inotify_sees_all(0x5846_5342), Ok(())); // xfs
        assert_eq!(inotify_sees_all(0x6969), Err("nfs"));
        assert_eq!(inotify_sees_all(0xff53_4d42), Err("cifs"));
        assert_eq!(inotify_sees_all(0x6573_5546), Err("fuse"));
        assert_eq!(inotify_sees_all(0x0102_1997), Err("9p"));
        assert_eq!(inotify_sees_all(0x00c3_6400), Err("ceph"));
    }

    /// Runs safety passes (full scans when asked for) until one says no rescan is needed: the
    /// stamp of a directory changed less than a second ago is not trusted yet.
    fn settle(s: &mut Scanner) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.needs_rescan(true) {
            s.scan();
            assert!(
                std::time::Instant::now() < deadline,
                "the stamp never settled"
            );
            // Poll interval of a deadline-bounded wait.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    #[test]
    fn the_safety_pass_of_a_watched_local_dir_stats_only_the_directory() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(d.path().join(format!("app{i}.ini")), "[uwsgi]\n").unwrap();
        }
        let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        assert_eq!(s.scan().entries.unwrap().len(), 50);
        let f_type: i64 = nix::sys::statfs::statfs(d.path())
            .unwrap()
            .filesystem_type()
            .0 as _;
        if inotify_sees_all(f_type).is_err() {
            // A temp dir on a network filesystem: every pass is a full rescan.
            assert!(s.needs_rescan(true));
            return;
        }
        // Without a live watch (or for a glob monitor) every pass is a full rescan.
        assert!(s.needs_rescan(false));
        settle(&mut s);
        let (scans, stats) = (s.full_scans(), s.file_stats());
        for _ in 0..20 {
            assert!(!s.needs_rescan(true));
        }
        assert_eq!((s.full_scans(), s.file_stats()), (scans, stats));
        // An in-place rewrite does not touch the directory: inotify's IN_CLOSE_WRITE reports
        // it, the safety pass does not.
        std::fs::write(d.path().join("app1.ini"), "[uwsgi]\n# edited\n").unwrap();
        assert!(!s.needs_rescan(true));
        assert_eq!(s.file_stats(), stats);
    }

    #[test]
    fn the_safety_pass_rescans_when_the_directory_changed() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("v");
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("a.ini"), "[uwsgi]\n").unwrap();
        std::fs::write(d.path().join("b.ini"), "[uwsgi]\n").unwrap();
        let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        s.scan();
        settle(&mut s);
        // A hard link gives inotify an IN_CREATE but never the IN_CLOSE_WRITE the runtime
        // waits for: the directory's stamp changed, so the safety pass rescans.
        std::fs::hard_link(d.path().join("b.ini"), v.join("b.ini")).unwrap();
        assert!(s.needs_rescan(true));
        assert_eq!(names(&s.scan()), vec!["a.ini", "b.ini"]);
        // The directory replaced by another one (new inode): rescan.
        settle(&mut s);
        std::fs::rename(&v, d.path().join("old")).unwrap();
        std::fs::create_dir(&v).unwrap();
        assert!(s.needs_rescan(true));
        assert_eq!(s.scan().entries, Some(vec![]));
        // Gone: rescan (it holds no configs).
        settle(&mut s);
        std::fs::remove_dir(&v).unwrap();
        assert!(s.needs_rescan(true));
    }

    #[test]
    fn missing_dir_is_empty_and_comes_back() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("v");
        let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        assert_eq!(s.scan().entries, Some(vec![]));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("a.ini"), "[uwsgi]\n").unwrap();
        assert_eq!(names(&s.scan()), vec!["a.ini"]);
    }

    #[test]
    fn glob_scan_uses_matched_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.ini"), "").unwrap();
        std::fs::write(d.path().join("b.xml"), "").unwrap();
        let pat = format!("{}/*.ini", d.path().display());
        let spec = parse_monitor(&pat, Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        let r = s.scan();
        assert_eq!(names(&r), vec![format!("{}/a.ini", d.path().display())]);
        assert_eq!(s.watch_dirs(), &[d.path().to_path_buf()]);
    }

    #[test]
    fn symlinked_configs_are_tracked_through_their_targets() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let (v, srv) = (root.join("v"), root.join("srv"));
        std::fs::create_dir(&v).unwrap();
        std::fs::create_dir(&srv).unwrap();
        let target = srv.join("uwsgi.ini");
        std::fs::write(&target, "[uwsgi]\n").unwrap();
        std::os::unix::fs::symlink("../srv/uwsgi.ini", v.join("app.ini")).unwrap();
        std::fs::write(v.join("plain.ini"), "[uwsgi]\n").unwrap();
        let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        assert_eq!(names(&s.scan()), vec!["app.ini", "plain.ini"]);
        assert_eq!(s.watch_dirs(), &[v.clone(), srv.clone()]);
        // An event in the target's directory names the target: the link is checked.
        let key = v.join("app.ini").display().to_string();
        let got = s.check_event("uwsgi.ini");
        assert!(got.iter().any(|(k, e)| *k == key && e.is_some()), "{got:?}");
        // The safety pass stats through the link.
        settle(&mut s);
        assert!(!s.needs_rescan(true));
        let f = std::fs::File::options().write(true).open(&target).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(1))
            .unwrap();
        assert!(s.needs_rescan(true));
        let before = s.scan().entries.unwrap();
        // Deleted target: the link dangles and is no config any more.
        std::fs::remove_file(&target).unwrap();
        let got = s.check_event("uwsgi.ini");
        assert!(got.iter().any(|(k, e)| *k == key && e.is_none()), "{got:?}");
        assert_eq!(names(&s.scan()), vec!["plain.ini"]);
        std::fs::write(&target, "[uwsgi]\n").unwrap();
        let got = s.check_event("uwsgi.ini");
        let e = got
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
            .clone()
            .unwrap();
        assert_ne!(
            Some(e.stamp),
            before.iter().find(|b| b.key == key).map(|b| b.stamp)
        );
        // A link created outside a full scan: its directory is watched after the next one.
        let other = root.join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("x.ini"), "[uwsgi]\n").unwrap();
        std::os::unix::fs::symlink(other.join("x.ini"), v.join("x.ini")).unwrap();
        assert!(s.check_name("x.ini").unwrap().1.is_some());
        assert!(s.needs_rescan(true));
        s.scan();
        assert!(s.watch_dirs().contains(&other));
    }

    #[test]
    fn target_directories_watched_are_capped() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let v = root.join("v");
        std::fs::create_dir(&v).unwrap();
        for i in 0..MAX_TARGET_DIRS + 3 {
            let t = root.join(format!("t{i}"));
            std::fs::create_dir(&t).unwrap();
            std::fs::write(t.join("uwsgi.ini"), "[uwsgi]\n").unwrap();
            std::os::unix::fs::symlink(t.join("uwsgi.ini"), v.join(format!("a{i}.ini"))).unwrap();
        }
        let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], false);
        assert_eq!(s.scan().entries.unwrap().len(), MAX_TARGET_DIRS + 3);
        assert_eq!(s.watch_dirs().len(), 1 + MAX_TARGET_DIRS);
        // Beyond the cap the safety pass still stats through every link.
        settle(&mut s);
        let last = root
            .join(format!("t{}", MAX_TARGET_DIRS + 2))
            .join("uwsgi.ini");
        std::fs::write(&last, "[uwsgi]\n# changed\n").unwrap();
        assert!(s.needs_rescan(true));
        // With --emperor-nofollow no target is watched.
        let spec = parse_monitor(v.to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], true);
        s.scan();
        assert_eq!(s.watch_dirs(), &[v]);
    }

    #[test]
    fn nofollow_accepts_symlinks_and_tracks_the_link() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("real.conf"), "[uwsgi]\n").unwrap();
        std::os::unix::fs::symlink("real.conf", d.path().join("l.ini")).unwrap();
        let spec = parse_monitor(d.path().to_str().unwrap(), Path::new("/")).unwrap();
        let mut s = Scanner::new(spec, vec![], true);
        assert_eq!(names(&s.scan()), vec!["l.ini"]);
    }
}
