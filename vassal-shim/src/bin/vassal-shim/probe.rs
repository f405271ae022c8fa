//! Non-blocking readiness / health probes: TCP or unix connect, HTTP GET expecting 2xx.
//!
//! A probe allocates nothing: the HTTP request is built once per program start by
//! [`http_request`] and lent to [`Probe::on_event`], the response is read into a fixed buffer.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

use vassal_shim::wire::http_status_ok;

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

/// How much of an HTTP response is read to find its status line.
const RESPONSE_MAX: usize = 4096;

/// One probe in flight.
#[derive(Debug)]
pub struct Probe {
    stream: Stream,
    http: bool,
    sent: usize,
    response: [u8; RESPONSE_MAX],
    got: usize,
    connected: bool,
    pub deadline: Instant,
}

/// Writes into `out` (cleared first) the request an HTTP probe of `target` sends; nothing for
/// other targets.
pub fn http_request(target: &Ready, out: &mut Vec<u8>) {
    out.clear();
    if let Ready::Http { host, path, .. } = target {
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: vassal-shim\r\nConnection: close\r\n\r\n"
        );
    }
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
        let (stream, http) = match target {
            Ready::Tcp(addr) => (Stream::Tcp(TcpStream::connect(*addr)?), false),
            Ready::Unix(path) => (Stream::Unix(UnixStream::connect(path)?), false),
            Ready::Http { addr, .. } => (Stream::Tcp(TcpStream::connect(*addr)?), true),
            Ready::Immediate | Ready::Notify => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "nothing to probe",
                ))
            }
        };
        let mut p = Probe {
            stream,
            http,
            sent: 0,
            response: [0; RESPONSE_MAX],
            got: 0,
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

    /// Drives the probe after a readiness event; `request` is what [`http_request`] made for
    /// the probed target. `Some(result)` when finished.
    pub fn on_event(&mut self, request: &[u8]) -> Option<bool> {
        match self.step(request) {
            Ok(r) => r,
            Err(_) => Some(false),
        }
    }

    fn step(&mut self, req: &[u8]) -> io::Result<Option<bool>> {
        if !self.connected {
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            if !self.stream.connected()? {
                return Ok(None);
            }
            self.connected = true;
        }
        if !self.http {
            return Ok(Some(true));
        }
        while self.sent < req.len() {
            match self.stream.write(&req[self.sent..]) {
                Ok(0) => return Ok(Some(false)),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        loop {
            if self.got == RESPONSE_MAX {
                // No status line in the first RESPONSE_MAX bytes.
                return Ok(Some(false));
            }
            match self.stream.read(&mut self.response[self.got..]) {
                Ok(0) => {
                    let head = &self.response[..self.got];
                    return Ok(Some(http_status_ok(head).unwrap_or(false)));
                }
                Ok(n) => {
                    self.got += n;
                    if let Some(ok) = http_status_ok(&self.response[..self.got]) {
                        return Ok(Some(ok));
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

    #[test]
    fn request_is_built_once_per_target() {
        let mut out = b"stale".to_vec();
        let t = Ready::Http {
            addr: "127.0.0.1:8080".parse().unwrap(),
            host: "example:8080".into(),
            path: "/healthz".into(),
        };
        http_request(&t, &mut out);
        assert_eq!(
            out,
            b"GET /healthz HTTP/1.0\r\nHost: example:8080\r\nUser-Agent: vassal-shim\r\nConnection: close\r\n\r\n"
        );
        http_request(&Ready::Tcp("127.0.0.1:1".parse().unwrap()), &mut out);
        assert!(out.is_empty());
    }

    /// A real HTTP exchange, driven by readiness like the runtime does.
    fn probe_against(reply: &'static [u8]) -> Option<bool> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let n = c.read(&mut req).unwrap();
            c.write_all(reply).unwrap();
            req[..n].to_vec()
        });
        let target = Ready::Http {
            addr,
            host: "h".into(),
            path: "/p".into(),
        };
        let mut request = Vec::new();
        http_request(&target, &mut request);
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut p = Probe::start(&target, poll.registry(), Token(0), deadline).unwrap();
        let result = loop {
            poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
                .unwrap();
            assert!(!events.is_empty(), "no readiness within 10 s");
            if let Some(r) = p.on_event(&request) {
                break Some(r);
            }
        };
        p.close(poll.registry());
        let seen = server.join().unwrap();
        assert!(seen.starts_with(b"GET /p HTTP/1.0\r\nHost: h\r\n"));
        result
    }

    #[test]
    fn http_probe_reads_the_status_line() {
        assert_eq!(probe_against(b"HTTP/1.0 200 OK\r\n\r\nhi"), Some(true));
        assert_eq!(probe_against(b"HTTP/1.0 500 No\r\n\r\n"), Some(false));
        // Closed before a whole status line.
        assert_eq!(probe_against(b"HTTP/1.0 20"), Some(false));
        // No line end within the response buffer.
        assert_eq!(probe_against(&[b'x'; RESPONSE_MAX + 10]), Some(false));
    }
}
