//! Options: the command line, the `[vassal-shim]` ini section, and the checked settings.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::Signal;
use vassal_shim::ini::Section;
use vassal_shim::words;

pub use vassal_shim::core::{Ready, ReloadMode, Settings};

/// The section of an ini file the shim reads.
pub const SECTION: &str = "vassal-shim";
/// The variable naming the file that holds the pushed config.
pub const CONFIG_ENV: &str = "VASSAL_SHIM_CONFIG";

/// `vassal-shim [OPTIONS] -- PROGRAM [ARGS...]` or `vassal-shim --ini FILE`.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "vassal-shim",
    version,
    about = "Run any program as a well-behaved vassal of a uWSGI-style emperor",
    after_help = "Every option can also be given as a key of the [vassal-shim] section of the \
                  --ini file (command-line flags win). An --ini file without a [vassal-shim] \
                  section is handed to `uwsgi` unchanged. See docs/vassal-shim.md."
)]
pub struct Cli {
    /// Ini file with a [vassal-shim] section (`emperor://NAME` reads the pushed config).
    #[arg(long, value_name = "FILE")]
    pub ini: Option<String>,
    /// The program and its arguments, as shell-style words (instead of `-- PROGRAM ARGS`).
    #[arg(long, value_name = "COMMAND")]
    pub exec: Option<String>,
    /// Working directory of the program.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// Extra environment for the program (repeatable).
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,
    /// When the program is ready: immediate | tcp:HOST:PORT | unix:PATH |
    /// http://HOST:PORT/PATH | notify.
    #[arg(long, value_name = "HOW")]
    pub ready: Option<String>,
    /// Send a heartbeat every N seconds while the program is alive and healthy (0 = off).
    #[arg(long, value_name = "SECONDS")]
    pub heartbeat: Option<String>,
    /// Signal that asks the program to stop (default TERM).
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds to wait after the stop signal before SIGKILL (default 10).
    #[arg(long, value_name = "SECONDS")]
    pub stop_timeout: Option<String>,
    /// On reload: `restart` (default) or `signal:NAME` (send NAME to the program's main process).
    #[arg(long, value_name = "HOW")]
    pub reload: Option<String>,
    /// Exit codes of the program that mean "do not respawn" (comma list): the shim exits 26.
    #[arg(long, value_name = "CODES")]
    pub exile_codes: Option<String>,
    /// Seconds the program must stay up after readiness before it is declared loyal (default 2).
    #[arg(long, value_name = "SECONDS")]
    pub loyal_after: Option<String>,
    /// Give up (stop the program, exit 1) when it is not ready this many seconds after a start
    /// or reload (0 = wait forever, the default).
    #[arg(long, value_name = "SECONDS")]
    pub ready_timeout: Option<String>,
    /// Give the program WATCHDOG_USEC for SECONDS: it must send WATCHDOG=1 that often to stay
    /// healthy (0 = off, the default).
    #[arg(long, value_name = "SECONDS")]
    pub watchdog: Option<String>,
    /// Ask for reinforcements (byte 30) while the listen backlog is at least N.
    #[arg(long, value_name = "N")]
    pub sos_backlog: Option<String>,
    /// Where to write the pushed config (default: a file in a private temporary directory).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Seconds a readiness or health probe may take (default 2).
    #[arg(long, value_name = "SECONDS")]
    pub probe_timeout: Option<String>,
    /// The program is a fork-server base (`true`/`false`, default false): the vassals it forks
    /// for the emperor are the emperor's, so the shim is no subreaper and does not tag them.
    #[arg(long, value_name = "BOOL")]
    pub fork_base: Option<String>,
    /// The program and its arguments.
    #[arg(last = true, value_name = "PROGRAM")]
    pub program: Vec<String>,
}

