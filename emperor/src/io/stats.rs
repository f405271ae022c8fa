//! The stats server (`--emperor-stats`): a unix or TCP listener whose clients get the stats
//! JSON (raw, or as an HTTP response with `--emperor-stats-http`, where the request's path
//! picks the document: see [`super::http`]), each within [`CLIENT_TIMEOUT`].
//!
//! Bounded: at most [`ACCEPT_BATCH`] connections are accepted per turn (the rest at the next
//! turn: the listener is edge-triggered), at most [`MAX_STATS_CLIENTS`] are served at once (a
//! new one evicts the oldest), and none that would leave fewer than [`FD_RESERVE`]
//! descriptors for spawns and channels.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Token};
use tracing::{debug, warn};

use super::addr::{AddrError, BindAddr};
use super::http::Route;
use super::registry::Owner;
use super::source::Cx;
use crate::core::garbage::{LogLimit, WARN_INTERVAL};

/// A stats client that has not been served within this is dropped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most stats clients served at once; a new one evicts the oldest.
pub const MAX_STATS_CLIENTS: usize = 64;
/// Stats connections accepted per turn of the loop (the rest at the next turn).
pub const ACCEPT_BATCH: usize = 256;
/// File descriptors kept free for spawns and channels: a stats connection that would leave
/// fewer replaces the oldest client (or is closed, with none to replace).
pub const FD_RESERVE: u64 = 64;
/// Largest stats request read (`--stats-http`); a client sending more is answered anyway.
pub const MAX_REQUEST: usize = 4096;

/// Why the stats socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address is not understood (see [`super::addr`]).
    #[error("bad stats address: {0}")]
    Address(#[from] AddrError),
    /// Binding or watching failed.
    #[error("cannot bind stats on {addr}: {err}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// Why.
        err: io::Error,
    },
}

#[derive(Debug)]
enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

