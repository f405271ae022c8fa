//! The signals the emperor handles (signal-hook-mio): each becomes an `Event::Signal` for the
//! core (which decides what it means), SIGCHLD a reap; a stop signal also tells systemd
//! `STOPPING=1`.

use std::io;

use mio::Interest;
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals as Pipe;

use super::notify::Notifier;
use super::registry::Owner;
use super::source::{Cx, Output};
use crate::core::{Control, Core, Event};

/// The signals watched.
pub const WATCHED: [i32; 8] = [
    SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGURG, SIGWINCH, SIGCHLD,
];

/// The signal source.
pub struct Signals {
    pipe: Pipe,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl Signals {
    /// Installs the handlers and registers their pipe.
    pub fn new(cx: &mut Cx<'_>) -> io::Result<Signals> {
        let mut pipe = Pipe::new(WATCHED)?;
        cx.register(&mut pipe, Owner::Signals, Interest::READABLE)?;
        Ok(Signals { pipe })
    }

    /// Reports every pending signal.
    pub fn on_ready(&mut self, cx: &mut Cx<'_>, notify: Option<&Notifier>) {
        for s in self.pipe.pending() {
            if s == SIGCHLD {
                cx.out.push(Output::Reap);
                continue;
            }
            if Core::signal_control(s) == Some(Control::Shutdown) {
                if let Some(n) = notify {
                    n.send("STOPPING=1");
                }
            }
            cx.core(Event::Signal(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_signal_is_reported() {
        let poll = mio::Poll::new().unwrap();
        let mut tokens = super::super::registry::Tokens::new();
        let mut out = Vec::new();
        let mut cx = Cx {
            now: std::time::Instant::now(),
            registry: poll.registry(),
            tokens: &mut tokens,
            out: &mut out,
        };
        let mut s = Signals::new(&mut cx).unwrap();
        // SIGURG's default action is to ignore it: safe to raise in a test process.
        signal_hook::low_level::raise(SIGURG).unwrap();
        s.on_ready(&mut cx, None);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Core(Event::Signal(SIGURG)))),
            "{out:?}"
        );
    }
}