impl Cli {
    /// Fills every option not given on the command line from the ini section; `env` entries
    /// from the ini come first.
    pub fn merge_section(&mut self, s: &Section) {
        fn take(slot: &mut Option<String>, s: &Section, key: &str) {
            if slot.is_none() {
                *slot = s.get(key).map(str::to_string);
            }
        }
        take(&mut self.exec, s, "exec");
        if self.chdir.is_none() {
            self.chdir = s.get("chdir").map(PathBuf::from);
        }
        let mut env: Vec<String> = s.get_all("env").map(str::to_string).collect();
        env.append(&mut self.env);
        self.env = env;
        take(&mut self.ready, s, "ready");
        take(&mut self.heartbeat, s, "heartbeat");
        take(&mut self.stop_signal, s, "stop-signal");
        take(&mut self.stop_timeout, s, "stop-timeout");
        take(&mut self.reload, s, "reload");
        take(&mut self.exile_codes, s, "exile-codes");
        take(&mut self.loyal_after, s, "loyal-after");
        take(&mut self.ready_timeout, s, "ready-timeout");
        take(&mut self.watchdog, s, "watchdog");
        take(&mut self.sos_backlog, s, "sos-backlog");
        take(&mut self.probe_timeout, s, "probe-timeout");
        take(&mut self.fork_base, s, "fork-base");
        if self.config_file.is_none() {
            self.config_file = s.get("config-file").map(PathBuf::from);
        }
    }
}

/// A setting that cannot be used, with the option it came from.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// Neither `-- PROGRAM` nor `exec`.
    #[error("no program to run: give `-- PROGRAM [ARGS...]` or `exec = ...`")]
    NoProgram,
    /// `exec` does not split into words.
    #[error("exec = {exec:?}: {source}")]
    Exec {
        exec: String,
        source: words::WordsError,
    },
    /// An `env` entry without `=`.
    #[error("env = {0:?}: expected K=V")]
    EnvNotKv(String),
    /// An `env` entry with an empty name.
    #[error("env = {0:?}: empty name")]
    EnvEmptyName(String),
    /// A duration that is not a number.
    #[error("{name} = {value:?}: expected a number of seconds")]
    Seconds { name: &'static str, value: String },
    /// A duration below zero or above a year.
    #[error("{name} = {value:?}: out of range")]
    SecondsRange { name: &'static str, value: String },
    /// A boolean that is neither true nor false.
    #[error("{name} = {value:?}: expected true or false")]
    Bool { name: &'static str, value: String },
    /// A number that names no signal.
    #[error("{0:?} is not a signal number")]
    SignalNumber(String),
    /// A name that names no signal.
    #[error("{0:?} is not a signal name")]
    SignalName(String),
    /// A `HOST:PORT` that does not resolve.
    #[error("cannot resolve {addr:?}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    /// A `HOST:PORT` that resolves to no address.
    #[error("{0:?} resolves to nothing")]
    ResolvesToNothing(String),
    /// `ready = unix:` without a path.
    #[error("ready = unix: needs a path")]
    UnixNoPath,
    /// An unknown `ready` form.
    #[error(
        "ready = {0:?}: expected immediate, tcp:HOST:PORT, unix:PATH, http://HOST:PORT/PATH or notify"
    )]
    Ready(String),
    /// An unknown `reload` form.
    #[error("reload = {0:?}: expected restart or signal:NAME")]
    Reload(String),
    /// An exile code that is not a number.
    #[error("exile-codes: {0:?} is not an exit code")]
    ExileCode(String),
    /// A backlog threshold that is not a count.
    #[error("sos-backlog = {0:?}: expected a count")]
    SosBacklog(String),
}

fn seconds(
    opt: &Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, OptionError> {
    match opt {
        None => Ok(default),
        Some(v) => {
            let f: f64 = v.trim().parse().map_err(|_| OptionError::Seconds {
                name,
                value: v.clone(),
            })?;
            if !(0.0..=86400.0 * 365.0).contains(&f) {
                return Err(OptionError::SecondsRange {
                    name,
                    value: v.clone(),
                });
            }
            Ok(Duration::from_secs_f64(f))
        }
    }
}

fn boolean(opt: &Option<String>, name: &'static str) -> Result<bool, OptionError> {
    match opt
        .as_deref()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("false" | "no" | "off" | "0") => Ok(false),
        Some("" | "true" | "yes" | "on" | "1") => Ok(true),
        Some(v) => Err(OptionError::Bool {
            name,
            value: v.to_string(),
        }),
    }
}

/// Parses a signal name (`TERM`, `SIGTERM`, `term`) or number.
pub fn parse_signal(s: &str) -> Result<Signal, OptionError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| OptionError::SignalNumber(s.to_string()));
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name).map_err(|_| OptionError::SignalName(s.to_string()))
}

