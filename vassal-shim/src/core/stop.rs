//! Stopping: the stop signal to the group, SIGKILL after `stop-timeout`, and the shim's exit
//! code (the program's, 26 for an exile code, 0 after a stop, 1 after EOF).

use std::time::Instant;

use super::{Action, AfterStop, Core, Phase, EXILE_CODE};

impl Core {
    pub(super) fn exit(&mut self, code: i32) {
        self.phase = Phase::Done;
        self.push(Action::KillAll);
        self.push(Action::Exit(code));
    }

    pub(super) fn begin_stop(&mut self, now: Instant, code: i32) {
        match self.phase {
            Phase::Done => {}
            Phase::Stopping(AfterStop::Exit(_)) => {}
            Phase::Stopping(AfterStop::Restart) => {
                self.phase = Phase::Stopping(AfterStop::Exit(code))
            }
            _ if !self.alive => self.exit(code),
            _ => {
                self.phase = Phase::Stopping(AfterStop::Exit(code));
                self.push(Action::SignalGroup(self.s.stop_signal));
                self.stop_deadline = Some(now + self.s.stop_timeout);
            }
        }
    }

    pub(super) fn on_exited(&mut self, now: Instant, code: i32) {
        self.alive = false;
        self.stopped = false;
        self.probe_in_flight = false;
        match self.phase {
            Phase::Stopping(AfterStop::Exit(c)) => self.exit(c),
            Phase::Stopping(AfterStop::Restart) => self.after_restart_stop(now),
            Phase::Done => {}
            _ => {
                let out = if self.s.exile_codes.contains(&code) {
                    EXILE_CODE
                } else {
                    code
                };
                self.exit(out);
            }
        }
    }

    pub(super) fn stop_timeout(&mut self, now: Instant) {
        if self.stop_deadline.is_some_and(|t| t <= now) {
            self.stop_deadline = None;
            tracing::warn!(
                "the program did not stop within {:?} of {}: sending SIGKILL",
                self.s.stop_timeout,
                self.s.stop_signal
            );
            match self.phase {
                Phase::Stopping(AfterStop::Exit(c)) => self.exit(c),
                // SIGKILL; the exit of the main process then continues the restart.
                Phase::Stopping(AfterStop::Restart) => self.push(Action::KillAll),
                _ => {}
            }
        }
    }
}
