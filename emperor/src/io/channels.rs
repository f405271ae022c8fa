//! The vassal channels: one stream per running incarnation (one-byte messages both ways) and,
//! while a pushed config is being written, its config socket.
//!
//! A channel is read at most [`CHANNEL_BUDGET`] bytes per turn: a vassal writing without pause
//! cannot keep the loop from the other sources. A channel left unread (the budget ran out
//! before `WouldBlock`) is marked busy and read again at the next turn, which then does not
//! sleep: mio reports a source again only once it has new data.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use mio::net::UnixStream;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::registry::Owner;
use super::source::{Cx, Output};
use crate::core::{Event, Inc};

/// Bytes read from one vassal channel per turn of the loop (a well-behaved vassal sends a few
/// bytes a second; a flooding one waits for the next turn, after every other source).
pub const CHANNEL_BUDGET: usize = 16 * 1024;

#[derive(Debug)]
struct Channel {
    stream: UnixStream,
    token: Option<Token>,
    config: Option<UnixStream>,
    config_token: Option<Token>,
    pending: Vec<u8>,
}

/// Every vassal channel, by incarnation.
#[derive(Debug, Default)]
pub struct Channels {
    map: HashMap<Inc, Channel>,
    busy: HashSet<Inc>,
}

impl Channels {
    /// No channels.
    pub fn new() -> Channels {
        Channels::default()
    }

    /// Channels open.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No channel open.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Some channel has bytes left from its budget: the next turn must not sleep.
    pub fn busy(&self) -> bool {
        !self.busy.is_empty()
    }

    /// The busy channels, to read after this turn's events (every other ready source first).
    pub fn take_busy(&mut self) -> Vec<Inc> {
        self.busy.drain().collect()
    }

    /// Watches the channel (and config socket) of `process` for `inc`. When its sockets
    /// cannot be set up, the process is killed (its reaping then tells the core).
    pub fn attach(
        &mut self,
        inc: Inc,
        name: &str,
        process: crate::spawn::Started,
        cx: &mut Cx<'_>,
    ) {
        let mk = |s: std::os::unix::net::UnixStream| -> io::Result<UnixStream> {
            s.set_nonblocking(true)?;
            Ok(UnixStream::from_std(s))
        };
        let (stream, config) = match (mk(process.channel), process.config.map(mk).transpose()) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot set up the channel of {name}: {e}");
                let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
                return;
            }
        };
        let mut ch = Channel {
            stream,
            token: None,
            config,
            config_token: None,
            pending: Vec::new(),
        };
        match cx.register(&mut ch.stream, Owner::Channel(inc), Interest::READABLE) {
            Ok(t) => ch.token = Some(t),
            Err(e) => warn!("cannot watch the channel of {name}: {e}"),
        }
        self.map.insert(inc, ch);
    }

    /// Reads `inc`'s channel, up to the budget: bytes become `Event::Message`s, EOF or an
    /// error `Event::ChannelClosed` and a reap (EOF usually means the process is exiting).
    pub fn on_readable(&mut self, inc: Inc, cx: &mut Cx<'_>) {
        let Some(ch) = self.map.get_mut(&inc) else {
            return;
        };
        let mut buf = [0u8; 512];
        let mut budget = CHANNEL_BUDGET;
        loop {
            let Some(tok) = ch.token else {
                return;
            };
            if budget == 0 {
                self.busy.insert(inc);
                return;
            }
            let want = budget.min(buf.len());
            match ch.stream.read(&mut buf[..want]) {
                Ok(n) if n > 0 => {
                    budget -= n;
                    for &byte in &buf[..n] {
                        cx.core(Event::Message { inc, byte });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(_) | Err(_) => {
                    ch.token = None;
                    cx.deregister(&mut ch.stream, tok);
                    cx.core(Event::ChannelClosed { inc });
                    cx.out.push(Output::Reap);
                    return;
                }
            }
        }
    }

    /// Writes one byte on `inc`'s channel.
    pub fn send(&mut self, inc: Inc, byte: u8) {
        if let Some(ch) = self.map.get_mut(&inc) {
            match ch.stream.write(&[byte]) {
                Ok(1) => {}
                Ok(_) => warn!("channel {inc:?}: short write"),
                Err(e) => debug!("cannot write to channel {inc:?}: {e}"),
            }
        }
    }

    /// Queues `content` as a config-push frame on `inc`'s config socket and writes what it can.
    pub fn push_config(&mut self, inc: Inc, content: &[u8], cx: &mut Cx<'_>) {
        if let Some(ch) = self.map.get_mut(&inc) {
            if let Err(e) = uwsgi_proto::config::encode(content, &mut ch.pending) {
                warn!("cannot push config: {e}");
            }
        }
        self.flush_config(inc, cx);
    }

    /// Writes the pending push of `inc`; watches the config socket for room while some is left.
    pub fn flush_config(&mut self, inc: Inc, cx: &mut Cx<'_>) {
        let Some(ch) = self.map.get_mut(&inc) else {
            return;
        };
        let Some(cfg) = ch.config.as_mut() else {
            return;
        };
        while !ch.pending.is_empty() {
            match cfg.write(&ch.pending) {
                Ok(0) => break,
                Ok(n) => {
                    ch.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("config socket write failed: {e}");
                    ch.pending.clear();
                }
            }
        }
        let want = !ch.pending.is_empty();
        match ch.config_token {
            None if want => {
                ch.config_token = cx
                    .register(cfg, Owner::ConfigPush(inc), Interest::WRITABLE)
                    .ok();
            }
            Some(t) if !want => {
                cx.deregister(cfg, t);
                ch.config_token = None;
            }
            _ => {}
        }
    }

    /// The incarnation is over: closes its channel and config socket.
    pub fn release(&mut self, inc: Inc, cx: &mut Cx<'_>) {
        self.busy.remove(&inc);
        if let Some(mut ch) = self.map.remove(&inc) {
            if let Some(t) = ch.token {
                cx.deregister(&mut ch.stream, t);
            }
            if let (Some(c), Some(t)) = (ch.config.as_mut(), ch.config_token) {
                cx.deregister(c, t);
            }
        }
    }
}

#[cfg(test)]
mod tests;
