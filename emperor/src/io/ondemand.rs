//! On-demand vassals, the runtime side: finding a vassal's socket (`--emperor-on-demand-*`),
//! binding it, watching it in the `mio` loop and handing it to the vassal as fd 0.
//!
//! The emperor never accepts on an on-demand listener: when it becomes readable the listener is
//! taken out of the loop and the vassal is started with it as fd 0 (uWSGI picks up an inherited
//! socket on fd 0 by itself); when the vassal goes back to on-demand (byte 22) the same listener
//! is watched again. The listener lives as long as the vassal's record, so the pending
//! connections survive respawns and no fd is opened per activation.
//!
//! `--emperor-on-demand-exec` runs its command as a child whose stdout pipe is a source of the
//! loop (non-blocking, bounded by [`LOOKUP_TIMEOUT`]); the child is reaped by the loop's
//! `waitpid(-1)`.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tracing::{debug, warn};

use crate::core::{ActivationConfig, OnDemandAction, OnDemandEvent, VassalId};
use crate::options::Options;

/// First token of the on-demand sources (listeners and lookup pipes).
pub const TOKEN_BASE: usize = 1 << 34;
const TOKEN_SPAN: usize = 1 << 32;
/// How long an `--emperor-on-demand-exec` command may take to print the socket name.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest unix socket path (`sun_path` holds 108 bytes including the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;
const MAX_LOOKUP_OUTPUT: usize = 4096;

/// True when `tok` belongs to the on-demand sources.
pub fn owns(tok: Token) -> bool {
    (TOKEN_BASE..TOKEN_BASE + TOKEN_SPAN).contains(&tok.0)
}

/// The core's activation settings from the command line.
pub fn activation_config(opts: &Options) -> ActivationConfig {
    ActivationConfig {
        on_demand: opts.on_demand_extension.is_some()
            || opts.on_demand_directory.is_some()
            || opts.on_demand_exec.is_some(),
        wait_for_command: opts.wait_for_command,
        wait_for_command_ignore: opts.wait_for_command_ignore.iter().cloned().collect(),
        broodlord: opts.broodlord,
    }
}

/// Where on-demand socket names come from (first match wins, as in uWSGI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// `--emperor-on-demand-extension`: the first line of the file `CONFIG+EXT`.
    pub extension: Option<String>,
    /// `--emperor-on-demand-directory`: `DIR/<name without extension>.socket`.
    pub directory: Option<PathBuf>,
    /// `--emperor-on-demand-exec`: the first line printed by `sh -c 'CMD "NAME"'`.
    pub exec: Option<String>,
}

/// A bound on-demand listener.
#[derive(Debug)]
pub enum Socket {
    /// A unix socket and the path it was bound to (removed when closed).
    Unix(std::os::unix::net::UnixListener, PathBuf),
    /// A TCP socket (IPv4 or IPv6).
    Tcp(std::net::TcpListener),
}

impl Socket {
    fn fd(&self) -> RawFd {
        match self {
            Socket::Unix(l, _) => l.as_raw_fd(),
            Socket::Tcp(l) => l.as_raw_fd(),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Socket::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The first line of `raw` (cut at the first byte below 32, as uWSGI does); `None` if empty.
pub fn first_line(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b < 32).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]).into_owned();
    (!s.is_empty()).then_some(s)
}

/// True for `host:port`, `:port` and `[v6]:port` (not a unix path).
pub fn is_tcp(name: &str) -> bool {
    name.contains(':') && !name.starts_with('/') && !name.starts_with('.')
}

/// Binds an on-demand socket: a unix path (relative to `cwd`; stale file removed; mode 0666)
/// or a TCP address (`host:port`, `:port` for every IPv4 address, `[v6]:port`).
pub fn bind(name: &str, cwd: &Path) -> Result<Socket, String> {
    if is_tcp(name) {
        let addr = match name.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => name.to_string(),
        };
        let sa = std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .map_err(|e| format!("bad TCP address {name}: {e}"))?
            .next()
            .ok_or_else(|| format!("bad TCP address {name}: it resolves to nothing"))?;
        let l = std::net::TcpListener::bind(sa)
            .map_err(|e| format!("cannot bind TCP socket {name}: {e}"))?;
        return Ok(Socket::Tcp(l));
    }
    let path = cwd.join(name);
    let len = path.as_os_str().len();
    if len > MAX_UNIX_PATH {
        return Err(format!(
            "unix socket path {} is {len} bytes long, but a unix socket address holds at most \
             {MAX_UNIX_PATH}: use a shorter path (or a TCP address)",
            path.display()
        ));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove the old {}: {e}", path.display())),
    }
    let l = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| format!("cannot bind unix socket {}: {e}", path.display()))?;
    let sock = Socket::Unix(l, path.clone());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot chmod 0666 {}: {e}", path.display()))?;
    Ok(sock)
}

