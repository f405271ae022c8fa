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

mod config;
mod scan;
mod spec;

use std::os::unix::fs::MetadataExt;

use crate::core::FileStamp;

pub use config::{open_config, read_config_head, ConfigError, MAX_CONFIG};
pub use scan::{inotify_sees_all, ScanResult, Scanner, MAX_TARGET_DIRS};
pub use spec::{parse_monitor, MonitorError, MonitorKind, MonitorSpec};

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

#[cfg(test)]
mod tests;
