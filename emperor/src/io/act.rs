//! Performing the core's actions, and routing a started process to the sources that need it.

use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::debug;

use super::executor::Ctx;
use super::source::Started;
use super::{cx, Cx, Runtime, SPAWN_BATCH};
use crate::core::{Action, Event};

impl Runtime {
    /// Performs queued actions until none is left, or until [`SPAWN_BATCH`] starts (the rest
    /// waits for the next turn of the loop, which then does not sleep); `Some(code)` to exit.
    pub(super) fn perform(&mut self) -> Option<i32> {
        self.actions_left = false;
        let mut spawns = 0;
        while let Some(a) = self.core.poll_action() {
            let spawn = matches!(a, Action::Spawn(_));
            if self.act(a) {
                return Some(0);
            }
            self.route();
            if spawn {
                spawns += 1;
                if spawns == SPAWN_BATCH {
                    self.actions_left = true;
                    return None;
                }
            }
        }
        None
    }

    /// Performs one action; `true` for `Action::Exit`.
    fn act(&mut self, a: Action) -> bool {
        let mut cx = cx!(self);
        let src = &mut self.src;
        match a {
            Action::Spawn(req) => {
                let x = Ctx {
                    me: (src.info.uid, src.info.gid),
                    cwd: src.monitors.vassal_cwd(req.monitor, &src.cwd),
                    ondemand: &mut src.ondemand,
                };
                src.exec.spawn(req, x, &mut cx);
            }
            Action::Send { inc, msg } => src.channels.send(inc, msg.to_byte()),
            Action::PushConfig { inc, content } => src.channels.push_config(inc, &content, &mut cx),
            Action::Kill { pid } => {
                if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    debug!(pid, "kill failed: {e}");
                }
            }
            Action::Release { inc } => {
                // The incarnation is over: whatever it left behind goes with it.
                src.exec.tree.sweep(inc);
                src.info.cgroups.remove(&inc);
                src.exec.hooks.released(&mut cx, inc);
                src.channels.release(inc, &mut cx);
            }
            Action::Rescan => src.monitors.rescan_asked(&mut cx),
            Action::Exit => return true,
            Action::OnDemand(a) => {
                let cwd = match &a {
                    crate::core::OnDemandAction::Resolve { monitor, .. } => {
                        src.monitors.vassal_cwd(*monitor, &src.cwd)
                    }
                    _ => src.cwd.clone(),
                };
                src.ondemand.perform(a, &cwd, &mut cx);
            }
        }
        false
    }

    /// A vassal process runs: its cgroup joins the stats, its channel is watched, the core
    /// learns it started (or was adopted), and its after-start hooks run.
    pub(super) fn started(&mut self, now: Instant, s: Started) {
        let (inc, pid) = (s.inc, s.process.pid);
        let src = &mut self.src;
        if s.adopted {
            src.exec.tree.adopted(inc, &s.name, pid);
        }
        if let Some(c) = src.exec.tree.cgroup_of(inc) {
            src.info.cgroups.insert(inc, c.to_string());
        }
        src.channels.attach(inc, &s.name, s.process, &mut cx!(self));
        let ev = if s.adopted {
            Event::Adopted { inc, pid }
        } else {
            Event::Spawned { inc, pid }
        };
        self.core.handle(now, ev);
        src.exec
            .hooks
            .after_start(&mut cx!(self), inc, &s.name, &s.cwd, pid, s.owner);
        if let Some(exit) = s.reaped {
            self.core.handle(now, Event::Reaped { pid, exit });
        }
    }
}
