//! The command line, with uWSGI's option names, and the `[uwsgi]` section of `--ini` files.
//!
//! Ini keys are turned into `--key=value` arguments and parsed by the same clap definition, so
//! an ini key and a command-line option behave identically. Ini values come first, the command
//! line after (the command line wins for single-valued options; lists accumulate).
//!
//! Like uWSGI, an ini file may carry keys the emperor has no option for, and they do not make
//! it fail: keys that only configure a uWSGI master or its workers ([`IGNORED_KEYS`], e.g.
//! `workers`) are ignored with a warning, and any other key is kept as a placeholder that
//! values can use as `%(key)` (also with a warning, in case it is a typo). Those warnings are
//! returned in [`Options::ini_notes`] for the caller to log once logging is set up. On the
//! command line an unknown `--option` stays an error.

// Field docs double as `--help` text (no markdown there), so brackets stay literal.
#![allow(rustdoc::broken_intra_doc_links)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use crate::sanitize::{esc, esc_path};

/// A drop-in replacement for `uwsgi --emperor`: supervises uWSGI vassals described by config
/// files in directories or glob patterns.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "emperor",
    version = crate::VERSION,
    args_override_self = true,
    after_help = "Every option can also be given as a key of the [uwsgi] section of an --ini file \
                  (uWSGI's own names), so an existing emperor.ini works unchanged: keys of \
                  uWSGI masters and workers (workers, master, ...) are ignored with a warning, \
                  other unknown keys are kept as %(key) placeholders.\n\
                  Signals: INT/TERM/QUIT stop every vassal and exit, HUP reloads every vassal, \
                  USR1 logs one status line per vassal, URG clears every backoff, WINCH rescans.\n\
                  Control: `emperor ctl --stats ADDR --command-socket PATH status|reload|stop|spawn|reset` \
                  (see `emperor ctl --help`)."
)]
pub struct Options {
    /// Monitors: a directory, a glob pattern, dir://PATH or glob://PATTERN. [default: none]
    #[arg(value_name = "MONITOR")]
    pub monitors: Vec<String>,

    /// A monitor (repeatable), as uWSGI's --emperor. [default: none]
    #[arg(long = "emperor", value_name = "MONITOR")]
    pub emperor: Vec<String>,

    /// Read options from the [uwsgi] section of FILE (repeatable; FILE:SECTION reads another
    /// section; `ini = OTHER` includes a file; uWSGI's %d %p %s %n %% magic and %(key)
    /// placeholders are expanded) [default: none]
    #[arg(long, value_name = "FILE")]
    pub ini: Vec<PathBuf>,

    /// Safety pass period in seconds (changes are otherwise seen at once through inotify; a
    /// watched local directory is rescanned only if it changed).
    #[arg(long = "emperor-freq", value_name = "SECS", default_value_t = 3)]
    pub freq: u64,

