//! The emperor channel and the config channel, seen from the vassal.
//!
//! The emperor hands a vassal one end of a stream socketpair and its number in
//! `UWSGI_EMPEROR_FD`; every message is one byte (see [`uwsgi_proto::channel`]). When the
//! instance carries config content, a second socketpair (`UWSGI_EMPEROR_FD_CONFIG`) carries
//! config frames: a uwsgi header with modifier1 115 and the config text. A uWSGI 2.0 emperor
//! pushes a frame on start, on every reload and on every config request (byte 2), so several
//! frames may be queued: [`ConfigChannel`] always keeps the newest.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use uwsgi_proto::{config, EmperorMsg, Status, VassalMsg};

/// The variable holding the emperor channel's fd number.
pub const ENV_EMPEROR_FD: &str = "UWSGI_EMPEROR_FD";
/// The variable holding the config channel's fd number (only for pushed configs).
pub const ENV_EMPEROR_FD_CONFIG: &str = "UWSGI_EMPEROR_FD_CONFIG";

/// Largest config frame: a 4-byte header and a 65535-byte body.
const MAX_FRAME: usize = uwsgi_proto::HEADER_LEN + uwsgi_proto::MAX_BODY;

/// What the emperor told the vassal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// Byte 0: stop now.
    Stop,
    /// Byte 2: stop gracefully (`--emperor-graceful-shutdown`).
    GracefulStop,
    /// Byte 1: reload (the config changed, or the emperor got SIGHUP).
    Reload,
    /// The emperor closed the channel (it died or let the vassal go): exit promptly.
    Eof,
    /// A byte the protocol does not define; ignore it.
    Unknown(u8),
}

impl From<EmperorMsg> for Event {
    fn from(m: EmperorMsg) -> Self {
        match m {
            EmperorMsg::Stop => Event::Stop,
            EmperorMsg::Reload => Event::Reload,
            EmperorMsg::GracefulStop => Event::GracefulStop,
            EmperorMsg::Unknown(b) => Event::Unknown(b),
        }
    }
}

/// Why the channel could not be set up from the environment.
#[derive(Debug)]
pub enum Error {
    /// The variable is set but is not a usable fd number.
    BadFd {
        /// The variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is unusable.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadFd { var, value, reason } => {
                write!(
                    f,
                    "{var}={value:?} is not a usable file descriptor: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

fn fd_from_env(var: &'static str) -> Result<Option<OwnedFd>, Error> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    let value = value.to_string_lossy().into_owned();
    let bad = |reason: String| Error::BadFd {
        var,
        value: value.clone(),
        reason,
    };
    let fd: RawFd = value
        .trim()
        .parse()
        .map_err(|_| bad("not a decimal number".into()))?;
    if fd < 0 {
        return Err(bad("negative".into()));
    }
    // SAFETY: F_GETFD only queries the descriptor table; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(io::Error::last_os_error().to_string()));
    }
    // SAFETY: the emperor handed this descriptor to us for our exclusive use and it is open
    // (checked above); nothing else in the process owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Sets or clears FD_CLOEXEC.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we borrow; no memory is involved.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes (`None` = forever). Ok(false) on timeout.
/// Whether a write to `fd` would not block right now (poll(2) with a zero timeout).
fn writable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd on the stack, count 1, no waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond remainder does not spin.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// recv(2) without blocking and without touching the fd's flags; falls back to read(2) when
/// the fd is not a socket (a pipe handed over by some other supervisor).
fn recv_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8], peek: bool) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOTSOCK) if !peek => {
                if !wait_readable(fd, Some(Duration::ZERO))? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                // SAFETY: as above; poll said a read will not block.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n >= 0 {
                    return Ok(n as usize);
                }
                return Err(io::Error::last_os_error());
            }
            _ => return Err(e),
        }
    }
}

/// Looks at the first config frame queued on `fd` without consuming it (see
/// [`ConfigChannel::peek_first`]); usable on a descriptor that must stay untouched for a
/// program exec'd later.
pub fn peek_first_frame(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let n = match recv_nonblocking(fd, &mut buf, true) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        match config::decode(&buf[..n]) {
            Ok(Status::Complete((body, _))) => return Ok(Some(body.to_vec())),
            Ok(Status::Partial { .. }) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        if n == 0 {
            if !wait_readable(fd, Some(left))? {
                return Ok(None);
            }
        } else {
            // Part of a frame is queued, so the fd stays readable: poll cannot wait for the
            // rest. The emperor writes header and body back to back; look again shortly.
            std::thread::sleep(left.min(Duration::from_millis(2)));
        }
    }
}

