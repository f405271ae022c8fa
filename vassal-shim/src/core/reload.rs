//! Reloads and pushed configs: restart (stop, then start again) or `signal:NAME` to the main
//! process; with a config channel, request a config (2) and wait for it, at most
//! [`CONFIG_WAIT`].

use std::time::Instant;

use nix::sys::signal::Signal;
use uwsgi_proto::VassalMsg;

use super::{Action, AfterConfig, AfterStop, Core, Phase, ReloadMode, CONFIG_WAIT};

impl Core {
    pub(super) fn wait_config(&mut self, now: Instant, then: AfterConfig, initial: bool) {
        self.phase = Phase::WaitConfig { then, initial };
        self.config_deadline = Some(now + CONFIG_WAIT);
    }

    pub(super) fn reload(&mut self, now: Instant) {
        match self.phase {
            Phase::Done | Phase::Stopping(_) => return,
            Phase::WaitConfig { .. } | Phase::Init => return,
            Phase::Starting | Phase::Running => {}
        }
        if self.has_config {
            self.config_seen = false;
            self.send(VassalMsg::ConfigRequest);
        }
        match self.s.reload {
            ReloadMode::Restart => {
                self.phase = Phase::Stopping(AfterStop::Restart);
                if self.alive {
                    self.push(Action::SignalGroup(self.s.stop_signal));
                    self.stop_deadline = Some(now + self.s.stop_timeout);
                } else {
                    self.after_restart_stop(now);
                }
            }
            ReloadMode::Signal(sig) if self.has_config => {
                self.wait_config(now, AfterConfig::SignalReload(sig), false)
            }
            ReloadMode::Signal(sig) => self.signal_reload(now, sig),
        }
    }

    fn signal_reload(&mut self, now: Instant, sig: Signal) {
        self.push(Action::SignalMain(sig));
        self.reset_generation();
        self.phase = Phase::Starting;
        self.readiness_start(now);
    }

    pub(super) fn after_restart_stop(&mut self, now: Instant) {
        self.stop_deadline = None;
        self.push(Action::KillAll);
        if self.has_config && !self.config_seen {
            self.wait_config(now, AfterConfig::Spawn, false);
        } else {
            self.spawn();
        }
    }

    fn config_arrived(&mut self, now: Instant, then: AfterConfig) {
        match then {
            AfterConfig::Spawn => self.spawn(),
            AfterConfig::SignalReload(sig) => self.signal_reload(now, sig),
        }
    }

    pub(super) fn on_config_pushed(&mut self, now: Instant) {
        self.config_seen = true;
        if let Phase::WaitConfig { then, .. } = self.phase {
            self.config_deadline = None;
            self.config_arrived(now, then);
        }
    }

    pub(super) fn config_timeout(&mut self, now: Instant) {
        if self.config_deadline.is_some_and(|t| t <= now) {
            self.config_deadline = None;
            if let Phase::WaitConfig { then, initial } = self.phase {
                if initial {
                    self.exit(1);
                } else {
                    self.config_arrived(now, then);
                }
            }
        }
    }
}
