//! Listen-backlog measurement for the `sos-backlog` probe: how many connections wait in a
//! listener's accept queue, measured without ever blocking the event loop.
//!
//! * A TCP listener held by the shim (an on-demand socket): `TCP_INFO`'s `tcpi_unacked`, one
//!   `getsockopt`, answered at once.
//! * Everything else goes through one `NETLINK_SOCK_DIAG` socket, opened the first time it is
//!   needed (a shim without `sos-backlog` has none), non-blocking, and registered with the
//!   runtime's poll: [`Meter::start`] sends a request and returns,
//!   [`Meter::on_readable`] reads the answer when the kernel has queued it. The request and
//!   receive buffers are made once and reused.
//!   * A unix listener whose socket inode is known (the on-demand socket, or a `ready = unix:`
//!     socket found earlier): an exact lookup of that inode, answered by one message.
//!   * `ready = unix:PATH`, first time after each program start: a dump of the listening unix
//!     sockets, matched by the device and inode of the bound file at PATH. The socket inode
//!     found is cached until the program is started again or the socket disappears.
//!   * `ready = tcp:` / `http://`: a dump of the listening TCP sockets (IPv4, then IPv6) that
//!     the kernel filters down to the port (a bytecode filter), so only matching sockets come
//!     back; the largest accept queue wins.
//! * Only when the kernel has no TCP `sock_diag` does the TCP case fall back to
//!   `/proc/net/tcp{,6}`, read into one reused buffer, at most [`PROC_CAP`] bytes per file.
//!   (`/proc` has no unix accept-queue length, so unix listeners need `sock_diag`.)
//!
//! The netlink requests and answers are encoded and decoded by [`vassal_shim::wire`] (which
//! says why that codec is hand-written).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

use vassal_shim::wire::{
    inet_diag_rqueue, inet_request, messages, parse_proc_tcp, u32_at, unix_diag_fields,
    unix_diag_vfs, unix_request, Message, REQ_MAX, SOCK_DIAG_BY_FAMILY, TCP_LISTEN,
    UDIAG_SHOW_RQLEN, UDIAG_SHOW_VFS,
};

use crate::options::Ready;

/// Large enough for any one datagram of a dump (the kernel sizes dump parts to at most 32 KiB).
const RECV_BUF: usize = 32 * 1024;
/// At most this much of a `/proc/net/tcp{,6}` file is read by the fallback.
pub const PROC_CAP: u64 = 1 << 20;

/// The listener whose backlog is measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// A TCP listener held by the shim (measured with `TCP_INFO`).
    HeldTcp(RawFd),
    /// A unix listener with this socket inode (the on-demand socket held by the shim).
    UnixInode(u64),
    /// The program's unix listener bound at this path.
    UnixPath(PathBuf),
    /// The program's TCP listener(s) on this port.
    TcpPort(u16),
}

impl Watch {
    /// The watch for a listening socket held by the shim (`None` when `fd` is neither a TCP
    /// listener nor a socket).
    pub fn held(fd: RawFd) -> Option<Watch> {
        if tcp_listener(fd).is_some() {
            return Some(Watch::HeldTcp(fd));
        }
        socket_inode(fd).map(Watch::UnixInode)
    }

    /// The watch for the program's own listener named by `ready` (`None` when it names none).
    pub fn of_ready(ready: &Ready) -> Option<Watch> {
        match ready {
            Ready::Tcp(a) => Some(Watch::TcpPort(a.port())),
            Ready::Http { addr, .. } => Some(Watch::TcpPort(addr.port())),
            Ready::Unix(p) => Some(Watch::UnixPath(p.clone())),
            Ready::Immediate | Ready::Notify => None,
        }
    }
}

/// What [`Meter::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Answered at once: the backlog, or `None` when it cannot be measured now.
    Done(Option<u32>),
    /// A request is out; [`Meter::on_readable`] gives the answer.
    Pending,
}

