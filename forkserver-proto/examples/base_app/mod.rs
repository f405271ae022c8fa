//! The preloaded base program, shared by the `preloaded-base` example and the `adopt` bench.
//!
//! ```text
//! preloaded-base --fork-server PATH [--ballast-mib N] [--import-ms MS]   # a base
//! preloaded-base --ini FILE | --config FILE [--ballast-mib N] [--import-ms MS]   # cold vassal
//! ```
//!
//! Both modes first do the expensive start-up once: touch N MiB (default 64) and simulate a slow
//! import (sleep MS milliseconds, default 250). A base then serves adoptions on PATH; a cold
//! vassal goes straight to the application. Both speak the vassal protocol on
//! `UWSGI_EMPEROR_FD` when it is set.
//!
//! The application (what every adopted vassal runs): read the config file named by `--ini FILE`
//! or `--config FILE`, section `[app]`, keys `socket = PATH` (required unless an on-demand
//! listener was handed over) and `heartbeat = N` (optional, seconds); serve a line echo on the
//! unix socket; send ready (1), accepting (5) and loyal (17) on the channel, and heartbeat (26)
//! every N seconds. Byte 0 or 2, or EOF: stop. Byte 1 (reload): an adopted vassal cannot re-exec
//! itself into a fresh copy of the base, so it exits with status 0 and lets the emperor start a
//! new one through the fork server (uWSGI's adopted vassals do the same).

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use forkserver_proto::{ForkServer, Outcome, ServerConfig};
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Channel bytes (vassal → emperor).
const READY: u8 = 1;
const ACCEPTING: u8 = 5;
const LOYAL: u8 = 17;
const HEARTBEAT: u8 = 26;

/// Parsed command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub fork_server: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub ballast_mib: usize,
    pub import_ms: u64,
}

pub const USAGE: &str =
    "usage: preloaded-base --fork-server PATH [--ballast-mib N] [--import-ms MS]\n       \
     preloaded-base --ini FILE|--config FILE [--ballast-mib N] [--import-ms MS]";

/// Parses argv (without argv[0]).
pub fn parse_args(args: &[OsString]) -> Result<Options, String> {
    let mut o = Options {
        ballast_mib: 64,
        import_ms: 250,
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(OsString::from(v))),
            None => (a.to_string(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{key} needs a value\n{USAGE}"))
        };
        match key.as_str() {
            "--fork-server" | "--fork-socket" => o.fork_server = Some(value()?.into()),
            "--ini" | "--config" => o.config = Some(value()?.into()),
            "--ballast-mib" => {
                o.ballast_mib = value()?
                    .to_string_lossy()
                    .parse()
                    .map_err(|e| format!("--ballast-mib: {e}"))?
            }
            "--import-ms" => {
                o.import_ms = value()?
                    .to_string_lossy()
                    .parse()
                    .map_err(|e| format!("--import-ms: {e}"))?
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.fork_server.is_none() && o.config.is_none() {
        return Err(USAGE.to_owned());
    }
    Ok(o)
}

/// The expensive, once-only start-up: touches `mib` MiB and sleeps `import_ms` (standing in for
/// loading an application). The returned memory is kept alive by the caller.
pub fn preload(mib: usize, import_ms: u64) -> Vec<u8> {
    let mut ballast = vec![0u8; mib << 20];
    for (i, page) in ballast.chunks_mut(4096).enumerate() {
        page[0] = (i as u8) | 1;
    }
    std::thread::sleep(Duration::from_millis(import_ms));
    ballast
}

/// Takes the emperor channel announced in `UWSGI_EMPEROR_FD` (and removes the variable, so it
/// is not inherited by mistake).
pub fn take_env_fd(var: &str) -> Option<OwnedFd> {
    let fd: RawFd = std::env::var(var).ok()?.trim().parse().ok()?;
    std::env::remove_var(var);
    if fd < 0 || nix::fcntl::fcntl(unsafe_borrow(fd), nix::fcntl::FcntlArg::F_GETFD).is_err() {
        tracing::warn!("{var}={fd} is not an open fd; ignoring it");
        return None;
    }
    // SAFETY: the emperor handed us this fd for our exclusive use and we just checked that it
    // is open; nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(owned)
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for one F_GETFD probe of a number that may or may not be open; F_GETFD
    // on a closed number just fails with EBADF.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn send(chan: &UnixStream, bytes: &[u8]) -> bool {
    match (&*chan).write_all(bytes) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot write to the emperor channel: {e}");
            false
        }
    }
}

/// Entry point shared by the example and the bench; returns the exit code.
pub fn main_with(args: &[OsString]) -> i32 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return 2;
        }
    };
    let started = Instant::now();
    let ballast = preload(opts.ballast_mib, opts.import_ms);
    tracing::info!(
        mib = opts.ballast_mib,
        import_ms = opts.import_ms,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "preloaded"
    );
    let channel = take_env_fd("UWSGI_EMPEROR_FD").map(UnixStream::from);
    let config = take_env_fd("UWSGI_EMPEROR_FD_CONFIG");
    let code = match &opts.fork_server {
        Some(path) => run_base(path.clone(), channel),
        None => {
            let mut argv = vec![OsString::from("preloaded-base")];
            argv.extend(args.iter().cloned());
            run_app(&argv, channel, config, None)
        }
    };
    drop(ballast);
    code
}

