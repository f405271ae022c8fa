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

mod config_channel;

pub use config_channel::ConfigChannel;

/// Implements `mio::event::Source` (by delegation to `SourceFd` on the `fd` field), `AsFd` and
/// `AsRawFd` for a channel type.
macro_rules! fd_source {
    ($ty:ty, $doc:literal) => {
        #[doc = $doc]
        impl mio::event::Source for $ty {
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

        impl AsFd for $ty {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.fd.as_fd()
            }
        }

        impl AsRawFd for $ty {
            fn as_raw_fd(&self) -> RawFd {
                self.fd.as_raw_fd()
            }
        }
    };
}
use fd_source;

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
            set_cloexec(c.as_fd(), on)?;
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

fd_source!(
    Vassal,
    "Registers the emperor channel with a `mio::Poll` (readable = events to drain with \
     [`Vassal::recv_all`]; mio is edge-triggered, so always drain until nothing is left)."
);

#[cfg(test)]
mod tests;