    /// Seconds of heartbeat silence after which a vassal that sends heartbeats is SIGKILLed and
    /// respawned.
    #[arg(
        long = "emperor-required-heartbeat",
        value_name = "SECS",
        default_value_t = 30
    )]
    pub required_heartbeat: u64,

    /// Seconds a stopping (or cursed) vassal gets before SIGKILL (repeated every SECS).
    #[arg(
        long = "emperor-curse-tolerance",
        value_name = "SECS",
        default_value_t = 30
    )]
    pub curse_tolerance: u64,

    /// First retry delay, in ms, of a vassal that died before being loyal; it doubles per
    /// failure (with ±10% jitter).
    #[arg(long = "emperor-throttle", value_name = "MS", default_value_t = 1000)]
    pub throttle: u64,

    /// Cap of the retry delay, in ms.
    #[arg(
        long = "emperor-max-throttle",
        value_name = "MS",
        default_value_t = 180_000
    )]
    pub max_throttle: u64,

    /// Never back off: retry a failing vassal every --emperor-freq seconds. [default: off]
    #[arg(long = "emperor-no-blacklist")]
    pub no_blacklist: bool,

    /// Do not follow symlinks: track the link itself (lstat), accept links and regular files. [default: off]
    #[arg(long = "emperor-nofollow")]
    pub nofollow: bool,

    /// An extra valid config extension (repeatable); such vassals get `--config NAME` [default: none].
    #[arg(
        long = "emperor-extra-extension",
        visible_alias = "emperor-extra-ext",
        value_name = "EXT"
    )]
    pub extra_extension: Vec<String>,

    /// argv[0] of every vassal [default: `uwsgi` from PATH]. An .ini vassal with a [vassal-shim]
    /// section runs `vassal-shim --ini NAME` instead (the binary beside the emperor's, else on
    /// PATH).
    #[arg(long = "emperor-wrapper", value_name = "BINARY")]
    pub wrapper: Option<String>,

    /// Binaries tried before the wrapper, in order (repeatable). [default: none]
    #[arg(long = "emperor-wrapper-override", value_name = "BINARY")]
    pub wrapper_override: Vec<String>,

    /// Binaries tried when the wrapper cannot be executed, in order (repeatable). [default: none]
    #[arg(long = "emperor-wrapper-fallback", value_name = "BINARY")]
    pub wrapper_fallback: Vec<String>,

    /// Run executable config files as `exec://NAME`. [default: off]
    #[arg(long = "emperor-magic-exec")]
    pub magic_exec: bool,

    /// Add `--inherit FILE` after the vassal config (repeatable). [default: none]
    #[arg(long = "vassals-inherit", value_name = "FILE")]
    pub vassals_inherit: Vec<String>,

    /// Add `--include FILE` after the vassal config (repeatable). [default: none]
    #[arg(long = "vassals-include", value_name = "FILE")]
    pub vassals_include: Vec<String>,

    /// Add `--inherit FILE` before the vassal config (repeatable). [default: none]
    #[arg(long = "vassals-inherit-before", value_name = "FILE")]
    pub vassals_inherit_before: Vec<String>,

    /// Add `--include FILE` before the vassal config (repeatable). [default: none]
    #[arg(long = "vassals-include-before", value_name = "FILE")]
    pub vassals_include_before: Vec<String>,

    /// Add `--set KEY=VALUE` to every vassal (repeatable) [default: none].
    #[arg(
        long = "vassals-set",
        visible_alias = "vassal-set",
        value_name = "KEY=VALUE"
    )]
    pub vassals_set: Vec<String>,

    /// Tyrant mode: each vassal runs as the owner (uid and gid) of its config file, with no
    /// supplementary groups; a file owned by root (uid 0 or gid 0) is refused, and a change of
    /// owner stops the vassal (it starts again as the new owner). Needs root. [default: off]
    #[arg(long = "emperor-tyrant")]
    pub tyrant: bool,

    /// Tyrant mode: take the owner of a symlinked config from the link itself (lstat), not from
    /// its target. [default: off]
    #[arg(long = "emperor-tyrant-nofollow")]
    pub tyrant_nofollow: bool,

    /// Tyrant mode: give the vassal the supplementary groups of the owner's user (initgroups)
    /// instead of none. [default: off]
    #[arg(long = "emperor-tyrant-initgroups")]
    pub tyrant_initgroups: bool,

    /// Run `CMD NAME` (no shell) before each vassal start, with UWSGI_VASSALS_DIR set; the start
    /// waits for it to exit (its status is only logged), the emperor does not. Output is logged.
    /// [default: none]
    #[arg(long = "vassals-start-hook", value_name = "CMD")]
    pub vassals_start_hook: Option<String>,

    /// Run `CMD NAME` (no shell) once each vassal process is gone (reaped), with
    /// UWSGI_VASSALS_DIR set, also at shutdown (after every vassal got its stop byte); the
    /// emperor waits up to --reload-mercy for stop hooks before it exits. [default: none]
    #[arg(long = "vassals-stop-hook", value_name = "CMD")]
    pub vassals_stop_hook: Option<String>,

    /// Run `/bin/sh -c CMD` in the vassal process (as its user, in its namespaces) before it
    /// execs uWSGI (repeatable, in order); a non-zero status aborts that start (logged, retried
    /// with backoff). [default: none]
    #[arg(long = "exec-as-vassal", value_name = "CMD")]
    pub exec_as_vassal: Vec<String>,

    /// Run `/bin/sh -c CMD` in the emperor, without waiting, after each vassal start, with
    /// UWSGI_VASSAL_CONFIG (name), UWSGI_VASSAL_PID, UWSGI_VASSAL_UID and UWSGI_VASSAL_GID set
    /// (repeatable). [default: none]
    #[arg(long = "exec-as-emperor", value_name = "CMD")]
    pub exec_as_emperor: Vec<String>,

    /// Keep only these capabilities in each vassal's bounding set (comma list of names such as
    /// net_bind_service or cap_chown, or numbers); every other one is dropped, CAP_SETPCAP
    /// too unless listed. [default: off]
    #[arg(
        long = "emperor-cap",
        visible_aliases = ["vassals-cap", "vassal-cap"],
        value_name = "CAPS"
    )]
    pub emperor_cap: Option<String>,

    /// Start each vassal in new namespaces (comma list): fs|ns|mount|mnt, net, ipc, pid, uts,
    /// cgroup, plus sysvsem and io. A new mount namespace is made private. [default: off]
    #[arg(long = "emperor-use-clone", value_name = "FLAGS")]
    pub emperor_use_clone: Option<String>,

    /// Stop vassals with byte 2 (graceful) instead of 0. [default: off]
    #[arg(long = "emperor-graceful-shutdown")]
    pub graceful_shutdown: bool,

    /// Seconds a shutdown waits for vassals before SIGKILL (0 means 30, as in uWSGI).
    #[arg(long = "reload-mercy", value_name = "SECS", default_value_t = 30)]
    pub reload_mercy: u64,

    /// On demand: the socket of vassal NAME is named in the file NAME+EXT (first line); the
    /// emperor binds it (unix path, or host:port / [v6]:port for TCP) and starts the vassal, with
    /// the listener as fd 0, at the first connection; byte 22 (idle) brings it back. [default: off]
    #[arg(
        long = "emperor-on-demand-extension",
        visible_alias = "emperor-on-demand-ext",
        value_name = "EXT"
    )]
    pub on_demand_extension: Option<String>,

    /// On demand: the socket of vassal NAME.EXT is DIR/NAME.socket. [default: off]
    #[arg(
        long = "emperor-on-demand-directory",
        visible_alias = "emperor-on-demand-dir",
        value_name = "DIR"
    )]
    pub on_demand_directory: Option<PathBuf>,

    /// On demand: the socket of vassal NAME is the first line printed by `sh -c 'CMD "NAME"'`
    /// (run without blocking the emperor). [default: off]
    #[arg(long = "emperor-on-demand-exec", value_name = "CMD")]
    pub on_demand_exec: Option<String>,

    /// Broodlord: byte 30 (SOS) from a vassal starts a zerg (`--ini NAME:zerg`, the [zerg]
    /// section), at most N at once; 0 disables it.
    #[arg(long = "emperor-broodlord", value_name = "N", default_value_t = 0)]
    pub broodlord: u32,

    /// Command socket: a unix datagram socket PATH (or host:port for UDP) taking uWSGI-style
    /// packets with the vars cmd (spawn, respawn, stop, reset, log), vassal and msg; see
    /// `emperor ctl --help`. [default: off]
    #[arg(long = "emperor-command-socket", value_name = "PATH")]
    pub command_socket: Option<String>,

    /// Accept a UDP (host:port) command socket, whose senders cannot be identified: every
    /// local user can then command vassals. `:PORT` binds 127.0.0.1. [default: refused]
    #[arg(long = "emperor-command-allow-udp")]
    pub command_allow_udp: bool,

    /// New vassals start suspended, until a `spawn` command. [default: off]
    #[arg(long = "emperor-wait-for-command")]
    pub wait_for_command: bool,

    /// A vassal name that starts at once despite --emperor-wait-for-command (repeatable).
    /// [default: none]
    #[arg(long = "emperor-wait-for-command-ignore", value_name = "NAME")]
    pub wait_for_command_ignore: Vec<String>,

    /// Serve stats JSON on ADDR: a unix socket path, or host:port for TCP [default: off].
    #[arg(
        long = "emperor-stats",
        visible_alias = "emperor-stats-server",
        value_name = "ADDR"
    )]
    pub stats: Option<String>,

    /// Answer stats clients as HTTP/1.0. [default: off]
    #[arg(long = "stats-http")]
    pub stats_http: bool,

    /// Write the emperor pid to FILE (removed at exit) [default: off].
    #[arg(long = "emperor-pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Process name of the emperor (first 15 bytes, as shown by ps -o comm / top)
    /// [default: unchanged].
    #[arg(long = "emperor-procname", value_name = "NAME")]
    pub procname: Option<String>,

    /// Start vassals by asking the fork server listening on the unix socket PATH (a preloaded
    /// base, normally itself a vassal named in --vassal-fork-base) instead of fork+exec; makes
    /// the emperor a child subreaper. Adopted vassals get their absolute config path and run in
    /// the base's cwd, uid and environment. [default: off]
    #[arg(long = "emperor-use-fork-server", value_name = "PATH")]
    pub use_fork_server: Option<PathBuf>,

    /// A vassal (instance name, e.g. base.ini) started with plain fork+exec even with
    /// --emperor-use-fork-server: the fork server itself (repeatable). [default: none]
    #[arg(long = "vassal-fork-base", value_name = "NAME")]
    pub vassal_fork_base: Vec<String>,

    /// Become a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so orphaned descendants are
    /// reparented to the emperor and reaped by it. [default: off; on with
    /// --emperor-use-fork-server]
    #[arg(long = "emperor-subreaper")]
    pub subreaper: bool,

    /// How each vassal's process tree is owned, so that stopping it leaves nothing behind:
    /// `cgroup` (a cgroup v2 per vassal, in a subtree the emperor may write: root, or systemd's
    /// Delegate=yes; refused at startup when unusable), `pgroup` (the vassal's process group,
    /// with the emperor as child subreaper), or `auto` (cgroup where usable, else pgroup).
    #[arg(long = "emperor-process-tree", value_name = "auto|cgroup|pgroup", default_value = "auto",
          value_parser = ["auto", "cgroup", "pgroup"])]
    pub process_tree: String,

    /// Run the emperor (and so every vassal not in tyrant mode) as this user, a name or a
    /// number, once its log, pidfiles, stats and command sockets are set up. The groups become
    /// the user's (initgroups); the group is --gid, else the user's primary group. Needs root;
    /// refused with --emperor-tyrant, --emperor-cap and --emperor-use-clone, which need the
    /// emperor to stay root. [default: unchanged]
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,

    /// Run the emperor as this group, a name or a number (with --uid: instead of the user's
    /// primary group; alone: the supplementary groups are dropped). Needs root.
    /// [default: unchanged]
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,

    /// Append the emperor's log to FILE (created with mode 0640 if missing) instead of stderr;
    /// FILE becomes the stdout and stderr of the emperor, so vassals inherit it too.
    /// [default: stderr]
    #[arg(long, value_name = "FILE")]
    pub logto: Option<PathBuf>,

    /// Accepted for uWSGI compatibility (with or without =FORMAT): every emperor log line
    /// already starts with an RFC 3339 UTC timestamp. [default: always dated]
    #[arg(
        long = "log-date",
        visible_alias = "logdate",
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub log_date: Option<String>,

    /// Write the emperor pid to FILE before privileges are dropped (uWSGI's master pidfile;
    /// removed at exit when still possible). [default: off]
    #[arg(long = "pidfile", value_name = "FILE")]
    pub master_pidfile: Option<PathBuf>,

    /// Write the emperor pid to FILE after privileges are dropped (--uid/--gid), as that user.
    /// [default: off]
    #[arg(long = "pidfile2", value_name = "FILE")]
    pub master_pidfile2: Option<PathBuf>,

    /// Detach into the background (fork, new session, fork) before anything else is set up,
    /// with stdin on /dev/null and the log appended to FILE (--logto wins if given). Under a
    /// parent emperor (UWSGI_EMPEROR_FD) it only logs to FILE, as uWSGI does. [default: off]
    #[arg(long, value_name = "FILE")]
    pub daemonize: Option<PathBuf>,

    /// Set the emperor's umask (octal, e.g. 022) first thing, so it applies to the log file,
    /// pidfiles, sockets and vassals. [default: inherited]
    #[arg(long, value_name = "MODE")]
    pub umask: Option<String>,

    /// Change the emperor's working directory to DIR first thing (before daemonize, logto,
    /// pidfiles and monitors, whose relative paths are then relative to DIR). [default:
    /// unchanged]
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Set an environment variable of the emperor, and so of every vassal (repeatable).
    /// [default: none]
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Remove an environment variable from the emperor and its vassals (repeatable; after
    /// --env). [default: none]
    #[arg(long, value_name = "KEY")]
    pub unenv: Vec<String>,

    /// Notes about the ini files (ignored and unknown keys), for the caller to log.
    #[arg(skip)]
    pub ini_notes: Vec<IniNote>,
}

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
const IGNORED_FLAGS: &[&str] = &[
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
fn ignored_id(key: &str) -> String {
    format!("ignored:{key}")
}

/// The full command line: the options of [`Options`], plus every [`IGNORED_KEYS`] key as a
/// hidden option (accepted, warned about, ignored), so a key an ini file accepts is accepted
/// on the command line too (Debian's init script passes `--die-on-term`).
pub fn command() -> clap::Command {
    let mut cmd = Options::command();
    for &key in IGNORED_KEYS {
        let arg = clap::Arg::new(ignored_id(key))
            .long(key)
            .hide(true)
            .action(ArgAction::Append);
        let arg = if IGNORED_FLAGS.contains(&key) {
            arg.num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
        } else {
            arg.num_args(1)
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Notes for the ignored keys given on the command line (in [`IGNORED_KEYS`] order).
fn command_line_notes(matches: &clap::ArgMatches) -> Vec<IniNote> {
    IGNORED_KEYS
        .iter()
        .filter(|key| {
            matches.value_source(&ignored_id(key)) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|key| IniNote {
            path: PathBuf::new(),
            key: key.to_string(),
            kind: IniNoteKind::IgnoredOption,
        })
        .collect()
}

/// Something worth logging about an ini file, found while reading it (before logging exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniNote {
    /// The file.
    pub path: PathBuf,
    /// The key.
    pub key: String,
    /// What happens to it.
    pub kind: IniNoteKind,
}

/// What happens to a key the emperor has no option for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IniNoteKind {
    /// A uWSGI master/worker key ([`IGNORED_KEYS`]).
    Ignored,
    /// Any other key: kept as a `%(key)` placeholder.
    Placeholder,
    /// A uWSGI master/worker key given on the command line (`--die-on-term`); `path` is empty.
    IgnoredOption,
}

impl std::fmt::Display for IniNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, k) = (esc_path(&self.path), esc(&self.key));
        match self.kind {
            IniNoteKind::IgnoredOption => write!(
                f,
                "command line: `--{k}` only configures a uWSGI master or its workers and has no meaning for the emperor; ignored"
            ),
            IniNoteKind::Ignored => write!(f, "{p}: `{k}` has no meaning for the emperor; ignored"),
            IniNoteKind::Placeholder => write!(
                f,
                "{p}: unknown option `{k}`, kept as a placeholder (usable as %({k}))"
            ),
        }
    }
}

