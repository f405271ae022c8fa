//! The server (preloaded base) side: accept, authenticate, receive, double-fork, adopt.
//!
//! # Single-threaded, by design
//!
//! The grandchild of every adoption keeps running the program's Rust code (Zygote style), which
//! is only sound when the forking process has exactly one thread: a lock held by another thread
//! at fork time (the allocator's, stdout's, a logger's) would stay locked forever in the child.
//! [`ForkServer::serve`] checks `/proc/self/task` before every fork and fails with
//! [`ServerError::NotSingleThreaded`] instead of forking a multi-threaded process. The
//! intermediate child only calls `fork` and `_exit`, both async-signal-safe.
//!
//! # Signals
//!
//! While a [`ForkServer`] exists (with [`ServerConfig::handle_signals`], the default), SIGTERM
//! and SIGINT are blocked in the process and read from a signalfd by [`ForkServer::serve`],
//! which then returns [`Outcome::Stopped`]. The adopted grandchild gets the original signal mask
//! back. Dropping the server (in the process that bound it) restores the mask and removes the
//! socket file.
//!
//! # Descriptors
//!
//! Every fd the server opens is CLOEXEC, and received fds arrive with `MSG_CMSG_CLOEXEC`. That
//! matters only if the vassal later execs: an adopted vassal does not exec, so the grandchild
//! closes the listener, the signalfd and every other connection before it returns the
//! [`Adoption`]. Fds the *program* owns (its own emperor channel, files, sockets) are the
//! program's to close in the adopted branch.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, recvmsg, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
use uwsgi_proto::header::Status;

use crate::client::poll_timeout;
use crate::codec::{encode_reply, Request, RequestError};

/// Most fds one `SCM_RIGHTS` message can carry on Linux (`SCM_MAX_FD`); the receive buffer has
/// room for that many so the kernel never truncates (and never silently drops) fds.
const SCM_MAX_FD: usize = 253;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// uids allowed to ask for a fork. Default: the server's effective uid and root.
    pub allowed_uids: Vec<u32>,
    /// How long a client may take to send its whole request (and the reply write). Default 4 s.
    pub io_timeout: Duration,
    /// Connections served at once. When they are all taken, the oldest *silent* one (nothing
    /// received, nothing waiting to be read) is closed to make room for a new client; when none
    /// is silent, further clients wait in the listen backlog. Default 64.
    pub max_connections: usize,
    /// Silent connections one client process (by `SO_PEERCRED` pid) may hold; a new connection
    /// beyond that closes that client's oldest silent one. Default 4.
    pub max_silent_per_peer: usize,
    /// How long a client may stay connected without sending its first byte. Default 1 s
    /// (a client sends its whole request right after connecting).
    pub handshake_timeout: Duration,
    /// Block SIGTERM/SIGINT and return [`Outcome::Stopped`] when one arrives. Default true.
    pub handle_signals: bool,
    /// Permissions for the socket file (e.g. `0o600`); `None` keeps what the umask gives.
    pub socket_mode: Option<u32>,
    /// The grandchild replies only once it has been reparented (the intermediate child has
    /// exited), so the client can `waitpid` it and check its ppid as soon as it has the pid.
    /// Costs the intermediate child's exit (page-table teardown, which grows with the base's
    /// memory) on the request's latency. Default true.
    pub reply_after_reparent: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let me = nix::unistd::geteuid().as_raw();
        let mut allowed_uids = vec![me];
        if me != 0 {
            allowed_uids.push(0);
        }
        ServerConfig {
            allowed_uids,
            io_timeout: Duration::from_secs(4),
            max_connections: 64,
            max_silent_per_peer: 4,
            handshake_timeout: Duration::from_secs(1),
            handle_signals: true,
            socket_mode: None,
            reply_after_reparent: true,
        }
    }
}

/// Credentials of the connected client, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Client pid (as seen at connect time).
    pub pid: i32,
    /// Client uid.
    pub uid: u32,
    /// Client gid.
    pub gid: u32,
}