/// A base: serve adoptions until stopped; in an adopted grandchild, run the application.
fn run_base(path: PathBuf, channel: Option<UnixStream>) -> i32 {
    let config = ServerConfig {
        // For measurements only: see ServerConfig::reply_after_reparent.
        reply_after_reparent: std::env::var_os("PRELOADED_BASE_REPLY_EARLY").is_none(),
        ..ServerConfig::default()
    };
    let mut server = match ForkServer::bind(&path, config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    if let Some(chan) = &channel {
        // A base vassal is ready, accepting (adoption requests) and loyal at once.
        if !send(chan, &[READY, ACCEPTING, LOYAL]) {
            return 1;
        }
    }
    loop {
        let watch: Vec<_> = channel.iter().map(|c| c.as_fd()).collect();
        match server.serve(&watch) {
            Ok(Outcome::Adopted(adoption)) => {
                // The grandchild: forget the server and the base's own emperor channel, keep the
                // preloaded state, become the application.
                drop(watch);
                drop(server);
                drop(channel);
                adoption.export_env();
                return run_app(
                    &adoption.argv,
                    Some(UnixStream::from(adoption.channel)),
                    adoption.config,
                    adoption.on_demand,
                );
            }
            Ok(Outcome::Stopped(sig)) => {
                tracing::info!("base stopping on {sig}");
                return 0;
            }
            Ok(Outcome::Readable(_)) => {
                let mut b = [0u8; 1];
                let chan = channel.as_ref().expect("only the channel is watched");
                match (&*chan).read(&mut b) {
                    Ok(1) => tracing::info!("base: message {} from the emperor, exiting", b[0]),
                    Ok(_) => tracing::info!("base: lost the emperor (EOF), exiting"),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => tracing::info!("base: emperor channel error ({e}), exiting"),
                }
                return 0;
            }
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        }
    }
}

/// The application's settings.
#[derive(Debug)]
struct AppConfig {
    socket: Option<PathBuf>,
    heartbeat: Option<Duration>,
}

fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        for flag in [&b"--ini"[..], b"--config"] {
            if b == flag {
                return it.next().map(PathBuf::from);
            }
            if b.len() > flag.len() + 1 && b.starts_with(flag) && b[flag.len()] == b'=' {
                return Some(PathBuf::from(std::ffi::OsStr::from_bytes(
                    &b[flag.len() + 1..],
                )));
            }
        }
    }
    None
}

fn load_config(argv: &[OsString]) -> Result<AppConfig, String> {
    let path = config_path(argv).ok_or("no --ini FILE or --config FILE in argv")?;
    let ini = ini::Ini::load_from_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let section = ini.section(Some("app"));
    let socket = section.and_then(|s| s.get("socket")).map(PathBuf::from);
    let heartbeat = match section.and_then(|s| s.get("heartbeat")) {
        None => None,
        Some(v) => {
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|e| format!("{}: [app] heartbeat = {v:?}: {e}", path.display()))?;
            (n > 0).then(|| Duration::from_secs(n))
        }
    };
    Ok(AppConfig { socket, heartbeat })
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The application: a line echo on a unix socket, supervised over `channel`.
pub fn run_app(
    argv: &[OsString],
    channel: Option<UnixStream>,
    config_fd: Option<OwnedFd>,
    on_demand: Option<OwnedFd>,
) -> i32 {
    let cfg = match load_config(argv) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("vassal {}: {e}", std::process::id());
            return 1;
        }
    };
    let Some((listener, _cleanup)) = open_listener(on_demand, &cfg) else {
        return 1;
    };
    let _ = listener.set_nonblocking(true);
    // The config channel is held (the emperor may push a config blob on it) but not used.
    let _config_fd = config_fd;
    tracing::info!(
        pid = std::process::id(),
        socket = ?cfg.socket,
        heartbeat = ?cfg.heartbeat,
        "vassal serving"
    );
    if let Some(chan) = &channel {
        if !send(chan, &[READY, ACCEPTING, LOYAL]) {
            return 1;
        }
    }
    let mut next_heartbeat = cfg.heartbeat.map(|h| Instant::now() + h);
    let mut clients: Vec<(UnixStream, Vec<u8>)> = Vec::new();
    loop {
        let now = Instant::now();
        if let (Some(at), Some(every), Some(chan)) = (next_heartbeat, cfg.heartbeat, &channel) {
            if now >= at {
                if !send(chan, &[HEARTBEAT]) {
                    return 1;
                }
                next_heartbeat = Some(now + every);
            }
        }
        let Some(ready) = poll_ready(channel.as_ref(), &listener, &clients, next_heartbeat, now)
        else {
            return 1;
        };
        // Slots in `ready`: the channel (when there is one), the listener, then each client.
        let listen_at = usize::from(channel.is_some());
        if let Some(chan) = channel.as_ref().filter(|_| ready[0]) {
            if let Some(status) = on_emperor_byte(chan) {
                return status;
            }
        }
        if ready[listen_at] {
            while let Ok((c, _)) = listener.accept() {
                let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                clients.push((c, Vec::new()));
            }
        }
        echo_lines(&mut clients, &ready[listen_at + 1..]);
    }
}

