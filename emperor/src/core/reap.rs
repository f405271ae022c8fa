//! A reaped process: what its death means for the record (restart, backoff, exile,
//! removal), and the stop and reload requests that lead there.

use super::*;

impl Core {
    pub(super) fn on_reaped(&mut self, now: Instant, pid: i32, exit: ExitKind) {
        let Some(id) = self.by_pid.remove(&pid) else {
            debug!(pid, "reaped pid {pid} ({exit}), not a vassal");
            return;
        };
        let shutting = self.shutdown.is_some();
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        v.last_exit = Some(exit);
        self.lines[v.slot as usize].heartbeat_deadline = NO_TIME;
        if v.zerg.is_some() {
            // A zerg whose process ended is gone for good.
            v.wanted = false;
        }
        let state = v.state;
        if let Some(inc) = state.inc() {
            self.lines[v.slot as usize].inc = 0;
            self.actions.push_back(Action::Release { inc });
        }
        // Ready, accepting and loyal describe the current process: with it gone, nothing
        // serves (the stats and `ctl status` must not say otherwise). Loyalty still decides
        // below whether this death earns a backoff.
        let l = &mut self.lines[v.slot as usize];
        let loyal = l.loyal;
        (l.ready, l.accepting, l.loyal) = (false, false, false);
        let name = v.name.clone();
        let shutting_or_unwanted = shutting || !v.wanted;
        if !shutting_or_unwanted
            && state.pid().is_some()
            && exit != ExitKind::Code(EXILE_CODE)
            && self.reaped_broken(now, id, pid, exit)
        {
            return;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        match state {
            State::Stopping {
                requested: true, ..
            } => {
                info!(vassal = %name, pid, "vassal {name} (pid: {pid}) stopped ({exit})");
                if shutting || !v.wanted {
                    self.remove(id);
                } else {
                    set_state(&mut self.lines, v, State::Waiting { at: now });
                    self.start(now, id);
                }
            }
            State::Running { .. } | State::Stopping { .. } => {
                if exit == ExitKind::Code(EXILE_CODE) && !shutting && v.wanted {
                    warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) exited with status 26 (exile): it stays down until its config changes");
                    set_state(&mut self.lines, v, State::Exiled);
                } else if shutting || !v.wanted {
                    info!(vassal = %name, pid, "vassal {name} (pid: {pid}) died ({exit})");
                    self.remove(id);
                } else if v.adopted && v.reload_sent {
                    // Adopted vassals cannot re-exec themselves: a reload ends them, and a new
                    // adoption is the reloaded vassal (loyal or not, no backoff).
                    info!(vassal = %name, pid, "adopted vassal {name} (pid: {pid}) exited after a reload ({exit}): starting a new one");
                    self.start(now, id);
                } else if loyal {
                    warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) died unexpectedly ({exit}): respawning it");
                    v.backoff = Backoff::default();
                    self.start(now, id);
                } else {
                    warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) died before being loyal ({exit})");
                    self.failed(now, id, false);
                }
            }
            State::Waiting { .. }
            | State::Starting { .. }
            | State::Exiled
            | State::OnDemand
            | State::Suspended => {}
        }
    }

    pub(super) fn stop(&mut self, now: Instant, id: VassalId) {
        self.stop_zergs(now, id);
        let msg = if self.cfg.graceful_shutdown {
            EmperorMsg::GracefulStop
        } else {
            EmperorMsg::Stop
        };
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        match v.state {
            State::Running { inc, pid } => {
                info!(vassal = %v.name, pid, "stopping vassal {} (pid: {pid})", v.name);
                self.actions.push_back(Action::Send { inc, msg });
                self.enter_stopping(now, id, inc, pid, true);
            }
            State::Stopping {
                ref mut requested, ..
            } => *requested = true,
            State::Waiting { .. } | State::Exiled | State::OnDemand | State::Suspended => {
                self.remove(id)
            }
            // The runtime answers a spawn before anything else happens.
            State::Starting { .. } => {}
        }
    }

    pub(super) fn reload(&mut self, now: Instant, id: VassalId, why: &str) {
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if let State::Running { inc, pid } = v.state {
            info!(vassal = %v.name, pid, "reloading vassal {} ({why})", v.name);
            self.actions.push_back(Action::Send {
                inc,
                msg: EmperorMsg::Reload,
            });
            v.respawns += 1;
            v.reload_sent = true;
            v.last_run = Some(now);
            let l = &mut self.lines[v.slot as usize];
            l.ready = false;
            l.accepting = false;
            // Re-armed by the next heartbeat: a reload legitimately pauses them.
            l.heartbeat_deadline = NO_TIME;
        }
    }
}