/// What a new vassal receives: returned by [`ForkServer::serve`] in the adopted grandchild.
#[derive(Debug)]
pub struct Adoption {
    /// The vassal's argv, as sent by the emperor (argv[0] included).
    pub argv: Vec<OsString>,
    /// The emperor channel.
    pub channel: OwnedFd,
    /// The config channel, when the request carried one (mask 0x02).
    pub config: Option<OwnedFd>,
    /// The on-demand listener, when the request carried one (mask 0x04).
    pub on_demand: Option<OwnedFd>,
    /// Who asked.
    pub peer: PeerCred,
}

impl Adoption {
    /// Sets `UWSGI_EMPEROR_FD` (and `UWSGI_EMPEROR_FD_CONFIG`, or removes it) to the received
    /// fds, for code that finds its channel through the environment. Call it in the adopted
    /// vassal only (the process is single-threaded there).
    pub fn export_env(&self) {
        std::env::set_var("UWSGI_EMPEROR_FD", self.channel.as_raw_fd().to_string());
        match &self.config {
            Some(c) => std::env::set_var("UWSGI_EMPEROR_FD_CONFIG", c.as_raw_fd().to_string()),
            None => std::env::remove_var("UWSGI_EMPEROR_FD_CONFIG"),
        }
    }
}

/// Why [`ForkServer::serve`] returned.
#[derive(Debug)]
pub enum Outcome {
    /// We are the adopted grandchild: continue as the new vassal. The server's own fds are
    /// closed; the reply with our pid has been sent.
    Adopted(Adoption),
    /// SIGTERM or SIGINT arrived (only with [`ServerConfig::handle_signals`]).
    Stopped(Signal),
    /// The watched fd at this index is readable or hung up.
    Readable(usize),
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted (refused ones included).
    pub accepted: u64,
    /// Connections refused for their uid.
    pub refused: u64,
    /// Requests rejected as malformed (or closed early by the client).
    pub rejected: u64,
    /// Connections dropped for exceeding the I/O or handshake timeout.
    pub timed_out: u64,
    /// Silent connections closed to make room (all slots taken, or over the per-client limit).
    pub evicted: u64,
    /// Adoptions handed off (intermediate child exited 0).
    pub forked: u64,
    /// Forks that failed.
    pub fork_failed: u64,
}

/// Why the server failed.
#[derive(Debug)]
pub enum ServerError {
    /// Something else listens on the socket path.
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The process has more than one thread, so forking it would not be sound.
    NotSingleThreaded {
        /// Threads found in `/proc/self/task`.
        threads: usize,
    },
    /// A watched fd is invalid (`POLLNVAL`).
    InvalidWatchedFd {
        /// Its index in the slice passed to `serve`.
        index: usize,
    },
    /// A syscall failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::InUse { path } => write!(
                f,
                "fork server socket {} is in use by a live server",
                path.display()
            ),
            ServerError::NotASocket { path } => write!(
                f,
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
            ServerError::NotSingleThreaded { threads } => write!(
                f,
                "the fork server process has {threads} threads; it must be single-threaded \
                 because adopted vassals keep running its code after fork()"
            ),
            ServerError::InvalidWatchedFd { index } => {
                write!(f, "watched fd #{index} is not open")
            }
            ServerError::Io { op, path, source } => {
                write!(f, "fork server {}: {op}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Conn {
    sock: OwnedFd,
    peer: PeerCred,
    /// When it was accepted (age order for eviction).
    accepted: Instant,
    /// The whole request must have arrived by then.
    deadline: Instant,
    /// The first byte must have arrived by then.
    handshake_deadline: Instant,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    got_bytes: bool,
}

impl Conn {
    /// When the connection is dropped if nothing more arrives.
    fn next_deadline(&self) -> Instant {
        if self.got_bytes {
            self.deadline
        } else {
            self.deadline.min(self.handshake_deadline)
        }
    }

    /// Nothing received so far and nothing waiting to be read (or the client hung up): a
    /// client that sends its request right after connecting is never silent.
    fn is_silent(&self) -> bool {
        if self.got_bytes || !self.fds.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        !matches!(
            nix::sys::socket::recv(
                self.sock.as_raw_fd(),
                &mut b,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
            ),
            Ok(n) if n > 0
        )
    }
}

/// Why a connection is dropped without an adoption.
#[derive(Debug)]
enum Reject {
    Eof,
    Bad(RequestError),
    LateFds,
    Io(Errno),
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::Eof => f.write_str("client closed before a whole request"),
            Reject::Bad(e) => write!(f, "{e}"),
            Reject::LateFds => f.write_str("fds arrived after the first byte"),
            Reject::Io(e) => write!(f, "read: {e}"),
        }
    }
}