/// The listener the application serves: the on-demand one handed over, or a fresh bind of
/// `[app] socket` (removed again when the guard drops). `None` (logged) when there is neither
/// or the bind fails.
fn open_listener(
    on_demand: Option<OwnedFd>,
    cfg: &AppConfig,
) -> Option<(UnixListener, RemoveOnDrop)> {
    match (on_demand, &cfg.socket) {
        (Some(fd), _) => Some((UnixListener::from(fd), RemoveOnDrop(None))),
        (None, Some(path)) => {
            let _ = std::fs::remove_file(path);
            match UnixListener::bind(path) {
                Ok(l) => Some((l, RemoveOnDrop(Some(path.clone())))),
                Err(e) => {
                    tracing::error!("vassal: bind {}: {e}", path.display());
                    None
                }
            }
        }
        (None, None) => {
            tracing::error!("vassal: no [app] socket = PATH and no on-demand listener");
            None
        }
    }
}

/// Polls the channel, the listener and the clients until one is readable or the next heartbeat
/// is due; which of them are readable, in that order. `None` (logged) when `poll` fails.
fn poll_ready(
    channel: Option<&UnixStream>,
    listener: &UnixListener,
    clients: &[(UnixStream, Vec<u8>)],
    next_heartbeat: Option<Instant>,
    now: Instant,
) -> Option<Vec<bool>> {
    let timeout = next_heartbeat
        .map(|at| {
            let ms = at.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        })
        .unwrap_or(PollTimeout::NONE);
    let mut pfds = Vec::with_capacity(2 + clients.len());
    if let Some(chan) = channel {
        pfds.push(PollFd::new(chan.as_fd(), PollFlags::POLLIN));
    }
    pfds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
    pfds.extend(
        clients
            .iter()
            .map(|(c, _)| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
    );
    match nix::poll::poll(&mut pfds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => {
            tracing::error!("vassal: poll: {e}");
            return None;
        }
    }
    Some(
        pfds.iter()
            .map(|p| !p.revents().unwrap_or(PollFlags::empty()).is_empty())
            .collect(),
    )
}

/// Reads one byte from the emperor: `Some(exit status)` when the application must end (stop,
/// reload, EOF, a channel error), `None` to go on.
fn on_emperor_byte(chan: &UnixStream) -> Option<i32> {
    let mut b = [0u8; 1];
    match (&*chan).read(&mut b) {
        Ok(0) => {
            tracing::info!("vassal {}: lost the emperor (EOF)", std::process::id());
            Some(1)
        }
        Ok(_) => match b[0] {
            0 | 2 => {
                tracing::info!("vassal {}: stop (byte {})", std::process::id(), b[0]);
                Some(0)
            }
            1 => {
                tracing::info!(
                    "vassal {}: reload: exiting so the emperor starts a fresh adoption",
                    std::process::id()
                );
                Some(0)
            }
            other => {
                tracing::info!("vassal: ignoring emperor byte {other}");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
        Err(e) => {
            tracing::info!("vassal: emperor channel error: {e}");
            Some(1)
        }
    }
}

/// Echoes every complete line of the readable clients (`ready[i]` for `clients[i]`) and drops
/// the clients that closed, failed, or sent 64 KiB without a newline.
fn echo_lines(clients: &mut Vec<(UnixStream, Vec<u8>)>, ready: &[bool]) {
    let mut gone = Vec::new();
    for (i, (client, buf)) in clients.iter_mut().enumerate() {
        if !ready.get(i).copied().unwrap_or(false) {
            continue;
        }
        let mut chunk = [0u8; 4096];
        match (&*client).read(&mut chunk) {
            Ok(0) | Err(_) => gone.push(i),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    if (&*client).write_all(&line).is_err() {
                        gone.push(i);
                        break;
                    }
                }
                if buf.len() > 64 * 1024 {
                    gone.push(i); // no line in 64 KiB: not a line client
                }
            }
        }
    }
    gone.dedup();
    for i in gone.into_iter().rev() {
        clients.swap_remove(i);
    }
}