/// The request in flight, with the sequence number its answer carries.
#[derive(Debug, Clone, Copy)]
enum Query {
    /// Exact lookup of one unix socket inode.
    UnixInode { seq: u32 },
    /// Dump of listening unix sockets, looking for the one bound to this file
    /// (kernel-encoded device, inode).
    UnixSearch { seq: u32, dev: u32, ino: u32 },
    /// Dump of listening TCP sockets on `port`; `v6` says which family is being dumped.
    Tcp {
        seq: u32,
        port: u16,
        v6: bool,
        best: Option<u32>,
    },
}

impl Query {
    fn seq(&self) -> u32 {
        match *self {
            Query::UnixInode { seq } | Query::UnixSearch { seq, .. } | Query::Tcp { seq, .. } => {
                seq
            }
        }
    }
}

/// The backlog meter: owns the netlink socket, its buffers and what is cached about the
/// watched listener.
#[derive(Debug)]
pub struct Meter {
    nl: Option<OwnedFd>,
    /// Whether opening `nl` was tried already.
    opened: bool,
    /// False once the kernel said it cannot dump TCP sockets: use /proc from then on.
    inet_diag: bool,
    req: [u8; REQ_MAX],
    buf: Box<[u8]>,
    seq: u32,
    query: Option<Query>,
    watch: Option<Watch>,
    /// The socket inode of the [`Watch::UnixPath`] listener, once found.
    found_inode: Option<u64>,
    /// Reused buffer of the /proc fallback.
    proc_text: String,
}

impl Meter {
    /// A meter watching nothing (and holding no socket yet).
    pub fn new() -> Meter {
        Meter {
            nl: None,
            opened: false,
            inet_diag: true,
            req: [0; REQ_MAX],
            buf: vec![0u8; RECV_BUF].into_boxed_slice(),
            seq: 0,
            query: None,
            watch: None,
            found_inode: None,
            proc_text: String::new(),
        }
    }

