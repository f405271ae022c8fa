//! The ini keys (and command-line options) of a uWSGI master or its workers, which the emperor
//! accepts and ignores with a warning.

/// Ini keys that only configure a uWSGI master or its workers: an emperor-only process has no
/// use for them, so they are accepted with a warning and otherwise ignored. (They still work
/// as `%(key)` placeholders.)
pub const IGNORED_KEYS: &[&str] = &[
    "master",
    "workers",
    "processes",
    "threads",
    "enable-threads",
    "thunder-lock",
    "autoload",
    "no-orphans",
    "vacuum",
    "plugin",
    "plugins",
    "need-plugin",
    "need-plugins",
    "plugin-dir",
    "plugins-dir",
    "die-on-term",
    "socket",
    "uwsgi-socket",
    "http",
    "http-socket",
    "https",
    "shared-socket",
    "chmod-socket",
    "chown-socket",
    "listen",
    "protocol",
    "stats",
    "stats-server",
    "lazy",
    "lazy-apps",
    "harakiri",
    "harakiri-verbose",
    "max-requests",
    "reload-on-rss",
    "evil-reload-on-rss",
    "buffer-size",
    "post-buffering",
    "single-interpreter",
    "need-app",
    "memory-report",
    "cheaper",
    "offload-threads",
    "module",
    "wsgi-file",
    "callable",
    "mount",
    "manage-script-name",
    "home",
    "virtualenv",
    "venv",
    "pythonpath",
    "python-path",
    "py-autoreload",
    "disable-logging",
];

/// The [`IGNORED_KEYS`] that uWSGI takes without a value (`--master`, `--die-on-term`): on the
/// command line they take an optional `=VALUE`, the others one value (`--workers 2`).
pub(super) const IGNORED_FLAGS: &[&str] = &[
    "master",
    "enable-threads",
    "thunder-lock",
    "autoload",
    "no-orphans",
    "vacuum",
    "die-on-term",
    "chmod-socket",
    "lazy",
    "lazy-apps",
    "harakiri-verbose",
    "single-interpreter",
    "need-app",
    "memory-report",
    "manage-script-name",
    "disable-logging",
];

/// The clap id of the hidden command-line option of an ignored key.
pub(super) fn ignored_id(key: &str) -> String {
    format!("ignored:{key}")
}