fn host_port(s: &str) -> Result<(String, SocketAddr), OptionError> {
    let addr = s
        .to_socket_addrs()
        .map_err(|source| OptionError::Resolve {
            addr: s.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| OptionError::ResolvesToNothing(s.to_string()))?;
    Ok((s.to_string(), addr))
}

/// Parses the `ready` option.
pub fn parse_ready(s: &str) -> Result<Ready, OptionError> {
    let s = s.trim();
    if s == "immediate" || s.is_empty() {
        Ok(Ready::Immediate)
    } else if s == "notify" {
        Ok(Ready::Notify)
    } else if let Some(rest) = s.strip_prefix("tcp:") {
        Ok(Ready::Tcp(host_port(rest)?.1))
    } else if let Some(rest) = s.strip_prefix("unix:") {
        if rest.is_empty() {
            return Err(OptionError::UnixNoPath);
        }
        Ok(Ready::Unix(PathBuf::from(rest)))
    } else if let Some(rest) = s.strip_prefix("http://") {
        let (hp, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let hp_port = if hp
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hp.to_string()
        } else {
            format!("{hp}:80")
        };
        let (host, addr) = host_port(&hp_port)?;
        Ok(Ready::Http {
            addr,
            host,
            path: path.to_string(),
        })
    } else {
        Err(OptionError::Ready(s.to_string()))
    }
}

fn program(cli: &Cli) -> Result<Vec<String>, OptionError> {
    let exec = if !cli.program.is_empty() {
        cli.program.clone()
    } else if let Some(e) = &cli.exec {
        words::split(e).map_err(|source| OptionError::Exec {
            exec: e.clone(),
            source,
        })?
    } else {
        Vec::new()
    };
    if exec.is_empty() {
        return Err(OptionError::NoProgram);
    }
    Ok(exec)
}

fn environment(entries: &[String]) -> Result<Vec<(String, String)>, OptionError> {
    let mut env = Vec::new();
    for kv in entries {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| OptionError::EnvNotKv(kv.clone()))?;
        if k.is_empty() {
            return Err(OptionError::EnvEmptyName(kv.clone()));
        }
        env.push((k.to_string(), v.to_string()));
    }
    Ok(env)
}

fn reload_mode(opt: Option<&str>) -> Result<ReloadMode, OptionError> {
    match opt.map(str::trim) {
        None | Some("restart") => Ok(ReloadMode::Restart),
        Some(r) => match r.strip_prefix("signal:") {
            Some(sig) => Ok(ReloadMode::Signal(parse_signal(sig)?)),
            None => Err(OptionError::Reload(r.to_string())),
        },
    }
}

fn exile_codes(opt: Option<&str>) -> Result<Vec<i32>, OptionError> {
    opt.unwrap_or("")
        .split([',', ' '])
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            c.trim()
                .parse()
                .map_err(|_| OptionError::ExileCode(c.to_string()))
        })
        .collect()
}

fn sos_backlog(opt: &Option<String>) -> Result<Option<u32>, OptionError> {
    match opt {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(OptionError::SosBacklog(v.clone())),
        },
    }
}

