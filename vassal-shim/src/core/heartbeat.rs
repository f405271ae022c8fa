//! Heartbeats and health: byte 26 every `heartbeat` while the program is alive, not stopped,
//! healthy by its probe and its watchdog pings, and has not said `STOPPING=1`; the periodic
//! health probe.

use std::time::{Duration, Instant};

use uwsgi_proto::VassalMsg;

use super::{Action, AfterStop, Core, Phase, HEALTH_INTERVAL};

impl Core {
    pub(super) fn health_interval(&self) -> Duration {
        self.s.heartbeat.unwrap_or(HEALTH_INTERVAL)
    }

    fn watchdog_ok(&self, now: Instant) -> bool {
        if self.watchdog_tripped {
            return false;
        }
        let limit = match (self.s.watchdog, self.s.heartbeat) {
            (Some(w), _) => w,
            (None, Some(hb)) if self.watchdog_seen.is_some() => {
                (hb * 3).max(Duration::from_secs(3))
            }
            _ => return true,
        };
        let since = self.watchdog_seen.or(self.ready_at);
        since.is_some_and(|t| now.saturating_duration_since(t) <= limit)
    }

    fn should_heartbeat(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Running => {
                self.alive
                    && !self.stopped
                    && self.healthy
                    && !self.stopping_notified
                    && self.watchdog_ok(now)
            }
            // A reload in progress: the shim itself is in control for a bounded time (the stop
            // timeout, the config wait), so the emperor should not take it for a hang.
            Phase::Stopping(AfterStop::Restart) | Phase::WaitConfig { initial: false, .. } => true,
            _ => false,
        }
    }

    pub(super) fn heartbeat_timeout(&mut self, now: Instant) {
        if let Some(hb) = self.s.heartbeat {
            if self.next_heartbeat.is_some_and(|t| t <= now) {
                self.next_heartbeat = Some(now + hb);
                if self.should_heartbeat(now) {
                    self.send(VassalMsg::Heartbeat);
                }
            }
        }
    }

    pub(super) fn probe_timeout(&mut self, now: Instant) {
        if self.next_probe.is_some_and(|t| t <= now) && !self.probe_in_flight {
            self.next_probe = None;
            if self.alive && matches!(self.phase, Phase::Starting | Phase::Running) {
                self.probe_in_flight = true;
                self.push(Action::Probe);
            }
        }
    }
}
