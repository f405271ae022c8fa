//! What a monitor argument means: `dir://PATH`, `glob://PATTERN`, or a bare path.

use std::path::{Path, PathBuf};

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
pub fn parse_monitor(arg: &str, cwd: &Path) -> Result<MonitorSpec, MonitorError> {
    let kind = if let Some(p) = arg.strip_prefix("dir://") {
        MonitorKind::Dir(cwd.join(p))
    } else if let Some(p) = arg.strip_prefix("glob://") {
        MonitorKind::Glob(p.to_string())
    } else if let Some((scheme, _)) = arg.split_once("://") {
        return Err(MonitorError::UnsupportedScheme {
            arg: arg.to_string(),
            scheme: scheme.to_string(),
        });
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

/// A monitor argument that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// A `scheme://` this emperor has no monitor for.
    #[error("monitor `{arg}`: the `{scheme}://` monitor is not supported (use a directory, a glob, dir:// or glob://)")]
    UnsupportedScheme {
        /// The argument as given.
        arg: String,
        /// Its scheme.
        scheme: String,
    },
}
