//! The config channel: pushed config frames, of which only the newest matters.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use uwsgi_proto::{config, Status};

use super::{fd_source, peek_first_frame, recv_nonblocking, wait_readable};

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

fd_source!(
    ConfigChannel,
    "Registers the config channel with a `mio::Poll` (drain with [`ConfigChannel::poll_newest`])."
);