/// Why options could not be read.
#[derive(Debug)]
pub enum OptionsError {
    /// clap's own error (unknown option, bad value, --help, --version).
    Clap(clap::Error),
    /// An ini file could not be read or parsed.
    Ini {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl std::fmt::Display for OptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionsError::Clap(e) => write!(f, "{e}"),
            OptionsError::Ini { path, message } => {
                write!(
                    f,
                    "cannot use ini file {}: {}",
                    esc_path(path),
                    esc(message)
                )
            }
        }
    }
}

impl std::error::Error for OptionsError {}

impl Options {
    /// Parses a command line (`args[0]` is the program name), expanding `--ini` files.
    pub fn parse_from_args<I, T>(args: I) -> Result<Options, OptionsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = command()
            .try_get_matches_from(&args)
            .map_err(OptionsError::Clap)?;
        let mut first = Options::from_arg_matches(&matches).map_err(OptionsError::Clap)?;
        if first.ini.is_empty() {
            first.ini_notes = command_line_notes(&matches);
            return Ok(first.finish());
        }
        let ini = read_ini_files(&first.ini)?;
        let mut merged: Vec<OsString> =
            vec![args.first().cloned().unwrap_or_else(|| "emperor".into())];
        merged.extend(ini.args);
        merged.extend(args.iter().skip(1).cloned());
        let matches = command()
            .try_get_matches_from(merged)
            .map_err(OptionsError::Clap)?;
        let mut opts = Options::from_arg_matches(&matches).map_err(OptionsError::Clap)?;
        opts.ini_notes = ini.notes;
        opts.ini_notes.extend(command_line_notes(&matches));
        Ok(opts.finish())
    }

    fn finish(mut self) -> Options {
        if self.reload_mercy == 0 {
            self.reload_mercy = 30;
        }
        self
    }

    /// Every monitor, `--emperor` ones first.
    pub fn all_monitors(&self) -> Vec<String> {
        self.emperor.iter().chain(&self.monitors).cloned().collect()
    }
}

