//! A reaped process: what its death means for the record (restart, backoff, exile,
//! removal), and the stop and reload requests that lead there.

use super::*;
use serde_json::json;

impl Core {
    pub(super) fn on_reaped(&mut self, now: Instant, pid: i32, exit: ExitKind) {
        let Some(id) = self.by_pid.remove(&pid) else {
            debug!(pid, "reaped pid {pid} ({exit}), not a vassal");
            return;
        };
        let Some((state, loyal)) = self.end_process(id, exit) else {
            return;
        };
        let Some(v) = self.vassals.get(&id) else {
            return;
        };
        // Not restarted: a shutdown is under way, its config is gone, or it is a zerg.
        let gone = self.shutdown.is_some() || !v.wanted() || v.zerg.is_some();
        if !gone
            && state.pid().is_some()
            && exit != ExitKind::Code(EXILE_CODE)
            && self.reaped_broken(now, id, pid, exit)
        {
            return;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        let name = v.name.clone();
        self.notes.push(
            now,
            &name,
            "exit",
            vec![("pid", json!(pid)), ("status", json!(exit.to_string()))],
        );
        match state {
            State::Stopping(state::Stopping {
                requested: true,
                suspend,
                ..
            }) => {
                info!(vassal = %name, pid, "vassal {name} (pid: {pid}) stopped ({exit})");
                if gone {
                    self.remove(id);
                } else {
                    let waiting = state::Waiting { at: now, suspend };
                    set_state(&mut self.lines, v, State::Waiting(waiting));
                    self.start(now, id);
                }
            }
            State::Running(_) | State::Stopping(_) if gone => {
                info!(vassal = %name, pid, "vassal {name} (pid: {pid}) died ({exit})");
                self.remove(id);
            }
            State::Running(_) | State::Stopping(_) if exit == ExitKind::Code(EXILE_CODE) => {
                warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) exited with status 26 (exile): it stays down until its config changes");
                set_state(&mut self.lines, v, State::Exiled);
                self.notes.push(now, &name, "exile", Vec::new());
            }
            State::Running(p) | State::Stopping(state::Stopping { process: p, .. })
                if p.adopted && p.reload_sent =>
            {
                // Adopted vassals cannot re-exec themselves: a reload ends them, and a new
                // adoption is the reloaded vassal (loyal or not, no backoff).
                info!(vassal = %name, pid, "adopted vassal {name} (pid: {pid}) exited after a reload ({exit}): starting a new one");
                self.start(now, id);
            }
            State::Running(_) | State::Stopping(_) if loyal => {
                warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) died unexpectedly ({exit}): respawning it");
                v.backoff = Backoff::default();
                self.start(now, id);
            }
            State::Running(_) | State::Stopping(_) => {
                warn!(vassal = %name, pid, "vassal {name} (pid: {pid}) died before being loyal ({exit})");
                self.failed(now, id, false);
            }
            State::Waiting(_)
            | State::Starting(_)
            | State::Exiled
            | State::OnDemand
            | State::Suspended => {}
        }
    }

    /// The process of `id` ended with `exit`: records it, releases its incarnation and clears
    /// what described that process. Returns the state it ended in and whether it had been
    /// loyal (which decides whether its death earns a backoff).
    fn end_process(&mut self, id: VassalId, exit: ExitKind) -> Option<(State, bool)> {
        let v = self.vassals.get_mut(&id)?;
        v.last_exit = Some(exit);
        v.count_exit(exit);
        let state = v.state;
        let l = &mut self.lines[v.slot as usize];
        l.heartbeat_deadline = NO_TIME;
        if let Some(inc) = state.inc() {
            l.inc = 0;
            self.actions.push_back(Action::Release { inc });
        }
        // Ready, accepting and loyal describe the current process: with it gone, nothing
        // serves (the stats and `ctl status` must not say otherwise).
        let loyal = l.loyal;
        (l.ready, l.accepting, l.loyal) = (false, false, false);
        Some((state, loyal))
    }

    /// Stops vassal `id`'s process (or drops a record without one); with `gone` (its config
    /// went away, or a zerg told to go) for good, its zergs with it.
    pub(super) fn stop(&mut self, now: Instant, id: VassalId, gone: bool) {
        if gone {
            self.stop_zergs(now, id);
        }
        let msg = if self.cfg.graceful_shutdown {
            EmperorMsg::GracefulStop
        } else {
            EmperorMsg::Stop
        };
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        match v.state {
            State::Running(process) => {
                let pid = process.pid;
                info!(vassal = %v.name, pid, "stopping vassal {} (pid: {pid})", v.name);
                self.notes
                    .push(now, &v.name, "stop", vec![("pid", json!(pid))]);
                self.actions.push_back(Action::Send {
                    inc: process.inc,
                    msg,
                });
                self.enter_stopping(now, id, process, true, gone);
            }
            State::Stopping(ref mut s) => {
                s.requested = true;
                s.gone |= gone;
            }
            State::Waiting(_) | State::Exiled | State::OnDemand | State::Suspended => {
                self.remove(id)
            }
            // The runtime answers a spawn before anything else happens.
            State::Starting(ref mut s) => s.gone |= gone,
        }
    }

    pub(super) fn reload(&mut self, now: Instant, id: VassalId, why: &str) {
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if let State::Running(ref mut process) = v.state {
            let pid = process.pid;
            info!(vassal = %v.name, pid, "reloading vassal {} ({why})", v.name);
            let details = vec![("pid", json!(pid)), ("why", json!(why))];
            self.notes.push(now, &v.name, "reload", details);
            self.actions.push_back(Action::Send {
                inc: process.inc,
                msg: EmperorMsg::Reload,
            });
            process.reload_sent = true;
            v.respawns += 1;
            self.counters.reloads += 1;
            v.last_run = Some(now);
            let l = &mut self.lines[v.slot as usize];
            l.ready = false;
            l.accepting = false;
            // Re-armed by the next heartbeat: a reload legitimately pauses them.
            l.heartbeat_deadline = NO_TIME;
        }
    }
}