/// The emperor channel of a vassal, and its config channel when there is one.
#[derive(Debug)]
pub struct Vassal {
    fd: OwnedFd,
    config: Option<ConfigChannel>,
    eof: bool,
    pending: std::collections::VecDeque<Event>,
}

impl Vassal {
    /// Builds the channel from `UWSGI_EMPEROR_FD` (and `UWSGI_EMPEROR_FD_CONFIG` when set).
    /// `Ok(None)` when the process was not started by an emperor. The variables are left in
    /// place and the fds keep their close-on-exec flag (uWSGI keeps both across its own
    /// re-exec); use [`Vassal::set_cloexec`] before starting other programs.
    pub fn from_env() -> Result<Option<Vassal>, Error> {
        let Some(fd) = fd_from_env(ENV_EMPEROR_FD)? else {
            return Ok(None);
        };
        let config = fd_from_env(ENV_EMPEROR_FD_CONFIG)?;
        Ok(Some(Vassal::new(fd, config)))
    }

    /// Builds the channel from fds obtained some other way (a socketpair in tests, fds passed
    /// by a proxy).
    pub fn new(fd: OwnedFd, config: Option<OwnedFd>) -> Vassal {
        Vassal {
            fd,
            config: config.map(ConfigChannel::new),
            eof: false,
            pending: Default::default(),
        }
    }

    /// Sets close-on-exec on both fds (`true`: programs this process starts do not inherit
    /// them) or clears it (`false`: a re-exec of this program keeps them).
    pub fn set_cloexec(&self, on: bool) -> io::Result<()> {
        set_cloexec(self.fd.as_fd(), on)?;
        if let Some(c) = &self.config {
            set_cloexec(c.fd.as_fd(), on)?;
        }
        Ok(())
    }

    /// Writes one message byte. A broken channel is reported as an error (never SIGPIPE).
    /// Waits while the channel is full (an emperor that does not read); see
    /// [`Vassal::try_send`] for event loops.
    pub fn send(&self, msg: VassalMsg) -> io::Result<()> {
        self.send_byte(msg, false)
    }

    /// Like [`Vassal::send`] but never waits: when the channel is full (the emperor is not
    /// reading), fails at once with [`io::ErrorKind::WouldBlock`] and the byte is not sent.
    pub fn try_send(&self, msg: VassalMsg) -> io::Result<()> {
        self.send_byte(msg, true)
    }