#[derive(Debug)]
struct Listener {
    sock: Socket,
    token: Token,
    registered: bool,
}

#[derive(Debug)]
struct Lookup {
    vassal: VassalId,
    child: Child,
    out: ChildStdout,
    buf: Vec<u8>,
    cwd: PathBuf,
    deadline: Instant,
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Listener(VassalId),
    Lookup(VassalId),
}

/// The on-demand listeners and pending socket lookups of one emperor.
#[derive(Debug, Default)]
pub struct OnDemand {
    sources: Sources,
    listeners: HashMap<VassalId, Listener>,
    lookups: HashMap<VassalId, (Token, Lookup)>,
    tokens: HashMap<Token, Source>,
    next_token: usize,
}

impl OnDemand {
    /// From the command line.
    pub fn new(opts: &Options) -> OnDemand {
        OnDemand::with_sources(Sources {
            extension: opts.on_demand_extension.clone(),
            directory: opts.on_demand_directory.clone(),
            exec: opts.on_demand_exec.clone(),
        })
    }

    /// With explicit sources.
    pub fn with_sources(sources: Sources) -> OnDemand {
        OnDemand {
            sources,
            ..Default::default()
        }
    }

    /// Number of bound listeners.
    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }

    fn token(&mut self, src: Source) -> Token {
        loop {
            let t = Token(TOKEN_BASE + self.next_token);
            self.next_token = (self.next_token + 1) % TOKEN_SPAN;
            if let std::collections::hash_map::Entry::Vacant(e) = self.tokens.entry(t) {
                e.insert(src);
                return t;
            }
        }
    }

    /// Performs one core action; returns the events to feed back.
    pub fn perform(
        &mut self,
        a: OnDemandAction,
        cwd: &Path,
        registry: &Registry,
    ) -> Vec<OnDemandEvent> {
        match a {
            OnDemandAction::Resolve {
                vassal, key, name, ..
            } => self.resolve(vassal, &key, &name, cwd, registry),
            OnDemandAction::Arm { vassal } => {
                if let Some(l) = self.listeners.get_mut(&vassal) {
                    if !l.registered {
                        match registry.register(
                            &mut SourceFd(&l.sock.fd()),
                            l.token,
                            Interest::READABLE,
                        ) {
                            Ok(()) => l.registered = true,
                            Err(e) => warn!("cannot watch an on-demand socket: {e}"),
                        }
                    }
                }
                Vec::new()
            }
            OnDemandAction::Close { vassal } => {
                self.close(vassal, registry);
                Vec::new()
            }
        }
    }

    fn close(&mut self, vassal: VassalId, registry: &Registry) {
        if let Some(l) = self.listeners.remove(&vassal) {
            if l.registered {
                let _ = registry.deregister(&mut SourceFd(&l.sock.fd()));
            }
            self.tokens.remove(&l.token);
        }
        if let Some((tok, mut lk)) = self.lookups.remove(&vassal) {
            let _ = registry.deregister(&mut SourceFd(&lk.out.as_raw_fd()));
            self.tokens.remove(&tok);
            let _ = lk.child.kill();
        }
    }

    fn resolve(
        &mut self,
        vassal: VassalId,
        key: &str,
        name: &str,
        cwd: &Path,
        registry: &Registry,
    ) -> Vec<OnDemandEvent> {
        self.close(vassal, registry);
        if let Some(ext) = &self.sources.extension {
            let file = PathBuf::from(format!("{key}{ext}"));
            // The socket file comes from outside: read it like a vassal config (regular
            // files only, without blocking, at most 64 KiB).
            let socket = crate::monitor::read_config_head(&file)
                .ok()
                .and_then(|(b, _)| first_line(&b));
            return vec![self.bound(vassal, socket, cwd, registry)];
        }
        if let Some(dir) = &self.sources.directory {
            let stem = Path::new(name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_string());
            let socket = cwd.join(dir).join(format!("{stem}.socket"));
            let socket = socket.display().to_string();
            return vec![self.bound(vassal, Some(socket), cwd, registry)];
        }
        if let Some(cmd) = self.sources.exec.clone() {
            return self.start_lookup(vassal, &cmd, name, cwd, registry);
        }
        vec![OnDemandEvent::Ready {
            vassal,
            socket: None,
        }]
    }

    fn bound(
        &mut self,
        vassal: VassalId,
        socket: Option<String>,
        cwd: &Path,
        registry: &Registry,
    ) -> OnDemandEvent {
        let Some(name) = socket else {
            return OnDemandEvent::Ready {
                vassal,
                socket: None,
            };
        };
        let sock = match bind(&name, cwd) {
            Ok(s) => s,
            Err(reason) => return OnDemandEvent::Failed { vassal, reason },
        };
        let token = self.token(Source::Listener(vassal));
        if let Err(e) = registry.register(&mut SourceFd(&sock.fd()), token, Interest::READABLE) {
            self.tokens.remove(&token);
            return OnDemandEvent::Failed {
                vassal,
                reason: format!("cannot watch {name}: {e}"),
            };
        }
        self.listeners.insert(
            vassal,
            Listener {
                sock,
                token,
                registered: true,
            },
        );
        OnDemandEvent::Ready {
            vassal,
            socket: Some(name),
        }
    }

    fn start_lookup(
        &mut self,
        vassal: VassalId,
        cmd: &str,
        name: &str,
        cwd: &Path,
        registry: &Registry,
    ) -> Vec<OnDemandEvent> {
        // `CMD "NAME"` as uWSGI runs it, with the name passed as $1 so no quoting can break.
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{cmd} \"$1\""))
            .arg("sh")
            .arg(name)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                return vec![OnDemandEvent::Failed {
                    vassal,
                    reason: format!("cannot run --emperor-on-demand-exec `{cmd}`: {e}"),
                }]
            }
        };
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            return vec![OnDemandEvent::Failed {
                vassal,
                reason: "the on-demand exec command has no stdout".into(),
            }];
        };
        if let Err(e) = set_nonblocking(out.as_raw_fd()) {
            let _ = child.kill();
            return vec![OnDemandEvent::Failed {
                vassal,
                reason: format!("cannot set up the on-demand exec pipe: {e}"),
            }];
        }
        let token = self.token(Source::Lookup(vassal));
        if let Err(e) =
            registry.register(&mut SourceFd(&out.as_raw_fd()), token, Interest::READABLE)
        {
            self.tokens.remove(&token);
            let _ = child.kill();
            return vec![OnDemandEvent::Failed {
                vassal,
                reason: format!("cannot watch the on-demand exec pipe: {e}"),
            }];
        }
        debug!(pid = child.id(), "on-demand exec for {name} started");
        self.lookups.insert(
            vassal,
            (
                token,
                Lookup {
                    vassal,
                    child,
                    out,
                    buf: Vec::new(),
                    cwd: cwd.to_path_buf(),
                    deadline: Instant::now() + LOOKUP_TIMEOUT,
                },
            ),
        );
        Vec::new()
    }

    /// A source of ours is ready; returns the events to feed to the core.
    pub fn on_ready(&mut self, tok: Token, registry: &Registry) -> Vec<OnDemandEvent> {
        match self.tokens.get(&tok).copied() {
            Some(Source::Listener(vassal)) => {
                let Some(l) = self.listeners.get_mut(&vassal) else {
                    return Vec::new();
                };
                if !l.registered {
                    return Vec::new();
                }
                // Not accepted here: the vassal takes the pending connection from fd 0.
                let _ = registry.deregister(&mut SourceFd(&l.sock.fd()));
                l.registered = false;
                vec![OnDemandEvent::Connection { vassal }]
            }
            Some(Source::Lookup(vassal)) => self.read_lookup(vassal, registry),
            None => Vec::new(),
        }
    }

    fn read_lookup(&mut self, vassal: VassalId, registry: &Registry) -> Vec<OnDemandEvent> {
        let Some((_, lk)) = self.lookups.get_mut(&vassal) else {
            return Vec::new();
        };
        let mut chunk = [0u8; 512];
        let done = loop {
            match lk.out.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    lk.buf.extend_from_slice(&chunk[..n]);
                    if lk.buf.len() >= MAX_LOOKUP_OUTPUT || lk.buf.contains(&b'\n') {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        if !done {
            return Vec::new();
        }
        let Some((tok, lk)) = self.lookups.remove(&vassal) else {
            return Vec::new();
        };
        let _ = registry.deregister(&mut SourceFd(&lk.out.as_raw_fd()));
        self.tokens.remove(&tok);
        // The command is reaped by the loop's waitpid(-1) whenever it exits.
        let socket = first_line(&lk.buf);
        let cwd = lk.cwd.clone();
        drop(lk);
        vec![self.bound(vassal, socket, &cwd, registry)]
    }

    /// Gives up on lookups older than [`LOOKUP_TIMEOUT`].
    pub fn expire(&mut self, now: Instant, registry: &Registry) -> Vec<OnDemandEvent> {
        let late: Vec<VassalId> = self
            .lookups
            .values()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(_, l)| l.vassal)
            .collect();
        let mut out = Vec::new();
        for vassal in late {
            self.close(vassal, registry);
            out.push(OnDemandEvent::Failed {
                vassal,
                reason: format!(
                    "--emperor-on-demand-exec did not print a socket name within {} s (killed)",
                    LOOKUP_TIMEOUT.as_secs()
                ),
            });
        }
        out
    }

    /// The listener to hand to vassal `vassal` as fd 0 (taken out of the loop; it stays open
    /// here), if it is an on-demand vassal.
    pub fn take_for_spawn(&mut self, vassal: VassalId, registry: &Registry) -> Option<RawFd> {
        let l = self.listeners.get_mut(&vassal)?;
        if l.registered {
            let _ = registry.deregister(&mut SourceFd(&l.sock.fd()));
            l.registered = false;
        }
        Some(l.sock.fd())
    }

    /// Closes every listener (unix socket files are removed) and abandons lookups.
    pub fn cleanup(&mut self) {
        self.listeners.clear();
        for (_, (_, mut lk)) in self.lookups.drain() {
            let _ = lk.child.kill();
        }
        self.tokens.clear();
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL only change file status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_cuts_at_control_bytes() {
        assert_eq!(first_line(b"/tmp/a.sock\nrest"), Some("/tmp/a.sock".into()));
        assert_eq!(
            first_line(b"127.0.0.1:9000\r\n"),
            Some("127.0.0.1:9000".into())
        );
        assert_eq!(first_line(b"\n/tmp/x"), None);
        assert_eq!(first_line(b""), None);
    }

    #[test]
    fn too_long_unix_path_is_an_error_that_says_so() {
        let long = format!("/tmp/{}.sock", "x".repeat(120));
        let e = bind(&long, Path::new("/")).unwrap_err();
        assert!(e.contains("at most 107"), "{e}");
        assert!(e.contains("shorter path"), "{e}");
        assert!(!Path::new(&long[..107]).exists());
    }

    #[test]
    fn unix_socket_is_0666_and_removed_on_close() {
        let d = tempfile::tempdir().unwrap();
        let s = bind("od.sock", d.path()).unwrap();
        let p = d.path().join("od.sock");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn tcp_v4_and_v6() {
        let s = bind("127.0.0.1:0", Path::new("/")).unwrap();
        assert!(matches!(s, Socket::Tcp(_)));
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let s = bind("[::1]:0", Path::new("/")).unwrap();
            let Socket::Tcp(l) = &s else { panic!() };
            assert!(l.local_addr().unwrap().is_ipv6());
        }
        assert!(bind("no.such.host.invalid:80", Path::new("/")).is_err());
    }
}

#[cfg(test)]
mod option_tests {
    use super::*;

    #[test]
    fn options_and_ini_keys_reach_the_core_settings() {
        let o = Options::parse_from_args([
            "emperor",
            "/v",
            "--emperor-on-demand-ext",
            ".sock",
            "--emperor-broodlord",
            "3",
            "--emperor-wait-for-command",
            "--emperor-wait-for-command-ignore",
            "a.ini",
            "--emperor-command-socket",
            "/run/cmd.sock",
        ])
        .unwrap();
        let a = activation_config(&o);
        assert!(a.on_demand && a.wait_for_command);
        assert_eq!(a.broodlord, 3);
        assert!(a.wait_for_command_ignore.contains("a.ini"));
        assert_eq!(o.command_socket.as_deref(), Some("/run/cmd.sock"));
        let d = tempfile::tempdir().unwrap();
        let ini = d.path().join("e.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nemperor = /v\nemperor-on-demand-dir = /run/od\nemperor-broodlord = 2\n",
        )
        .unwrap();
        let o = Options::parse_from_args(["emperor".as_ref(), "--ini".as_ref(), ini.as_os_str()])
            .unwrap();
        assert_eq!(o.on_demand_directory, Some(PathBuf::from("/run/od")));
        assert_eq!(activation_config(&o).broodlord, 2);
        let o = Options::parse_from_args(["emperor", "/v"]).unwrap();
        assert_eq!(activation_config(&o), ActivationConfig::default());
    }
}
