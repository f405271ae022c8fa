//! On-demand vassals, the I/O side: finding a vassal's socket (`--emperor-on-demand-*`),
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
//!
//! Every registered fd is [`Owner::Listener`] with a key naming the vassal and whether it is
//! its listener or its lookup pipe; what happens goes out as
//! `Output::Core(Event::OnDemand(..))`.

mod lookup;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use tracing::warn;

use self::lookup::Lookup;
use super::addr::{self, AddrError, BindAddr};
pub use super::addr::{is_inet as is_tcp, MAX_UNIX_PATH};
use super::registry::Owner;
use super::source::Cx;
use crate::config::options::Options;
use crate::core::{ActivationConfig, Event, OnDemandAction, OnDemandEvent, VassalId};

/// How long an `--emperor-on-demand-exec` command may take to print the socket name.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Why an on-demand socket cannot be bound (the core logs it with the vassal's name).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The name does not parse or resolve, or the path is too long.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// Binding the TCP address failed.
    #[error("cannot bind TCP socket {name}: {source}")]
    Tcp {
        /// The name as found.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A file is in the way and cannot be removed.
    #[error("cannot remove the old {}: {source}", path.display())]
    Stale {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Binding the unix path failed.
    #[error("cannot bind unix socket {}: {source}", path.display())]
    Unix {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket file cannot be opened to everyone.
    #[error("cannot chmod 0666 {}: {source}", path.display())]
    Chmod {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The loop cannot watch the bound socket.
    #[error("cannot watch {name}: {source}")]
    Watch {
        /// The name as found.
        name: String,
        /// Why.
        source: io::Error,
    },
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

/// Binds an on-demand socket: a unix path (relative to `cwd`; stale file removed; mode 0666)
/// or a TCP address (`host:port`, `:port` for every IPv4 address, `[v6]:port`).
pub fn bind(name: &str, cwd: &Path) -> Result<Socket, BindError> {
    let path = match addr::parse(name, cwd, addr::ANY)? {
        BindAddr::Inet(sa) => {
            let l = std::net::TcpListener::bind(sa).map_err(|source| BindError::Tcp {
                name: name.to_string(),
                source,
            })?;
            return Ok(Socket::Tcp(l));
        }
        BindAddr::Unix(path) => path,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(BindError::Stale { path, source }),
    }
    let l = match std::os::unix::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(source) => return Err(BindError::Unix { path, source }),
    };
    let sock = Socket::Unix(l, path.clone());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(|source| BindError::Chmod { path, source })?;
    Ok(sock)
}

/// The [`Owner::Listener`] key of vassal `v`'s listener (`lookup: false`) or lookup pipe.
fn key(v: VassalId, lookup: bool) -> u64 {
    v.0 << 1 | u64::from(lookup)
}

fn split_key(key: u64) -> (VassalId, bool) {
    (VassalId(key >> 1), key & 1 == 1)
}

#[derive(Debug)]
struct Listener {
    sock: Socket,
    /// Its token while the loop watches it.
    token: Option<Token>,
}

/// The on-demand listeners and pending socket lookups of one emperor.
#[derive(Debug, Default)]
pub struct OnDemand {
    sources: Sources,
    listeners: HashMap<VassalId, Listener>,
    lookups: HashMap<VassalId, Lookup>,
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

    /// Performs one core action (`cwd`: the vassal's working directory, for a `Resolve`).
    pub fn perform(&mut self, a: OnDemandAction, cwd: &Path, cx: &mut Cx<'_>) {
        match a {
            OnDemandAction::Resolve {
                vassal, key, name, ..
            } => self.resolve(vassal, &key, &name, cwd, cx),
            OnDemandAction::Arm { vassal } => {
                if let Some(l) = self.listeners.get_mut(&vassal) {
                    if l.token.is_none() {
                        let owner = Owner::Listener(self::key(vassal, false));
                        match cx.register(&mut SourceFd(&l.sock.fd()), owner, Interest::READABLE) {
                            Ok(t) => l.token = Some(t),
                            Err(e) => warn!("cannot watch an on-demand socket: {e}"),
                        }
                    }
                }
            }
            OnDemandAction::Close { vassal } => self.close(vassal, cx),
        }
    }

    fn close(&mut self, vassal: VassalId, cx: &mut Cx<'_>) {
        if let Some(l) = self.listeners.remove(&vassal) {
            if let Some(t) = l.token {
                cx.deregister(&mut SourceFd(&l.sock.fd()), t);
            }
        }
        if let Some(lk) = self.lookups.remove(&vassal) {
            lk.abandon(cx);
        }
    }

    fn resolve(&mut self, vassal: VassalId, key: &str, name: &str, cwd: &Path, cx: &mut Cx<'_>) {
        self.close(vassal, cx);
        if let Some(ext) = &self.sources.extension {
            let file = PathBuf::from(format!("{key}{ext}"));
            // The socket file comes from outside: read it like a vassal config (regular
            // files only, without blocking, at most 64 KiB).
            let socket = crate::monitor::read_config_head(&file)
                .ok()
                .and_then(|(b, _)| first_line(&b));
            return self.bound(vassal, socket, cwd, cx);
        }
        if let Some(dir) = &self.sources.directory {
            let stem = Path::new(name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_string());
            let socket = cwd.join(dir).join(format!("{stem}.socket"));
            let socket = socket.display().to_string();
            return self.bound(vassal, Some(socket), cwd, cx);
        }
        if let Some(cmd) = &self.sources.exec {
            match Lookup::start(vassal, cmd, name, cwd, cx) {
                Ok(lk) => {
                    self.lookups.insert(vassal, lk);
                }
                Err(e) => cx.core(Event::OnDemand(OnDemandEvent::Failed {
                    vassal,
                    reason: e.to_string(),
                })),
            }
            return;
        }
        cx.core(Event::OnDemand(OnDemandEvent::Ready {
            vassal,
            socket: None,
        }));
    }

    /// The socket name of `vassal` is known (`None`: it has none): binds and watches it.
    fn bound(&mut self, vassal: VassalId, socket: Option<String>, cwd: &Path, cx: &mut Cx<'_>) {
        let ev = match socket {
            None => OnDemandEvent::Ready {
                vassal,
                socket: None,
            },
            Some(name) => match self.listen(vassal, &name, cwd, cx) {
                Ok(()) => OnDemandEvent::Ready {
                    vassal,
                    socket: Some(name),
                },
                Err(e) => OnDemandEvent::Failed {
                    vassal,
                    reason: e.to_string(),
                },
            },
        };
        cx.core(Event::OnDemand(ev));
    }

    fn listen(
        &mut self,
        vassal: VassalId,
        name: &str,
        cwd: &Path,
        cx: &mut Cx<'_>,
    ) -> Result<(), BindError> {
        let sock = bind(name, cwd)?;
        let owner = Owner::Listener(key(vassal, false));
        let token = cx
            .register(&mut SourceFd(&sock.fd()), owner, Interest::READABLE)
            .map_err(|source| BindError::Watch {
                name: name.to_string(),
                source,
            })?;
        self.listeners.insert(
            vassal,
            Listener {
                sock,
                token: Some(token),
            },
        );
        Ok(())
    }

    /// A source of ours with [`Owner::Listener`] key `key` is ready.
    pub fn ready(&mut self, cx: &mut Cx<'_>, key: u64) {
        let (vassal, is_lookup) = split_key(key);
        if is_lookup {
            return self.read_lookup(vassal, cx);
        }
        let Some(l) = self.listeners.get_mut(&vassal) else {
            return;
        };
        let Some(t) = l.token.take() else {
            return;
        };
        // Not accepted here: the vassal takes the pending connection from fd 0.
        cx.deregister(&mut SourceFd(&l.sock.fd()), t);
        cx.core(Event::OnDemand(OnDemandEvent::Connection { vassal }));
    }

    fn read_lookup(&mut self, vassal: VassalId, cx: &mut Cx<'_>) {
        let Some(lk) = self.lookups.get_mut(&vassal) else {
            return;
        };
        if !lk.read() {
            return;
        }
        let Some(lk) = self.lookups.remove(&vassal) else {
            return;
        };
        let (socket, cwd) = lk.finish(cx);
        self.bound(vassal, socket, &cwd, cx);
    }

    /// When [`tick`](Self::tick) must run next: the deadline of the oldest lookup.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lookups.values().map(|l| l.deadline).min()
    }

    /// Gives up on lookups older than [`LOOKUP_TIMEOUT`] (their commands are killed).
    pub fn tick(&mut self, cx: &mut Cx<'_>) {
        let late: Vec<VassalId> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.deadline <= cx.now)
            .map(|(v, _)| *v)
            .collect();
        for vassal in late {
            self.close(vassal, cx);
            cx.core(Event::OnDemand(OnDemandEvent::Failed {
                vassal,
                reason: format!(
                    "--emperor-on-demand-exec did not print a socket name within {} s (killed)",
                    LOOKUP_TIMEOUT.as_secs()
                ),
            }));
        }
    }

    /// The listener to hand to vassal `vassal` as fd 0 (taken out of the loop; it stays open
    /// here), if it is an on-demand vassal.
    pub fn take_for_spawn(&mut self, vassal: VassalId, cx: &mut Cx<'_>) -> Option<RawFd> {
        let l = self.listeners.get_mut(&vassal)?;
        if let Some(t) = l.token.take() {
            cx.deregister(&mut SourceFd(&l.sock.fd()), t);
        }
        Some(l.sock.fd())
    }

    /// Closes every listener (unix socket files are removed) and abandons lookups (at exit:
    /// nothing is deregistered).
    pub fn cleanup(&mut self) {
        self.listeners.clear();
        for (_, lk) in self.lookups.drain() {
            lk.kill();
        }
    }
}