/// A request that is complete and valid.
#[derive(Debug)]
struct Ready {
    argv: Vec<OsString>,
    channel: OwnedFd,
    config: Option<OwnedFd>,
    on_demand: Option<OwnedFd>,
}

/// A fork server bound to a unix socket.
#[derive(Debug)]
pub struct ForkServer {
    listener: Option<UnixListener>,
    path: PathBuf,
    ident: (u64, u64),
    owner: Pid,
    config: ServerConfig,
    signals: Option<SignalFd>,
    old_mask: Option<SigSet>,
    conns: Vec<Conn>,
    /// Intermediate children not reaped yet, each with a pidfd to poll for its exit.
    intermediates: Vec<(Pid, OwnedFd)>,
    cmsg: Vec<u8>,
    stats: ServerStats,
}

impl ForkServer {
    /// Binds `path` (replacing a stale socket nobody listens on) and, with
    /// [`ServerConfig::handle_signals`], blocks SIGTERM/SIGINT in favour of a signalfd.
    pub fn bind(path: impl AsRef<Path>, config: ServerConfig) -> Result<ForkServer, ServerError> {
        let path = path.as_ref().to_owned();
        let io = |op, source| ServerError::Io {
            op,
            path: path.clone(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket { path });
            }
            match UnixStream::connect(&path) {
                Ok(_) => return Err(ServerError::InUse { path }),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(&path).map_err(|e| io("remove stale socket", e))?;
                }
                Err(e) => return Err(io("probe existing socket", e)),
            }
        }
        let listener = UnixListener::bind(&path).map_err(|e| io("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("set_nonblocking", e))?;
        if let Some(mode) = config.socket_mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", e))?;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io("stat", e))?;
        let (signals, old_mask) = if config.handle_signals {
            let mut mask = SigSet::empty();
            mask.add(Signal::SIGTERM);
            mask.add(Signal::SIGINT);
            let mut old = SigSet::empty();
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old))
                .map_err(|e| io("sigprocmask", e.into()))?;
            let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                .map_err(|e| io("signalfd", e.into()))?;
            (Some(sfd), Some(old))
        } else {
            (None, None)
        };
        let cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD], libc::ucred);
        tracing::info!(path = %path.display(), "fork server listening");
        Ok(ForkServer {
            listener: Some(listener),
            ident: (meta.dev(), meta.ino()),
            path,
            owner: getpid(),
            config,
            signals,
            old_mask,
            conns: Vec::new(),
            intermediates: Vec::new(),
            cmsg,
            stats: ServerStats::default(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Connections currently being read.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    fn err(&self, op: &'static str, source: impl Into<io::Error>) -> ServerError {
        ServerError::Io {
            op,
            path: self.path.clone(),
            source: source.into(),
        }
    }

    /// Serves until an adoption happens (then returns, in the grandchild only,
    /// [`Outcome::Adopted`]), a stop signal arrives, or one of `watch` becomes readable.
    ///
    /// Many clients are served at once: each connection has its own buffer and deadline, and
    /// nothing blocks: the intermediate child of each adoption is reaped when its pidfd says it
    /// has exited (a blocking `waitpid` only where pidfds are unavailable).
    pub fn serve(&mut self, watch: &[BorrowedFd<'_>]) -> Result<Outcome, ServerError> {
        loop {
            let now = Instant::now();
            self.expire(now);
            // Full: keep listening only while some connection may be silent (then a newcomer
            // evicts it); otherwise newcomers wait in the backlog until a slot frees up.
            let accepting = self.conns.len() < self.config.max_connections.max(1)
                || self.conns.iter().any(|c| !c.got_bytes);
            let Some(listener) = self.listener.as_ref() else {
                return Err(self.err("serve", io::Error::other("server already closed")));
            };
            let next_deadline = self.conns.iter().map(Conn::next_deadline).min();
            let timeout = next_deadline
                .map(|d| poll_timeout(d.saturating_duration_since(now)))
                .unwrap_or(PollTimeout::NONE);

            let mut pfds = Vec::with_capacity(2 + self.conns.len() + watch.len());
            let sig_at = self.signals.as_ref().map(|s| {
                pfds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                pfds.len() - 1
            });
            let listen_at = accepting.then(|| {
                pfds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
                pfds.len() - 1
            });
            let conns_at = pfds.len();
            pfds.extend(
                self.conns
                    .iter()
                    .map(|c| PollFd::new(c.sock.as_fd(), PollFlags::POLLIN)),
            );
            let watch_at = pfds.len();
            pfds.extend(watch.iter().map(|w| PollFd::new(*w, PollFlags::POLLIN)));
            let inter_at = pfds.len();
            pfds.extend(
                self.intermediates
                    .iter()
                    .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
            );

            match nix::poll::poll(&mut pfds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(self.err("poll", e)),
            }
            let revents: Vec<PollFlags> = pfds
                .iter()
                .map(|p| p.revents().unwrap_or(PollFlags::empty()))
                .collect();
            drop(pfds);
            let ready = |i: usize| !revents[i].is_empty();

            // Reap intermediate children whose pidfd says they exited.
            for i in (0..self.intermediates.len()).rev() {
                if ready(inter_at + i) {
                    let (pid, _fd) = self.intermediates.swap_remove(i);
                    self.account_intermediate(pid, waitpid(pid, Some(WaitPidFlag::WNOHANG)));
                }
            }

            if let Some(i) = sig_at {
                if ready(i) {
                    if let Some(sig) = self.read_signal()? {
                        tracing::info!(path = %self.path.display(), signal = %sig, "fork server stopping");
                        return Ok(Outcome::Stopped(sig));
                    }
                }
            }
            for index in 0..watch.len() {
                let r = revents[watch_at + index];
                if r.contains(PollFlags::POLLNVAL) {
                    return Err(ServerError::InvalidWatchedFd { index });
                }
                if !r.is_empty() {
                    return Ok(Outcome::Readable(index));
                }
            }
            // Read every ready connection, but adopt at most one per round: the others stay
            // readable and are picked up by the next poll.
            let n = self.conns.len();
            let mut finished: Vec<(usize, Option<Ready>)> = Vec::new();
            for i in 0..n {
                if !ready(conns_at + i) {
                    continue;
                }
                match self.read_conn(i) {
                    Ok(None) => {}
                    Ok(Some(req)) => {
                        finished.push((i, Some(req)));
                        break;
                    }
                    Err(why) => {
                        let peer = self.conns[i].peer;
                        self.stats.rejected += 1;
                        if matches!(why, Reject::Eof) && !self.conns[i].got_bytes {
                            // Connected and hung up without a byte: a readiness probe of the
                            // socket (e.g. a supervisor's `connect` check), not an error.
                            tracing::debug!(
                                peer_pid = peer.pid,
                                peer_uid = peer.uid,
                                "fork server: client closed without sending anything"
                            );
                        } else {
                            tracing::warn!(
                                peer_pid = peer.pid,
                                peer_uid = peer.uid,
                                "fork server: dropping connection: {why}"
                            );
                        }
                        finished.push((i, None));
                    }
                }
            }
            // Remove from the back so the smaller indices stay valid.
            let mut adopted = None;
            for (i, req) in finished.into_iter().rev() {
                let conn = self.conns.swap_remove(i);
                if let Some(req) = req {
                    adopted = Some((conn, req));
                }
            }
            if let Some((conn, req)) = adopted {
                if let Some(adoption) = self.adopt(conn, req)? {
                    return Ok(Outcome::Adopted(adoption));
                }
            }
            if let Some(i) = listen_at {
                if ready(i) {
                    self.accept_all()?;
                }
            }
        }
    }

    fn read_signal(&mut self) -> Result<Option<Signal>, ServerError> {
        let Some(sfd) = self.signals.as_mut() else {
            return Ok(None);
        };
        match sfd.read_signal() {
            Ok(Some(info)) => Ok(Signal::try_from(info.ssi_signo as i32).ok()),
            Ok(None) | Err(Errno::EINTR) | Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(self.err("read signalfd", e)),
        }
    }

    fn expire(&mut self, now: Instant) {
        let before = self.conns.len();
        let mut silent = 0u64;
        self.conns.retain(|c| {
            let alive = c.next_deadline() > now;
            if !alive && !c.got_bytes {
                silent += 1;
            } else if !alive {
                tracing::warn!(
                    peer_pid = c.peer.pid,
                    peer_uid = c.peer.uid,
                    received = c.buf.len(),
                    "fork server: client timed out before sending a whole request"
                );
            }
            alive
        });
        if silent > 0 {
            // One line for a whole batch of silent clients, not one per connection.
            tracing::warn!(
                count = silent,
                "fork server: closed {silent} connection(s) that sent nothing within {:?}",
                self.config.handshake_timeout
            );
        }
        self.stats.timed_out += (before - self.conns.len()) as u64;
    }

    /// The oldest silent connection (of `peer` only, when given).
    fn oldest_silent(&self, peer: Option<i32>) -> Option<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| peer.map_or(true, |p| c.peer.pid == p) && c.is_silent())
            .min_by_key(|(_, c)| c.accepted)
            .map(|(i, _)| i)
    }

    fn evict(&mut self, i: usize, evicted: &mut u64) {
        let c = self.conns.swap_remove(i);
        tracing::debug!(
            peer_pid = c.peer.pid,
            peer_uid = c.peer.uid,
            "fork server: closing a silent connection to make room"
        );
        self.stats.evicted += 1;
        *evicted += 1;
    }

    fn accept_all(&mut self) -> Result<(), ServerError> {
        let mut evicted = 0u64;
        let r = self.accept_evicting(&mut evicted);
        if evicted > 0 {
            tracing::warn!(
                count = evicted,
                "fork server: closed {evicted} silent connection(s) to make room for new clients"
            );
        }
        r
    }

    fn accept_evicting(&mut self, evicted: &mut u64) -> Result<(), ServerError> {
        loop {
            if self.conns.len() >= self.config.max_connections.max(1) {
                match self.oldest_silent(None) {
                    Some(i) => self.evict(i, evicted),
                    // Every slot is busy with a client that sent something: the others wait
                    // in the backlog.
                    None => return Ok(()),
                }
            }
            let Some(listener) = self.listener.as_ref() else {
                return Ok(());
            };
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A client that vanished between connect and accept, or fd exhaustion: log and
                // keep serving the others.
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "fork server: accept: {e}");
                    return Ok(());
                }
            };
            self.stats.accepted += 1;
            let cred = match getsockopt(&stream, sockopt::PeerCredentials) {
                Ok(c) => PeerCred {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                },
                Err(e) => {
                    tracing::warn!("fork server: SO_PEERCRED failed ({e}); closing connection");
                    self.stats.refused += 1;
                    continue;
                }
            };
            if !self.config.allowed_uids.contains(&cred.uid) {
                self.stats.refused += 1;
                tracing::warn!(
                    peer_pid = cred.pid,
                    peer_uid = cred.uid,
                    peer_gid = cred.gid,
                    "fork server: refused connection from pid {} uid {} gid {} (allowed uids: {:?})",
                    cred.pid,
                    cred.uid,
                    cred.gid,
                    self.config.allowed_uids
                );
                continue; // dropping `stream` closes it
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("fork server: set_nonblocking: {e}");
                continue;
            }
            tracing::debug!(
                peer_pid = cred.pid,
                peer_uid = cred.uid,
                peer_gid = cred.gid,
                "fork server: connection"
            );
            let own_silent = self
                .conns
                .iter()
                .filter(|c| c.peer.pid == cred.pid && !c.got_bytes)
                .count();
            if own_silent >= self.config.max_silent_per_peer.max(1) {
                if let Some(i) = self.oldest_silent(Some(cred.pid)) {
                    self.evict(i, evicted);
                }
            }
            let now = Instant::now();
            self.conns.push(Conn {
                sock: OwnedFd::from(stream),
                peer: cred,
                accepted: now,
                deadline: now + self.config.io_timeout,
                handshake_deadline: now + self.config.handshake_timeout,
                buf: Vec::with_capacity(256),
                fds: Vec::new(),
                got_bytes: false,
            });
        }
    }

    /// Reads what the connection has; `Some` once the request is complete and valid.
    fn read_conn(&mut self, i: usize) -> Result<Option<Ready>, Reject> {
        let conn = &mut self.conns[i];
        loop {
            let needed = match Request::decode(&conn.buf) {
                Err(e) => return Err(Reject::Bad(e)),
                Ok(Status::Complete((req, _))) => {
                    let argv = req.argv();
                    let fds = std::mem::take(&mut conn.fds);
                    let (channel, config, on_demand) = req.mask.split(fds).map_err(Reject::Bad)?;
                    return Ok(Some(Ready {
                        argv,
                        channel,
                        config,
                        on_demand,
                    }));
                }
                Ok(Status::Partial { needed }) => needed,
            };
            // The first read asks for the 4 header bytes only: the fds ride on them.
            let start = conn.buf.len();
            conn.buf.resize(start + needed, 0);
            let (got, fds, truncated) = {
                let mut iov = [IoSliceMut::new(&mut conn.buf[start..])];
                match recvmsg::<()>(
                    conn.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut self.cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(msg) => {
                        let mut fds = Vec::new();
                        let truncated = match msg.cmsgs() {
                            Ok(cmsgs) => {
                                for c in cmsgs {
                                    if let ControlMessageOwned::ScmRights(raw) = c {
                                        fds.extend(raw.into_iter().map(|fd| {
                                            // SAFETY: the kernel just installed this fd in our
                                            // table for this message; nothing else owns it.
                                            unsafe { OwnedFd::from_raw_fd(fd) }
                                        }));
                                    }
                                }
                                false
                            }
                            Err(_) => true,
                        };
                        (Ok(msg.bytes), fds, truncated)
                    }
                    Err(e) => (Err(e), Vec::new(), false),
                }
            };
            match got {
                Ok(n) => conn.buf.truncate(start + n),
                Err(_) => conn.buf.truncate(start),
            }
            if truncated {
                return Err(Reject::Bad(RequestError::FdCount {
                    expected: 3,
                    got: SCM_MAX_FD + 1,
                }));
            }
            if !fds.is_empty() {
                if conn.got_bytes {
                    return Err(Reject::LateFds);
                }
                if fds.len() > crate::codec::MAX_FDS {
                    return Err(Reject::Bad(RequestError::FdCount {
                        expected: crate::codec::MAX_FDS,
                        got: fds.len(),
                    }));
                }
                conn.fds = fds;
            }
            match got {
                Ok(0) => return Err(Reject::Eof),
                Ok(_) => conn.got_bytes = true,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(Reject::Io(e)),
            }
        }
    }

    /// Double-forks. Returns `Some` in the grandchild only.
    fn adopt(&mut self, conn: Conn, req: Ready) -> Result<Option<Adoption>, ServerError> {
        let threads = thread_count().map_err(|e| self.err("count threads", e))?;
        if threads != 1 {
            return Err(ServerError::NotSingleThreaded { threads });
        }
        tracing::info!(
            peer_pid = conn.peer.pid,
            peer_uid = conn.peer.uid,
            fds = 1 + usize::from(req.config.is_some()) + usize::from(req.on_demand.is_some()),
            argv = ?req.argv,
            "fork server: adoption request"
        );
        // SAFETY: the process has exactly one thread (checked just above), so the child is a
        // complete copy with no lock held by a vanished thread; the child only calls fork() and
        // _exit() before the grandchild takes over.
        match unsafe { fork() } {
            Err(e) => {
                self.stats.fork_failed += 1;
                tracing::error!("fork server: fork failed: {e}");
                Ok(None) // dropping conn and fds closes them: the client sees EOF
            }
            Ok(ForkResult::Parent { child }) => {
                // The intermediate child exits right after its fork, but its exit tears down a
                // copy of our page tables, which takes a while for a big base: rather than
                // blocking on it, poll its pidfd with the other sources and reap it then.
                match pidfd_open(child) {
                    Ok(fd) => self.intermediates.push((child, fd)),
                    Err(_) => self.account_intermediate(child, waitpid_blocking(child)),
                }
                // Our copies of the client's fds and the connection close here; the
                // grandchild holds its own.
                drop((conn, req));
                Ok(None)
            }
            Ok(ForkResult::Child) => {
                // Intermediate child: async-signal-safe calls only.
                let intermediate = getpid();
                // SAFETY: still a single-threaded copy; the grandchild is orphaned at once and
                // reparented to the nearest subreaper (the emperor).
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => {}
                    // SAFETY: _exit is async-signal-safe and skips atexit handlers and
                    // destructors that belong to the server process.
                    Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
                    // SAFETY: as above.
                    Err(_) => unsafe { libc::_exit(1) },
                }
                Ok(Some(self.become_vassal(conn, req, intermediate)))
            }
        }
    }

    /// In the grandchild: drop everything of the server, send the reply, hand over.
    fn become_vassal(&mut self, conn: Conn, req: Ready, intermediate: Pid) -> Adoption {
        self.listener = None;
        self.conns.clear();
        self.intermediates.clear();
        self.signals = None;
        if let Some(old) = self.old_mask.take() {
            // Failure is not possible for SIG_SETMASK with a valid set; ignore it anyway.
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
        let pid = getpid();
        // Leave the base's process group: whatever signals the base's group (its supervisor
        // stopping or restarting it, a Ctrl-C in its terminal) must not reach the vassals it
        // handed to the emperor. Failure (EPERM for a session leader) only keeps the group.
        // SAFETY: setpgid(2) on ourselves, no memory involved.
        unsafe {
            libc::setpgid(0, 0);
        }
        // Reply only once the intermediate child is gone and we have been reparented (to the
        // client's subreaper, normally): then the client can waitpid() us, and check our ppid,
        // as soon as it has the pid. The intermediate child exits right after its fork, so this
        // is a short wait; it is bounded by the I/O timeout all the same.
        let deadline = Instant::now() + self.config.io_timeout;
        if self.config.reply_after_reparent {
            // A pidfd of the intermediate child becomes readable when it has exited, and the
            // kernel reparents its children before it signals that.
            if let Ok(fd) = pidfd_open(intermediate) {
                let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut p, poll_timeout(self.config.io_timeout));
            }
        }
        // Fallback (no pidfd), and a check in any case.
        let mut pause = Duration::from_micros(50);
        while self.config.reply_after_reparent
            && nix::unistd::getppid() == intermediate
            && Instant::now() < deadline
        {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        let reply = encode_reply(pid.as_raw());
        if let Err(e) = write_all(&conn.sock, &reply, Instant::now() + self.config.io_timeout) {
            tracing::error!(
                pid = pid.as_raw(),
                "fork server: adopted vassal cannot send its pid to the client ({e}); exiting"
            );
            // SAFETY: _exit ends this orphan without running the server's destructors.
            unsafe { libc::_exit(1) }
        }
        drop(conn.sock);
        tracing::info!(
            pid = pid.as_raw(),
            "fork server: double fork done, vassal adopted"
        );
        Adoption {
            argv: req.argv,
            channel: req.channel,
            config: req.config,
            on_demand: req.on_demand,
            peer: conn.peer,
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        if getpid() != self.owner {
            return;
        }
        self.listener = None;
        self.signals = None;
        for (pid, _fd) in std::mem::take(&mut self.intermediates) {
            let _ = waitpid_blocking(pid); // exiting already; do not leave zombies
        }
        if let Some(old) = self.old_mask.take() {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl ForkServer {
    fn account_intermediate(&mut self, pid: Pid, status: nix::Result<WaitStatus>) {
        match status {
            // ECHILD: SIGCHLD is ignored in this process and the kernel reaped it for us.
            Ok(WaitStatus::Exited(_, 0)) | Err(Errno::ECHILD) => self.stats.forked += 1,
            Ok(WaitStatus::StillAlive) => {
                // Spurious readiness; keep waiting for it the blocking way (it is exiting).
                self.account_intermediate(pid, waitpid_blocking(pid));
            }
            other => {
                self.stats.fork_failed += 1;
                tracing::error!("fork server: intermediate child {pid} ended with {other:?}");
            }
        }
    }
}

fn waitpid_blocking(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// A pidfd (CLOEXEC) that becomes readable when `pid` exits.
fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; it touches no
    // memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd (with O_CLOEXEC set); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn write_all(sock: &OwnedFd, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        match nix::sys::socket::send(sock.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let mut p = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
                match nix::poll::poll(&mut p, poll_timeout(left)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Threads of this process.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}
