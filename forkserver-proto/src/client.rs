//! The client (emperor) side: connect, send the request with its fds, read the reply.
//!
//! Two shapes, one implementation:
//!
//! * [`PendingFork`]: a non-blocking state machine for an event loop. [`PendingFork::start`]
//!   connects and sends (a unix-socket connect completes at once or fails at once); register the
//!   value with a `mio::Poll` (it implements [`mio::event::Source`]), call
//!   [`PendingFork::poll`] on every readiness event and once its [`deadline`] passes.
//! * [`request_fork`]: the same thing blocking, with a deadline, for callers that can afford it
//!   off their hot path.
//!
//! The fds are only borrowed: the caller keeps its copies and closes them once the reply came
//! (the adopted vassal then holds the only copies of the vassal ends).
//!
//! [`deadline`]: PendingFork::deadline

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::unistd::Pid;
use uwsgi_proto::header::Status;

use crate::codec::{decode_reply, encode_request, FdMask, ReplyError, RequestError};

/// The fds handed to the new vassal, borrowed for the duration of the request.
#[derive(Debug, Clone, Copy)]
pub struct VassalFds<'a> {
    /// The vassal's end of the emperor channel (becomes its `UWSGI_EMPEROR_FD`).
    pub channel: BorrowedFd<'a>,
    /// The vassal's end of the config channel, if any.
    pub config: Option<BorrowedFd<'a>>,
    /// The on-demand listener, if any.
    pub on_demand: Option<BorrowedFd<'a>>,
}

impl<'a> VassalFds<'a> {
    /// Only a channel.
    pub fn channel(channel: BorrowedFd<'a>) -> Self {
        VassalFds {
            channel,
            config: None,
            on_demand: None,
        }
    }

    /// The mask announcing these fds.
    pub fn mask(&self) -> FdMask {
        FdMask {
            config: self.config.is_some(),
            on_demand: self.on_demand.is_some(),
        }
    }

    fn raw(&self) -> Vec<RawFd> {
        let mut v = Vec::with_capacity(3);
        v.push(self.channel.as_raw_fd());
        v.extend(self.config.map(|f| f.as_raw_fd()));
        v.extend(self.on_demand.map(|f| f.as_raw_fd()));
        v
    }
}

/// Where a request timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for room in the server's listen backlog.
    Connect,
    /// Sending the request.
    Send,
    /// Waiting for the reply.
    Reply,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting",
            Stage::Send => "sending the request",
            Stage::Reply => "waiting for the reply",
        })
    }
}

