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
use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

pub use super::error::{IniNote, IniNoteKind, IniProblem, OptionsError};
pub use super::expand::{expand_magic, MAX_VALUE_LEN};
pub use super::ignored::IGNORED_KEYS;
pub use super::ini::{ini_args, read_ini_files, IniArgs};

use super::ignored::{ignored_id, IGNORED_FLAGS};

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
