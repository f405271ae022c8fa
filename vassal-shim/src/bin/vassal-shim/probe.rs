//! Non-blocking readiness / health probes: TCP or unix connect, HTTP GET expecting 2xx.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

use crate::options::Ready;

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
        }
    }
    fn connected(&self) -> io::Result<bool> {
        let r = match self {
            Stream::Tcp(s) => s.peer_addr().map(|_| ()),
            Stream::Unix(s) => s.peer_addr().map(|_| ()),
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One probe in flight.
#[derive(Debug)]
pub struct Probe {
    stream: Stream,
    request: Option<Vec<u8>>,
    sent: usize,
    response: Vec<u8>,
    connected: bool,
    pub deadline: Instant,
}

/// The outcome of an HTTP status line: `Some(ok)` once the line is complete.
pub fn http_status_ok(buf: &[u8]) -> Option<bool> {
    let end = buf.windows(2).position(|w| w == b"\r\n").or_else(|| {
        // Tolerate bare LF.
        buf.iter().position(|&b| b == b'\n')
    })?;
    let line = String::from_utf8_lossy(&buf[..end]);
    let mut parts = line.split_whitespace();
    let proto = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    Some(
        proto.starts_with("HTTP/")
            && code.len() == 3
            && code.starts_with('2')
            && code.bytes().all(|b| b.is_ascii_digit()),
    )
}

impl Probe {
    /// Starts a probe of `target`. `Err` means it failed at once (connection refused, no such
    /// socket...).
    pub fn start(
        target: &Ready,
        registry: &Registry,
        token: Token,
        deadline: Instant,
    ) -> io::Result<Probe> {
        let (stream, request) = match target {
            Ready::Tcp(addr) => (Stream::Tcp(TcpStream::connect(*addr)?), None),
            Ready::Unix(path) => (Stream::Unix(UnixStream::connect(path)?), None),
            Ready::Http { addr, host, path } => (
                Stream::Tcp(TcpStream::connect(*addr)?),
                Some(
                    format!(
                        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: vassal-shim\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                ),
            ),
            Ready::Immediate | Ready::Notify => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "nothing to probe"))
            }
        };
        let mut p = Probe {
            stream,
            request,
            sent: 0,
            response: Vec::new(),
            connected: false,
            deadline,
        };
        registry.register(
            p.stream.source(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(p)
    }

    /// Drives the probe after a readiness event. `Some(result)` when finished.
    pub fn on_event(&mut self) -> Option<bool> {
        match self.step() {
            Ok(r) => r,
            Err(_) => Some(false),
        }
    }

    fn step(&mut self) -> io::Result<Option<bool>> {
        if !self.connected {
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            if !self.stream.connected()? {
                return Ok(None);
            }
            self.connected = true;
        }
        let Some(req) = &self.request else {
            return Ok(Some(true));
        };
        while self.sent < req.len() {
            match self.stream.write(&req[self.sent..]) {
                Ok(0) => return Ok(Some(false)),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(Some(http_status_ok(&self.response).unwrap_or(false))),
                Ok(n) => {
                    self.response.extend_from_slice(&buf[..n]);
                    if let Some(ok) = http_status_ok(&self.response) {
                        return Ok(Some(ok));
                    }
                    if self.response.len() > 4096 {
                        return Ok(Some(false));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Deregisters and closes the probe connection.
    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(self.stream.source());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn status_parser_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = http_status_ok(&data);
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(http_status_ok(b"HTTP/1.0 200 OK\r\n"), Some(true));
        assert_eq!(
            http_status_ok(b"HTTP/1.1 204 No Content\r\nX: y"),
            Some(true)
        );
        assert_eq!(http_status_ok(b"HTTP/1.1 503 Busy\r\n"), Some(false));
        assert_eq!(http_status_ok(b"HTTP/1.1 2000 x\r\n"), Some(false));
        assert_eq!(http_status_ok(b"garbage\n"), Some(false));
        assert_eq!(http_status_ok(b"HTTP/1.1 200"), None);
    }
}
