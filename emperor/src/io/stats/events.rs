//! The live event stream (`GET /events` on the HTTP stats server): each subscriber gets a
//! `text/event-stream` answer that stays open, one `data: {json}\n\n` per lifecycle note.
//!
//! Never waited for: each subscriber has a bounded buffer ([`MAX_BUFFERED`]); one that falls
//! behind is dropped with one log line. Subscribers are apart from the plain stats clients:
//! they have no deadline and neither evict nor are evicted by them.

use std::collections::HashMap;
use std::io;

use mio::{Interest, Token};
use tracing::{debug, warn};

use super::Stream;
use crate::io::source::Cx;

/// Bytes a subscriber may leave unread before it is dropped.
pub const MAX_BUFFERED: usize = 256 * 1024;
/// Most subscribers at once (the stats client cap); one more is refused.
pub const MAX_SUBSCRIBERS: usize = super::MAX_STATS_CLIENTS;

const HEADER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";

#[derive(Debug)]
struct Subscriber {
    stream: Stream,
    token: Token,
    out: Vec<u8>,
    sent: usize,
}

impl Subscriber {
    /// Writes what is buffered; `Err` once the subscriber is gone.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.sent > MAX_BUFFERED {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }

    /// Reads and discards what the subscriber sends; `true` at EOF or on an error.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// The subscribers, by stats client key.
#[derive(Debug, Default)]
pub(super) struct Subscribers {
    subs: HashMap<u64, Subscriber>,
}

impl Subscribers {
    /// True when `key` is a subscriber.
    pub(super) fn has(&self, key: u64) -> bool {
        self.subs.contains_key(&key)
    }

    /// How many subscribe.
    pub(super) fn len(&self) -> usize {
        self.subs.len()
    }

    /// Makes client `key`, whose request was `GET /events`, a subscriber; refused (closed)
    /// past [`MAX_SUBSCRIBERS`].
    pub(super) fn add(&mut self, key: u64, mut stream: Stream, token: Token, cx: &mut Cx<'_>) {
        if self.subs.len() >= MAX_SUBSCRIBERS {
            debug!("stats: {MAX_SUBSCRIBERS} event subscribers already: refusing one more");
            cx.deregister(stream.source(), token);
            return;
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        if cx.reregister(stream.source(), token, interest).is_err() {
            cx.deregister(stream.source(), token);
            return;
        }
        let mut s = Subscriber {
            stream,
            token,
            out: HEADER.to_vec(),
            sent: 0,
        };
        if s.flush().is_err() {
            cx.deregister(s.stream.source(), s.token);
            return;
        }
        self.subs.insert(key, s);
    }

    /// Subscriber `key` is ready: writes what it can, drops it when it closed.
    pub(super) fn ready(&mut self, key: u64, cx: &mut Cx<'_>) {
        let Some(s) = self.subs.get_mut(&key) else {
            return;
        };
        if s.closed() || s.flush().is_err() {
            self.drop_one(key, cx);
        }
    }

    /// Sends one note (its JSON) to every subscriber; drops the ones that fell behind.
    pub(super) fn publish(&mut self, json: &str, cx: &mut Cx<'_>) {
        let mut gone = Vec::new();
        for (key, s) in &mut self.subs {
            if s.out.len() - s.sent + json.len() + 8 > MAX_BUFFERED {
                warn!(
                    "stats: an event subscriber fell {} bytes behind: dropping it (read the stream faster, or subscribe again)",
                    s.out.len() - s.sent
                );
                gone.push(*key);
                continue;
            }
            s.out.extend_from_slice(b"data: ");
            s.out.extend_from_slice(json.as_bytes());
            s.out.extend_from_slice(b"\n\n");
            if s.flush().is_err() {
                gone.push(*key);
            }
        }
        for key in gone {
            self.drop_one(key, cx);
        }
    }

    fn drop_one(&mut self, key: u64, cx: &mut Cx<'_>) {
        if let Some(mut s) = self.subs.remove(&key) {
            cx.deregister(s.stream.source(), s.token);
        }
    }
}
