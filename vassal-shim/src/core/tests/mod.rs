//! The core's rules with a fake clock, one file per rule family, on one harness ([`T`]).

mod heartbeat;
mod readiness;
mod reload;
mod sos;
mod stop;

pub(super) use std::time::Duration;

pub(super) use nix::sys::signal::Signal;
pub(super) use std::time::Instant;

pub(super) use super::{Action, Core, Input, Ready, ReloadMode, Settings, ShimSignal, CONFIG_WAIT};
pub(super) use crate::notify::Notification;
pub(super) use crate::Event;
pub(super) use uwsgi_proto::VassalMsg as M;
pub(super) use Action::*;

/// Settings with readiness `ready`, exile code 3 and every other option at its default.
pub(super) fn settings(ready: Ready) -> Settings {
    let mut s = Settings::new(vec!["app".into()]);
    s.ready = ready;
    s.exile_codes = vec![3];
    s
}

/// A probed readiness (the address is never connected to: the core only asks for probes).
pub(super) fn probe() -> Ready {
    Ready::Tcp("127.0.0.1:1".parse().unwrap())
}

/// One core on a fake clock.
pub(super) struct T {
    pub(super) core: Core,
    pub(super) now: Instant,
}

impl T {
    pub(super) fn new(s: Settings) -> T {
        T::start(s, false)
    }

    /// A core whose emperor pushes configs.
    pub(super) fn with_config(s: Settings) -> T {
        T::start(s, true)
    }

    fn start(s: Settings, has_config: bool) -> T {
        let now = Instant::now();
        let mut core = Core::new(s, has_config);
        core.start(now);
        T { core, now }
    }

    pub(super) fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    pub(super) fn input(&mut self, i: Input) -> Vec<Action> {
        self.core.handle(self.now, i);
        self.actions()
    }

    /// Advances the fake clock by `d`, firing every deadline on the way.
    pub(super) fn advance(&mut self, d: Duration) -> Vec<Action> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.core.next_deadline().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.core.on_timeout(self.now);
            out.extend(self.actions());
        }
        self.now = end;
        out
    }
}
