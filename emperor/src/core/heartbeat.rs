//! The heartbeat watchdog (`--emperor-required-heartbeat`): armed by a vassal's first
//! heartbeat, it SIGKILLs a running vassal that then goes silent for longer than required.

use super::*;
use serde_json::json;

impl Core {
    pub(super) fn timer_heartbeat(&mut self, now: Instant, id: VassalId) {
        let required = self.cfg.required_heartbeat;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        let (Some(h), Some(epoch)) = (self.lines.get_mut(v.slot as usize), self.epoch) else {
            return;
        };
        h.heartbeat_timer = false;
        let (State::Running(state::Running { pid, .. }), Some(deadline)) =
            (v.state, dec_time(epoch, h.heartbeat_deadline))
        else {
            return;
        };
        if deadline <= now {
            warn!(
                vassal = %v.name,
                pid,
                "vassal {} sent no heartbeat in the last {} seconds, brutally respawning it",
                v.name,
                required.as_secs()
            );
            h.heartbeat_deadline = NO_TIME;
            let why = json!("no heartbeat");
            self.notes.push(
                now,
                &v.name,
                "kill",
                vec![("pid", json!(pid)), ("why", why)],
            );
            self.actions.push_back(Action::Kill { pid });
        } else {
            h.heartbeat_timer = true;
            self.timer(deadline, Timer::Heartbeat(id));
        }
    }
}