/// Why a fork request failed.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing exists at the socket path.
    MissingSocket {
        /// The fork-server socket.
        path: PathBuf,
    },
    /// The path exists but nobody listens on it (a stale socket: the base is gone).
    ConnectRefused {
        /// The fork-server socket.
        path: PathBuf,
    },
    /// The server's listen backlog is full (non-blocking start only); retry later.
    Busy {
        /// The fork-server socket.
        path: PathBuf,
    },
    /// The deadline passed.
    Timeout {
        /// The fork-server socket.
        path: PathBuf,
        /// What was going on.
        stage: Stage,
    },
    /// The server closed the connection before a whole reply (e.g. it refused our uid, or
    /// rejected the request, or its fork failed).
    Closed {
        /// The fork-server socket.
        path: PathBuf,
        /// Reply bytes received before the close.
        received: usize,
    },
    /// The reply is malformed.
    BadReply {
        /// The fork-server socket.
        path: PathBuf,
        /// What is wrong with it.
        error: ReplyError,
    },
    /// The reply is well formed but has no `pid`.
    NoPid {
        /// The fork-server socket.
        path: PathBuf,
    },
    /// The argv cannot be encoded.
    BadRequest(RequestError),
    /// Any other I/O error.
    Io {
        /// The fork-server socket.
        path: PathBuf,
        /// The syscall that failed.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl ClientError {
    fn io(path: &Path, op: &'static str, e: impl Into<io::Error>) -> Self {
        ClientError::Io {
            path: path.to_owned(),
            op,
            source: e.into(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::MissingSocket { path } => write!(
                f,
                "fork server socket {} does not exist (is the base vassal running?)",
                path.display()
            ),
            ClientError::ConnectRefused { path } => write!(
                f,
                "fork server at {} refused the connection (stale socket: the base is gone)",
                path.display()
            ),
            ClientError::Busy { path } => write!(
                f,
                "fork server at {} has a full listen backlog; retry later",
                path.display()
            ),
            ClientError::Timeout { path, stage } => {
                write!(f, "fork server at {}: timed out {stage}", path.display())
            }
            ClientError::Closed { path, received } => write!(
                f,
                "fork server at {} closed the connection after {received} reply bytes \
                 (refused credentials, bad request or failed fork: see its log)",
                path.display()
            ),
            ClientError::BadReply { path, error } => {
                write!(f, "fork server at {}: {error}", path.display())
            }
            ClientError::NoPid { path } => {
                write!(f, "fork server at {}: reply has no pid", path.display())
            }
            ClientError::BadRequest(e) => write!(f, "{e}"),
            ClientError::Io { path, op, source } => {
                write!(f, "fork server at {}: {op}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::BadReply { error, .. } => Some(error),
            ClientError::BadRequest(e) => Some(e),
            ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An in-flight fork request: a non-blocking, CLOEXEC unix stream socket plus the progress of
/// the exchange.
#[derive(Debug)]
pub struct PendingFork {
    sock: OwnedFd,
    path: PathBuf,
    out: Vec<u8>,
    sent: usize,
    reply: Vec<u8>,
    deadline: Instant,
    done: bool,
}

impl PendingFork {
    /// Connects to `path` and sends the request (argv plus fds) without blocking.
    ///
    /// The fds travel with the first byte in a single `sendmsg`; should the socket take only part
    /// of the request, the rest is written by [`poll`](Self::poll) when the socket is writable.
    pub fn start<S: AsRef<OsStr>>(
        path: &Path,
        argv: &[S],
        fds: &VassalFds<'_>,
        deadline: Instant,
    ) -> Result<PendingFork, ClientError> {
        let out = encode_request(argv, fds.mask()).map_err(ClientError::BadRequest)?;
        let sock = new_socket(path)?;
        match connect_once(&sock, path) {
            Ok(()) => {}
            Err(Errno::EAGAIN) => {
                return Err(ClientError::Busy {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(connect_error(path, e)),
        }
        let mut p = PendingFork {
            sock,
            path: path.to_owned(),
            out,
            sent: 0,
            reply: Vec::with_capacity(32),
            deadline,
            done: false,
        };
        p.send_first(fds)?;
        Ok(p)
    }

    fn send_first(&mut self, fds: &VassalFds<'_>) -> Result<(), ClientError> {
        let raw = fds.raw();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [IoSlice::new(&self.out)];
        loop {
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => {
                    self.sent = n;
                    return Ok(());
                }
                Err(Errno::EINTR) => continue,
                // The server refused us (closed) before we could send.
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    return Err(ClientError::Closed {
                        path: self.path.clone(),
                        received: 0,
                    })
                }
                // A fresh socket with an empty send buffer does not refuse 64 KiB; should it
                // happen anyway, the fds would have to outlive this call, so report it.
                Err(e) => return Err(ClientError::io(&self.path, "sendmsg", e)),
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the request gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// True while part of the request is still unsent (wait for writability).
    pub fn wants_write(&self) -> bool {
        self.sent < self.out.len()
    }

    /// Makes progress without blocking: writes what is left of the request, reads what has
    /// arrived of the reply. `Pending` means "call again on the next readiness event or at the
    /// deadline"; after `Ready` the value is spent (further calls return an error).
    pub fn poll(&mut self, now: Instant) -> Poll<Result<Pid, ClientError>> {
        let r = self.step(now);
        if r.is_ready() {
            self.done = true;
        }
        r
    }

    fn step(&mut self, now: Instant) -> Poll<Result<Pid, ClientError>> {
        if self.done {
            return Poll::Ready(Err(ClientError::io(
                &self.path,
                "poll",
                io::Error::other("request already finished"),
            )));
        }
        while self.wants_write() {
            match nix::sys::socket::send(
                self.sock.as_raw_fd(),
                &self.out[self.sent..],
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => self.sent += n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return self.pending_or_timeout(now, Stage::Send),
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    return Poll::Ready(Err(ClientError::Closed {
                        path: self.path.clone(),
                        received: 0,
                    }))
                }
                Err(e) => return Poll::Ready(Err(ClientError::io(&self.path, "write", e))),
            }
        }
        loop {
            let needed = match decode_reply(&self.reply) {
                Ok(Status::Complete((pid, _))) => return Poll::Ready(Ok(Pid::from_raw(pid))),
                Ok(Status::Partial { needed }) => needed,
                Err(ReplyError::NoPid) => {
                    return Poll::Ready(Err(ClientError::NoPid {
                        path: self.path.clone(),
                    }))
                }
                Err(error) => {
                    return Poll::Ready(Err(ClientError::BadReply {
                        path: self.path.clone(),
                        error,
                    }))
                }
            };
            let start = self.reply.len();
            self.reply.resize(start + needed, 0);
            let r = nix::unistd::read(&self.sock, &mut self.reply[start..]);
            let got = r.unwrap_or_default();
            self.reply.truncate(start + got);
            match r {
                Ok(0) => {
                    return Poll::Ready(Err(ClientError::Closed {
                        path: self.path.clone(),
                        received: self.reply.len(),
                    }))
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return self.pending_or_timeout(now, Stage::Reply),
                Err(Errno::ECONNRESET) => {
                    return Poll::Ready(Err(ClientError::Closed {
                        path: self.path.clone(),
                        received: self.reply.len(),
                    }))
                }
                Err(e) => return Poll::Ready(Err(ClientError::io(&self.path, "read", e))),
            }
        }
    }

    fn pending_or_timeout(&self, now: Instant, stage: Stage) -> Poll<Result<Pid, ClientError>> {
        if now >= self.deadline {
            Poll::Ready(Err(ClientError::Timeout {
                path: self.path.clone(),
                stage,
            }))
        } else {
            Poll::Pending
        }
    }

    /// Blocks (with `poll(2)`) until the request finishes or its deadline passes.
    pub fn wait(mut self) -> Result<Pid, ClientError> {
        loop {
            let now = Instant::now();
            if let Poll::Ready(r) = self.poll(now) {
                return r;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let flags = if self.wants_write() {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            let mut pfd = [PollFd::new(self.sock.as_fd(), flags)];
            match nix::poll::poll(&mut pfd, poll_timeout(left)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(ClientError::io(&self.path, "poll", e)),
            }
        }
    }
}

impl AsFd for PendingFork {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for PendingFork {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl mio::event::Source for PendingFork {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.sock.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.sock.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.sock.as_raw_fd()).deregister(registry)
    }
}

/// Asks the fork server at `path` to adopt a new vassal running `argv` with `fds`, blocking
/// for at most `timeout`. Returns the adopted vassal's pid.
///
/// A full listen backlog is waited out (polling every few milliseconds) until the deadline.
pub fn request_fork<S: AsRef<OsStr>>(
    path: &Path,
    argv: &[S],
    fds: &VassalFds<'_>,
    timeout: Duration,
) -> Result<Pid, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(1);
    loop {
        match PendingFork::start(path, argv, fds, deadline) {
            Ok(p) => return p.wait(),
            Err(ClientError::Busy { path }) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::Timeout {
                        path,
                        stage: Stage::Connect,
                    });
                }
                // The kernel offers no readiness event for "backlog has room"; back off.
                std::thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
///
/// After a successful request, an emperor can check `parent_of(pid) == getpid()` to detect a fork
/// server that is not its descendant (the vassal would then belong to another subreaper or to
/// init, and could not be reaped). Our server replies only after the vassal has been reparented,
/// so the check is not racy against it.
pub fn parent_of(pid: Pid) -> io::Result<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses, so split after the
    // last ')'.
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected /proc/<pid>/stat format",
        )
    };
    let rest = stat
        .get(stat.rfind(')').ok_or_else(bad)? + 1..)
        .ok_or_else(bad)?;
    let ppid = rest
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<i32>().ok())
        .ok_or_else(bad)?;
    Ok(Pid::from_raw(ppid))
}

fn new_socket(path: &Path) -> Result<OwnedFd, ClientError> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ClientError::io(path, "socket", e))
}

fn connect_once(sock: &OwnedFd, path: &Path) -> Result<(), Errno> {
    let addr = UnixAddr::new(path)?;
    loop {
        match connect(sock.as_raw_fd(), &addr) {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

fn connect_error(path: &Path, e: Errno) -> ClientError {
    match e {
        Errno::ENOENT => ClientError::MissingSocket {
            path: path.to_owned(),
        },
        Errno::ECONNREFUSED => ClientError::ConnectRefused {
            path: path.to_owned(),
        },
        e => ClientError::io(path, "connect", e),
    }
}

/// A poll(2) timeout covering `d`, rounded up to whole milliseconds.
pub(crate) fn poll_timeout(d: Duration) -> PollTimeout {
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}
