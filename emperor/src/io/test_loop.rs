//! A minimal loop for the sources' unit tests: a real `mio::Poll`, the one token registry and
//! an output buffer, polled with a deadline.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::io::registry::{Owner, Tokens};
use crate::io::source::{Cx, Output};

/// The loop of one test.
#[derive(Debug)]
pub(crate) struct TestLoop {
    pub(crate) poll: Poll,
    pub(crate) tokens: Tokens,
    pub(crate) out: Vec<Output>,
}

impl TestLoop {
    pub(crate) fn new() -> TestLoop {
        TestLoop {
            poll: Poll::new().unwrap(),
            tokens: Tokens::new(),
            out: Vec::new(),
        }
    }

    /// A context at `now`.
    pub(crate) fn cx_at(&mut self, now: Instant) -> Cx<'_> {
        Cx {
            now,
            registry: self.poll.registry(),
            tokens: &mut self.tokens,
            out: &mut self.out,
        }
    }

    /// A context at the current time.
    pub(crate) fn cx(&mut self) -> Cx<'_> {
        self.cx_at(Instant::now())
    }

    /// What the sources reported so far.
    pub(crate) fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Polls and hands every ready token's owner to `on` (and, with `None`, calls it once per
    /// turn for timers) until the outputs satisfy `done`; panics after `within`.
    pub(crate) fn run_until(
        &mut self,
        within: Duration,
        mut on: impl FnMut(Option<Owner>, &mut Cx<'_>),
        mut done: impl FnMut(&[Output]) -> bool,
    ) -> Vec<Output> {
        let end = Instant::now() + within;
        let mut events = Events::with_capacity(16);
        loop {
            let now = Instant::now();
            assert!(
                now < end,
                "nothing happened within {within:?}: {:?}",
                self.out
            );
            let wait = (end - now).min(Duration::from_millis(20));
            match self.poll.poll(&mut events, Some(wait)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
                r => r.unwrap(),
            }
            for ev in events.iter() {
                let owner = self.tokens.owner(ev.token());
                on(owner, &mut self.cx());
            }
            on(None, &mut self.cx());
            if done(&self.out) {
                return self.take();
            }
        }
    }
}
