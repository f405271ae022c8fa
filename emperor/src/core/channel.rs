//! Channel bytes and channel EOF. The heartbeat, ready, accepting and loyal bytes touch only
//! the record's [`Line`]; the rest look the record up.

use super::*;
use serde_json::json;

impl Core {
    pub(super) fn on_message(&mut self, now: Instant, inc: Inc, byte: u8) {
        // The hot path (every worker, every few seconds): heartbeat, ready, accepting and a
        // repeated loyal byte read and write one cache line, the record's `Line` (no hashing,
        // no allocation; the record itself only when a log line is enabled).
        let Some(slot) = self.live_slot(inc) else {
            return;
        };
        let Some(epoch) = self.epoch else {
            return;
        };
        let l = &mut self.lines[slot];
        if l.ignored {
            return;
        }
        let t = enc_time(epoch, now);
        let msg = VassalMsg::from_byte(byte);
        match msg {
            VassalMsg::Heartbeat => {
                l.last_heartbeat = t;
                if l.running {
                    // The same as encoding `now + required` (no overflow in ±292 years).
                    l.heartbeat_deadline = t.saturating_add(self.required_ns);
                    if !l.heartbeat_timer {
                        l.heartbeat_timer = true;
                        let id = l.id;
                        self.timer(now + self.cfg.required_heartbeat, Timer::Heartbeat(id));
                    }
                }
                return;
            }
            VassalMsg::Ready => {
                // A repeated byte is no transition: only the first of an incarnation (or
                // after a reload, which clears it) is an event.
                let first = !l.ready;
                l.ready = true;
                l.last_ready = t;
                let id = l.id;
                info!(vassal = %self.name_of(id), "vassal {} has been spawned", self.name_of(id));
                if first {
                    self.note_of(now, id, "ready", Vec::new());
                }
                return;
            }
            VassalMsg::Accepting => {
                let first = !l.accepting;
                l.accepting = true;
                l.last_accepting = t;
                let id = l.id;
                info!(vassal = %self.name_of(id), "vassal {} is ready to accept requests", self.name_of(id));
                if first {
                    self.note_of(now, id, "accepting", Vec::new());
                }
                return;
            }
            VassalMsg::Loyal => {
                let first = !l.loyal;
                l.loyal = true;
                l.last_loyal = t;
                let id = l.id;
                // Only the first loyal byte of an incarnation can find a backoff to clear: a
                // backoff is set only by a start that failed, after which the next start clears
                // `loyal`.
                if first {
                    if let Some(v) = self.vassals.get_mut(&id) {
                        if v.backoff.attempt > 0 {
                            info!(vassal = %v.name, "vassal {} removed from the blacklist", v.name);
                        }
                        v.backoff = Backoff::default();
                    }
                }
                info!(vassal = %self.name_of(id), "vassal {} is now loyal", self.name_of(id));
                if first {
                    self.note_of(now, id, "loyal", Vec::new());
                }
                return;
            }
            _ => {}
        }
        // The rest are rare, but still borrow the name for their log lines: no allocation.
        let id = self.lines[slot].id;
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        match msg {
            VassalMsg::Ready | VassalMsg::Accepting | VassalMsg::Loyal | VassalMsg::Heartbeat => {}
            VassalMsg::ConfigRequest => match &v.content {
                Some(content) => {
                    debug!(vassal = %v.name, "vassal {} asked for its config", v.name);
                    let content = content.clone();
                    self.actions.push_back(Action::PushConfig { inc, content });
                }
                None => {
                    debug!(vassal = %v.name, "vassal {} asked for a config it does not have", v.name)
                }
            },
            VassalMsg::StopMe => self.stop_me(now, id),
            VassalMsg::Sos => self.on_sos(now, id),
            VassalMsg::Unknown(b) => self.on_unknown_byte(now, id, b),
        }
    }

    pub(super) fn on_channel_closed(&mut self, now: Instant, inc: Inc) {
        let Some(id) = self.id_by_inc(inc) else {
            return;
        };
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if let State::Running(process) = v.state {
            if process.inc == inc {
                let pid = process.pid;
                info!(vassal = %v.name, pid, "vassal {} closed its channel: cursing it", v.name);
                let why = json!("channel closed");
                self.notes.push(
                    now,
                    &v.name,
                    "curse",
                    vec![("pid", json!(pid)), ("why", why)],
                );
                self.enter_stopping(now, id, process, false, false);
            }
        }
    }
}