/// What `--ini` files amount to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniArgs {
    /// Command-line arguments for the keys that are options (`--key=value`, `--flag`).
    pub args: Vec<OsString>,
    /// Ignored and unknown keys, once per file and key, in file order.
    pub notes: Vec<IniNote>,
}

/// The `[uwsgi]` section(s) of one ini file as command-line arguments; see [`read_ini_files`].
pub fn ini_args(path: &Path) -> Result<IniArgs, OptionsError> {
    read_ini_files(std::slice::from_ref(&path.to_path_buf()))
}

/// Reads ini files as uWSGI does: `FILE:SECTION` reads another section than `[uwsgi]`, an
/// `ini = OTHER` key includes another file (up to 8 levels). Every key of every file is
/// collected first, then values are expanded: the magic `%d %p %s %n %%` of the file the key is
/// in, and `%(name)` with the value of the first `name` key of any of the files (an undefined
/// one is an error naming the file and the key). Keys that are options become arguments, the
/// others become [`IniNote`]s.
pub fn read_ini_files(files: &[PathBuf]) -> Result<IniArgs, OptionsError> {
    let mut table = IniTable::default();
    for f in files {
        table.read(f, 0)?;
    }
    let cmd = Options::command();
    let mut out = IniArgs::default();
    for entry in &table.entries {
        let key = entry.key.as_str();
        let value = table.expand(entry)?;
        let arg = cmd.get_arguments().find(|a| {
            a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|al| al.contains(&key))
        });
        let arg = arg.filter(|_| !IGNORED_KEYS.contains(&key));
        let Some(arg) = arg else {
            let kind = if IGNORED_KEYS.contains(&key) {
                IniNoteKind::Ignored
            } else {
                IniNoteKind::Placeholder
            };
            let note = IniNote {
                path: entry.file.clone(),
                key: key.to_string(),
                kind,
            };
            if !out.notes.contains(&note) {
                out.notes.push(note);
            }
            continue;
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => out.args.push(format!("--{key}").into()),
                "0" | "false" | "no" | "off" => {}
                other => {
                    return Err(OptionsError::Ini {
                        path: entry.file.clone(),
                        message: format!("`{key}` expects true or false, not `{other}`"),
                    })
                }
            }
        } else {
            out.args.push(format!("--{key}={value}").into());
        }
    }
    Ok(out)
}

