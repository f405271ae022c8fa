//! Curses: a vassal asked to stop, or whose channel closed, is SIGKILLed if it is still alive
//! after `--emperor-curse-tolerance`, and again every tolerance after that.

use super::*;
use serde_json::json;

impl Core {
    /// A running vassal was asked to stop (`requested`; for good when `gone`) or cursed:
    /// SIGKILL after the curse tolerance unless it is reaped first.
    pub(super) fn enter_stopping(
        &mut self,
        now: Instant,
        id: VassalId,
        process: state::Running,
        requested: bool,
        gone: bool,
    ) {
        let tolerance = self.cfg.curse_tolerance;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        set_state(
            &mut self.lines,
            v,
            State::Stopping(state::Stopping {
                process,
                since: now,
                kill_at: now + tolerance,
                requested,
                gone,
                suspend: false,
            }),
        );
        self.timer(now + tolerance, Timer::Curse(id));
    }

    pub(super) fn timer_curse(&mut self, now: Instant, id: VassalId) {
        let tolerance = self.cfg.curse_tolerance;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if let State::Stopping(state::Stopping {
            process: state::Running { pid, .. },
            ref mut kill_at,
            since,
            ..
        }) = v.state
        {
            if *kill_at <= now {
                warn!(
                    vassal = %v.name,
                    pid,
                    "vassal {} (pid: {pid}) did not stop within {} s: killing it (SIGKILL)",
                    v.name,
                    now.duration_since(since).as_secs()
                );
                *kill_at = now + tolerance;
                let why = json!("did not stop in time");
                self.notes.push(
                    now,
                    &v.name,
                    "kill",
                    vec![("pid", json!(pid)), ("why", why)],
                );
                self.actions.push_back(Action::Kill { pid });
                self.timer(now + tolerance, Timer::Curse(id));
            }
        }
    }
}
