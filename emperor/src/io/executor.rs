//! The one executor of spawns: takes the core's `Action::Spawn`, runs the start hook when the
//! request asks for it (its end is `Event::StartHookDone`, after which the core asks again),
//! else asks [`crate::spawn::plan`] for the complete [`Job`] and starts it with
//! the launcher the plan chose (the direct clone path or the fork server). A process that runs
//! is reported as [`Output::Started`]; a spawn that cannot run as `Event::SpawnFailed`.

use std::path::PathBuf;
use std::time::Instant;

use super::source::{Cx, Output, Started};
use crate::cgroup::Tree;
use crate::core::{Event, SpawnRequest};
use crate::forkserver::ForkClient;
use crate::hooks::Hooks;
use crate::ondemand::OnDemand;
use crate::spawn::launcher::{Job, Via};
use crate::spawn::plan::{self, Settings};
use crate::spawn::Spawner;

/// The launchers and what they need.
#[derive(Debug)]
pub struct Executor {
    /// The direct clone path.
    pub spawner: Spawner,
    /// The emperor-wide inputs of every plan.
    pub settings: Settings,
    /// `--emperor-tyrant-initgroups`.
    pub initgroups: bool,
    /// The vassals' process trees (cgroups or process groups).
    pub tree: Tree,
    /// The fork-server client, with `--emperor-use-fork-server`.
    pub fork: Option<ForkClient>,
    /// Start hooks (and the other hook processes).
    pub hooks: Hooks,
}

/// What the executor needs besides the request: the on-demand listeners (fd 0), the
/// emperor's own uid/gid and the vassal's working directory.
#[derive(Debug)]
pub struct Ctx<'c> {
    /// The on-demand listeners.
    pub ondemand: &'c mut OnDemand,
    /// The emperor's uid and gid.
    pub me: (u32, u32),
    /// The vassal's working directory.
    pub cwd: PathBuf,
}

impl Executor {
    /// Starts a vassal, or its `--vassals-start-hook` when the request says so. A hook that
    /// cannot be started (logged) counts as done at once.
    pub fn spawn(&mut self, req: SpawnRequest, x: Ctx<'_>, cx: &mut Cx<'_>) {
        if !req.run_start_hook {
            return self.spawn_now(req, x, cx);
        }
        if let Some(req) = self.hooks.before_start(cx.registry, req, &x.cwd) {
            cx.core(Event::StartHookDone { inc: req.inc });
        }
    }

    fn spawn_now(&mut self, req: SpawnRequest, x: Ctx<'_>, cx: &mut Cx<'_>) {
        let inc = req.inc;
        if let Err(reason) = self.try_spawn(req, x, cx) {
            cx.core(Event::SpawnFailed { inc, reason });
        }
    }

    /// Plans `req` and starts it (locally, or asynchronously through the fork server); `Err`
    /// is the reason it cannot start, for the core's `SpawnFailed`.
    fn try_spawn(&mut self, req: SpawnRequest, x: Ctx<'_>, cx: &mut Cx<'_>) -> Result<(), String> {
        let vassal = plan::Vassal {
            cwd: x.cwd,
            creds: req
                .creds
                .map(|(uid, gid)| crate::spawn::creds::creds(uid, gid, self.initgroups))
                .transpose(),
        };
        let (ondemand, registry, id) = (x.ondemand, cx.registry, req.vassal);
        let job = plan::plan(req, &self.settings, vassal, || {
            ondemand.take_for_spawn(id, registry)
        })
        .map_err(|e| e.to_string())?;
        match (job.via, self.fork.as_mut()) {
            // Asynchronous: answered by the fork client's `drive` (adopted or failed).
            (Via::ForkServer, Some(f)) => f.start(cx.registry, cx.now, &job.req, &job.plan),
            _ => self.direct(job, x.me, cx),
        }
    }

    /// Clones and execs `job` in its process tree.
    fn direct(&mut self, mut job: Job, me: (u32, u32), cx: &mut Cx<'_>) -> Result<(), String> {
        let inc = job.req.inc;
        let placement = self.tree.place(inc, &job.req.name);
        job.setup.cgroup_procs = placement.as_ref().map(|p| p.procs_fd());
        let process = match self.spawner.spawn_with(&job.plan, &job.setup) {
            Ok(s) => s,
            Err(e) => {
                if let Some(p) = placement {
                    self.tree.discard(p);
                }
                return Err(e.to_string());
            }
        };
        self.tree.started(inc, process.pid, placement);
        let owner = job
            .setup
            .creds
            .as_ref()
            .map(|c| (c.uid, c.gid))
            .unwrap_or(me);
        cx.out.push(Output::Started(Box::new(Started {
            inc,
            name: job.req.name,
            cwd: job.plan.cwd,
            process,
            owner,
            adopted: false,
            reaped: None,
        })));
        Ok(())
    }

    /// Fork-server progress: a readiness event of `ready`'s request, or the timers of every
    /// request; adoptions become [`Output::Started`], failures `Event::SpawnFailed`.
    pub fn drive_forks(
        &mut self,
        ready: Option<crate::core::Inc>,
        me: (u32, u32),
        cx: &mut Cx<'_>,
    ) {
        let Some(f) = self.fork.as_mut() else {
            return;
        };
        for done in f.drive(cx.registry, ready, Instant::now()) {
            match done {
                crate::forkserver::Done::Adopted {
                    inc,
                    name,
                    started,
                    reaped,
                    cwd,
                } => {
                    let pid = started.pid;
                    self.tree.adopted(inc, &name, pid);
                    // As after a fork: --exec-as-emperor and the stop hook's ledger.
                    let owner = crate::forkserver::owner_of(pid).unwrap_or(me);
                    cx.out.push(Output::Started(Box::new(Started {
                        inc,
                        name,
                        cwd,
                        process: started,
                        owner,
                        adopted: true,
                        reaped,
                    })));
                }
                crate::forkserver::Done::Failed { inc, reason } => {
                    cx.core(Event::SpawnFailed { inc, reason })
                }
            }
        }
    }
}
