//! Client connections: accepting (peer credentials, per-client and global limits, eviction of
//! silent connections), expiring, and reading a request with its fds.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, recvmsg, sockopt, ControlMessageOwned, MsgFlags};
use uwsgi_proto::header::Status;

use super::{ForkServer, PeerCred, ServerError};
use crate::codec::{Request, RequestError};

/// Most fds one `SCM_RIGHTS` message can carry on Linux (`SCM_MAX_FD`); the receive buffer has
/// room for that many so the kernel never truncates (and never silently drops) fds.
pub(super) const SCM_MAX_FD: usize = 253;

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) sock: OwnedFd,
    pub(super) peer: PeerCred,
    /// When it was accepted (age order for eviction).
    pub(super) accepted: Instant,
    /// The whole request must have arrived by then.
    pub(super) deadline: Instant,
    /// The first byte must have arrived by then.
    pub(super) handshake_deadline: Instant,
    pub(super) buf: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
    pub(super) got_bytes: bool,
}

impl Conn {
    /// When the connection is dropped if nothing more arrives.
    pub(super) fn next_deadline(&self) -> Instant {
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
pub(super) enum Reject {
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
pub(super) struct Ready {
    pub(super) argv: Vec<OsString>,
    pub(super) channel: OwnedFd,
    pub(super) config: Option<OwnedFd>,
    pub(super) on_demand: Option<OwnedFd>,
}

impl ForkServer {
    /// Reads every ready connection (`ready(i)` for the connection at index `i`), but
    /// returns at most one complete request: the others stay readable and are picked up by the
    /// next poll. Connections that failed are dropped (and counted), the finished one removed.
    pub(super) fn read_ready_conns(
        &mut self,
        ready: impl Fn(usize) -> bool,
    ) -> Option<(Conn, Ready)> {
        let n = self.conns.len();
        let mut finished: Vec<(usize, Option<Ready>)> = Vec::new();
        for i in 0..n {
            if !ready(i) {
                continue;
            }
            match self.read_conn(i) {
                Ok(None) => {}
                Ok(Some(req)) => {
                    finished.push((i, Some(req)));
                    break;
                }
                Err(why) => {
                    self.log_reject(i, &why);
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
        adopted
    }

    fn log_reject(&mut self, i: usize, why: &Reject) {
        let peer = self.conns[i].peer;
        self.stats.rejected += 1;
        if matches!(why, Reject::Eof) && !self.conns[i].got_bytes {
            // Connected and hung up without a byte: a readiness probe of the socket (e.g. a
            // supervisor's `connect` check), not an error.
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
    }

    pub(super) fn expire(&mut self, now: Instant) {
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

    pub(super) fn accept_all(&mut self) -> Result<(), ServerError> {
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
}