#[derive(Debug)]
pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }
    fn fd(&self) -> i32 {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

#[derive(Debug)]
struct Client {
    stream: Stream,
    token: Token,
    request: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    reading: bool,
    deadline: Instant,
}

/// The listener and its clients.
#[derive(Debug)]
pub struct StatsServer {
    listener: Listener,
    http: bool,
    clients: HashMap<u64, Client>,
    /// Client keys by age (oldest first), for eviction.
    order: VecDeque<u64>,
    next: u64,
    /// The listener may still have connections queued (an accept batch ran out).
    pending: bool,
    fd_limit: u64,
    refused: LogLimit,
    /// `GET /events` subscribers.
    subs: events::Subscribers,
}

impl StatsServer {
    /// Binds `addr` (`host:port`, `:port`, or a unix socket path relative to `cwd`) and
    /// watches it; `http` answers HTTP requests instead of writing the JSON at once.
    pub fn bind(
        addr: &str,
        cwd: &Path,
        http: bool,
        cx: &mut Cx<'_>,
    ) -> Result<StatsServer, BindError> {
        let mut listener = bind(addr, cwd)?;
        let src: &mut dyn mio::event::Source = match &mut listener {
            Listener::Unix(u, _) => u,
            Listener::Tcp(t) => t,
        };
        cx.register(src, Owner::Stats, Interest::READABLE)
            .map_err(|err| BindError::Bind {
                addr: addr.to_string(),
                err,
            })?;
        Ok(StatsServer {
            listener,
            http,
            clients: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            pending: false,
            fd_limit: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024),
            refused: LogLimit::default(),
            subs: events::Subscribers::default(),
        })
    }

    /// Connections may be left to accept: the next turn must not sleep.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Clears [`StatsServer::pending`], returning it.
    pub fn take_pending(&mut self) -> bool {
        std::mem::take(&mut self.pending)
    }

    /// The earliest client deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().map(|c| c.deadline).min()
    }

    /// Clients being served.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Accepts up to [`ACCEPT_BATCH`] connections; `render` gives the document a route asks for.
    pub fn on_accept(&mut self, cx: &mut Cx<'_>, render: &dyn Fn(Route) -> String) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match &self.listener {
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE included: the connection stays queued; the next one (or
                    // the next turn) tries again once descriptors are free.
                    debug!("stats accept failed: {e}");
                    return;
                }
            };
            if let Some(key) = self.admit(stream, cx, render) {
                self.on_client(key, cx, render);
            }
        }
        self.pending = true;
    }

    /// Makes room for a new client (evicting the oldest) and watches it; `None` when it was
    /// closed for want of descriptors or could not be watched.
    fn admit(
        &mut self,
        stream: Stream,
        cx: &mut Cx<'_>,
        render: &dyn Fn(Route) -> String,
    ) -> Option<u64> {
        // Descriptors are allocated lowest first, so every one below this is in use.
        let short = u64::try_from(stream.fd()).unwrap_or(u64::MAX) + FD_RESERVE >= self.fd_limit;
        if short {
            if let Some(more) = self.refused.hit(Instant::now(), WARN_INTERVAL, 1) {
                warn!(
                    "stats: fewer than {FD_RESERVE} of {} file descriptors would be left for vassals: dropping the {} stats client (raise RLIMIT_NOFILE, `ulimit -n`){}",
                    self.fd_limit,
                    if self.clients.is_empty() { "new" } else { "oldest" },
                    if more > 0 {
                        format!("; {more} more dropped since the last line")
                    } else {
                        String::new()
                    }
                );
            }
            if self.clients.is_empty() {
                return None;
            }
        }
        // Short of descriptors, the new client takes the place of the oldest.
        let cap = if short {
            self.clients.len()
        } else {
            MAX_STATS_CLIENTS
        };
        while self.clients.len() >= cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(mut c) = self.clients.remove(&old) {
                debug!("stats clients: dropping the oldest");
                cx.deregister(c.stream.source(), c.token);
            }
        }
        let key = self.next;
        self.next = self.next.wrapping_add(1);
        let reading = self.http;
        let mut stream = stream;
        let interest = if reading {
            Interest::READABLE
        } else {
            Interest::WRITABLE
        };
        let token = cx
            .register(stream.source(), Owner::StatsClient(key), interest)
            .ok()?;
        let out = if reading {
            Vec::new()
        } else {
            render(Route::Json).into_bytes()
        };
        self.clients.insert(
            key,
            Client {
                stream,
                token,
                request: Vec::new(),
                out,
                sent: 0,
                reading,
                deadline: Instant::now() + CLIENT_TIMEOUT,
            },
        );
        self.order.push_back(key);
        Some(key)
    }

    /// Event subscribers (`GET /events`).
    pub fn subscribers(&self) -> usize {
        self.subs.len()
    }

    /// Sends one lifecycle note (its JSON) to every event subscriber.
    pub fn publish(&mut self, json: &str, cx: &mut Cx<'_>) {
        self.subs.publish(json, cx);
    }

    /// Serves client `key`: reads its request (HTTP), then writes the document, or makes it
    /// an event subscriber (`GET /events`).
    pub fn on_client(&mut self, key: u64, cx: &mut Cx<'_>, render: &dyn Fn(Route) -> String) {
        if self.subs.has(key) {
            self.subs.ready(key, cx);
            return;
        }
        let Some(mut c) = self.clients.remove(&key) else {
            return;
        };
        let mut done = false;
        if c.reading {
            done = read_request(&mut c);
            if !c.reading && !done && is_events(&c.request) {
                self.order.retain(|k| *k != key);
                self.subs.add(key, c.stream, c.token, cx);
                return;
            }
            if !c.reading && !done {
                let route = super::http::route(&c.request);
                c.out = super::http::response(route, &render(route)).into_bytes();
                let _ = cx.reregister(c.stream.source(), c.token, Interest::WRITABLE);
            }
        }
        if !c.reading && !done {
            done = write_out(&mut c);
        }
        if done {
            cx.deregister(c.stream.source(), c.token);
            self.order.retain(|k| *k != key);
        } else {
            self.clients.insert(key, c);
        }
    }

    /// Drops the clients not served by their deadline.
    pub fn expire(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let expired: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some(mut c) = self.clients.remove(&k) {
                debug!("dropping a slow stats client");
                cx.deregister(c.stream.source(), c.token);
            }
        }
        if self.order.len() != self.clients.len() {
            self.order.retain(|k| self.clients.contains_key(k));
        }
    }

    /// Removes the unix socket file.
    pub fn cleanup(&self) {
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads what the client sent until the end of its request (or EOF, or [`MAX_REQUEST`]);
/// `true` when the client failed.
fn read_request(c: &mut Client) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.reading = false;
                return false;
            }
            Ok(n) => {
                c.request.extend_from_slice(&buf[..n]);
                if c.request.len() >= MAX_REQUEST || c.request.windows(4).any(|w| w == b"\r\n\r\n")
                {
                    c.reading = false;
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// True for a `GET /events` request (`/events?...` included).
fn is_events(request: &[u8]) -> bool {
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, target) = (words.next(), words.next().unwrap_or_default());
    method == Some(b"GET") && (target == b"/events" || target.starts_with(b"/events?"))
}

/// Writes what is left of the answer; `true` once it is all written or the client failed.
fn write_out(c: &mut Client) -> bool {
    while c.sent < c.out.len() {
        match c.stream.write(&c.out[c.sent..]) {
            Ok(0) => return true,
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    c.sent >= c.out.len()
}

fn bind(addr: &str, cwd: &Path) -> Result<Listener, BindError> {
    let bind_err = |addr: String| move |err| BindError::Bind { addr, err };
    match super::addr::parse(addr, cwd, super::addr::ANY)? {
        BindAddr::Inet(sa) => {
            let l = TcpListener::bind(sa).map_err(bind_err(addr.to_string()))?;
            Ok(Listener::Tcp(l))
        }
        BindAddr::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).map_err(bind_err(path.display().to_string()))?;
            Ok(Listener::Unix(l, path))
        }
    }
}

mod events;
#[cfg(test)]
mod tests;