/// One `key = value` line, unexpanded, with the file it came from (for its magic variables).
#[derive(Debug)]
struct IniEntry {
    key: String,
    raw: String,
    file: PathBuf,
}

/// Every key of the ini files read so far, in order.
#[derive(Debug, Default)]
struct IniTable {
    entries: Vec<IniEntry>,
}

impl IniTable {
    fn read(&mut self, spec: &Path, depth: usize) -> Result<(), OptionsError> {
        let (path, section) = match spec.to_str().and_then(|s| s.rsplit_once(':')) {
            Some((p, sect)) if !spec.exists() && !sect.contains('/') => (Path::new(p), sect),
            _ => (spec, "uwsgi"),
        };
        let err = |message: String| OptionsError::Ini {
            path: spec.to_path_buf(),
            message,
        };
        if depth > 8 {
            return Err(err("ini files include each other too deeply".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let opt = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..Default::default()
        };
        let parsed = ini::Ini::load_from_str_opt(&text, opt).map_err(|e| err(e.to_string()))?;
        let mut found = false;
        for props in parsed.section_all(Some(section)) {
            found = true;
            for (key, value) in props.iter() {
                let entry = IniEntry {
                    key: key.trim().to_string(),
                    raw: value.trim().to_string(),
                    file: path.to_path_buf(),
                };
                if entry.key == "ini" {
                    // An include is read where it stands, so its path can only use keys
                    // defined before it.
                    let other = self.expand(&entry)?;
                    self.read(Path::new(&other), depth + 1)?;
                } else {
                    self.entries.push(entry);
                }
            }
        }
        if !found {
            return Err(err(format!("it has no [{section}] section")));
        }
        Ok(())
    }

    /// The value of `entry` with its magic variables and placeholders expanded.
    fn expand(&self, entry: &IniEntry) -> Result<String, OptionsError> {
        self.expand_in(entry, &mut Vec::new(), &mut 0)
    }

    /// `stack`: the keys being expanded (cycle check); `lookups`: `%(name)` references
    /// followed so far for this value (bounded: keys that refer to each other several times
    /// per value multiply the work at every level).
    fn expand_in<'a>(
        &'a self,
        entry: &'a IniEntry,
        stack: &mut Vec<&'a str>,
        lookups: &mut usize,
    ) -> Result<String, OptionsError> {
        let err = |message: String| OptionsError::Ini {
            path: entry.file.clone(),
            message,
        };
        let too_long = || {
            err(format!(
                "`{}` expands to more than {MAX_VALUE_LEN} bytes or through more than \
                 {MAX_LOOKUPS} %(...) references (keys that use each other several times?); \
                 simplify its placeholders",
                entry.key
            ))
        };
        let mut lookup = |name: &str| -> Result<String, OptionsError> {
            *lookups += 1;
            if *lookups > MAX_LOOKUPS {
                return Err(too_long());
            }
            let Some(def) = self.entries.iter().find(|e| e.key == name) else {
                return Err(err(format!(
                    "`{}` uses %({name}), but no key `{name}` is defined in the ini files; \
                     define it (e.g. `{name} = ...`) or write %%({name}) for a literal %({name})",
                    entry.key
                )));
            };
            if stack.contains(&def.key.as_str()) {
                return Err(err(format!(
                    "`{}` uses %({name}), whose value refers back to it ({} -> {name}); \
                     break the cycle",
                    entry.key,
                    stack.join(" -> ")
                )));
            }
            stack.push(def.key.as_str());
            let v = self.expand_in(def, stack, lookups);
            stack.pop();
            v
        };
        expand_value(&entry.raw, &entry.file, &mut lookup, &mut || too_long())
    }
}

/// Longest value an ini key may expand to.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most `%(name)` references followed to expand one value (nested ones included).
const MAX_LOOKUPS: usize = 4096;

/// uWSGI's config magic variables for the file at `path`: %d (its directory, with a trailing
/// slash), %p (its absolute path), %s (its file name), %n (file name without extension), %%.
/// `%(name)` is left as it is. `None` when the result would exceed [`MAX_VALUE_LEN`].
pub fn expand_magic(value: &str, path: &Path) -> Option<String> {
    let keep = |name: &str| Ok::<_, ()>(format!("%({name})"));
    expand_value(value, path, &mut { keep }, &mut || ()).ok()
}

/// One left-to-right pass over `value`: the magic variables of `path`, and `%(name)` through
/// `lookup`. Anything else after a `%` (and a `%(` without its `)`) stays literal. A result
/// longer than [`MAX_VALUE_LEN`] is the error `too_long` makes.
fn expand_value<E>(
    value: &str,
    path: &Path,
    lookup: &mut dyn FnMut(&str) -> Result<String, E>,
    too_long: &mut dyn FnMut() -> E,
) -> Result<String, E> {
    if value.len() > MAX_VALUE_LEN {
        return Err(too_long());
    }
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = abs
        .parent()
        .map(|d| format!("{}/", d.display()))
        .unwrap_or_default();
    let file = abs
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = abs
        .file_stem()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        let Some(c) = chars.next() else {
            out.push('%');
            rest = "";
            break;
        };
        rest = chars.as_str();
        match c {
            'd' => out.push_str(&dir),
            'p' => out.push_str(&abs.display().to_string()),
            's' => out.push_str(&file),
            'n' => out.push_str(&stem),
            '%' => out.push('%'),
            '(' => match rest.find(')') {
                Some(end) => {
                    out.push_str(&lookup(rest[..end].trim())?);
                    rest = &rest[end + 1..];
                }
                None => out.push_str("%("),
            },
            other => {
                out.push('%');
                out.push(other);
            }
        }
        if out.len() > MAX_VALUE_LEN {
            return Err(too_long());
        }
    }
    out.push_str(rest);
    if out.len() > MAX_VALUE_LEN {
        return Err(too_long());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_uwsgi() {
        let o = Options::parse_from_args(["emperor", "/etc/uwsgi/vassals"]).unwrap();
        assert_eq!(o.freq, 3);
        assert_eq!(o.required_heartbeat, 30);
        assert_eq!(o.curse_tolerance, 30);
        assert_eq!(o.throttle, 1000);
        assert_eq!(o.max_throttle, 180_000);
        assert_eq!(o.reload_mercy, 30);
        assert_eq!(o.all_monitors(), vec!["/etc/uwsgi/vassals"]);
    }

    #[test]
    fn uwsgi_command_line_carries_over() {
        let o = Options::parse_from_args([
            "emperor",
            "--emperor",
            "/a",
            "--emperor",
            "glob:///b/*.ini",
            "--emperor-stats-server",
            "/tmp/s.sock",
            "--vassal-set",
            "processes=2",
            "--emperor-nofollow",
        ])
        .unwrap();
        assert_eq!(o.all_monitors(), vec!["/a", "glob:///b/*.ini"]);
        assert_eq!(o.stats.as_deref(), Some("/tmp/s.sock"));
        assert_eq!(o.vassals_set, vec!["processes=2"]);
        assert!(o.nofollow);
    }

    #[test]
    fn unknown_option_is_named() {
        let e = Options::parse_from_args(["emperor", "--emperor-frek", "2"]).unwrap_err();
        assert!(e.to_string().contains("--emperor-frek"), "{e}");
    }

    #[test]
    fn ini_section_works_and_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("emperor.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nemperor = %dvassals\nemperor = /other\nemperor-freq = 7\n\
             emperor-no-blacklist = true\nemperor-magic-exec = false\nvassals-set = a=1\n\
             emperor-stats = 127.0.0.1:9191\n",
        )
        .unwrap();
        let o = Options::parse_from_args([
            "emperor".as_ref(),
            "--ini".as_ref(),
            ini.as_os_str(),
            "--emperor-freq".as_ref(),
            "2".as_ref(),
        ])
        .unwrap();
        let abs = std::path::absolute(dir.path()).unwrap();
        assert_eq!(
            o.emperor,
            vec![format!("{}/vassals", abs.display()), "/other".to_string()]
        );
        assert_eq!(o.freq, 2);
        assert!(o.no_blacklist);
        assert!(!o.magic_exec);
        assert_eq!(o.vassals_set, vec!["a=1"]);
        assert_eq!(o.stats.as_deref(), Some("127.0.0.1:9191"));
    }

