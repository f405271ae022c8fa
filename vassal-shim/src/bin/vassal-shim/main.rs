//! `vassal-shim`: run any program as a well-behaved vassal of a uWSGI-style emperor.
//!
//! `vassal-shim [OPTIONS] -- PROGRAM [ARGS...]`, or `vassal-shim --ini FILE` with a
//! `[vassal-shim]` section. An `--ini` file without that section (or any other uWSGI config
//! loader flag) is handed to `uwsgi` unchanged, so the shim can be an `--emperor-wrapper` for
//! a directory that mixes uWSGI apps and shim apps. See docs/vassal-shim.md.

mod backlog;
mod options;
mod probe;
mod rundir;
mod runtime;
mod sentinel;
mod spawn;

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};
use vassal_shim::ini::Ini;
use vassal_shim::{Vassal, ENV_EMPEROR_FD, ENV_EMPEROR_FD_CONFIG};

use options::{Cli, SECTION};
use runtime::{Runtime, Source};

/// uWSGI options that load a config: seeing one (without `--`) means "this is for uWSGI".
const UWSGI_LOADERS: &[&str] = &[
    "--xml",
    "--yaml",
    "--yml",
    "--json",
    "--js",
    "--config",
    "--inherit",
    "--include",
];
/// uWSGI options with one value an emperor may add around `--ini` (vassals-set/-inherit/
/// -include); the shim ignores them.
const UWSGI_PASSTHROUGH: &[&str] = &["--set", "--inherit", "--include"];

/// What to do with the command line.
#[derive(Debug)]
enum Mode {
    /// Hand everything to uWSGI.
    Uwsgi(String),
    /// Be the shim: `cli` has the ini section merged in, `raw` is the command line alone
    /// (a reload merges the re-read section into it again).
    Shim {
        cli: Box<Cli>,
        raw: Box<Cli>,
        source: Source,
    },
}

fn value_of(args: &[String], flag: &str) -> Option<String> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let mut it = args[..end].iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
    }
    None
}

/// The text of an `--ini` argument and the section to read; `None` when it cannot be read
/// (uWSGI will then say why).
fn load_ini(arg: &str) -> Option<(String, String, Source)> {
    if let Some(_name) = arg.strip_prefix("emperor://") {
        let fd: i32 = std::env::var(ENV_EMPEROR_FD_CONFIG)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: F_GETFD only checks that the number is an open descriptor.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // SAFETY: the descriptor is open (checked above) and stays open for the duration of
        // this borrow; it is only peeked at, never closed here.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let text = vassal_shim::channel::peek_first_frame(bfd, Duration::from_secs(5)).ok()??;
        let text = String::from_utf8_lossy(&text).into_owned();
        return Some((
            text,
            SECTION.to_string(),
            Source::Pushed {
                section: SECTION.to_string(),
            },
        ));
    }
    let (path, sub) = if Path::new(arg).exists() {
        (PathBuf::from(arg), None)
    } else {
        // `app.ini:zerg` (a broodlord zerg) reads section `[vassal-shim:zerg]` of app.ini.
        let (p, s) = arg.rsplit_once(':')?;
        (PathBuf::from(p), Some(s.to_string()))
    };
    let text = String::from_utf8_lossy(&read_ini(&path).ok()?).into_owned();
    let ini = Ini::parse(&text);
    let section = match sub {
        Some(s) if ini.has_section(&format!("{SECTION}:{s}")) => format!("{SECTION}:{s}"),
        _ => SECTION.to_string(),
    };
    Some((text, section.clone(), Source::File { path, section }))
}