    /// The netlink socket's descriptor (`None` while there is none).
    #[cfg(test)]
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.nl.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Sets the listener to watch; forgets everything cached and any request in flight (call it
    /// on every program start: the program binds its sockets anew). The first watch that needs
    /// netlink opens the socket (non-blocking, close-on-exec): its descriptor is returned then,
    /// once, to be registered for readability. Without it, TCP listeners are measured from
    /// /proc and unix ones not at all.
    #[must_use = "a newly opened socket must be registered with the poll"]
    pub fn set_watch(&mut self, watch: Option<Watch>) -> Option<RawFd> {
        let needs_netlink = matches!(
            watch,
            Some(Watch::UnixInode(_) | Watch::UnixPath(_) | Watch::TcpPort(_))
        );
        self.watch = watch;
        self.found_inode = None;
        self.query = None;
        if !needs_netlink || self.opened {
            return None;
        }
        self.opened = true;
        match open_sock_diag() {
            Ok(fd) => {
                let raw = fd.as_raw_fd();
                self.nl = Some(fd);
                Some(raw)
            }
            Err(e) => {
                info!("sos-backlog: no NETLINK_SOCK_DIAG socket ({e}); TCP backlogs will be read from /proc/net, unix ones cannot be measured");
                None
            }
        }
    }

    /// The watched listener.
    pub fn watch(&self) -> Option<&Watch> {
        self.watch.as_ref()
    }

    /// The cached socket inode of a [`Watch::UnixPath`] listener.
    #[cfg(test)]
    pub fn found_inode(&self) -> Option<u64> {
        self.found_inode
    }

    /// Starts one measurement. A request still unanswered from the previous one is dropped
    /// (its late answer is recognised by its sequence number and ignored).
    pub fn start(&mut self) -> Progress {
        if self.query.take().is_some() {
            debug!("sos-backlog: the previous measurement got no answer; dropping it");
        }
        enum Plan {
            Inode(u64),
            Search(PathBuf),
            Tcp(u16),
        }
        let plan = match &self.watch {
            None => return Progress::Done(None),
            Some(Watch::HeldTcp(fd)) => return Progress::Done(tcp_listener(*fd)),
            Some(Watch::UnixInode(ino)) => Plan::Inode(*ino),
            Some(Watch::UnixPath(p)) => match self.found_inode {
                Some(ino) => Plan::Inode(ino),
                // Only until the socket is found: one clone per program start.
                None => Plan::Search(p.clone()),
            },
            Some(Watch::TcpPort(port)) => Plan::Tcp(*port),
        };
        match plan {
            Plan::Inode(ino) => self.ask_unix_inode(ino),
            Plan::Search(path) => self.ask_unix_search(&path),
            Plan::Tcp(port) if self.nl.is_some() && self.inet_diag => {
                self.ask_tcp(port, false, None)
            }
            Plan::Tcp(port) => Progress::Done(self.proc_tcp(port)),
        }
    }

    /// Reads whatever the kernel has queued (until it would block). `Some(result)` when this
    /// finished the measurement in flight.
    pub fn on_readable(&mut self) -> Option<Option<u32>> {
        let fd = self.nl.as_ref()?.as_raw_fd();
        let mut result = None;
        loop {
            // SAFETY: recv(2) into our own buffer of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    // The socket overran: whatever was in flight is lost.
                    Some(libc::ENOBUFS) => {
                        if self.query.take().is_some() {
                            result = Some(None);
                        }
                        continue;
                    }
                    _ => {
                        debug!("sos-backlog: netlink receive failed: {e}");
                        if self.query.take().is_some() {
                            result = Some(None);
                        }
                        break;
                    }
                }
            }
            if n == 0 {
                break;
            }
            if let Some(r) = self.absorb(n as usize) {
                result = Some(r);
            }
        }
        result
    }

    /// Handles one datagram of `n` bytes in the receive buffer.
    fn absorb(&mut self, n: usize) -> Option<Option<u32>> {
        // Moved out for the walk so the handlers can update `self`; no allocation.
        let buf = std::mem::take(&mut self.buf);
        let mut result = None;
        for m in messages(&buf[..n.min(buf.len())]) {
            let Some(q) = self.query else {
                break;
            };
            if m.seq != q.seq() {
                continue;
            }
            if let Some(r) = self.on_message(q, &m) {
                self.query = None;
                result = Some(r);
            }
        }
        self.buf = buf;
        result
    }

    /// One message answering `q`; `Some(result)` when the measurement is over.
    fn on_message(&mut self, q: Query, m: &Message<'_>) -> Option<Option<u32>> {
        match m.ty {
            t if t == libc::NLMSG_ERROR as u16 => {
                let errno = u32_at(m.payload, 0).map_or(0, |e| (e as i32).wrapping_neg());
                match q {
                    Query::UnixInode { .. } => {
                        // ENOENT: the socket is gone (the program closed or re-bound it).
                        debug!("sos-backlog: unix socket lookup failed (errno {errno}); searching again next time");
                        self.found_inode = None;
                    }
                    Query::UnixSearch { .. } => {
                        debug!("sos-backlog: unix socket dump failed (errno {errno})");
                    }
                    Query::Tcp { .. } if errno == libc::EBUSY => {}
                    Query::Tcp { .. } => {
                        info!("sos-backlog: the kernel cannot dump TCP sockets (errno {errno}); reading /proc/net/tcp from now on");
                        self.inet_diag = false;
                    }
                }
                Some(None)
            }
            t if t == libc::NLMSG_DONE as u16 => match q {
                Query::Tcp {
                    port,
                    v6: false,
                    best,
                    ..
                } => match self.ask_tcp(port, true, best) {
                    Progress::Pending => None,
                    Progress::Done(_) => Some(best),
                },
                Query::Tcp { best, .. } => Some(best),
                Query::UnixSearch { .. } | Query::UnixInode { .. } => Some(None),
            },
            SOCK_DIAG_BY_FAMILY => match q {
                Query::UnixInode { .. } => {
                    let (state, _, rqlen) = unix_diag_fields(m.payload)?;
                    if state != TCP_LISTEN {
                        self.found_inode = None;
                        return Some(None);
                    }
                    Some(rqlen)
                }
                Query::UnixSearch { dev, ino, .. } => {
                    let (state, sock_ino, _) = unix_diag_fields(m.payload)?;
                    if state != TCP_LISTEN || unix_diag_vfs(m.payload) != Some((ino, dev)) {
                        return None;
                    }
                    debug!("sos-backlog: the program's unix listener is socket inode {sock_ino}");
                    self.found_inode = Some(sock_ino);
                    // The rest of the dump is drained and ignored.
                    Some(unix_diag_fields(m.payload).and_then(|(_, _, r)| r))
                }
                Query::Tcp {
                    seq,
                    port,
                    v6,
                    best,
                } => {
                    if let Some(n) = inet_diag_rqueue(m.payload, port) {
                        self.query = Some(Query::Tcp {
                            seq,
                            port,
                            v6,
                            best: Some(best.map_or(n, |b| b.max(n))),
                        });
                    }
                    None
                }
            },
            _ => None,
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn ask_unix_inode(&mut self, ino: u64) -> Progress {
        let Ok(ino32) = u32::try_from(ino) else {
            return Progress::Done(None);
        };
        let seq = self.next_seq();
        let len = unix_request(&mut self.req, seq, false, ino32, UDIAG_SHOW_RQLEN);
        self.send(len, Query::UnixInode { seq })
    }

    fn ask_unix_search(&mut self, path: &Path) -> Progress {
        let Some((dev, ino)) = file_id(path) else {
            debug!(
                "sos-backlog: {} does not exist (yet); nothing to measure",
                path.display()
            );
            return Progress::Done(None);
        };
        let seq = self.next_seq();
        let len = unix_request(
            &mut self.req,
            seq,
            true,
            0,
            UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN,
        );
        self.send(len, Query::UnixSearch { seq, dev, ino })
    }

    fn ask_tcp(&mut self, port: u16, v6: bool, best: Option<u32>) -> Progress {
        let seq = self.next_seq();
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let len = inet_request(&mut self.req, seq, family as u8, port);
        self.send(
            len,
            Query::Tcp {
                seq,
                port,
                v6,
                best,
            },
        )
    }

    fn send(&mut self, len: usize, q: Query) -> Progress {
        let Some(fd) = self.nl.as_ref().map(AsRawFd::as_raw_fd) else {
            return Progress::Done(None);
        };
        // SAFETY: sockaddr_nl is plain old data; all-zero addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto(2) from our request buffer (len <= REQ_MAX) to a valid address.
        let n = unsafe {
            libc::sendto(
                fd,
                self.req.as_ptr().cast(),
                len,
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            debug!(
                "sos-backlog: netlink request failed: {}",
                io::Error::last_os_error()
            );
            return Progress::Done(None);
        }
        self.query = Some(q);
        Progress::Pending
    }

    /// The /proc fallback for TCP: bounded reads into one reused buffer.
    fn proc_tcp(&mut self, port: u16) -> Option<u32> {
        let mut found: Option<u32> = None;
        for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
            self.proc_text.clear();
            let Ok(file) = File::open(f) else {
                continue;
            };
            if file
                .take(PROC_CAP)
                .read_to_string(&mut self.proc_text)
                .is_err()
            {
                continue;
            }
            if let Some(n) = parse_proc_tcp(&self.proc_text, port) {
                found = Some(found.map_or(n, |b| b.max(n)));
            }
        }
        found
    }
}

fn open_sock_diag() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new descriptor that we own.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The (kernel-encoded device, inode) of the file at `path`, as unix_diag reports a bound
/// socket's file (the inode truncated to 32 bits, like the kernel's field).
fn file_id(path: &Path) -> Option<(u32, u32)> {
    let md = std::fs::metadata(path).ok()?;
    let dev = md.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Some(((major << 20) | (minor & 0xf_ffff), md.ino() as u32))
}

/// The accept-queue length of a listening TCP socket.
pub fn tcp_listener(fd: RawFd) -> Option<u32> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // TCP_INFO fails on a unix socket, and a non-listening TCP socket reports its unacked
    // segments: only a LISTEN state counts.
    (r == 0 && info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
}

/// The socket inode of `fd` (when it is a socket).
pub fn socket_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: stat is plain old data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) on a descriptor with a valid out pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    ((st.st_mode & libc::S_IFMT) == libc::S_IFSOCK).then_some(st.st_ino)
}

#[cfg(test)]
mod tests;
