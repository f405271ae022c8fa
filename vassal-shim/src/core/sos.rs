//! SOS (30): from `X_VASSAL_SOS=1` or a listen backlog of at least `sos-backlog`, measured
//! every [`BACKLOG_INTERVAL`], at most one per [`SOS_INTERVAL`].

use std::time::Instant;

use uwsgi_proto::VassalMsg;

use super::{Action, Core, Phase, BACKLOG_INTERVAL, SOS_INTERVAL};

impl Core {
    pub(super) fn sos(&mut self, now: Instant) {
        let due = match self.last_sos {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= SOS_INTERVAL,
        };
        if due {
            self.last_sos = Some(now);
            self.send(VassalMsg::Sos);
        }
    }

    pub(super) fn on_backlog(&mut self, now: Instant, n: u32) {
        if self.s.sos_backlog.is_some_and(|t| n >= t) && self.alive {
            self.sos(now);
        }
    }

    pub(super) fn backlog_timeout(&mut self, now: Instant) {
        if self.next_backlog.is_some_and(|t| t <= now) {
            self.next_backlog = Some(now + BACKLOG_INTERVAL);
            if self.alive && self.phase == Phase::Running {
                self.push(Action::MeasureBacklog);
            }
        }
    }
}
