//! The command line, with uWSGI's option names, and the `[uwsgi]` section of `--ini` files.
//!
//! Ini keys are turned into `--key value` arguments and parsed by the same clap definition, so
//! an ini key and a command-line option behave identically, and an unknown key is an error that
//! names it. Ini values come first, the command line after (the command line wins for
//! single-valued options; lists accumulate).

// Field docs double as `--help` text (no markdown there), so brackets stay literal.
#![allow(rustdoc::broken_intra_doc_links)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

/// A drop-in replacement for `uwsgi --emperor`: supervises uWSGI vassals described by config
/// files in directories or glob patterns.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "emperor",
    version,
    args_override_self = true,
    after_help = "Every option can also be given as a key of the [uwsgi] section of an --ini file \
                  (uWSGI's own names), so an existing emperor.ini works unchanged.\n\
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
    /// section; `ini = OTHER` includes a file; uWSGI's %d %p %s %n %% magic is expanded)
    /// [default: none]
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
                write!(f, "cannot use ini file {}: {message}", path.display())
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
        let first = Options::try_parse_from(&args).map_err(OptionsError::Clap)?;
        if first.ini.is_empty() {
            return Ok(first.finish());
        }
        let mut merged: Vec<OsString> =
            vec![args.first().cloned().unwrap_or_else(|| "emperor".into())];
        for path in &first.ini {
            merged.extend(ini_args(path)?);
        }
        merged.extend(args.iter().skip(1).cloned());
        let cmd = Options::command();
        let matches = cmd
            .try_get_matches_from(merged)
            .map_err(OptionsError::Clap)?;
        let opts = Options::from_arg_matches(&matches).map_err(OptionsError::Clap)?;
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

/// The `[uwsgi]` section(s) of an ini file as command-line arguments. `FILE:SECTION` reads
/// another section, and an `ini = OTHER` key includes another file (up to 8 levels), as in
/// uWSGI.
pub fn ini_args(path: &Path) -> Result<Vec<OsString>, OptionsError> {
    ini_args_depth(path, 0)
}

fn ini_args_depth(spec: &Path, depth: usize) -> Result<Vec<OsString>, OptionsError> {
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
    let cmd = Options::command();
    let mut out = Vec::new();
    let mut found = false;
    for props in parsed.section_all(Some(section)) {
        found = true;
        for (key, value) in props.iter() {
            let key = key.trim();
            let value = expand_magic(value.trim(), path);
            if key == "ini" {
                out.extend(ini_args_depth(Path::new(&value), depth + 1)?);
                continue;
            }
            let Some(arg) = cmd.get_arguments().find(|a| {
                a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|al| al.contains(&key))
            }) else {
                return Err(err(format!("unknown option `{key}`")));
            };
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                match value.to_ascii_lowercase().as_str() {
                    "" | "1" | "true" | "yes" | "on" => out.push(format!("--{key}").into()),
                    "0" | "false" | "no" | "off" => {}
                    other => {
                        return Err(err(format!("`{key}` expects true or false, not `{other}`")))
                    }
                }
            } else {
                out.push(format!("--{key}").into());
                out.push(value.into());
            }
        }
    }
    if !found {
        return Err(err(format!("it has no [{section}] section")));
    }
    Ok(out)
}

/// uWSGI's config magic variables for the file at `path`: %d (its directory, with a trailing
/// slash), %p (its absolute path), %s (its file name), %n (file name without extension), %%.
pub fn expand_magic(value: &str, path: &Path) -> String {
    if !value.contains('%') {
        return value.to_string();
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
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&dir),
            Some('p') => out.push_str(&abs.display().to_string()),
            Some('s') => out.push_str(&file),
            Some('n') => out.push_str(&stem),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
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

    #[test]
    fn unknown_ini_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("e.ini");
        std::fs::write(&ini, "[uwsgi]\nemperor = /x\nbogus-key = 1\n").unwrap();
        let e = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()])
            .unwrap_err();
        assert!(e.to_string().contains("bogus-key"), "{e}");
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