/// A duration where zero means "off".
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Cli {
    /// Checks and converts the merged options.
    pub fn settings(&self) -> Result<Settings, OptionError> {
        let cli = self;
        Ok(Settings {
            exec: program(cli)?,
            chdir: cli.chdir.clone(),
            env: environment(&cli.env)?,
            ready: parse_ready(cli.ready.as_deref().unwrap_or("immediate"))?,
            heartbeat: nonzero(seconds(&cli.heartbeat, "heartbeat", Duration::ZERO)?),
            stop_signal: parse_signal(cli.stop_signal.as_deref().unwrap_or("TERM"))?,
            stop_timeout: seconds(&cli.stop_timeout, "stop-timeout", Duration::from_secs(10))?,
            reload: reload_mode(cli.reload.as_deref())?,
            exile_codes: exile_codes(cli.exile_codes.as_deref())?,
            loyal_after: seconds(&cli.loyal_after, "loyal-after", Duration::from_secs(2))?,
            ready_timeout: nonzero(seconds(
                &cli.ready_timeout,
                "ready-timeout",
                Duration::ZERO,
            )?),
            watchdog: nonzero(seconds(&cli.watchdog, "watchdog", Duration::ZERO)?),
            sos_backlog: sos_backlog(&cli.sos_backlog)?,
            config_file: cli.config_file.clone(),
            probe_timeout: seconds(&cli.probe_timeout, "probe-timeout", Duration::from_secs(2))?,
            fork_base: boolean(&cli.fork_base, "fork-base")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vassal_shim::ini::Ini;

    #[test]
    fn ini_and_flags_merge_flags_win() {
        let ini = Ini::parse(
            "[vassal-shim]\nexec = python3 -m http.server 'a b'\nenv = A=1\nready = tcp:127.0.0.1:8080\n\
             heartbeat = 5\nstop-signal = INT\nstop-timeout = 3\nreload = signal:HUP\n\
             exile-codes = 3, 4\nloyal-after = 0.5\n",
        );
        let mut cli =
            Cli::try_parse_from(["vassal-shim", "--env", "B=2", "--heartbeat", "7"]).unwrap();
        cli.merge_section(&ini.section(SECTION).unwrap());
        let s = cli.settings().unwrap();
        assert_eq!(s.exec, vec!["python3", "-m", "http.server", "a b"]);
        assert_eq!(
            s.env,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(s.ready, Ready::Tcp("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(s.heartbeat, Some(Duration::from_secs(7)));
        assert_eq!(s.stop_signal, Signal::SIGINT);
        assert_eq!(s.stop_timeout, Duration::from_secs(3));
        assert_eq!(s.reload, ReloadMode::Signal(Signal::SIGHUP));
        assert_eq!(s.exile_codes, vec![3, 4]);
        assert_eq!(s.loyal_after, Duration::from_millis(500));
    }

    #[test]
    fn dash_dash_program_wins_over_exec() {
        let cli =
            Cli::try_parse_from(["vassal-shim", "--exec", "x", "--", "./app", "--flag"]).unwrap();
        let s = cli.settings().unwrap();
        assert_eq!(s.exec, vec!["./app", "--flag"]);
        assert_eq!(s.ready, Ready::Immediate);
        assert_eq!(s.heartbeat, None);
        assert_eq!(s.reload, ReloadMode::Restart);
    }

    #[test]
    fn ready_forms() {
        assert_eq!(parse_ready("notify").unwrap(), Ready::Notify);
        assert_eq!(
            parse_ready("unix:/tmp/s").unwrap(),
            Ready::Unix("/tmp/s".into())
        );
        match parse_ready("http://127.0.0.1:9000/health").unwrap() {
            Ready::Http { addr, host, path } => {
                assert_eq!(addr, "127.0.0.1:9000".parse().unwrap());
                assert_eq!(host, "127.0.0.1:9000");
                assert_eq!(path, "/health");
            }
            other => panic!("{other:?}"),
        }
        match parse_ready("http://127.0.0.1").unwrap() {
            Ready::Http { addr, path, .. } => {
                assert_eq!(addr.port(), 80);
                assert_eq!(path, "/");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_ready("ftp://x").is_err());
        assert!(parse_ready("unix:").is_err());
    }

    #[test]
    fn signals_and_errors() {
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        let bad = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            cli.settings().unwrap_err().to_string()
        };
        assert!(bad(&["vassal-shim"]).contains("no program"));
        assert!(bad(&["vassal-shim", "--heartbeat", "x", "--", "a"]).contains("heartbeat"));
        assert!(bad(&["vassal-shim", "--env", "X", "--", "a"]).contains("K=V"));
        assert!(bad(&["vassal-shim", "--reload", "x", "--", "a"]).contains("reload"));
        assert!(bad(&["vassal-shim", "--exile-codes", "a", "--", "a"]).contains("exile"));
        assert!(bad(&["vassal-shim", "--fork-base", "maybe", "--", "a"]).contains("fork-base"));
        let ok = |args: &[&str]| Cli::try_parse_from(args).unwrap().settings().unwrap();
        assert!(!ok(&["vassal-shim", "--", "a"]).fork_base);
        assert!(ok(&["vassal-shim", "--fork-base", "yes", "--", "a"]).fork_base);
        let ini = Ini::parse("[vassal-shim]\nexec = a\nfork-base = true\n");
        let mut cli = Cli::try_parse_from(["vassal-shim"]).unwrap();
        cli.merge_section(&ini.section(SECTION).unwrap());
        assert!(cli.settings().unwrap().fork_base);
        assert!(bad(&["vassal-shim", "--exec", "'a", "--ready", "immediate"]).contains("unclosed"));
    }
}