fn decide(args: &[String]) -> Result<Mode, clap::Error> {
    let has_dashdash = args.iter().any(|a| a == "--");
    if let Some(ini_arg) = value_of(args, "--ini") {
        let loaded = load_ini(&ini_arg);
        let section = loaded.as_ref().and_then(|(text, section, source)| {
            Ini::parse(text)
                .section(section)
                .map(|s| (s, source.clone()))
        });
        match section {
            Some((sec, source)) => {
                // Drop what an emperor adds for uWSGI vassals.
                let mut filtered = vec!["vassal-shim".to_string()];
                let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
                let mut i = 0;
                while i < args.len() {
                    if i < end && UWSGI_PASSTHROUGH.contains(&args[i].as_str()) {
                        warn!(
                            "ignoring {} {:?} (a uWSGI option)",
                            args[i],
                            args.get(i + 1)
                        );
                        i += 2;
                        continue;
                    }
                    filtered.push(args[i].clone());
                    i += 1;
                }
                let raw = Cli::try_parse_from(filtered)?;
                let mut cli = raw.clone();
                cli.merge_section(&sec);
                return Ok(Mode::Shim {
                    cli: Box::new(cli),
                    raw: Box::new(raw),
                    source,
                });
            }
            None if !has_dashdash => {
                return Ok(Mode::Uwsgi(format!("{ini_arg} has no [{SECTION}] section")))
            }
            None => {}
        }
    } else if !has_dashdash && args.iter().any(|a| UWSGI_LOADERS.contains(&a.as_str())) {
        return Ok(Mode::Uwsgi("uWSGI config options".into()));
    }
    let mut full = vec!["vassal-shim".to_string()];
    full.extend(args.iter().cloned());
    let cli = Cli::try_parse_from(full)?;
    Ok(Mode::Shim {
        cli: Box::new(cli.clone()),
        raw: Box::new(cli),
        source: Source::Cli,
    })
}

/// The vassal's name for the log: what the emperor passed after `--ini` (or another config
/// loader), without `emperor://`; for `-- PROGRAM` the program's file name. Control characters
/// (and quotes, backslashes) are escaped, so a file name cannot forge log lines.
fn vassal_name(args: &[String]) -> String {
    let name = std::iter::once("--ini")
        .chain(UWSGI_LOADERS.iter().copied())
        .find_map(|flag| value_of(args, flag))
        .map(|v| {
            v.strip_prefix("emperor://")
                .map(str::to_string)
                .unwrap_or(v)
        })
        .or_else(|| {
            let at = args.iter().position(|a| a == "--")?;
            let prog = args.get(at + 1)?;
            Some(
                Path::new(prog)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| prog.clone()),
            )
        })
        .unwrap_or_else(|| "?".to_string());
    name.escape_debug().to_string()
}

fn exec_uwsgi(args: &[OsString], why: &str) -> ! {
    let bin = std::env::var_os("VASSAL_SHIM_UWSGI").unwrap_or_else(|| "uwsgi".into());
    info!("{why}: handing over to {}", PathBuf::from(&bin).display());
    let err = std::process::Command::new(&bin).args(args).exec();
    error!(
        "{why}, and {} cannot be executed: {err}",
        PathBuf::from(&bin).display()
    );
    std::process::exit(1);
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VASSAL_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .without_time()
        .init();
}

