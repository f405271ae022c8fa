//! Readiness and loyalty: a generation starts, becomes ready (at once, by a probe, or by
//! `READY=1`), sends 1 and 5, and is declared loyal (17) once it stayed up `loyal-after`; the
//! program's notifications; giving up after `ready-timeout`.

use std::time::Instant;

use uwsgi_proto::VassalMsg;

use super::{Core, Phase, Ready, PROBE_RETRY};
use crate::notify::Notification;

impl Core {
    pub(super) fn on_spawned(&mut self, now: Instant) {
        self.alive = true;
        self.stopped = false;
        self.reset_generation();
        if self.phase == Phase::Starting {
            self.readiness_start(now);
        }
    }

    /// Forgets what the previous generation earned (readiness, loyalty, health).
    pub(super) fn reset_generation(&mut self) {
        self.ready_at = None;
        self.loyal_sent = false;
        self.loyal_at = None;
        self.healthy = false;
        self.watchdog_seen = None;
        self.watchdog_tripped = false;
        self.stopping_notified = false;
        self.next_probe = None;
    }

    pub(super) fn readiness_start(&mut self, now: Instant) {
        self.ready_deadline = self.s.ready_timeout.map(|t| now + t);
        match self.s.ready {
            Ready::Immediate => self.become_ready(now),
            _ if self.s.ready.is_probe() => self.next_probe = Some(now),
            _ => {}
        }
    }

    fn become_ready(&mut self, now: Instant) {
        self.phase = Phase::Running;
        self.ready_deadline = None;
        self.ready_at = Some(now);
        self.healthy = true;
        self.send(VassalMsg::Ready);
        self.send(VassalMsg::Accepting);
        if !self.loyal_sent {
            self.loyal_at = Some(now + self.s.loyal_after);
        }
        if let Some(hb) = self.s.heartbeat {
            self.send(VassalMsg::Heartbeat);
            self.next_heartbeat = Some(now + hb);
        }
        if self.s.ready.is_probe() {
            self.next_probe = Some(now + self.health_interval());
        }
    }

    pub(super) fn on_probe(&mut self, now: Instant, ok: bool) {
        self.probe_in_flight = false;
        if !self.alive {
            return;
        }
        match self.phase {
            Phase::Starting if ok => self.become_ready(now),
            Phase::Starting => self.next_probe = Some(now + PROBE_RETRY),
            Phase::Running => {
                self.healthy = ok;
                self.next_probe = Some(now + self.health_interval());
            }
            _ => {}
        }
    }

    pub(super) fn notify(&mut self, now: Instant, n: Notification) {
        if !self.alive {
            return;
        }
        match n {
            Notification::Ready => {
                if self.phase == Phase::Starting {
                    self.become_ready(now);
                }
            }
            Notification::Reloading => {
                if self.phase == Phase::Running {
                    self.reset_generation();
                    self.phase = Phase::Starting;
                    self.ready_deadline = self.s.ready_timeout.map(|t| now + t);
                    if self.s.ready.is_probe() {
                        self.next_probe = Some(now + PROBE_RETRY);
                    }
                }
            }
            Notification::Stopping => self.stopping_notified = true,
            Notification::Watchdog => {
                self.watchdog_seen = Some(now);
                self.watchdog_tripped = false;
            }
            Notification::WatchdogTrigger => self.watchdog_tripped = true,
            Notification::Idle => {
                if matches!(self.phase, Phase::Running | Phase::Starting) {
                    self.send(VassalMsg::StopMe);
                }
            }
            Notification::Sos => self.sos(now),
            Notification::Loyal => {
                if self.phase == Phase::Running && !self.loyal_sent {
                    self.loyal_sent = true;
                    self.loyal_at = None;
                    self.send(VassalMsg::Loyal);
                }
            }
            Notification::Status(_)
            | Notification::MainPid(_)
            | Notification::Errno(_)
            | Notification::Other(_) => {}
        }
    }

    pub(super) fn loyal_timeout(&mut self, now: Instant) {
        if self.loyal_at.is_some_and(|t| t <= now) {
            self.loyal_at = None;
            if self.alive && self.phase == Phase::Running && !self.loyal_sent {
                self.loyal_sent = true;
                self.send(VassalMsg::Loyal);
            }
        }
    }

    pub(super) fn ready_timeout(&mut self, now: Instant) {
        if self.ready_deadline.is_some_and(|t| t <= now) {
            self.ready_deadline = None;
            if self.phase == Phase::Starting && self.alive {
                tracing::warn!(
                    "the program is not ready after {:?}: giving up",
                    self.s.ready_timeout.unwrap_or_default()
                );
                self.begin_stop(now, 1);
            }
        }
    }
}
