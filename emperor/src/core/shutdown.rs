//! Process-wide controls: the shutdown (stop every vassal, SIGKILL after `reload-mercy`, exit
//! once every process is reaped), reload-all, the status log, clearing every backoff,
//! rescans.

use super::*;
use serde_json::json;

impl Core {
    pub(super) fn on_control(&mut self, now: Instant, c: Control) {
        match c {
            Control::Shutdown => {
                if self.shutdown.is_some() {
                    info!("already shutting down");
                    return;
                }
                let deadline = now + self.cfg.reload_mercy;
                self.shutdown = Some(deadline);
                info!(
                    vassals = self.vassals.len(),
                    "RAGNAROK EVOKED: stopping {} vassals",
                    self.vassals.len()
                );
                let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
                for id in ids {
                    self.stop(now, id, false);
                }
                self.timer(deadline, Timer::Mercy);
            }
            Control::ReloadAll => {
                let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
                for id in ids {
                    self.reload(now, id, "SIGHUP");
                }
            }
            Control::LogStatus => {
                let mut vs: Vec<&Vassal> = self.vassals.values().collect();
                vs.sort_by(|a, b| a.name.cmp(&b.name));
                info!("the Emperor is governing {} vassals", vs.len());
                for v in vs {
                    let ch = self.channel(v);
                    info!(
                        vassal = %v.name,
                        "vassal {} state={} pid={} loyal={} ready={} accepting={} respawns={} restarts={} backoff_attempt={} throttle_ms={}",
                        v.name,
                        v.state.name(),
                        v.state.pid().unwrap_or(-1),
                        ch.loyal,
                        ch.ready,
                        ch.accepting,
                        v.respawns,
                        v.restarts,
                        v.backoff.attempt,
                        v.backoff.level_ms
                    );
                }
            }
            Control::ClearBackoff => {
                info!("clearing the blacklist");
                let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
                for id in ids {
                    let Some(v) = self.vassals.get_mut(&id) else {
                        continue;
                    };
                    v.backoff = Backoff::default();
                    if matches!(v.state, State::Waiting(_)) {
                        self.start(now, id);
                    }
                }
            }
            Control::Rescan => self.actions.push_back(Action::Rescan),
        }
    }

    pub(super) fn timer_mercy(&mut self, now: Instant) {
        let pids: Vec<(i32, String)> = self
            .vassals
            .values()
            .filter_map(|v| v.state.pid().map(|p| (p, v.name.clone())))
            .collect();
        for (pid, name) in pids {
            warn!(vassal = %name, pid, "reload-mercy expired: killing vassal {name} (pid: {pid})");
            let why = json!("reload-mercy expired");
            self.notes
                .push(now, &name, "kill", vec![("pid", json!(pid)), ("why", why)]);
            self.actions.push_back(Action::Kill { pid });
        }
    }

    pub(super) fn check_done(&mut self) {
        if self.shutdown.is_some()
            && !self.exit_sent
            && self.by_pid.is_empty()
            // An asynchronous start (fork server) is answered before the emperor leaves.
            && !self
                .vassals
                .values()
                .any(|v| matches!(v.state, State::Starting(_)))
        {
            // Nothing left with a process: drop remaining records and leave.
            let ids: Vec<VassalId> = self.vassals.keys().copied().collect();
            for id in ids {
                self.remove(id);
            }
            self.exit_sent = true;
            info!("The Emperor is buried.");
            self.actions.push_back(Action::Exit);
        }
    }
}