fn main() {
    init_logging();
    let raw: Vec<OsString> = std::env::args_os().skip(1).collect();
    let args: Vec<String> = raw
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Under an emperor every vassal logs to the same stream: each line names its vassal.
    let span = tracing::info_span!(
        "vassal-shim",
        vassal = %vassal_name(&args),
        pid = std::process::id()
    );
    let _g = span.enter();
    let (cli, raw, source) = match decide(&args) {
        Ok(Mode::Uwsgi(why)) => exec_uwsgi(&raw, &why),
        Ok(Mode::Shim { cli, raw, source }) => (*cli, *raw, source),
        Err(e) => e.exit(),
    };
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            error!("{e}; fix it in {}", source.origin());
            std::process::exit(2);
        }
    };
    let vassal = match Vassal::from_env() {
        Ok(v) => v,
        Err(e) => {
            error!("{e}");
            std::process::exit(2);
        }
    };
    if vassal.is_none() {
        warn!(
            "no emperor ({ENV_EMPEROR_FD} is not set): running {:?} standalone; emperor messages are only logged",
            settings.exec
        );
    }
    if let Err(e) = runtime::setup_signals() {
        error!("cannot set up signal handling: {e}");
        std::process::exit(1);
    }
    let rt = match Runtime::new(settings, raw, source, vassal) {
        Ok(r) => r,
        Err(e) => {
            error!("cannot set up: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.run();
    drop(_g);
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn modes() {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("shim.ini");
        std::fs::write(
            &shim,
            "[vassal-shim]\nexec = sleep 1\n[vassal-shim:zerg]\nexec = sleep 2\n",
        )
        .unwrap();
        let plain = dir.path().join("plain.ini");
        std::fs::write(&plain, "[uwsgi]\nsocket = :0\n").unwrap();
        let shim_s = shim.to_str().unwrap();
        match decide(&s(&["--ini", shim_s, "--set", "processes=1"])).unwrap() {
            Mode::Shim { cli, .. } => assert_eq!(cli.exec.as_deref(), Some("sleep 1")),
            m => panic!("{m:?}"),
        }
        let zerg = format!("{shim_s}:zerg");
        match decide(&s(&["--ini", &zerg])).unwrap() {
            Mode::Shim { cli, .. } => assert_eq!(cli.exec.as_deref(), Some("sleep 2")),
            m => panic!("{m:?}"),
        }
        assert!(matches!(
            decide(&s(&["--ini", plain.to_str().unwrap()])).unwrap(),
            Mode::Uwsgi(_)
        ));
        assert!(matches!(
            decide(&s(&["--ini", "/nonexistent.ini"])).unwrap(),
            Mode::Uwsgi(_)
        ));
        assert!(matches!(
            decide(&s(&["--xml", "app.xml"])).unwrap(),
            Mode::Uwsgi(_)
        ));
        match decide(&s(&["--heartbeat", "3", "--", "./app", "--ini", "x"])).unwrap() {
            Mode::Shim { cli, .. } => assert_eq!(cli.program, vec!["./app", "--ini", "x"]),
            m => panic!("{m:?}"),
        }
        assert!(decide(&s(&["--bogus"])).is_err());
    }

    #[test]
    fn vassal_names() {
        assert_eq!(vassal_name(&s(&["--ini", "app.ini"])), "app.ini");
        assert_eq!(
            vassal_name(&s(&["--set", "a=1", "--ini=app.ini:zerg"])),
            "app.ini:zerg"
        );
        assert_eq!(vassal_name(&s(&["--ini", "emperor://zz.ini"])), "zz.ini");
        assert_eq!(vassal_name(&s(&["--xml", "app.xml"])), "app.xml");
        assert_eq!(
            vassal_name(&s(&[
                "--heartbeat",
                "1",
                "--",
                "/srv/bin/app",
                "--ini",
                "x"
            ])),
            "app"
        );
        assert_eq!(vassal_name(&s(&["--ini", "a\nb.ini"])), "a\\nb.ini");
        assert_eq!(vassal_name(&s(&[])), "?");
    }
}

/// The largest ini the shim reads: the limit the emperor puts on every vassal config.
const MAX_INI: u64 = 64 * 1024;

/// Reads the shim's ini without trusting it: regular files only (a FIFO or a device
/// behind a config cannot block the shim), opened non-blocking, and at most 64 KiB
/// (a larger file is refused rather than cut, since a cut section would change meaning).
pub(crate) fn read_ini(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut buf = Vec::with_capacity(m.len().min(MAX_INI + 1) as usize);
    f.take(MAX_INI + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_INI {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {} KiB", MAX_INI / 1024),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod read_ini_tests {
    use super::read_ini;

    #[test]
    fn refuses_fifos_devices_and_huge_files_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.ini");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_ini(&fifo).is_err());
        assert!(read_ini(std::path::Path::new("/dev/zero")).is_err());
        let big = dir.path().join("big.ini");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        assert!(read_ini(&big).is_err());
        let ok = dir.path().join("ok.ini");
        std::fs::write(&ok, "[vassal-shim]\nexec = true\n").unwrap();
        assert_eq!(read_ini(&ok).unwrap(), b"[vassal-shim]\nexec = true\n");
    }
}
