//! Starting a vassal: the spawn request, and the runtime's answer.

use super::*;
use serde_json::json;

/// Why a start did not happen ([`Event::SpawnFailed`]): decided by the core after a start
/// hook, or the executor's error. Displayed as the reason in the "cannot start vassal" line.
#[derive(Clone, Debug)]
pub enum SpawnFailure {
    /// The emperor began shutting down while the start hook ran.
    ShuttingDown,
    /// The vassal's config went away while the start hook ran.
    ConfigGone,
    /// Tyrant mode: the config became owned by root while the start hook ran.
    RootOwned {
        /// The instance name.
        name: String,
        /// The config's key (path).
        key: String,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// The executor could not start the process (plan, launcher or fork server error).
    Executor(Arc<dyn std::error::Error + Send + Sync>),
}

impl SpawnFailure {
    /// The executor's error `e`.
    pub fn executor(e: impl std::error::Error + Send + Sync + 'static) -> SpawnFailure {
        SpawnFailure::Executor(Arc::new(e))
    }
}

impl fmt::Display for SpawnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnFailure::ShuttingDown => {
                f.write_str("not started after its start hook: the emperor is shutting down")
            }
            SpawnFailure::ConfigGone => {
                f.write_str("not started after its start hook: its config is gone")
            }
            SpawnFailure::RootOwned {
                name,
                key,
                uid,
                gid,
            } => f.write_str(&refusal(name, key, *uid, *gid)),
            SpawnFailure::Executor(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SpawnFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpawnFailure::Executor(e) => e.source(),
            _ => None,
        }
    }
}

impl Core {
    pub(super) fn start(&mut self, now: Instant, id: VassalId) {
        if self.shutdown.is_some() {
            return;
        }
        if self.park(now, id) || self.tyrant_blocks_start(id) {
            return;
        }
        let Some(slot) = self.vassals.get(&id).map(|v| v.slot) else {
            return;
        };
        let inc = Inc::new(self.next_inc, slot);
        // Wraps after 2^36 starts, skipping 0 (never a live incarnation).
        self.next_inc = (self.next_inc + 1) & ((1 << Inc::SEQ_BITS) - 1);
        if self.next_inc == 0 {
            self.next_inc = 1;
        }
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        if v.first_run.is_some() {
            v.restarts += 1;
        }
        self.counters.spawns += 1;
        v.first_run.get_or_insert(now);
        v.last_run = Some(now);
        let run_start_hook = self.cfg.start_hook;
        set_state(&mut self.lines, v, State::starting(inc, run_start_hook));
        let l = &mut self.lines[slot as usize];
        l.ready = false;
        l.accepting = false;
        l.loyal = false;
        l.ignored = false;
        l.inc = inc.0;
        v.garbage.begin(v.backoff);
        let req = spawn_request(self.cfg.tyrant, v, inc, run_start_hook);
        self.actions.push_back(Action::Spawn(req));
    }

    pub(super) fn on_spawned(&mut self, now: Instant, inc: Inc, pid: i32) {
        let Some(id) = self.id_by_inc(inc) else {
            return;
        };
        let Some(v) = self.vassals.get_mut(&id) else {
            return;
        };
        let State::Starting(s) = v.state else {
            return;
        };
        if s.inc != inc {
            return;
        }
        let process = state::Running {
            inc,
            pid,
            adopted: s.adopted,
            reload_sent: false,
        };
        set_state(&mut self.lines, v, State::Running(process));
        self.by_pid.insert(pid, id);
        info!(vassal = %v.name, pid, "started vassal {} (pid: {pid})", v.name);
        let adopted = json!(s.adopted);
        self.notes.push(
            now,
            &v.name,
            "spawned",
            vec![("pid", json!(pid)), ("adopted", adopted)],
        );
        if let Some(content) = v.content.clone() {
            self.actions.push_back(Action::PushConfig { inc, content });
        }
        // A start answered asynchronously (fork server) may find its config gone or a shutdown
        // under way.
        if s.gone || self.shutdown.is_some() {
            self.stop(now, id, s.gone);
        }
    }

    /// Marks the process of `inc` as adopted from a fork server (stats `adopted`).
    pub(super) fn mark_adopted(&mut self, inc: Inc) {
        if let Some(id) = self.id_by_inc(inc) {
            if let Some(State::Starting(s)) = self.vassals.get_mut(&id).map(|v| &mut v.state) {
                s.adopted = true;
            }
        }
    }

    pub(super) fn on_spawn_failed(&mut self, now: Instant, inc: Inc, reason: &SpawnFailure) {
        let Some(slot) = self.end_inc(inc) else {
            return;
        };
        let id = self.lines[slot].id;
        self.counters.spawn_failures += 1;
        self.actions.push_back(Action::Release { inc });
        if let Some(v) = self.vassals.get(&id) {
            warn!(vassal = %v.name, "cannot start vassal {}: {reason}", v.name);
            let details = vec![("reason", json!(reason.to_string()))];
            self.notes.push(now, &v.name, "spawn_failed", details);
        }
        self.failed(now, id, true);
    }

    pub(super) fn timer_start(&mut self, now: Instant, id: VassalId) {
        if let Some(v) = self.vassals.get(&id) {
            if let State::Waiting(state::Waiting { at, .. }) = v.state {
                if at <= now {
                    self.start(now, id);
                }
            }
        }
    }
}