    #[test]
    fn ini_sections_and_includes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.ini");
        std::fs::write(&base, "[uwsgi]\nemperor-freq = 9\n[other]\nemperor = /o\n").unwrap();
        let main = dir.path().join("main.ini");
        std::fs::write(&main, "[uwsgi]\nini = %dbase.ini\nemperor = /m\n").unwrap();
        let o = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()])
            .unwrap();
        assert_eq!((o.freq, o.emperor.clone()), (9, vec!["/m".to_string()]));
        let sect = format!("{}:other", base.display());
        let o = Options::parse_from_args(["emperor", "--ini", sect.as_str()]).unwrap();
        assert_eq!(o.emperor, vec!["/o"]);
        let selfref = dir.path().join("loop.ini");
        std::fs::write(&selfref, "[uwsgi]\nini = %p\n").unwrap();
        let e =
            Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), selfref.as_os_str()])
                .unwrap_err();
        assert!(e.to_string().contains("too deeply"), "{e}");
    }

    fn parse_ini(text: &str) -> (tempfile::TempDir, PathBuf, Result<Options, OptionsError>) {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("emperor.ini");
        std::fs::write(&ini, text).unwrap();
        let r = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()]);
        (dir, ini, r)
    }

    fn note(path: &Path, key: &str, kind: IniNoteKind) -> IniNote {
        IniNote {
            path: path.to_path_buf(),
            key: key.into(),
            kind,
        }
    }

    #[test]
    fn debians_stock_emperor_ini_is_accepted() {
        let (_d, ini, r) = parse_ini(
            "[uwsgi]\nautoload = true\nmaster = true\nworkers = 2\nno-orphans = true\n\
             log-date = true\nuid = www-data\ngid = www-data\n\
             emperor = /etc/uwsgi-emperor/vassals\n",
        );
        let o = r.unwrap();
        assert_eq!(o.emperor, vec!["/etc/uwsgi-emperor/vassals"]);
        assert_eq!(o.uid.as_deref(), Some("www-data"));
        assert_eq!(o.gid.as_deref(), Some("www-data"));
        assert_eq!(o.log_date.as_deref(), Some("true"));
        let ignored = IniNoteKind::Ignored;
        assert_eq!(
            o.ini_notes,
            vec![
                note(&ini, "autoload", ignored),
                note(&ini, "master", ignored),
                note(&ini, "workers", ignored),
                note(&ini, "no-orphans", ignored),
            ]
        );
        assert_eq!(
            o.ini_notes[2].to_string(),
            format!(
                "{}: `workers` has no meaning for the emperor; ignored",
                ini.display()
            )
        );
    }

    #[test]
    fn unknown_ini_keys_become_placeholders_once_per_file() {
        let (_d, ini, r) = parse_ini(
            "[uwsgi]\nemperor = /x\nbogus-key = 1\nbogus-key = 2\nprocesses = 4\n\
             processes = 8\n",
        );
        let o = r.unwrap();
        assert_eq!(
            o.ini_notes,
            vec![
                note(&ini, "bogus-key", IniNoteKind::Placeholder),
                note(&ini, "processes", IniNoteKind::Ignored),
            ]
        );
        assert!(
            o.ini_notes[0].to_string().ends_with(
                "unknown option `bogus-key`, kept as a placeholder (usable as %(bogus-key))"
            ),
            "{}",
            o.ini_notes[0]
        );
        // On the command line, an unknown option is still refused.
        let e = Options::parse_from_args(["emperor", "--bogus-key", "1", "/x"]).unwrap_err();
        assert!(e.to_string().contains("--bogus-key"), "{e}");
        // A master/worker key is accepted there too, with the same warning.
        let o = Options::parse_from_args(["emperor", "--workers", "2", "/x"]).unwrap();
        assert_eq!(o.all_monitors(), vec!["/x"]);
        assert_eq!(o.ini_notes[0].kind, IniNoteKind::IgnoredOption);
    }

    #[test]
    fn placeholders_expand_from_any_key_first_value_wins() {
        let (d, _ini, r) = parse_ini(
            "[uwsgi]\nemperor = %(root)/%(sub)\nroot = /srv\nroot = /ignored\n\
             sub = apps-%(workers)\nworkers = 2\nlogto = %dlog/%(sub).log\n\
             emperor-procname = 100%%(root)\nvassals-set = open=%(\n",
        );
        let o = r.unwrap();
        assert_eq!(o.emperor, vec!["/srv/apps-2"]);
        let abs = std::path::absolute(d.path()).unwrap();
        assert_eq!(o.logto, Some(abs.join("log/apps-2.log")));
        assert_eq!(o.procname.as_deref(), Some("100%(root)"));
        assert_eq!(o.vassals_set, vec!["open=%("]);
    }

    #[test]
    fn placeholders_cross_includes_and_name_the_file_when_undefined() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("inc.ini");
        std::fs::write(&inc, "[uwsgi]\nemperor = %(top)/v\nlevel = inner\n").unwrap();
        let main = dir.path().join("main.ini");
        std::fs::write(
            &main,
            "[uwsgi]\ntop = /t\nincname = inc\nini = %d%(incname).ini\n\
             emperor-procname = %(level)\n",
        )
        .unwrap();
        let o = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()])
            .unwrap();
        assert_eq!(o.emperor, vec!["/t/v"]);
        assert_eq!(o.procname.as_deref(), Some("inner"));

        std::fs::write(&inc, "[uwsgi]\nemperor = %(nowhere)/v\n").unwrap();
        let e = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&inc.display().to_string()), "{e}");
        assert!(e.contains("`emperor` uses %(nowhere)"), "{e}");

        // An include path can only use keys defined before it.
        std::fs::write(&main, "[uwsgi]\nini = %d%(incname).ini\nincname = inc\n").unwrap();
        let e = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), main.as_os_str()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&main.display().to_string()), "{e}");
        assert!(e.contains("%(incname)"), "{e}");
    }

    #[test]
    fn placeholder_cycles_are_errors() {
        let (_d, ini, r) = parse_ini("[uwsgi]\na = %(b)\nb = x%(a)\nemperor = %(a)\n");
        let e = r.unwrap_err().to_string();
        assert!(e.contains(&ini.display().to_string()), "{e}");
        assert!(e.contains("cycle"), "{e}");
        let (_d, _ini, r) = parse_ini("[uwsgi]\nemperor = %(emperor)\n");
        assert!(r.unwrap_err().to_string().contains("cycle"));
    }

    #[test]
    fn process_keys_from_ini_and_command_line() {
        let (_d, _ini, r) = parse_ini(
            "[uwsgi]\nemperor = /v\nuid = 33\ngid = 33\nlogto = /var/log/e.log\n\
             pidfile = /run/e.pid\npidfile2 = /run/e2.pid\ndaemonize = /var/log/d.log\n\
             logdate = %%Y-%%m-%%d\n",
        );
        let o = r.unwrap();
        assert_eq!(o.uid.as_deref(), Some("33"));
        assert_eq!(o.gid.as_deref(), Some("33"));
        assert_eq!(o.logto.as_deref(), Some(Path::new("/var/log/e.log")));
        assert_eq!(o.master_pidfile.as_deref(), Some(Path::new("/run/e.pid")));
        assert_eq!(o.master_pidfile2.as_deref(), Some(Path::new("/run/e2.pid")));
        assert_eq!(o.daemonize.as_deref(), Some(Path::new("/var/log/d.log")));
        assert_eq!(o.log_date.as_deref(), Some("%Y-%m-%d"));
        assert!(o.ini_notes.is_empty(), "{:?}", o.ini_notes);
        // --log-date takes its format only after `=`: a following monitor stays a monitor.
        let o = Options::parse_from_args([
            "emperor",
            "--log-date",
            "/v",
            "--uid",
            "nobody",
            "--pidfile",
            "/p",
        ])
        .unwrap();
        assert_eq!(o.log_date.as_deref(), Some("true"));
        assert_eq!(o.all_monitors(), vec!["/v"]);
        assert_eq!(o.uid.as_deref(), Some("nobody"));
        assert_eq!(o.master_pidfile.as_deref(), Some(Path::new("/p")));
        assert_eq!(o.pidfile, None);
    }

    #[test]
    fn environment_keys_from_ini() {
        let (_d, _ini, r) = parse_ini(
            "[uwsgi]\nemperor = v\numask = 027\nchdir = /srv\nenv = A=1\nenv = B=x=y\n\
             unenv = C\n",
        );
        let o = r.unwrap();
        assert_eq!(o.umask.as_deref(), Some("027"));
        assert_eq!(o.chdir.as_deref(), Some(Path::new("/srv")));
        assert_eq!(o.env, vec!["A=1", "B=x=y"]);
        assert_eq!(o.unenv, vec!["C"]);
        assert!(o.ini_notes.is_empty(), "{:?}", o.ini_notes);
    }

    #[test]
    fn magic_alone_keeps_placeholders() {
        let p = Path::new("/etc/e/emperor.ini");
        assert_eq!(
            expand_magic("%d|%n|%s|%%|%(x)|%q|%", p).as_deref(),
            Some("/etc/e/|emperor|emperor.ini|%|%(x)|%q|%")
        );
        assert_eq!(expand_magic(&"%p".repeat(4000), p), None);
    }

    #[test]
    fn placeholder_bombs_are_bounded_errors() {
        // Each level doubles the previous one: 2^40 bytes, or 2^40 empty lookups.
        for first in ["x", ""] {
            let mut text = format!(
                "[uwsgi]
a0 = {first}
"
            );
            for k in 1..=40 {
                text.push_str(&format!(
                    "a{k} = %(a{})%(a{})
",
                    k - 1,
                    k - 1
                ));
            }
            text.push_str(
                "emperor = %(a40)
",
            );
            let (_d, ini, r) = parse_ini(&text);
            let e = r.unwrap_err().to_string();
            assert!(e.contains(&ini.display().to_string()), "{e}");
            assert!(e.contains("simplify its placeholders"), "{e}");
        }
    }

    #[test]
    fn help_documents_defaults() {
        let help = Options::command().render_long_help().to_string();
        for needle in [
            "[default: 3]",
            "[default: 30]",
            "[default: 1000]",
            "[default: 180000]",
            "--emperor-stats",
            "--stats-http",
            "--emperor-pidfile",
        ] {
            assert!(help.contains(needle), "{needle} missing from --help");
        }
    }
}