    fn send_byte(&self, msg: VassalMsg, nonblocking: bool) -> io::Result<()> {
        let b = [msg.to_byte()];
        let flags = libc::MSG_NOSIGNAL | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: a one-byte buffer on the stack; MSG_NOSIGNAL turns EPIPE into an error.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), b.as_ptr().cast(), 1, flags) };
            if n == 1 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOTSOCK) => {
                    // A pipe has no per-call flag: write only when a byte fits now.
                    if nonblocking && !writable_now(self.fd.as_fd())? {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    // SAFETY: as above, plain write(2) for a pipe.
                    let n = unsafe { libc::write(self.fd.as_raw_fd(), b.as_ptr().cast(), 1) };
                    if n == 1 {
                        return Ok(());
                    }
                    return Err(io::Error::last_os_error());
                }
                _ if n == 0 => return Err(io::ErrorKind::WriteZero.into()),
                _ => return Err(e),
            }
        }
    }

    /// Byte 1: initialised (the emperor logs "has been spawned").
    pub fn ready(&self) -> io::Result<()> {
        self.send(VassalMsg::Ready)
    }
    /// Byte 5: accepting requests.
    pub fn accepting(&self) -> io::Result<()> {
        self.send(VassalMsg::Accepting)
    }
    /// Byte 17: loyal (served a request / healthy); lifts the emperor's blacklist.
    pub fn loyal(&self) -> io::Result<()> {
        self.send(VassalMsg::Loyal)
    }
    /// Byte 26: heartbeat. Once one is sent the emperor kills a vassal that goes silent for
    /// `--emperor-required-heartbeat` seconds, so keep sending them.
    pub fn heartbeat(&self) -> io::Result<()> {
        self.send(VassalMsg::Heartbeat)
    }
    /// Byte 30: SOS, ask a broodlord emperor for reinforcements (a zerg).
    pub fn sos(&self) -> io::Result<()> {
        self.send(VassalMsg::Sos)
    }
    /// Byte 22: idle, stop me (an on-demand vassal goes back to waiting on its socket).
    pub fn stop_me(&self) -> io::Result<()> {
        self.send(VassalMsg::StopMe)
    }
    /// Byte 2: push my config again (only meaningful with a config channel).
    pub fn request_config(&self) -> io::Result<()> {
        self.send(VassalMsg::ConfigRequest)
    }

    /// Whether the emperor closed the channel.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// The next event if one is available, without blocking. After EOF, returns
    /// `Some(Event::Eof)` every time.
    pub fn try_recv(&mut self) -> io::Result<Option<Event>> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(Some(e));
        }
        if self.eof {
            return Ok(Some(Event::Eof));
        }
        let mut buf = [0u8; 64];
        match recv_nonblocking(self.fd.as_fd(), &mut buf, false) {
            Ok(0) => {
                self.eof = true;
                Ok(Some(Event::Eof))
            }
            Ok(n) => {
                self.pending.extend(
                    buf[..n]
                        .iter()
                        .map(|&b| Event::from(EmperorMsg::from_byte(b))),
                );
                Ok(self.pending.pop_front())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                self.eof = true;
                Ok(Some(Event::Eof))
            }
            Err(e) => Err(e),
        }
    }

    /// Appends every event available now to `out` (drains the socket until it would block).
    /// Stops after EOF, which is appended once.
    pub fn recv_all(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        while let Some(e) = self.try_recv()? {
            out.push(e);
            if e == Event::Eof {
                break;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None` = forever) for the next event.
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> io::Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(e) = self.try_recv()? {
                return Ok(Some(e));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !wait_readable(self.fd.as_fd(), left)? {
                return Ok(None);
            }
        }
    }

    /// The config channel, when the emperor provided one.
    pub fn config(&mut self) -> Option<&mut ConfigChannel> {
        self.config.as_mut()
    }

    /// Takes the config channel out (to poll it separately).
    pub fn take_config(&mut self) -> Option<ConfigChannel> {
        self.config.take()
    }
}

/// Registers the emperor channel with a `mio::Poll` (readable = events to drain with
/// [`Vassal::recv_all`]; mio is edge-triggered, so always drain until nothing is left).
impl mio::event::Source for Vassal {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}

/// Registers the config channel with a `mio::Poll` (drain with [`ConfigChannel::poll_newest`]).
impl mio::event::Source for ConfigChannel {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}

impl AsFd for Vassal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Vassal {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The config channel: a stream of config frames, of which only the newest matters.
#[derive(Debug)]
pub struct ConfigChannel {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Receive buffer of [`ConfigChannel::poll_newest`], made on first use and kept.
    chunk: Vec<u8>,
    latest: Option<Vec<u8>>,
    received: u64,
    eof: bool,
}

impl ConfigChannel {
    /// Wraps a config channel fd.
    pub fn new(fd: OwnedFd) -> ConfigChannel {
        ConfigChannel {
            fd,
            buf: Vec::new(),
            chunk: Vec::new(),
            latest: None,
            received: 0,
            eof: false,
        }
    }

    /// Reads everything available now and returns the newest complete config if at least one
    /// new frame arrived (older queued frames are dropped). `Ok(None)` when nothing new.
    /// A frame with a modifier1 other than 115 desynchronises the stream: it is an error.
    pub fn poll_newest(&mut self) -> io::Result<Option<Vec<u8>>> {
        let before = self.received;
        if self.chunk.is_empty() {
            self.chunk = vec![0u8; 16 * 1024];
        }
        while !self.eof {
            match recv_nonblocking(self.fd.as_fd(), &mut self.chunk, false) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.buf.extend_from_slice(&self.chunk[..n]);
                    self.take_frames()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => self.eof = true,
                Err(e) => return Err(e),
            }
        }
        if self.received > before {
            Ok(self.latest.clone())
        } else {
            Ok(None)
        }
    }

    fn take_frames(&mut self) -> io::Result<()> {
        match config::newest(&self.buf) {
            Ok(Status::Complete((body, used))) => {
                let mut n = 0u64;
                let mut off = 0;
                while off < used {
                    match config::decode(&self.buf[off..]) {
                        Ok(Status::Complete((_, u))) => {
                            off += u;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                self.latest = Some(body.to_vec());
                self.received += n.max(1);
                self.buf.drain(..used);
                Ok(())
            }
            Ok(Status::Partial { .. }) => Ok(()),
            Err(e) => {
                self.buf.clear();
                Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
            }
        }
    }

    /// Waits up to `timeout` for at least one new frame, then keeps draining frames that arrive
    /// within `settle` of the previous one (a uWSGI 2.0 emperor pushes the same config twice
    /// around a reload) and returns the newest. `Ok(None)` on timeout or EOF without a frame.
    pub fn wait_newest(
        &mut self,
        timeout: Duration,
        settle: Duration,
    ) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut got = None;
        loop {
            if let Some(c) = self.poll_newest()? {
                got = Some(c);
            }
            if self.eof {
                return Ok(got);
            }
            let wait = if got.is_some() {
                settle
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            if wait.is_zero() || !wait_readable(self.fd.as_fd(), Some(wait))? {
                return Ok(got);
            }
        }
    }

    /// Looks at the first queued frame without consuming it, waiting up to `timeout` for it to
    /// be complete. Lets a wrapper decide what to do and still hand the untouched channel to
    /// another program. `Ok(None)` on timeout or EOF.
    pub fn peek_first(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        peek_first_frame(self.fd.as_fd(), timeout)
    }

    /// The newest config received so far.
    pub fn latest(&self) -> Option<&[u8]> {
        self.latest.as_deref()
    }

    /// How many frames have been received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether the emperor closed the config channel.
    pub fn is_eof(&self) -> bool {
        self.eof
    }
}

impl AsFd for ConfigChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for ConfigChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (Vassal, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Vassal::new(OwnedFd::from(a), None), b)
    }

    fn with_config() -> (Vassal, UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, d) = UnixStream::pair().unwrap();
        (Vassal::new(OwnedFd::from(a), Some(OwnedFd::from(c))), b, d)
    }

    /// Sends with `try_send` until it refuses; fails if a call does not return within 10 s.
    fn try_send_until_full(v: Vassal) -> (Vassal, usize) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut n = 0;
            let r = loop {
                match v.try_send(VassalMsg::Heartbeat) {
                    Ok(()) => n += 1,
                    Err(e) => break e,
                }
            };
            let _ = tx.send((v, n, r));
        });
        let (v, n, err) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("try_send waited on a full channel");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        (v, n)
    }

    #[test]
    fn try_send_never_waits_on_a_full_channel() {
        let (v, mut emperor) = pair();
        let (v, n) = try_send_until_full(v);
        assert!(n > 0);
        // The emperor reads one byte: there is room again.
        let mut b = [0u8; 1];
        emperor.read_exact(&mut b).unwrap();
        assert_eq!(b[0], 26);
        v.try_send(VassalMsg::Heartbeat).unwrap();

        // A pipe as the channel (some supervisors use one).
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors from pipe2, owned here.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (_v, n) = try_send_until_full(Vassal::new(wr, None));
        assert!(n > 0);
        drop(rd);
    }

    #[test]
    fn sends_the_protocol_bytes() {
        let (v, mut emperor) = pair();
        v.ready().unwrap();
        v.accepting().unwrap();
        v.loyal().unwrap();
        v.heartbeat().unwrap();
        v.sos().unwrap();
        v.stop_me().unwrap();
        v.request_config().unwrap();
        let mut got = [0u8; 7];
        emperor.read_exact(&mut got).unwrap();
        assert_eq!(got, [1, 5, 17, 26, 30, 22, 2]);
    }

    #[test]
    fn receives_events_in_order_then_eof() {
        let (mut v, mut emperor) = pair();
        assert_eq!(v.try_recv().unwrap(), None);
        emperor.write_all(&[1, 2, 0, 9]).unwrap();
        drop(emperor);
        let mut all = Vec::new();
        v.recv_all(&mut all).unwrap();
        assert_eq!(
            all,
            vec![
                Event::Reload,
                Event::GracefulStop,
                Event::Stop,
                Event::Unknown(9),
                Event::Eof
            ]
        );
        assert!(v.is_eof());
        assert_eq!(v.try_recv().unwrap(), Some(Event::Eof));
    }

    #[test]
    fn recv_timeout_times_out_and_wakes() {
        let (mut v, mut emperor) = pair();
        assert_eq!(
            v.recv_timeout(Some(Duration::from_millis(10))).unwrap(),
            None
        );
        emperor.write_all(&[0]).unwrap();
        assert_eq!(v.recv_timeout(None).unwrap(), Some(Event::Stop));
    }

    #[test]
    fn send_after_emperor_gone_is_an_error_not_a_signal() {
        let (v, emperor) = pair();
        drop(emperor);
        assert!(v.heartbeat().is_err());
    }

    fn frame(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        config::encode(text, &mut out).unwrap();
        out
    }

    #[test]
    fn config_keeps_the_newest_of_queued_frames() {
        let (mut v, _e, mut cfg) = with_config();
        let c = v.config().unwrap();
        assert_eq!(c.poll_newest().unwrap(), None);
        cfg.write_all(&frame(b"v1")).unwrap();
        cfg.write_all(&frame(b"v2")).unwrap();
        assert_eq!(c.poll_newest().unwrap().as_deref(), Some(&b"v2"[..]));
        assert_eq!(c.received(), 2);
        assert_eq!(c.poll_newest().unwrap(), None);
        assert_eq!(c.latest(), Some(&b"v2"[..]));
    }

    #[test]
    fn config_frame_split_across_writes() {
        let (mut v, _e, mut cfg) = with_config();
        let c = v.config().unwrap();
        let f = frame(b"[uwsgi]\nsocket = x\n");
        cfg.write_all(&f[..3]).unwrap();
        assert_eq!(c.poll_newest().unwrap(), None);
        cfg.write_all(&f[3..7]).unwrap();
        assert_eq!(c.poll_newest().unwrap(), None);
        cfg.write_all(&f[7..]).unwrap();
        assert_eq!(
            c.poll_newest().unwrap().as_deref(),
            Some(&b"[uwsgi]\nsocket = x\n"[..])
        );
    }

    #[test]
    fn wait_newest_drains_the_double_push() {
        let (mut v, _e, mut cfg) = with_config();
        let c = v.config().unwrap();
        assert_eq!(
            c.wait_newest(Duration::from_millis(10), Duration::ZERO)
                .unwrap(),
            None
        );
        let writer = std::thread::spawn(move || {
            cfg.write_all(&frame(b"old")).unwrap();
            cfg.write_all(&frame(b"new")).unwrap();
            cfg
        });
        let got = c
            .wait_newest(Duration::from_secs(10), Duration::from_millis(200))
            .unwrap();
        let _cfg = writer.join().unwrap();
        // Both frames were written before the writer finished; whatever the interleaving, the
        // newest one wins once everything is drained.
        let newest = c.poll_newest().unwrap().or(got);
        assert_eq!(newest.as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn peek_does_not_consume() {
        let (mut v, _e, mut cfg) = with_config();
        cfg.write_all(&frame(b"[vassal-shim]\nexec = true\n"))
            .unwrap();
        let c = v.config().unwrap();
        let peeked = c.peek_first(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(peeked, b"[vassal-shim]\nexec = true\n");
        assert_eq!(
            c.poll_newest().unwrap().as_deref(),
            Some(&b"[vassal-shim]\nexec = true\n"[..])
        );
    }

    #[test]
    fn garbage_on_config_channel_is_an_error() {
        let (mut v, _e, mut cfg) = with_config();
        cfg.write_all(&[0, 1, 0, 0, b'x']).unwrap();
        let c = v.config().unwrap();
        assert!(c.poll_newest().is_err());
    }

    #[test]
    fn works_as_a_mio_source() {
        let (mut v, mut emperor, mut cfg) = with_config();
        let mut c = v.take_config().unwrap();
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut v, mio::Token(1), mio::Interest::READABLE)
            .unwrap();
        poll.registry()
            .register(&mut c, mio::Token(2), mio::Interest::READABLE)
            .unwrap();
        emperor.write_all(&[1]).unwrap();
        cfg.write_all(&frame(b"cfg")).unwrap();
        let mut events = mio::Events::with_capacity(4);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 2 {
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            seen.extend(events.iter().map(|e| e.token()));
        }
        let mut got = Vec::new();
        v.recv_all(&mut got).unwrap();
        assert_eq!(got, vec![Event::Reload]);
        assert_eq!(c.poll_newest().unwrap().as_deref(), Some(&b"cfg"[..]));
        poll.registry().deregister(&mut v).unwrap();
        poll.registry().deregister(&mut c).unwrap();
    }

    proptest::proptest! {
        /// However the stream is cut into reads, every frame is counted and the newest wins.
        #[test]
        fn newest_frame_whatever_the_chunking(
            configs in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..6),
            cuts in proptest::collection::vec(1usize..200, 1..40),
        ) {
            let (mut v, _e, mut cfg) = with_config();
            let c = v.config().unwrap();
            let mut stream = Vec::new();
            for body in &configs {
                config::encode(body, &mut stream).unwrap();
            }
            let mut off = 0;
            let mut cut = cuts.iter().cycle();
            while off < stream.len() {
                let n = (*cut.next().unwrap()).min(stream.len() - off);
                cfg.write_all(&stream[off..off + n]).unwrap();
                off += n;
                c.poll_newest().unwrap();
            }
            proptest::prop_assert_eq!(c.received(), configs.len() as u64);
            proptest::prop_assert_eq!(c.latest(), Some(configs.last().unwrap().as_slice()));
        }
    }

    #[test]
    fn config_eof() {
        let (mut v, _e, cfg) = with_config();
        drop(cfg);
        let c = v.config().unwrap();
        assert_eq!(c.poll_newest().unwrap(), None);
        assert!(c.is_eof());
    }
}
